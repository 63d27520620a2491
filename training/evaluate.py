"""``oarmorph evaluate``: models against a cohort's own masks, through the very pipeline the service runs.

Every patient goes through ``pipeline.segment_ct`` (THE preprocessing, window alignment as the model was
trained, the inference cascade, the warp back onto the patient's own grid), and the contours are compared with
the patient's masks on that grid: per-OAR Dice, HD95 in mm (the patient's spacing), the share of field voxels
with a non-positive Jacobian determinant, and seconds per case. The affine stage of the same run (its field,
warped by the same code) is reported as a method of its own, as the cascade's baseline.

Outputs, laid out after the reference paper: ``table1.md`` (rows: methods; columns: OARs; Dice mean ± sd,
then HD95 and Jacobian columns), ``results.json`` (every per-case number) and ``boxplot.png`` (Fig. 3: Dice per
OAR, one box per method).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anatomy.catalogue import PAPER_EVALUATED
from imaging.metrics import dice, folded_fraction, hausdorff95
from imaging.volume import Geometry
from imaging.warp import WarpedMask
from pipeline.atlas import SegmentationAtlas
from pipeline.segment import Register, segment_ct, warp_atlas

from .cohort import CohortCase

PAPER_ORDER = ("Bone_Mandible", "OpticNrv_L", "OpticNrv_R", "Parotid_L", "Parotid_R", "SpinalCord")


@dataclass
class Method:
    """A model to evaluate: its registration, how it was trained to see windows, and its atlas."""

    name: str
    register: Register
    align_windows: bool
    atlas: SegmentationAtlas
    description: str = "semi-supervised registration"
    # the model's calibrated mask level per OAR (training.calibration), as the service applies them; None: 0.5.
    # The affine stage of the same run stays at 0.5: the levels were fitted to the whole cascade's field.
    thresholds: Mapping[str, float] | None = None


def _bounds(mask: np.ndarray, offset: Sequence[int] = (0, 0, 0)) -> tuple[np.ndarray, np.ndarray] | None:
    nz = [np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))[0] for axis in range(3)]
    if any(v.size == 0 for v in nz):
        return None
    lo = np.array([v[0] for v in nz]) + np.asarray(offset)
    hi = np.array([v[-1] + 1 for v in nz]) + np.asarray(offset)
    return lo, hi


def compare(warped: WarpedMask, truth: np.ndarray, patient: Geometry, with_hd95: bool = True) -> dict:
    """Dice and HD95 (mm) of a contour against the patient's mask, inside the union of their boxes (exact, fast);
    ``with_hd95=False``: Dice alone (the surface distances cost most of the time)."""
    boxes = [b for b in (_bounds(warped.array, warped.box_start), _bounds(truth)) if b is not None]
    out = {"volume_cc": warped.volume_cc, "truth_volume_cc": float(truth.sum()) * patient.voxel_volume_mm3 / 1000}
    if not boxes:
        return {**out, "dice": 1.0, "hd95_mm": 0.0}
    grid = np.array(truth.shape)
    lo = np.clip(np.min([b[0] for b in boxes], axis=0) - 2, 0, grid)
    hi = np.clip(np.max([b[1] for b in boxes], axis=0) + 2, 0, grid)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    predicted = np.zeros(hi - lo, bool)
    if not warped.empty:  # the part of the contour's own box inside the comparison box
        start = np.asarray(warped.box_start)
        w_lo, w_hi = np.maximum(start, lo), np.minimum(start + warped.array.shape, hi)
        if (w_hi > w_lo).all():
            src = tuple(slice(int(a - s), int(b - s)) for a, b, s in zip(w_lo, w_hi, start, strict=True))
            dst = tuple(slice(int(a - o), int(b - o)) for a, b, o in zip(w_lo, w_hi, lo, strict=True))
            predicted[dst] = warped.array[src] > 0
    a, b = predicted, np.asarray(truth[box], bool)
    if not with_hd95:
        return {**out, "dice": dice(a, b)}
    return {**out, "dice": dice(a, b), "hd95_mm": hausdorff95(a, b, patient.spacing[::-1])}


def _record(method: str, case_id: str, masks: dict, truth: dict, patient: Geometry, folded: float, seconds: float):
    return {
        "method": method,
        "case": case_id,
        "seconds": seconds,
        "nonpositive_jacobian_percent": 100.0 * folded,
        "oars": {name: compare(masks[name], truth[name], patient) for name in masks if name in truth},
    }


def evaluate_cases(
    methods: Sequence[Method], cases: Sequence[CohortCase], log: Callable[[str], None] = print
) -> list[dict]:
    """Per-case records for every method and its affine stage (each CT is read once)."""
    records = []
    for n, case in enumerate(cases):
        ct = case.read_ct()
        truth = case.read_masks(ct)
        for method in methods:
            result = segment_ct(ct, method.atlas, method.register, method.align_windows, thresholds=method.thresholds)
            t0 = time.perf_counter()
            affine_masks = warp_atlas(method.atlas, result.frame, result.affine_field, ct.geometry)
            affine_warp = time.perf_counter() - t0
            seconds = result.seconds
            total = sum(seconds.values())
            affine_total = seconds["preprocessing"] + seconds["registration"] + affine_warp
            affine_folded = folded_fraction(result.affine_field)
            rec = _record(method.name, case.case_id, result.masks, truth, ct.geometry, result.folded_fraction, total)
            rec["window_shift"] = list(result.window_shift)
            rec["stage_seconds"] = seconds
            aff = _record(
                affine_name(method.name), case.case_id, affine_masks, truth, ct.geometry, affine_folded, affine_total
            )
            records += [rec, aff]
            dices = [v["dice"] for v in rec["oars"].values()]
            log(
                f"{n + 1}/{len(cases)} {case.case_id} {method.name}: mean Dice {np.mean(dices):.3f} "
                f"(affine {np.mean([v['dice'] for v in aff['oars'].values()]):.3f}), {total:.1f} s"
            )
    return records


def affine_name(method: str) -> str:
    return f"{method}, affine stage"


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray(values, float)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def summarise(records: list[dict], oars: Sequence[str]) -> dict:
    """Per method: Dice per OAR (mean, sd, n), mean Dice, HD95 (finite ones) and Jacobian, seconds per case."""
    out: dict[str, dict] = {}
    for method in dict.fromkeys(r["method"] for r in records):
        mine = [r for r in records if r["method"] == method]
        per_oar, hd_all = {}, []
        for oar in oars:
            values = [r["oars"][oar] for r in mine if oar in r["oars"]]
            if not values:
                continue
            d_mean, d_sd = _mean_sd([v["dice"] for v in values])
            hds = [v["hd95_mm"] for v in values if math.isfinite(v["hd95_mm"])]
            hd_all += hds
            per_oar[oar] = {
                "dice_mean": d_mean,
                "dice_sd": d_sd,
                "n": len(values),
                "hd95_mm_mean": _mean_sd(hds)[0] if hds else None,
                "hd95_mm_sd": _mean_sd(hds)[1] if hds else None,
                "empty_contours": len(values) - len(hds),
            }
        jac = _mean_sd([r["nonpositive_jacobian_percent"] for r in mine])
        sec = _mean_sd([r["seconds"] for r in mine])
        out[method] = {
            "per_oar": per_oar,
            "mean_dice": float(np.mean([v["dice_mean"] for v in per_oar.values()])) if per_oar else None,
            "hd95_mm_mean": _mean_sd(hd_all)[0] if hd_all else None,
            "hd95_mm_sd": _mean_sd(hd_all)[1] if hd_all else None,
            "nonpositive_jacobian_percent_mean": jac[0],
            "nonpositive_jacobian_percent_sd": jac[1],
            "seconds_mean": sec[0],
            "cases": len(mine),
        }
    return out


def table_oars(atlas_oars: Sequence[str], records: list[dict]) -> list[str]:
    """The OARs the atlas carries and some patient has: the paper's columns first, in its order, then the rest."""
    present = {o for r in records for o in r["oars"]}
    first = [o for o in PAPER_ORDER if o in present and o in atlas_oars]
    rest = [o for o in PAPER_EVALUATED if o in present and o in atlas_oars and o not in first]
    return first + rest + [o for o in atlas_oars if o in present and o not in first + rest]


