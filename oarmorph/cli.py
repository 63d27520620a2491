"""``oarmorph``: one command-line front over every part (imaging, atlas, training, export, service).

Each later part adds its subcommands here. Errors a user can cause print ``error [CODE]: sentence`` and
exit with status 2; heavy imports happen inside the commands so ``oarmorph --help`` stays instant.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from oarmorph import __version__

app = typer.Typer(
    name="oarmorph",
    help="Atlas-based head-and-neck OAR contouring: a DICOM CT in, a DICOM RTSTRUCT out.",
    no_args_is_help=True,
    add_completion=False,
)


def _fail(exc: Exception) -> NoReturn:
    code = getattr(exc, "code", "ERROR")
    message = getattr(exc, "message", str(exc))
    typer.secho(f"error [{code}]: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(2)


class _CliError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


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


@app.command("apikey")
def apikey_command(key_id: Annotated[str, typer.Argument(help="Who the key is for: the owner jobs record.")]) -> None:
    """Make an API key for the service: the key (give it to the client; shown once) and its hashed entry for
    OARMORPH_API_KEYS or OARMORPH_API_KEYS_FILE (the service stores only the entry)."""
    from service.security import ApiKeyConfigError, new_key

    try:
        key, entry = new_key(key_id)
    except ApiKeyConfigError as exc:
        _fail(_CliError(exc.code, str(exc)))
    typer.echo(f"key:   {key}")
    typer.echo(f"entry: {entry.line()}")


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


@app.command("service-demo")
def service_demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for the demo's outputs.")] = Path("out/demo"),
    ct: Annotated[
        Path | None,
        typer.Option("--ct", help="Your own CT series (a DICOM folder or zip); default: a phantom patient."),
    ] = None,
) -> None:
    """`make demo`: Redis, a worker and the API started here; a CT posted over HTTP; the RTSTRUCT and a QA sheet saved;
    everything stopped again."""
    from oarmorph.service_demo import run_service_demo

    _run(lambda: run_service_demo(out, ct))


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
def train_command(
    config: Annotated[Path, typer.Argument(help="Training configuration (YAML).")],
    steps: Annotated[
        int | None,
        typer.Option(
            "--steps",
            min=1,
            help="Stop at this step this time instead of the config's (a CPU budget); a later run resumes from it.",
        ),
    ] = None,
) -> None:
    """Train a cascade (resumes from the run folder's latest checkpoint)."""
    from training.train import TrainConfig, train

    cfg = TrainConfig.load(config)
    if steps is not None:
        cfg.steps = steps
    run = train(cfg, log=typer.echo)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one line for the run, not one per rank
        typer.echo(f"done: {run}")


pseudolabel_app = typer.Typer(
    help="Pseudo-labels: a supervised 3D U-Net fills in the OARs a patient lacks.", no_args_is_help=True
)
app.add_typer(pseudolabel_app, name="pseudolabel")


@pseudolabel_app.command("train")
def pseudolabel_train(
    cache: Annotated[Path, typer.Option("--cache", help="Training cache (oarmorph cache).")],
    out: Annotated[Path, typer.Option("--out", help="Run folder (checkpoints, log); resumes from latest.pt.")],
    validation: Annotated[
        Path | None, typer.Option("--validation", help="Validation cache (best.pt by its mean Dice).")
    ] = None,
    steps: Annotated[int, typer.Option("--steps", min=1)] = 2000,
    shape: Annotated[int, typer.Option("--shape", help="Training resolution (a cube), e.g. 64 or 48.")] = 64,
    oars: Annotated[str | None, typer.Option("--oars", help="Comma-separated TG-263 names (default: 7).")] = None,
    widths: Annotated[str, typer.Option("--widths", help="U-Net widths per level, comma-separated.")] = "8,16,32,64",
    lr: Annotated[float, typer.Option("--lr")] = 1e-3,
    batch: Annotated[int, typer.Option("--batch", min=1)] = 1,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    threads: Annotated[int, typer.Option("--threads", min=1)] = 1,
    validate_every: Annotated[int, typer.Option("--validate-every", min=1)] = 100,
) -> None:
    """Train the pseudo-label U-Net on the OARs each patient has (masked soft Dice + BCE)."""
    from training.pseudolabel import DEFAULT_OARS, PseudoLabelConfig, train_pseudolabel

    cfg = PseudoLabelConfig(
        cache=str(cache),
        validation=str(validation) if validation else None,
        out=str(out),
        oars=[o.strip() for o in oars.split(",")] if oars else list(DEFAULT_OARS),
        shape=(shape, shape, shape),
        widths=tuple(int(w) for w in widths.split(",")),
        lr=lr,
        steps=steps,
        batch_size=batch,
        seed=seed,
        threads=threads,
        validate_every=validate_every,
    )
    typer.echo(f"done: {train_pseudolabel(cfg, log=typer.echo)}")


@pseudolabel_app.command("fill")
def pseudolabel_fill(
    cache: Annotated[Path, typer.Option("--cache", help="Cache whose missing OARs to fill.")],
    model: Annotated[Path, typer.Option("--model", help="Checkpoint of oarmorph pseudolabel train (best.pt).")],
    out: Annotated[Path, typer.Option("--out", help="New cache folder (the source is never changed).")],
    threshold: Annotated[float, typer.Option("--threshold")] = 0.5,
    min_voxels: Annotated[
        int, typer.Option("--min-voxels", help="Smaller predictions (at 128^3) are left out, not filled.")
    ] = 20,
    soft: Annotated[bool, typer.Option("--soft", help="Write probabilities instead of binary masks.")] = False,
    threads: Annotated[int, typer.Option("--threads", min=1)] = 1,
) -> None:
    """Write a copy of a cache with the OARs each case lacks filled by the U-Net (and pseudolabels.json)."""
    from training.pseudolabel import fill_cache

    record = fill_cache(
        model, cache, out, threshold, min_voxels, soft, threads,
        progress=lambda n, cid, names: typer.echo(f"{n + 1} {cid}: {', '.join(names) or '-'}"),
    )  # fmt: skip
    total = sum(len(v) for v in record["cases"].values())
    typer.echo(f"wrote {out}: {total} pseudo-labels in {len(record['cases'])} cases")


@pseudolabel_app.command("evaluate")
def pseudolabel_evaluate(
    cache: Annotated[Path, typer.Option("--cache", help="A cache with clinical masks (e.g. the validation split).")],
    model: Annotated[Path, typer.Option("--model", help="Checkpoint of oarmorph pseudolabel train.")],
    threshold: Annotated[float, typer.Option("--threshold")] = 0.5,
    threads: Annotated[int, typer.Option("--threads", min=1)] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Per-OAR Dice of the U-Net's masks (as fill writes them) against the clinical ones, on the 128^3 grid."""
    from training.pseudolabel import evaluate_pseudolabel

    summary = evaluate_pseudolabel(model, cache, threshold, threads)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    for oar, dice in summary["per_oar"].items():
        typer.echo(f"{oar:<16} {dice:.3f}  (n={summary['n'][oar]})")
    typer.echo(f"{'mean':<16} {summary['mean']:.3f}")


atlas_app = typer.Typer(help="Atlas bundles: choose the atlas of a cohort, build, verify.", no_args_is_help=True)
app.add_typer(atlas_app, name="atlas")


def _atlas_run(fn):
    """Typed errors of the bundle layer (and bad cohorts) exit 2 like the imaging ones."""
    from anatomy.bundle import BundleIntegrityError

    def go():
        try:
            return fn()
        except BundleIntegrityError as exc:
            _fail(exc)
        except (ValueError, FileNotFoundError) as exc:
            exc.code = "ATLAS_BUILD"  # type: ignore[attr-defined]
            _fail(exc)

    return _run(go)


def _echo_bundle(bundle) -> None:
    from anatomy.atlas_build import oar_volumes_cc

    for oar, cc in oar_volumes_cc(bundle).items():
        typer.echo(f"  {oar:<18} {cc:10.3f} cc")
    typer.echo(f"{bundle.name}: {len(bundle.oars)} OARs, sha256 {bundle.sha256}")


@atlas_app.command("build")
def atlas_build(
    cohort: Annotated[Path, typer.Option("--cohort", help="Cohort folder (one folder per patient).")],
    out: Annotated[Path, typer.Option("--out", help="Bundle folder to write (a RECIPE.json there is checked).")],
    case: Annotated[str | None, typer.Option("--case", help="Take this patient instead of applying a rule.")] = None,
    rule: Annotated[
        str | None, typer.Option("--rule", help="least-truncated (default, as training) or typical.")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="Bundle name (default: atlas CASE of COHORT).")] = None,
    licence: Annotated[
        str | None, typer.Option("--licence", help="Licence note (default: LICENSE files found).")
    ] = None,
    write_recipe: Annotated[
        bool, typer.Option("--write-recipe", help="Also write OUT/RECIPE.json (for data that may not be shipped).")
    ] = False,
) -> None:
    """Choose the atlas patient of a cohort by a documented rule (or --case) and write its atlas bundle."""

    def go() -> None:
        from anatomy.atlas_build import RECIPE_NAME, build_from_cohort, make_recipe, read_recipe, verify_bundle
        from training.cohort import read_cohort  # torch-free

        cases = read_cohort(cohort)
        bundle, choice = build_from_cohort(
            cases,
            cohort,
            out,
            rule=rule,
            case_id=case,
            name=name,
            licence=licence,
            progress=lambda cid, score: typer.echo(f"  {cid:<12} {score:14.4f}"),
        )
        if choice is not None:
            typer.echo(
                f"rule {choice.rule}: {choice.case_id} among {len(choice.scores)} of {choice.n_cases} patients "
                f"with every OAR ({', '.join(choice.required_oars)})"
            )
        _echo_bundle(bundle)
        if write_recipe:
            command = f"oarmorph atlas build --cohort {cohort} --out {out}"
            command += f" --case {case}" if case else (f" --rule {rule}" if rule else "")
            (out / RECIPE_NAME).write_text(json.dumps(make_recipe(bundle, command), indent=2) + "\n")
            typer.echo(f"wrote {out / RECIPE_NAME}")
        elif read_recipe(out) is not None:
            verify_bundle(out)
            typer.echo(f"matches {out / RECIPE_NAME}")

    _atlas_run(go)


@atlas_app.command("phantom")
def atlas_phantom(
    out: Annotated[Path, typer.Option("--out", help="Bundle folder to write.")] = Path("bundles/phantom"),
) -> None:
    """The 36-OAR phantom atlas as a bundle (1 mm CT and masks; shipped in bundles/phantom)."""

    def go() -> None:
        from phantom.bundle import write_phantom_bundle

        _echo_bundle(write_phantom_bundle(out))

    _atlas_run(go)


@atlas_app.command("verify")
def atlas_verify(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder.")],
    sha256: Annotated[str | None, typer.Option("--sha256", help="The sha256 it must have (e.g. a model's).")] = None,
) -> None:
    """Load a bundle and check its files' sha256, its bundle sha256 (--sha256) and its RECIPE.json, if any."""

    def go() -> None:
        from anatomy.atlas_build import verify_bundle

        loaded, recipe = verify_bundle(bundle, sha256)
        _echo_bundle(loaded)
        checks = ["files"] + (["--sha256"] if sha256 else []) + (["RECIPE.json"] if recipe else [])
        typer.echo(f"ok: {', '.join(checks)} verified")

    _atlas_run(go)


def _segmentation_atlas(path: Path):
    """An atlas bundle folder, or a cohort case folder (a CT and its OAR masks) made into a bundle on the fly.

    The on-the-fly bundle is written by ``anatomy.bundle.write_bundle`` into a temporary folder and loaded back,
    so the pipeline sees exactly what a bundle on disk would give it.
    """
    import tempfile

    from anatomy.bundle import write_bundle
    from pipeline.atlas import load_atlas
    from training.cohort import read_case

    if (path / "bundle.json").is_file():
        return load_atlas(path)
    case = read_case(path)
    ct = case.read_ct()
    with tempfile.TemporaryDirectory(prefix="oarmorph-atlas-") as tmp:
        provenance = {"case_id": case.case_id, "source": str(path), "built_by": "oarmorph (on the fly)"}
        write_bundle(Path(tmp) / "atlas", f"atlas {case.case_id}", ct, case.read_masks(ct), provenance)
        typer.echo(f"note: {path} is no atlas bundle; built one from its CT and masks for this run", err=True)
        return load_atlas(Path(tmp) / "atlas")


def _atlas_case_id(atlas) -> str | None:
    source = atlas.provenance.get("source")
    return atlas.provenance.get("case_id") or (source.get("case_id") if isinstance(source, dict) else None)


def _inference_run(fn):
    """Typed errors of model and atlas loading exit 2 like the imaging ones."""
    from anatomy.bundle import BundleIntegrityError
    from model_export.card import ModelBundleError, RuntimeUnavailableError
    from pipeline.model_dir import ModelNotFoundError

    def go():
        try:
            return fn()
        except (ModelNotFoundError, BundleIntegrityError, ModelBundleError, RuntimeUnavailableError) as exc:
            _fail(exc)
        except FileNotFoundError as exc:
            exc.code = "NOT_FOUND"  # type: ignore[attr-defined]
            _fail(exc)

    return _run(go)


def _load_registration(checkpoint: Path, atlas, threads: int):
    """The inference cascade of a checkpoint with the atlas's canonical image baked in (warns on a foreign atlas)."""
    from training.inference import TorchRegister, load_inference_cascade

    model, cfg, meta = load_inference_cascade(checkpoint, atlas_image=atlas.image)
    atlas_case = _atlas_case_id(atlas)
    if meta["atlas_case"] and atlas_case and meta["atlas_case"] != atlas_case:
        typer.secho(
            f"warning: {checkpoint} was trained against atlas {meta['atlas_case']}, the atlas given is {atlas_case}",
            err=True,
            fg=typer.colors.YELLOW,
        )
    return TorchRegister(model, threads), cfg, meta


ModelDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--bundle",
        help="Model directory (model.onnx and/or checkpoint.pt, and its atlas bundle atlas/), or the name of a "
        "service bundle (OARMORPH_BUNDLES_DIR, OARMORPH_BUNDLES); default: OARMORPH_DEFAULT_BUNDLE.",
    ),
]
CheckpointOpt = Annotated[
    Path | None, typer.Option("--checkpoint", help="Training checkpoint (runs/NAME/best.pt); needs --atlas-bundle.")
]
AtlasBundleOpt = Annotated[
    Path | None,
    typer.Option("--atlas-bundle", help="Atlas bundle folder (or a cohort case folder, bundled on the fly)."),
]
ThreadsOpt = Annotated[int, typer.Option("--threads", min=1, help="CPU threads for the registration.")]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="ONNX Runtime provider for model.onnx: auto (CUDA when present), cpu, cuda.")
]


