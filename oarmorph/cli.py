"""``oarmorph``: one command-line front over every part (imaging, atlas, training, export, service).

Each later part adds its subcommands here. Errors a user can cause print ``error [CODE]: sentence`` and
exit with status 2; heavy imports happen inside the commands so ``oarmorph --help`` stays instant.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from oarmorph import __version__

app = typer.Typer(
    name="oarmorph",
    help="Atlas-based head-and-neck OAR contouring: a DICOM CT in, a DICOM RTSTRUCT out.",
    no_args_is_help=True,
    add_completion=False,
)


def _fail(exc: Exception) -> None:
    code = getattr(exc, "code", "ERROR")
    message = getattr(exc, "message", str(exc))
    typer.secho(f"error [{code}]: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(2)


def _run(fn):
    """Turn the typed errors of the imaging layer and the catalogue into a clean exit 2."""
    from anatomy.catalogue import UnknownStructureError
    from imaging.errors import ImagingError

    try:
        return fn()
    except (ImagingError, UnknownStructureError) as exc:
        _fail(exc)


@app.callback(invoke_without_command=True)
def main(version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False) -> None:
    if version:
        typer.echo(f"oarmorph {__version__}")
        raise typer.Exit()


CtArg = Annotated[Path, typer.Argument(help="CT: a DICOM folder, a zip of DICOM files, or a NIfTI/NRRD file.")]
SeriesOpt = Annotated[str | None, typer.Option("--series", help="Series Instance UID when the input holds several.")]
GapsOpt = Annotated[
    bool, typer.Option("--fill-gaps", help="Interpolate missing slices instead of refusing the series (warned).")
]


@app.command()
def info(ct: CtArg, series: SeriesOpt = None, fill_gaps: GapsOpt = False) -> None:
    """Read a CT and print its geometry, series and the canonical window found on it."""

    def go() -> None:
        from imaging.canonical import find_canonical_frame
        from imaging.errors import ImagingError
        from imaging.io import read_ct

        volume = read_ct(ct, series_uid=series, fill_gaps=fill_gaps)
        g = volume.geometry
        meta = volume.meta
        out = {
            "shape_kji": list(g.shape),
            "spacing_mm": [round(s, 4) for s in g.spacing],
            "origin_lps_mm": [round(o, 3) for o in g.origin],
            "direction": [round(d, 5) for d in g.direction],
            "hu_range": [float(volume.array.min()), float(volume.array.max())],
            "series_instance_uid": meta.get("series_instance_uid"),
            "patient_position": meta.get("patient_position"),
            "transfer_syntaxes": meta.get("transfer_syntaxes"),
            "warnings": meta.get("warnings", []),
        }
        try:
            frame = find_canonical_frame(volume)
            out["canonical_window"] = {
                "vertex_z_mm": round(frame.vertex_z_mm, 2),
                "top_cut": frame.top_cut,
                "scan_shorter_than_window": frame.scan_shorter_than_window,
                "window_z_range_mm": [round(z, 2) for z in frame.window_z_range_mm],
                "origin_lps_mm": [round(o, 2) for o in frame.geometry.origin],
            }
        except ImagingError as exc:  # the series reads, but is no head-and-neck CT the model can take
            out["canonical_window"] = exc.to_dict()
        typer.echo(json.dumps(out, indent=2, default=str))

    _run(go)


@app.command("series")
def list_series(source: Annotated[Path, typer.Argument(help="A DICOM folder or zip.")]) -> None:
    """List the CT series found in a folder or zip (to choose one with --series)."""

    def go() -> None:
        from imaging.dicom_ct import list_ct_series

        for summary in list_ct_series(source):
            typer.echo(summary.describe())

    _run(go)


@app.command()
def decoders() -> None:
    """Which DICOM transfer syntaxes this installation can decode."""
    from imaging.dicom_ct import supported_transfer_syntaxes

    for uid, ok in supported_transfer_syntaxes().items():
        typer.echo(f"{'yes' if ok else 'no ':3}  {uid}  {uid.name}")


@app.command()
def canonical(
    ct: CtArg,
    out: Annotated[Path, typer.Option("-o", "--out", help="Canonical image (.nii.gz or .nrrd).")],
    png: Annotated[Path | None, typer.Option("--png", help="Also write a PNG of three orthogonal slices.")] = None,
    series: SeriesOpt = None,
    fill_gaps: GapsOpt = False,
) -> None:
    """Apply THE preprocessing (canonical 128^3 window, [-170, 230] HU to [0, 1]) and save it."""

    def go() -> None:
        from imaging.canonical import to_canonical
        from imaging.io import read_ct, write_volume
        from imaging.preview import save_orthogonal_png
        from imaging.volume import Volume

        can = to_canonical(read_ct(ct, series_uid=series, fill_gaps=fill_gaps))
        write_volume(Volume(can.image, can.frame.geometry), out)
        if png:
            save_orthogonal_png(can.image, png, title=f"canonical {ct.name}")
        typer.echo(json.dumps(can.frame.to_dict(), indent=2))

    _run(go)


def _mask_files(folder: Path) -> list[Path]:
    from imaging.io import VOLUME_FORMATS

    files = sorted(p for p in folder.iterdir() if any(p.name.lower().endswith(s) for s in VOLUME_FORMATS))
    if not files:
        raise typer.BadParameter(f"no NIfTI or NRRD masks in {folder}")
    return files


def _strip_volume_suffix(name: str) -> str:
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


@app.command()
def rtstruct(
    ct: Annotated[Path, typer.Option("--ct", help="The CT the masks belong to: a DICOM folder or zip.")],
    masks: Annotated[Path, typer.Option("--masks", help="Folder of masks, one NIfTI or NRRD per OAR.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="RTSTRUCT file to write.")],
    keep_unknown: Annotated[
        bool, typer.Option("--keep-unknown", help="Write masks whose names are not in the catalogue as they are.")
    ] = False,
    series: SeriesOpt = None,
    fill_gaps: GapsOpt = False,
) -> None:
    """Write an RTSTRUCT from per-OAR masks on a CT (names mapped to TG-263 through the catalogue aliases)."""

    def go() -> None:
        from anatomy.catalogue import UnknownStructureError, resolve
        from imaging.dicom_ct import read_ct_series
        from imaging.io import read_mask
        from imaging.rtstruct import CtReference, RoiSpec, write_rtstruct

        volume = read_ct_series(ct, series_uid=series, fill_gaps=fill_gaps)
        specs: dict[RoiSpec, object] = {}
        for path in _mask_files(masks):
            raw_name = _strip_volume_suffix(path.name)
            try:
                oar = resolve(raw_name)
                spec = RoiSpec(oar.name, oar.color, oar.interpreted_type, oar.description)
            except UnknownStructureError:
                if not keep_unknown:
                    raise
                spec = RoiSpec(raw_name, (128, 128, 128), "ORGAN")
            if spec in specs or any(s.name == spec.name for s in specs):
                raise typer.BadParameter(f"two mask files map to {spec.name}: check {masks}")
            specs[spec] = read_mask(path, reference=volume.geometry).array
            typer.echo(f"{raw_name:>24} -> {spec.name}")
        write_rtstruct(CtReference.from_volume(volume), specs, out)
        typer.echo(f"wrote {out} ({len(specs)} ROIs)")

    _run(go)


@app.command("masks")
def masks_from_rtstruct(
    ct: Annotated[Path, typer.Option("--ct", help="The CT the structure set refers to: a DICOM folder or zip.")],
    rtstruct_path: Annotated[Path, typer.Option("--rtstruct", help="The RTSTRUCT file.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Folder to write one mask per ROI into.")],
    fmt: Annotated[str, typer.Option("--format", help="nii.gz or nrrd")] = "nii.gz",
    series: SeriesOpt = None,
    fill_gaps: GapsOpt = False,
) -> None:
    """Turn every ROI of an RTSTRUCT into a mask on its CT's grid (catalogue names where they map)."""

    def go() -> None:
        from anatomy.catalogue import try_resolve
        from imaging.dicom_ct import read_ct_series
        from imaging.io import write_volume
        from imaging.rtstruct import CtReference, read_rtstruct
        from imaging.volume import Volume

        if fmt not in ("nii.gz", "nrrd"):
            raise typer.BadParameter("--format must be nii.gz or nrrd")
        volume = read_ct_series(ct, series_uid=series, fill_gaps=fill_gaps)
        structure_set = read_rtstruct(rtstruct_path, CtReference.from_volume(volume))
        out.mkdir(parents=True, exist_ok=True)
        for key, roi in structure_set.rois.items():
            oar = try_resolve(roi.name)
            name = oar.name if oar else "".join(c if c.isalnum() or c in "-_" else "_" for c in key)
            write_volume(Volume(roi.mask, volume.geometry), out / f"{name}.{fmt}")
            cc = roi.mask.sum() * volume.geometry.voxel_volume_mm3 / 1000
            typer.echo(f"{roi.name:>24} -> {name}.{fmt}  {cc:8.2f} cc  {roi.contour_count} contours")
        for warning in structure_set.warnings:
            typer.secho(f"warning: {warning}", err=True, fg=typer.colors.YELLOW)

    _run(go)


