"""``make demo``: the imaging chain on one CT, end to end, with pictures.

Until a trained model ships (training issue), the demo shows the chain every model result goes through:
DICOM CT -> canonical 128^3 input -> the exact way back to the patient grid -> RTSTRUCT -> checked by an
independent validator and read back. The structures are derived from the CT itself (External, Bones), so
the read-back can be compared with what was written.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import typer

SHARED_SCANNER_SERIES = Path(__file__).resolve().parents[2] / "shared" / "data" / "dicom" / "pycerr_head_neck_ct"


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def _choose_ct(out: Path, ct: Path | None) -> tuple[Path, str]:
    if ct is not None:
        return ct, f"your CT {ct}"
    if SHARED_SCANNER_SERIES.is_dir():
        return SHARED_SCANNER_SERIES, "the real Picker PQ2000 head-and-neck series in ../shared/data"
    from imaging.ct_writer import CtSeriesInfo, write_ct_series
    from phantom.analytic import body_volume, patient_grid

    folder = out / "synthetic_ct"
    shutil.rmtree(folder, ignore_errors=True)
    volume = body_volume(patient_grid(spacing=(1.0, 1.0, 2.5)))
    write_ct_series(volume, folder, CtSeriesInfo(uid_seed="oarmorph-demo"))
    return folder, "a synthetic analytic head-and-neck CT (../shared/data is absent)"


def _dciodvfy(path: Path) -> str:
    exe = shutil.which("dciodvfy")
    if exe is None:
        return "dciodvfy not installed (apt-get install dicom3tools)"
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, check=False)
    lines = (proc.stdout + proc.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    return f"{len(errors)} errors, {len(warnings)} warnings"


def run_demo(out: Path, ct: Path | None = None) -> dict:
    from imaging.body import body_mask
    from imaging.canonical import to_canonical
    from imaging.dicom_ct import read_ct_series
    from imaging.io import write_volume
    from imaging.preview import save_orthogonal_png
    from imaging.rtstruct import CtReference, RoiSpec, read_rtstruct, write_rtstruct
    from imaging.volume import Volume
    from imaging.warp import warp_masks_to_patient

    out.mkdir(parents=True, exist_ok=True)
    source, label = _choose_ct(out, ct)
    typer.echo(f"CT: {label}")
    timings: dict[str, float] = {}

    t = time.perf_counter()
    volume = read_ct_series(source)
    timings["read_dicom_s"] = time.perf_counter() - t
    g = volume.geometry
    typer.echo(f"  {g.shape[0]} slices of {g.shape[1]}x{g.shape[2]}, voxel {tuple(round(s, 3) for s in g.spacing)} mm")

    t = time.perf_counter()
    can = to_canonical(volume)
    timings["canonical_s"] = time.perf_counter() - t
    write_volume(Volume(can.image, can.frame.geometry), out / "canonical.nii.gz")
    save_orthogonal_png(
        can.image,
        out / "canonical.png",
        geometry=can.frame.geometry,
        window=(0, 1),
        title="canonical input: 128^3, [-170, 230] HU -> [0, 1]",
    )
    typer.echo(
        f"  canonical window: vertex at z={can.frame.vertex_z_mm:.1f} mm, top cut: {can.frame.top_cut}, "
        f"scan shorter than window: {can.frame.scan_shorter_than_window}"
    )

    external = body_mask(volume.array, fill_holes=True)
    bones = (volume.array > 250) & external
    structures = {"External": external.astype(np.uint8), "Bones": bones.astype(np.uint8)}

    # The way back every model result takes (here with a zero field): it must return the masks unchanged.
    t = time.perf_counter()
    zero = np.zeros((3, *can.frame.geometry.shape), np.float32)
    warped = warp_masks_to_patient(
        {n: (m, g) for n, m in structures.items()}, can.frame.geometry, can.frame.geometry, zero, g
    )
    timings["warp_back_s"] = time.perf_counter() - t

    specs = {
        RoiSpec("External", (0, 255, 0), "EXTERNAL", "patient outline"): warped["External"].full(),
        RoiSpec("Bones", (255, 250, 205), "ORGAN", "CT > 250 HU inside the body"): warped["Bones"].full(),
    }
    t = time.perf_counter()
    rs_path = out / "rtstruct.dcm"
    write_rtstruct(CtReference.from_volume(volume), specs, rs_path, series_description="oarmorph demo (imaging chain)")
    timings["write_rtstruct_s"] = time.perf_counter() - t
    validation = _dciodvfy(rs_path)

    back = read_rtstruct(rs_path, CtReference.from_volume(volume))
    dice = {name: round(_dice(back.rois[name].mask, structures[name]), 4) for name in structures}

    mid = np.array([int(np.median(ix)) for ix in np.nonzero(external)]) if external.any() else None
    save_orthogonal_png(
        volume.array,
        out / "patient_contours.png",
        geometry=g,
        window=(-400, 600),
        masks={n: (structures[n], s.color) for n, s in zip(structures, specs, strict=True)},
        centre_kji=mid,
        flip_k=g.direction_matrix[2, 2] > 0,
        title="RTSTRUCT contours read back on the patient CT",
    )
    summary = {
        "ct": label,
        "rtstruct": str(rs_path),
        "dciodvfy": validation,
        "read_back_dice": dice,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "pictures": [str(out / "canonical.png"), str(out / "patient_contours.png")],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    typer.echo(json.dumps(summary, indent=2))
    return summary