def _model_directory(bundle: Path | None, checkpoint: Path | None, atlas_bundle: Path | None) -> Path | None:
    """``--bundle`` as given when it is a folder, else a service bundle by name; the service's default bundle
    when no model is named at all."""
    from pipeline.model_dir import ModelNotFoundError
    from service.settings import get_settings

    if bundle is None and (checkpoint is not None or atlas_bundle is not None):
        return None
    if bundle is not None and (bundle.is_dir() or checkpoint is not None or atlas_bundle is not None):
        return bundle
    settings = get_settings()
    name = str(bundle) if bundle is not None else settings.default_bundle
    found = settings.bundle_dirs().get(name)
    if found is None:
        known = ", ".join(sorted(settings.bundle_dirs())) or "none"
        raise ModelNotFoundError(f"no model directory or bundle named {name} (bundles: {known})")
    return found


@app.command("segment")
def segment_command(
    ct: CtArg,
    out: Annotated[
        Path | None,
        typer.Option("-o", "--out", help="RTSTRUCT to write: every atlas OAR, referencing the input DICOM series."),
    ] = None,
    masks_dir: Annotated[
        Path | None, typer.Option("--masks-dir", help="Folder for one NIfTI per OAR and summary.json.")
    ] = None,
    bundle: ModelDirOpt = None,
    checkpoint: CheckpointOpt = None,
    atlas_bundle: AtlasBundleOpt = None,
    series: SeriesOpt = None,
    fill_gaps: GapsOpt = False,
    threads: ThreadsOpt = 2,
    device: DeviceOpt = "auto",
) -> None:
    """Contour every atlas OAR on a CT: an RTSTRUCT (-o), and/or one mask per OAR on the CT's own grid with
    summary.json (--masks-dir).

    The RTSTRUCT is written by the worker's own function (pipeline.structure_set.contour_to_rtstruct). A model
    directory with model.onnx runs on ONNX Runtime (no torch); otherwise its checkpoint.pt on PyTorch."""

    def go() -> None:
        from types import SimpleNamespace

        from imaging.io import read_ct
        from model_export.card import CARD_NAME, mask_thresholds, read_card
        from pipeline.model_dir import resolve_model
        from pipeline.output import write_segmentation
        from pipeline.structure_set import contour_to_rtstruct

        if out is None and masks_dir is None:
            _fail(_CliError("USAGE", "give -o RTSTRUCT and/or --masks-dir DIR"))
        model_dir = _model_directory(bundle, checkpoint, atlas_bundle)
        if (
            model_dir is not None
            and checkpoint is None
            and atlas_bundle is None
            and (model_dir / "model.onnx").is_file()
        ):
            from model_export.bundle import load_model_dir  # ONNX Runtime: the torch-free path

            model = load_model_dir(model_dir, threads=threads, device=device)
            atlas, align_windows, meta = model.atlas, model.align_windows, model.summary()
        else:
            source = resolve_model(model_dir, checkpoint, atlas_bundle)
            atlas = _segmentation_atlas(source.atlas)
            register, cfg, meta = _load_registration(source.checkpoint, atlas, threads)
            align_windows = cfg.align_windows
            card = {"name": cfg.name, "version": f"checkpoint {source.checkpoint.name}"}
            if checkpoint is None and model_dir is not None and (model_dir / CARD_NAME).is_file():
                card["mask_thresholds"] = read_card(model_dir).get("mask_thresholds")  # the torch path, same levels
            model = SimpleNamespace(atlas=atlas, register=register, align_windows=align_windows, card=card)
        volume = read_ct(ct, series_uid=series, fill_gaps=fill_gaps)
        if out is not None and not volume.meta.get("sop_instance_uids"):
            _fail(_CliError("NOT_DICOM", f"{ct} is not a DICOM series: an RTSTRUCT needs the DICOM CT it refers to"))
        if out is not None:
            contoured = contour_to_rtstruct(volume, model, out)
            result = contoured.segmentation
            typer.echo(f"wrote {out} ({contoured.qa['oar_count']} OARs, {contoured.qa['contoured']} contoured)")
        else:
            from pipeline.segment import segment_ct

            result = segment_ct(volume, atlas, model.register, align_windows, thresholds=mask_thresholds(model.card))
        if masks_dir is None:
            for warning in result.warnings:
                typer.secho(f"warning: {warning}", err=True, fg=typer.colors.YELLOW)
            return
        extra = {
            "input": str(ct),
            "model": meta,
            "atlas": {"name": atlas.name, "sha256": atlas.sha256, "case_id": _atlas_case_id(atlas)},
            "geometry": volume.geometry.to_dict(),
        }
        summary = write_segmentation(result, volume.geometry, masks_dir, extra)
        for name, oar in summary["oars"].items():
            typer.echo(f"{name:<18} {oar['volume_cc']:10.2f} cc")
        seconds = ", ".join(f"{k} {v:.1f} s" for k, v in summary["seconds"].items())
        typer.echo(f"{len(summary['oars'])} masks in {masks_dir} ({seconds}; folded {result.folded_fraction:.2e})")
        for warning in result.warnings:
            typer.secho(f"warning: {warning}", err=True, fg=typer.colors.YELLOW)

    _inference_run(go)