@app.command()
def catalogue(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """The 36 OARs: TG-263 name, laterality, colour, and whether the reference paper evaluates it."""
    from anatomy.catalogue import OARS

    rows = [
        {
            "name": o.name,
            "laterality": o.laterality.value,
            "color": list(o.color),
            "paper_evaluated": o.paper_evaluated,
            "interpreted_type": o.interpreted_type,
            "description": o.description,
        }
        for o in OARS
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        typer.echo(
            f"{r['name']:<18} {r['laterality']}  {'#{:02x}{:02x}{:02x}'.format(*tuple(r['color']))}  "
            f"{'paper' if r['paper_evaluated'] else '     '}  {r['description']}"
        )


@app.command()
def openapi(out: Annotated[Path, typer.Option("-o", "--out")] = Path("openapi.yaml")) -> None:
    """Regenerate openapi.yaml from the FastAPI app."""
    from service.openapi import openapi_yaml

    out.write_text(openapi_yaml())
    typer.echo(f"wrote {out}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for the demo's outputs.")] = Path("out/demo"),
    ct: Annotated[
        Path | None,
        typer.Option(
            "--ct", help="CT to use (default: the real scanner series in ../shared/data, else a synthetic CT)."
        ),
    ] = None,
) -> None:
    """Run the whole chain on a CT and show what it does (see README, 'make demo')."""
    from oarmorph.demo import run_demo

    _run(lambda: run_demo(out, ct))


