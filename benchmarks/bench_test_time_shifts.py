"""What test-time augmentation by moving the patient's canonical window would buy: Dice of 1, 5, 9 and 13 fused runs.

The model sees the patient's canonical window block-averaged to its training grid (64^3 for the CPU models), so
moving the window by one or two canonical voxels (``imaging.canonical.CanonicalSampler.shifted``, the move of the
window alignment itself) gives it a genuinely different input of the same anatomy. Each run's atlas OARs are
warped onto the patient's own grid as soft masks (``warp_masks_to_patient(..., threshold=None)``), the soft masks
of the first N runs averaged there and cut at 0.5, and scored with ``training.evaluate.compare``. Nothing here is
in the product: it measures whether it should be (README, "Where the models stand").

Run: ``python benchmarks/bench_test_time_shifts.py --checkpoint models/phantom_proposed_cpu/checkpoint.pt
--atlas-bundle bundles/phantom --cohort /work/data/phantom_s26`` (the training extra: PyTorch).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from imaging.canonical import CanonicalSampler, known_mask, window_shift
from imaging.warp import MASK_THRESHOLD, WarpedMask, warp_masks_to_patient
from pipeline.atlas import load_atlas
from training.cohort import read_cohort
from training.evaluate import compare
from training.inference import TorchRegister, load_inference_cascade

# (dk, dj) canonical voxels added to the window alignment's own shift; the first is the plain inference
OFFSETS = (
    (0, 0),
    (1, 0),
    (-1, 0),
    (0, 1),
    (0, -1),
    (1, 1),
    (-1, -1),
    (1, -1),
    (-1, 1),
    (2, 0),
    (-2, 0),
    (0, 2),
    (0, -2),
)
RUNS = (1, 5, 9, 13)


def fused(masks: list[WarpedMask]) -> WarpedMask:
    """The mean of soft masks on the patient grid, on the union of their boxes."""
    lo = np.min([m.box_start for m in masks], axis=0)
    hi = np.max([np.add(m.box_start, m.array.shape) for m in masks], axis=0)
    acc = np.zeros(tuple(hi - lo), np.float32)
    for m in masks:
        acc[tuple(slice(s - o, s - o + n) for s, o, n in zip(m.box_start, lo, m.array.shape, strict=True))] += m.array
    return replace(masks[0], box_start=tuple(int(v) for v in lo), array=acc / len(masks))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--atlas-bundle", type=Path, required=True)
    ap.add_argument("--cohort", type=Path, required=True)
    ap.add_argument("--split", default=None)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    atlas = load_atlas(args.atlas_bundle)
    model, cfg, _ = load_inference_cascade(args.checkpoint, atlas_image=atlas.image)
    register = TorchRegister(model, args.threads)
    cases = read_cohort(args.cohort, args.split)[: args.limit]
    dice: dict[int, dict[str, list[float]]] = {n: {} for n in RUNS}
    seconds: dict[int, list[float]] = {n: [] for n in RUNS}
    for number, case in enumerate(cases):
        ct = case.read_ct()
        truth = case.read_masks(ct)
        t0 = time.perf_counter()
        sampler = CanonicalSampler(ct)
        can = sampler.image()
        dk, dj = window_shift(can.image, known_mask(ct, can), atlas.window_reference) if cfg.align_windows else (0, 0)
        soft: dict[str, list[WarpedMask]] = {}
        elapsed = [time.perf_counter() - t0]
        for ok, oj in OFFSETS[: max(RUNS)]:
            t1 = time.perf_counter()
            moved = sampler.shifted(can, dk + ok, dj + oj) if (dk + ok, dj + oj) != (0, 0) else can
            field, _ = register(moved.image)
            warped = warp_masks_to_patient(
                atlas.masks, atlas.frame.geometry, moved.frame.geometry, field, ct.geometry, threshold=None
            )
            for name, mask in warped.items():
                if name in truth:
                    soft.setdefault(name, []).append(mask)
            elapsed.append(time.perf_counter() - t1)
        line = []
        for n in RUNS:
            scores = [
                compare(fused(ms[:n]).at_level(MASK_THRESHOLD), truth[o], ct.geometry, False) for o, ms in soft.items()
            ]
            for o, s in zip(soft, scores, strict=True):
                dice[n].setdefault(o, []).append(s["dice"])
            seconds[n].append(sum(elapsed[: n + 1]))
            line.append(f"{n} run(s) {np.mean([s['dice'] for s in scores]):.4f}")
        print(f"{number + 1}/{len(cases)} {case.case_id}: " + ", ".join(line), flush=True)
    print(f"{len(cases)} patients, {args.checkpoint}, mean Dice over the OARs (mean over patients per OAR first):")
    for n in RUNS:
        per_oar = {o: float(np.mean(v)) for o, v in dice[n].items()}
        print(
            f"  {n:2d} run(s): {np.mean(list(per_oar.values())):.4f}, {np.median(seconds[n]):.1f} s a case (median, "
            f"PyTorch CPU, warping included, reading the CT left out)"
        )
        print("     " + ", ".join(f"{o} {v:.3f}" for o, v in per_oar.items()))


if __name__ == "__main__":
    main()