@app.command("evaluate")
def evaluate_command(
    model: Annotated[
        list[str],
        typer.Option("--model", help="NAME=CHECKPOINT or NAME=MODEL_DIR; repeat for several models."),
    ],
    cohort: Annotated[Path, typer.Option("--cohort", help="Cohort folder with the patients' own masks.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for table1.md, results.json and boxplot.png.")],
    atlas_bundle: AtlasBundleOpt = None,
    split: Annotated[str | None, typer.Option("--split", help="Only this split of the cohort's split.json.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Only the first N patients.")] = None,
    threads: ThreadsOpt = 2,
    thresholds: Annotated[
        Path | None,
        typer.Option(
            "--thresholds",
            help="Mask thresholds (`oarmorph calibrate`) for the models given as checkpoints; a model directory "
            "uses its card's.",
        ),
    ] = None,
) -> None:
    """Dice, HD95, folding and time per OAR and method on a cohort, through the same pipeline as segment."""

    def go() -> None:
        from model_export.card import CARD_NAME, mask_thresholds, read_card
        from pipeline.model_dir import resolve_model
        from training.calibration import read_thresholds
        from training.cohort import read_cohort
        from training.evaluate import Method, evaluate

        given = _read_thresholds_file(read_thresholds, thresholds)["thresholds"] if thresholds is not None else None

        atlases: dict[Path, object] = {}
        methods = []
        for spec in model:
            name, sep, path_text = spec.partition("=")
            if not sep or not name or not path_text:
                raise typer.BadParameter(f"--model takes NAME=CHECKPOINT, got {spec!r}")
            path = Path(path_text)
            source = resolve_model(path, None, None) if path.is_dir() else resolve_model(None, path, atlas_bundle)
            if source.atlas not in atlases:
                atlases[source.atlas] = _segmentation_atlas(source.atlas)
            atlas = atlases[source.atlas]
            register, cfg, meta = _load_registration(source.checkpoint, atlas, threads)
            step = f", step {meta['step']}" if meta.get("step") else ""
            if path.is_dir():
                levels = mask_thresholds(read_card(path)) if (path / CARD_NAME).is_file() else None
            else:
                levels = given
            calibrated = ", calibrated mask thresholds" if levels else ""
            description = f"registration cascade ({cfg.name}{step}{calibrated})"
            methods.append(Method(name, register, cfg.align_windows, atlas, description, thresholds=levels))
        cases = read_cohort(cohort, split)[:limit] if limit else read_cohort(cohort, split)
        title = f"{cohort.name} of {cohort.parent.name}: {len(cases)} patients"
        result = evaluate(methods, cases, out, title, log=typer.echo)
        for method, s in result["summary"].items():
            hd = "n/a" if s["hd95_mm_mean"] is None else f"{s['hd95_mm_mean']:.1f} mm"
            typer.echo(f"{method}: mean Dice {s['mean_dice']:.3f}, HD95 {hd}, {s['seconds_mean']:.1f} s/case")
        typer.echo(f"wrote {out / 'table1.md'}, {out / 'results.json'}, {out / 'boxplot.png'}")

    _inference_run(go)