@app.command("cache")
def cache_cohort(
    cohort: Annotated[Path, typer.Option("--cohort", help="Cohort folder (one folder per patient).")],
    out: Annotated[Path, typer.Option("--out", help="Cache folder for the canonical arrays.")],
    split: Annotated[str | None, typer.Option("--split", help="Only this split of the cohort's split.json.")] = None,
) -> None:
    """Preprocess a cohort once (the canonical space of the service) into the training cache."""
    from training.cache import build_cache
    from training.cohort import read_cohort

    cases = read_cohort(cohort, split)
    build_cache(cases, out, progress=lambda n, cid: typer.echo(f"{n + 1}/{len(cases)} {cid}"))


@app.command("train")
def train_command(config: Annotated[Path, typer.Argument(help="Training configuration (YAML).")]) -> None:
    """Train a cascade (resumes from the run folder's latest checkpoint)."""
    from training.train import TrainConfig, train

    run = train(TrainConfig.load(config), log=typer.echo)
    typer.echo(f"done: {run}")


phantom_app = typer.Typer(help="Synthetic head-and-neck phantoms with known ground truth.", no_args_is_help=True)
app.add_typer(phantom_app, name="phantom")


@phantom_app.command("atlas")
def phantom_atlas(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the atlas case into.")],
    spacing: Annotated[float, typer.Option("--spacing", help="Voxel size of the atlas CT in mm.")] = 1.0,
) -> None:
    """The 36-OAR phantom atlas: DICOM CT, one mask per OAR, RTSTRUCT, landmarks."""
    from phantom.cohort import write_atlas

    folder = write_atlas(out, spacing)
    typer.echo(f"wrote the phantom atlas to {folder}")


@phantom_app.command("cohort")
def phantom_cohort(
    out: Annotated[Path, typer.Option("--out", help="Folder for the cohort (one folder per patient).")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of patients.")] = 10,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same bytes.")] = 0,
    size: Annotated[str, typer.Option("--size", help="small (fast tests) or full (512x512, 150-250 slices)")] = "small",
) -> None:
    """A cohort of phantom patients with known deformations, and its train/validation/test split."""
    import time

    from phantom.cohort import generate_cohort

    if size not in ("small", "full"):
        raise typer.BadParameter("--size must be small or full")
    start = time.perf_counter()

    def progress(index, cid, case) -> None:
        g = case.ct.geometry
        typer.echo(
            f"{cid}: {case.scan.patient_position} {g.shape[2]}x{g.shape[1]}x{g.shape[0]} "
            f"{g.spacing[0]:.2f}x{g.spacing[1]:.2f}x{g.spacing[2]:.2f} mm, {len(case.masks)} OARs, "
            f"min Jacobian {case.meta['min_jacobian']:.2f}{', metal implant' if case.scan.metal_implant else ''} "
            f"({time.perf_counter() - start:.1f} s)"
        )

    manifest = generate_cohort(n, seed, out, size, progress)
    typer.echo(f"wrote {len(manifest['cases'])} patients and split.json to {out}")


@phantom_app.command("sheets")
def phantom_sheets(
    out: Annotated[Path, typer.Option("--out", help="Folder for the PNG sheets.")] = Path("docs/phantom"),
    seed: Annotated[int, typer.Option("--seed")] = 2026,
) -> None:
    """Regenerate the PNG sheets of docs/phantom: the atlas and patients (extreme poses, metal)."""
    from phantom.sheets import write_sheets

    for path in write_sheets(out, seed):
        typer.echo(f"wrote {path}")


def entrypoint() -> None:  # pragma: no cover - console script shim
    sys.exit(app())