def _pm(mean: float | None, sd: float | None, digits: int = 3) -> str:
    return "n/a" if mean is None else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def table1_markdown(summary: dict, oars: Sequence[str], descriptions: dict[str, str], title: str) -> str:
    head = ["Method", "Method type", *oars, "Mean Dice", "HD95 (mm)", "\\|J\\| ≤ 0 (%)", "s / case"]
    lines = [
        f"# {title}",
        "",
        "Dice per OAR on each patient's own grid (mean ± sd over the patients that have the OAR); HD95: the 95th",
        "percentile of the symmetric surface distances in mm, mean ± sd over every (patient, OAR) with a contour;",
        "|J| ≤ 0: percentage of canonical field voxels with a non-positive Jacobian determinant; seconds per case",
        "through the whole pipeline (the affine stage: preprocessing, the same registration run, its own warp).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for method, s in summary.items():
        cells = [method, descriptions.get(method, "")]
        for oar in oars:
            v = s["per_oar"].get(oar)
            text = _pm(v["dice_mean"], v["dice_sd"]) if v else ""
            if v and v["n"] < s["cases"]:  # not every patient has this OAR
                text += f" (n={v['n']})"
            cells.append(text)
        cells += [
            "n/a" if s["mean_dice"] is None else f"{s['mean_dice']:.3f}",
            _pm(s["hd95_mm_mean"], s["hd95_mm_sd"], 1),
            _pm(s["nonpositive_jacobian_percent_mean"], s["nonpositive_jacobian_percent_sd"], 3),
            f"{s['seconds_mean']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "HD95 per OAR (mm, mean ± sd; empty contours are left out and counted)", ""]
    lines += ["| Method | " + " | ".join(oars) + " |", "|" + "---|" * (len(oars) + 1)]
    for method, s in summary.items():
        cells = [method]
        for oar in oars:
            v = s["per_oar"].get(oar)
            text = _pm(v["hd95_mm_mean"], v["hd95_mm_sd"], 1) if v else ""
            if v and v["empty_contours"]:
                text += f" ({v['empty_contours']} empty)"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def boxplot(records: list[dict], oars: Sequence[str], path: Path, title: str) -> None:
    """Fig. 3 of the paper: Dice per OAR, one box per method side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in records))
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(oars) * max(1, len(methods)) / 2 + 2), 4.5))
    colours = plt.get_cmap("tab10")
    for m, method in enumerate(methods):
        data = [[r["oars"][o]["dice"] for r in records if r["method"] == method and o in r["oars"]] for o in oars]
        positions = [n + (m - (len(methods) - 1) / 2) * width for n in range(len(oars))]
        keep = [(p, d) for p, d in zip(positions, data, strict=True) if d]
        if not keep:
            continue
        parts = ax.boxplot(
            [d for _, d in keep],
            positions=[p for p, _ in keep],
            widths=width * 0.9,
            patch_artist=True,
            medianprops={"color": "black"},
        )
        for box in parts["boxes"]:
            box.set_facecolor(colours(m % 10))
            box.set_alpha(0.75)
        ax.plot([], [], "s", color=colours(m % 10), label=method)
    ax.set_xticks(range(len(oars)))
    ax.set_xticklabels(oars, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def evaluate(
    methods: Sequence[Method],
    cases: Sequence[CohortCase],
    out_dir: str | Path,
    title: str = "Evaluation",
    log: Callable[[str], None] = print,
) -> dict:
    """Run, summarise and write ``table1.md``, ``results.json`` and ``boxplot.png`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = evaluate_cases(methods, cases, log)
    atlas_oars = list(dict.fromkeys(o for m in methods for o in m.atlas.oars))
    oars = table_oars(atlas_oars, records)
    summary = summarise(records, oars)
    descriptions = {}
    for m in methods:
        descriptions[m.name] = m.description
        descriptions[affine_name(m.name)] = "affine stage of the same run"
    (out / "table1.md").write_text(table1_markdown(summary, oars, descriptions, title))
    result = {
        "title": title,
        "cases": [c.case_id for c in cases],
        "oars": oars,
        "methods": {
            m.name: {
                "description": m.description,
                "atlas": m.atlas.name,
                "atlas_sha256": m.atlas.sha256,
                "align_windows": m.align_windows,
            }
            for m in methods
        },
        "summary": summary,
        "records": records,
    }
    (out / "results.json").write_text(json.dumps(_finite(result), indent=2))
    boxplot(records, oars, out / "boxplot.png", title)
    return result


def _finite(value):
    """JSON has no infinity: an HD95 of an empty contour is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