@app.command("calibrate")
def calibrate_command(
    model: Annotated[Path, typer.Option("--model", help="A training checkpoint (with --atlas-bundle) or a model dir.")],
    cohort: Annotated[Path, typer.Option("--cohort", help="Calibration patients: in neither training nor test.")],
    out: Annotated[Path, typer.Option("--out", help="The calibration JSON (for `oarmorph export --thresholds`).")],
    atlas_bundle: AtlasBundleOpt = None,
    split: Annotated[str | None, typer.Option("--split", help="Only this split of the cohort's split.json.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Only the first N patients.")] = None,
    levels: Annotated[
        str, typer.Option("--levels", help="Comma-separated mask levels to try (0.5 is always among them).")
    ] = ",".join(f"{v:g}" for v in (0.5, 0.45, 0.4, 0.35, 0.3, 0.25)),
    threads: ThreadsOpt = 2,
) -> None:
    """Per-OAR mask thresholds of a model, chosen on a calibration cohort (training.calibration)."""

    def go() -> None:
        from model_export.export import weights_sha256
        from pipeline.model_dir import resolve_model
        from training.calibration import calibrate_thresholds
        from training.cohort import read_cohort
        from training.evaluate import Method

        try:
            grid = [float(v) for v in levels.split(",") if v.strip()]
        except ValueError:
            _fail(_CliError("USAGE", f"--levels takes comma-separated numbers, got {levels!r}"))
        source = resolve_model(model, None, None) if model.is_dir() else resolve_model(None, model, atlas_bundle)
        atlas = _segmentation_atlas(source.atlas)
        register, cfg, _ = _load_registration(source.checkpoint, atlas, threads)
        cases = read_cohort(cohort, split)[:limit] if limit else read_cohort(cohort, split)
        method = Method(cfg.name, register, cfg.align_windows, atlas)
        try:
            doc = calibrate_thresholds(method, cases, grid, log=typer.echo)
        except ValueError as exc:
            _fail(_CliError("USAGE", str(exc)))
        doc["model"] = {"checkpoint": str(source.checkpoint), "config": cfg.name, "atlas": atlas.name}
        doc["weights_sha256"] = weights_sha256(register.model.cascade.state_dict())  # the weights that just ran
        doc["cohort"] = {"path": str(cohort), "split": split, "patients": len(cases)}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2) + "\n")
        moved = {k: v for k, v in doc["thresholds"].items() if v != 0.5}
        typer.echo(
            f"{len(moved)} of {len(doc['thresholds'])} OARs away from 0.5 "
            + (f"({', '.join(f'{k} {v:g}' for k, v in moved.items())}); " if moved else "; ")
            + f"mean Dice {doc['mean_dice']['default']:.4f} at 0.5, {doc['mean_dice']['calibrated']:.4f} calibrated "
            f"(on the calibration patients themselves); wrote {out}"
        )

    _inference_run(go)


