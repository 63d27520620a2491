"""``oarmorph export-parity``: an exported model under ONNX Runtime (CPU) against the same weights in PyTorch.

Per patient, both runtimes get the very same canonical image (one ``to_canonical``, window aligned onto the
atlas when the model was trained so); their composed and affine fields are compared voxel by voxel (maximum
absolute difference, canonical voxels), and each field carries the atlas OARs onto the patient's own grid
through ``pipeline.segment.warp_atlas``, where the two contours of every OAR are compared by Dice.
The bar: <= 0.01 voxel and Dice >= 0.999 per OAR. Imports torch (the reference), unlike the runtime.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from imaging.canonical import to_canonical
from imaging.metrics import dice
from imaging.volume import Volume
from imaging.warp import WarpedMask
from pipeline.segment import align_window, warp_atlas
from training.inference import TorchRegister, load_inference_cascade

from .bundle import load_model_dir
from .card import CHECKPOINT_NAME

MAX_DISPLACEMENT_DIFF = 0.01  # canonical voxels
MIN_DICE = 0.999


def mask_dice(a: WarpedMask, b: WarpedMask) -> float:
    """Dice of two OAR contours on the same patient grid, inside the union of their boxes (1.0 when both empty)."""
    if a.empty and b.empty:
        return 1.0
    lo = np.minimum(a.box_start, b.box_start)
    hi = np.maximum(np.add(a.box_start, a.array.shape), np.add(b.box_start, b.array.shape))
    planes = []
    for m in (a, b):
        out = np.zeros(hi - lo, bool)
        start = np.subtract(m.box_start, lo)
        out[tuple(slice(int(s), int(s + n)) for s, n in zip(start, m.array.shape, strict=True))] = m.array > 0
        planes.append(out)
    return dice(*planes)


def parity_case(
    case_id: str,
    ct: Volume,
    atlas,
    reference: Callable,
    candidate: Callable,
    align_windows: bool,
) -> dict:
    if align_windows:
        image, frame, _ = align_window(ct, atlas)
    else:
        can = to_canonical(ct)
        image, frame = can.image, can.frame
    t0 = time.perf_counter()
    ref_field, ref_affine = reference(image)
    t1 = time.perf_counter()
    field, affine = candidate(image)
    t2 = time.perf_counter()
    ref_masks = warp_atlas(atlas, frame, ref_field, ct.geometry)
    masks = warp_atlas(atlas, frame, field, ct.geometry)
    dices = {name: mask_dice(masks[name], ref_masks[name]) for name in ref_masks}
    diff = float(np.abs(field - ref_field).max())
    diff_affine = float(np.abs(affine - ref_affine).max())
    worst = min(dices.values()) if dices else 1.0
    return {
        "case": case_id,
        "max_displacement_diff": diff,
        "max_affine_displacement_diff": diff_affine,
        "max_displacement": float(np.abs(ref_field).max()),
        "dice": dices,
        "min_dice": worst,
        "seconds_torch": t1 - t0,
        "seconds_onnx": t2 - t1,
        "passed": max(diff, diff_affine) <= MAX_DISPLACEMENT_DIFF and worst >= MIN_DICE,
    }


def run_parity(
    model_dir: str | Path,
    cases: Iterable[tuple[str, Callable[[], Volume]]],
    threads: int | None = 2,
    log: Callable[[str], None] = print,
) -> dict:
    """ONNX Runtime (CPU) against PyTorch on ``cases`` (id, a function reading the CT); every number per case."""
    loaded = load_model_dir(model_dir, threads=threads, device="cpu")
    model, _, _ = load_inference_cascade(Path(model_dir) / CHECKPOINT_NAME, atlas_image=loaded.atlas.image)
    reference = TorchRegister(model, threads)
    rows = []
    for case_id, read in cases:
        row = parity_case(case_id, read(), loaded.atlas, reference, loaded.register, loaded.align_windows)
        rows.append(row)
        log(
            f"{case_id:<16} max |u_onnx - u_torch| {row['max_displacement_diff']:.2e} vox "
            f"(affine {row['max_affine_displacement_diff']:.2e}; |u| up to {row['max_displacement']:.1f}), "
            f"min Dice {row['min_dice']:.5f} ({min(row['dice'], key=row['dice'].get) if row['dice'] else '-'})"
            f"{'' if row['passed'] else '  FAILED'}"
        )
    return {
        "model": loaded.card["name"],
        "version": loaded.card["version"],
        "bar": {"max_displacement_diff": MAX_DISPLACEMENT_DIFF, "min_dice": MIN_DICE},
        "cases": rows,
        "max_displacement_diff": max((r["max_displacement_diff"] for r in rows), default=0.0),
        "max_affine_displacement_diff": max((r["max_affine_displacement_diff"] for r in rows), default=0.0),
        "min_dice": min((r["min_dice"] for r in rows), default=1.0),
        "passed": all(r["passed"] for r in rows),
    }


def cohort_cases(folder: str | Path, limit: int) -> list[tuple[str, Callable[[], Volume]]]:
    """The first ``limit`` patients of a cohort folder (one folder per patient)."""
    from training.cohort import read_cohort

    return [(case.case_id, case.read_ct) for case in read_cohort(folder)[:limit]]


def phantom_cases(n: int, seed: int = 11, size: str = "small") -> list[tuple[str, Callable[[], Volume]]]:
    """``n`` phantom patients, rendered in memory when read (same seed, same patients)."""
    from phantom.cohort import case_id, generate_patient

    return [(f"phantom {case_id(seed, i)}", lambda i=i: generate_patient(i, seed, size).ct) for i in range(n)]
