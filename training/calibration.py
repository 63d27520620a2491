"""Per-OAR mask thresholds: where a model's warped soft atlas mask becomes the contour, chosen on patients.

A warped atlas OAR is a soft mask (the atlas mask sampled trilinearly through the field); the contour is where it
reaches a level, 0.5 by default (``imaging.warp.MASK_THRESHOLD``). A learned field that systematically squeezes
an OAR it cannot see well leaves a contour that is too small: the phantom model 0.9.0's lenses came out at 68-78 %
of their true volume on 10 validation patients, its large OARs at 95-105 %. Lowering the level for such an OAR
gives back part of what the field took; it cannot move a contour the field put in the wrong place.

``calibrate_thresholds`` registers every patient of a calibration cohort once, warps the atlas once (soft), cuts the
contour at each level of a grid and keeps, per OAR, the level with the highest mean Dice over the patients that have
the OAR (ties and OARs no patient has: the default). The cohort must be neither a training nor a test cohort of the
model: the levels are fitted on it. The result is a JSON file that ``oarmorph export --thresholds`` writes into the
model card, checked against the exported weights' sha256, so the levels travel with the model they were fitted for;
the service and ``oarmorph segment`` apply them (``pipeline.segment.segment_ct``). Torch-free: any ``Register`` will
do.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from imaging.warp import MASK_THRESHOLD, check_levels, warp_masks_to_patient
from pipeline.segment import segment_ct

from .cohort import CohortCase
from .evaluate import Method, compare

FORMAT = "oarmorph-mask-thresholds/1"
DEFAULT_GRID = (0.5, 0.45, 0.4, 0.35, 0.3, 0.25)


def dice_per_level(
    method: Method, cases: Sequence[CohortCase], grid: Sequence[float], log: Callable[[str], None] = print
) -> dict[str, dict[float, list[float]]]:
    """``oar -> level -> [Dice on each patient that has the OAR]``: one registration and one soft warp per patient,
    each level's contour cut from the soft values exactly as the warp at that level keeps them."""
    out: dict[str, dict[float, list[float]]] = {}
    for n, case in enumerate(cases):
        t0 = time.perf_counter()
        ct = case.read_ct()
        truth = case.read_masks(ct)
        result = segment_ct(ct, method.atlas, method.register, method.align_windows)
        soft = warp_masks_to_patient(
            method.atlas.masks,
            method.atlas.frame.geometry,
            result.frame.geometry,
            result.displacement,
            ct.geometry,
            threshold=None,
        )
        for name, mask in soft.items():
            if name not in truth:
                continue
            for level in grid:
                d = compare(mask.at_level(level), truth[name], ct.geometry, with_hd95=False)["dice"]
                out.setdefault(name, {}).setdefault(level, []).append(d)
        log(f"{n + 1}/{len(cases)} {case.case_id}: {len(grid)} levels, {time.perf_counter() - t0:.1f} s")
    return out


def choose_levels(dices: Mapping[str, Mapping[float, Sequence[float]]], oars: Sequence[str]) -> dict[str, float]:
    """Per OAR the level of the highest mean Dice; on a tie the one nearest the default; the default without data."""
    chosen = {}
    for name in oars:
        by_level = dices.get(name) or {}
        if not by_level:
            chosen[name] = MASK_THRESHOLD
            continue
        means = {level: float(np.mean(v)) for level, v in by_level.items()}
        best = max(means.values())
        chosen[name] = min(
            (level for level, m in means.items() if m >= best - 1e-12), key=lambda lv: abs(lv - MASK_THRESHOLD)
        )
    return chosen


def calibrate_thresholds(
    method: Method,
    cases: Sequence[CohortCase],
    grid: Sequence[float] = DEFAULT_GRID,
    log: Callable[[str], None] = print,
) -> dict:
    """The calibration document: the chosen level per atlas OAR, and the Dice per level it was chosen on."""
    grid = sorted({float(level) for level in (*grid, MASK_THRESHOLD)}, reverse=True)
    if not all(0.0 < level <= 1.0 for level in grid):
        raise ValueError(f"levels must lie in (0, 1], got {grid}")
    if not cases:
        raise ValueError("no calibration patients")
    dices = dice_per_level(method, cases, grid, log)
    oars = list(method.atlas.oars)
    chosen = choose_levels(dices, oars)
    scored = [o for o in oars if o in dices]

    def mean_over_oars(levels: Mapping[str, float]) -> float:
        return float(np.mean([np.mean(dices[o][levels[o]]) for o in scored])) if scored else float("nan")

    return {
        "format": FORMAT,
        "thresholds": chosen,
        "grid": grid,
        "cases": [c.case_id for c in cases],
        "mean_dice": {
            "default": mean_over_oars(dict.fromkeys(oars, MASK_THRESHOLD)),
            "calibrated": mean_over_oars(chosen),
        },
        "dice_per_level": {
            o: {f"{level:g}": float(np.mean(v)) for level, v in sorted(dices[o].items(), reverse=True)} for o in scored
        },
        "patients_per_oar": {o: len(dices[o][MASK_THRESHOLD]) for o in scored},
    }


def read_thresholds(path: str | Path) -> dict:
    """A calibration document, checked: its format, and every level in (0, 1]."""
    doc = json.loads(Path(path).read_text())
    if doc.get("format") != FORMAT:
        raise ValueError(f"{path} is not a mask-threshold calibration ({FORMAT})")
    try:
        check_levels(doc.get("thresholds"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    return doc