@app.command("export")
def export_command(
    checkpoint: Annotated[Path, typer.Argument(help="Training checkpoint (runs/NAME/best.pt).")],
    atlas: Annotated[Path, typer.Option("--atlas", help="The atlas bundle the model registers (bundles/NAME).")],
    out: Annotated[Path, typer.Option("--out", help="Model directory to write (model.onnx, card.json, ...).")],
    name: Annotated[str | None, typer.Option("--name", help="Model name (default: the folder's name).")] = None,
    version: Annotated[str, typer.Option("--version", help="Model version for the card.")] = "1.0.0",
    by_reference: Annotated[
        bool,
        typer.Option("--atlas-by-reference", help="Do not copy the atlas into the model directory; the card names it."),
    ] = False,
    source: Annotated[
        str | None, typer.Option("--source", help="The checkpoint's origin for the card (default: its path).")
    ] = None,
    thresholds: Annotated[
        Path | None,
        typer.Option("--thresholds", help="Mask thresholds per OAR from `oarmorph calibrate` of this checkpoint."),
    ] = None,
) -> None:
    """Export a checkpoint and its atlas as an ONNX model directory (opset 20, card.json, atlas sha256)."""

    def go() -> None:
        from model_export.export import ExportError, export_model
        from training.calibration import read_thresholds

        calibration = _read_thresholds_file(read_thresholds, thresholds) if thresholds is not None else None
        try:
            card = export_model(
                checkpoint,
                atlas,
                out,
                name,
                version,
                not by_reference,
                log=typer.echo,
                source_label=source,
                calibration=calibration,
            )
        except ExportError as exc:
            _fail(exc)
        if card.get("mask_thresholds"):
            moved = {k: v for k, v in card["mask_thresholds"].items() if v != 0.5}
            typer.echo(f"mask thresholds: {len(moved)} of {len(card['oars'])} OARs away from 0.5 ({thresholds})")
        ranked_by = card["validation"].get("ranked_by", "cascade")
        best = (card["validation"].get("best") or {}).get(ranked_by, {}).get("mean")
        grid = " at 128^3" if ranked_by == "fine" else ""
        typer.echo(
            f"{card['name']} {card['version']}: {len(card['oars'])} OARs, atlas {card['atlas']['case_id']} "
            f"({card['atlas']['sha256'][:12]}...), step {card['checkpoint']['step']}"
            + (f", best validation Dice{grid} {best:.3f}" if best is not None else "")
        )

    _inference_run(go)


def _read_thresholds_file(read, path: Path) -> dict:
    try:
        return read(path)
    except (OSError, ValueError) as exc:
        _fail(_CliError("USAGE", f"--thresholds {path}: {exc}"))


def _shared_data() -> Path:
    return Path(os.environ.get("OARMORPH_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


@app.command("export-parity")
def export_parity_command(
    model_dir: Annotated[Path, typer.Argument(help="An exported model directory (model.onnx and checkpoint.pt).")],
    cohort: Annotated[
        Path | None, typer.Option("--cohort", help="Real patients (default: OpenKBP validation in ../shared/data).")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=0, help="Real patients to compare.")] = 5,
    phantoms: Annotated[int, typer.Option("--phantoms", min=0, help="Phantom patients to compare.")] = 3,
    threads: ThreadsOpt = 2,
    out: Annotated[Path | None, typer.Option("--out", help="Write every number to this JSON file.")] = None,
) -> None:
    """ONNX Runtime (CPU) against PyTorch: max displacement difference <= 0.01 voxel, warped-OAR Dice >= 0.999."""

    def go() -> None:
        from model_export.parity import cohort_cases, phantom_cases, run_parity

        folder = cohort or _shared_data() / "openkbp" / "validation"
        cases = []
        if limit and folder.is_dir():
            cases += cohort_cases(folder, limit)
        elif limit:
            typer.echo(f"note: {folder} is absent: real patients skipped")
        cases += phantom_cases(phantoms)
        result = run_parity(model_dir, cases, threads, log=typer.echo)
        if out:
            out.write_text(json.dumps(result, indent=2))
        verdict = "passed" if result["passed"] else "FAILED"
        typer.echo(
            f"{verdict}: {len(result['cases'])} patients, max displacement difference "
            f"{result['max_displacement_diff']:.2e} voxel (affine {result['max_affine_displacement_diff']:.2e}; "
            f"bar 0.01), min Dice {result['min_dice']:.5f} (bar 0.999)"
        )
        if not result["passed"]:
            raise typer.Exit(1)

    _inference_run(go)


@app.command("bench-runtime")
def bench_runtime_command(
    model_dir: Annotated[Path, typer.Argument(help="An exported model directory.")],
    threads: Annotated[int, typer.Option("--threads", min=1, help="CPU threads for both runtimes.")] = 2,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Timed runs per runtime (median).")] = 5,
) -> None:
    """Seconds per 128^3 case: ONNX Runtime vs PyTorch eager on the CPU, and on a GPU when present."""
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_runtime.py"
    if not script.is_file():
        typer.secho(f"error [NOT_FOUND]: {script} is absent (a source checkout has it)", err=True)
        raise typer.Exit(2)
    spec = importlib.util.spec_from_file_location("oarmorph_bench_runtime", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    _inference_run(lambda: module.run_benchmark(model_dir, threads, repeats, log=typer.echo))


bench_app = typer.Typer(help="Benchmarks of a source checkout (benchmarks/).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("registration")
def bench_registration_command(
    quick: Annotated[bool, typer.Option("--quick", help="2 OpenKBP validation + 1 small phantom patient.")] = False,
    threads: Annotated[int, typer.Option("--threads", min=1, help="Threads for every method.")] = 2,
    cohort: Annotated[
        list[str] | None, typer.Option("--cohort", help="openkbp and/or phantom (repeat; default both).")
    ] = None,
    methods: Annotated[
        str | None,
        typer.Option("--methods", help="Comma-separated: oarmorph,oarmorph-gpu,affine,ants,elastix,simpleitk,none."),
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="At most N patients per cohort.")] = None,
    method_limit: Annotated[
        list[str] | None,
        typer.Option(
            "--method-limit",
            help="METHOD=N: that method on the first N patients of each cohort only (repeat; e.g. elastix=10).",
        ),
    ] = None,
    openkbp: Annotated[Path | None, typer.Option("--openkbp", help="OpenKBP validation folder.")] = None,
    phantom_cohort: Annotated[
        Path | None, typer.Option("--phantom-cohort", help="A phantom cohort folder (its test split).")
    ] = None,
    phantom_size: Annotated[str, typer.Option("--phantom-size", help="small or full phantom patients.")] = "small",
    out: Annotated[Path | None, typer.Option("--out", help="The document (default docs/benchmarks.md).")] = None,
    plots_dir: Annotated[Path | None, typer.Option("--plots-dir", help="Plots and JSON (docs/benchmarks).")] = None,
    from_json: Annotated[
        Path | None, typer.Option("--from-json", help="Only redo the document from these results.")
    ] = None,
    note: Annotated[str, typer.Option("--note", help="A line for the document (e.g. the machine's load).")] = "",
) -> None:
    """oarmorph against ANTs SyN, elastix, SimpleITK, its affine stage and no registration: Dice, HD95, folding,
    seconds per case; writes docs/benchmarks.md and its plots (antspyx and itk-elastix: the bench extra)."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "benchmarks" / "registration" / "command.py").is_file():
        typer.secho(f"error [NOT_FOUND]: {root / 'benchmarks'} is absent (a source checkout has it)", err=True)
        raise typer.Exit(2)
    if phantom_size not in ("small", "full"):
        raise typer.BadParameter("--phantom-size must be small or full")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from benchmarks.registration import command

    plots = plots_dir or command.DEFAULT_PLOTS
    try:
        method_limits = command.parse_method_limits(method_limit or [])
        results = command.bench_registration(
            quick=quick,
            threads=threads,
            cohorts=cohort or command.COHORTS,
            methods=methods.split(",") if methods else None,
            limit=limit,
            method_limits=method_limits,
            openkbp_dir=openkbp,
            phantom_dir=phantom_cohort,
            phantom_size=phantom_size,
            markdown=out or command.DEFAULT_MARKDOWN,
            plots_dir=plots,
            json_path=plots / "registration.json",
            from_json=from_json,
            note=note,
            log=typer.echo,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    for line in command.summary_lines(results):
        typer.echo(line)


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


if __name__ == "__main__":  # ``torchrun --nproc_per_node=N -m oarmorph.cli train CONFIG``
    entrypoint()
