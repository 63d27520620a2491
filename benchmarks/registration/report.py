"""``docs/benchmarks.md`` and its plots from the benchmark's results (``run.run_benchmark``).

Per cohort: a summary table (mean Dice, HD95, folded voxels, median seconds per case and per registration, CPU
seconds per wall second of the registration, time ratios to oarmorph), the per-OAR tables of
``training.evaluate.table1_markdown`` (Dice mean ± sd, HD95), the targets of issue 7 against ANTs SyN with the
per-OAR gap, and two plots: Dice per OAR and method (boxes), and mean Dice against seconds per case (log x).
The raw numbers go beside it as JSON, from which ``write_report`` alone can redo the document.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from training.evaluate import _finite, table1_markdown

from . import methods as M

DICE_TARGET_METHOD = "ANTs SyN"
SPEED_TARGET = 50.0


def _fmt(value: float | None, digits: int = 3, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}{suffix}"


def _pm(mean: float | None, sd: float | None, digits: int) -> str:
    return "n/a" if mean is None else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _ratio(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.0f}x" if value >= 10 else f"{value:.2f}x"


def summary_table(cohort: dict) -> list[str]:
    head = [
        "Method",
        "Method type",
        "Patients",
        "Mean Dice",
        "HD95 (mm)",
        "\\|J\\| ≤ 0 (%)",
        "s / case (median)",
        "registration s (median)",
        "registration CPU s / wall s",
        "time / oarmorph, case",
        "time / oarmorph, registration",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in cohort["summary"].items():
        t = cohort["timing"][name]
        kind = cohort["methods"].get(name, {}).get("kind", "")
        cells = [
            name,
            kind,
            str(s["cases"]),
            _fmt(s["mean_dice"]),
            _pm(s["hd95_mm_mean"], s["hd95_mm_sd"], 1),
            _pm(s["nonpositive_jacobian_percent_mean"], s["nonpositive_jacobian_percent_sd"], 3),
            _fmt(t["median_seconds"], 1),
            _fmt(t["median_registration_seconds"], 2),
            _fmt(t["registration_cpu_per_wall"], 2),
            _ratio(t["ratio_to_oarmorph"]),
            _ratio(t["registration_ratio_to_oarmorph"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def targets(cohort: dict) -> list[str]:
    """Issue 7's targets: mean Dice at least ANTs SyN's, and at least 50 times faster per case on the CPU."""
    ours, ants = M.METHODS[M.REFERENCE].name, DICE_TARGET_METHOD
    s = cohort["summary"]
    if ours not in s or ants not in s:
        missing = [m for m in (ours, ants) if m not in s]
        return [f"Targets not assessed: {' and '.join(missing)} did not run on this cohort."]
    d_ours, d_ants = s[ours]["mean_dice"], s[ants]["mean_dice"]
    t = cohort["timing"]
    case_x = t[ants]["median_seconds"] / t[ours]["median_seconds"]
    reg_x = t[ants]["median_registration_seconds"] / t[ours]["median_registration_seconds"]
    dice_met = d_ours >= d_ants
    lines = [
        f"* Mean Dice: oarmorph {d_ours:.3f}, ANTs SyN {d_ants:.3f} ({d_ours - d_ants:+.3f}): target (at least "
        f"ANTs's) **{'met' if dice_met else 'NOT met'}**.",
        f"* Speed: ANTs SyN takes {case_x:.1f} times oarmorph's seconds per case (whole pipeline) and "
        f"{reg_x:.0f} times its registration time: target (at least {SPEED_TARGET:.0f} times faster per case on "
        f"the CPU) **{'met' if case_x >= SPEED_TARGET else 'NOT met'}** per case, "
        f"**{'met' if reg_x >= SPEED_TARGET else 'NOT met'}** for the registration alone.",
    ]
    per_ours, per_ants = s[ours]["per_oar"], s[ants]["per_oar"]
    gaps = [(o, per_ours[o]["dice_mean"] - per_ants[o]["dice_mean"]) for o in cohort["oars"] if o in per_ours]
    gaps = [(o, g) for o, g in gaps if o in per_ants]
    if gaps:
        lines += [
            "",
            "Per-OAR gap, oarmorph minus ANTs SyN (mean Dice):",
            "",
            "| " + " | ".join(o for o, _ in gaps) + " |",
            "|" + "---|" * len(gaps),
            "| " + " | ".join(f"{g:+.3f}" for _, g in gaps) + " |",
        ]
    return lines


def _colours(names: Sequence[str]) -> dict[str, object]:
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab10")
    order = [m.name for m in M.METHODS.values()]
    return {n: cmap((order.index(n) if n in order else len(order) + i) % 10) for i, n in enumerate(names)}


def dice_boxplot(cohort: dict, path: Path, title: str) -> None:
    """Dice per OAR (one panel each) and method (one box each)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records, oars = cohort["records"], cohort["oars"]
    names = list(dict.fromkeys(r["method"] for r in records))
    colours = _colours(names)
    cols = min(4, max(len(oars), 1))
    rows = max(1, math.ceil(len(oars) / cols))
    legend_rows = math.ceil(len(names) / 4)
    top_in, bottom_in = 0.45, 0.25 + 0.25 * legend_rows  # the title above, the legend below
    height = 2.4 * rows + top_in + bottom_in
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, height), squeeze=False, sharey=True)
    for n, ax in enumerate(axes.ravel()):
        if n >= len(oars):
            ax.axis("off")
            continue
        oar = oars[n]
        data = [[r["oars"][oar]["dice"] for r in records if r["method"] == m and oar in r["oars"]] for m in names]
        keep = [(i, d) for i, d in enumerate(data) if d]
        if keep:
            parts = ax.boxplot(
                [d for _, d in keep],
                positions=[i for i, _ in keep],
                widths=0.7,
                patch_artist=True,
                medianprops={"color": "black"},
            )
            for box, (i, _) in zip(parts["boxes"], keep, strict=True):
                box.set_facecolor(colours[names[i]])
                box.set_alpha(0.8)
        ax.set_title(oar, fontsize=9)
        ax.set_xticks([])
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("Dice")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[m], alpha=0.8) for m in names]
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 4), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, bottom_in / height, 1, 1 - top_in / height))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def dice_vs_time(cohort: dict, path: Path, title: str) -> None:
    """Mean Dice (over OARs) against seconds per case, log x: one point per patient, a large one per method
    at its median seconds and mean Dice (bars: sd over patients)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = cohort["records"]
    names = list(dict.fromkeys(r["method"] for r in records))
    colours = _colours(names)
    fig, ax = plt.subplots(figsize=(7.0, 4.6))
    for m in names:
        mine = [r for r in records if r["method"] == m and r["oars"]]
        if not mine:
            continue
        secs = np.array([r["seconds"] for r in mine])
        dices = np.array([np.mean([v["dice"] for v in r["oars"].values()]) for r in mine])
        ax.scatter(secs, dices, s=12, color=colours[m], alpha=0.35)
        sd = float(dices.std(ddof=1)) if dices.size > 1 else 0.0
        ax.errorbar(
            [float(np.median(secs))], [float(dices.mean())], yerr=[sd], fmt="o", ms=8, color=colours[m], label=m
        )
    ax.set_xscale("log")
    ax.set_xlabel("seconds per case (whole pipeline, log scale)")
    ax.set_ylabel("mean Dice over the patient's OARs")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3, which="both")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _set_up(meta: dict) -> list[str]:
    hw = meta["hardware"]
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    gpu = hw.get("gpu") or "none"
    return [
        f"* Machine: {hw['cpu_model']}, {hw['cores']} cores, GPU: {gpu}; Python {hw['python']} ({hw['platform']}).",
        f"* Threads: {meta['threads']} for every method (ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS, OMP/MKL/OpenBLAS, "
        "SimpleITK's and ITK's global thread counts, elastix's, ONNX Runtime's intra-op threads, PyTorch's).",
        f"* Load average (1, 5, 15 min) at the start {tuple(meta['load_average_start'])}, at the end "
        f"{tuple(meta.get('load_average_end', ()))}; the run took {meta.get('wall_seconds', 0) / 60:.1f} min.",
        f"* Versions: {versions}.",
        f"* Commit {meta.get('git_commit') or 'unknown'}, {meta['started_utc']}; command `{meta['command']}`.",
    ]


METHOD_NOTES = [
    "| Method | What runs |",
    "|---|---|",
    "| oarmorph (ONNX, CPU) | the exported cascade (`model.onnx`) on ONNX Runtime, CPU execution provider |",
    "| oarmorph (PyTorch, GPU) | the same weights (`checkpoint.pt`) on PyTorch CUDA, when a GPU is present |",
    "| oarmorph affine stage | the same model's `affine_field` output alone (its time: the same run) |",
    "| ANTs SyN | `ants.registration(type_of_transform='SyN')`: affine then SyN, Mattes MI, antspyx's default "
    "schedule; the composite composed by `antsApplyTransforms` |",
    "| elastix | itk-elastix, elastix's default `affine` then `bspline` maps: AdvancedMattesMutualInformation, "
    "4 resolutions, adaptive stochastic gradient descent, 10 mm B-spline grid with a bending-energy penalty; "
    "transformix's deformation field; its metrics on one thread (`UseMultiThreadingForMetrics false`: the penalty "
    "on 2 threads crashes itk-elastix 0.25.4 here) |",
    "| SimpleITK | centre-of-mass initialised affine (Mattes MI on 5 % random samples, regular-step gradient "
    "descent, shrink 4-2-1), then diffeomorphic demons (histogram matched, 3 levels, 40-20-10 iterations, "
    "field sigma 4 mm) |",
    "| no registration | the zero canonical field: each canonical window sits on its own body (in-plane: the "
    "centroid of the head and upper neck; k: the vertex or the scan's top) and the patient's is window-aligned onto "
    "the atlas's, so the atlas is moved so that the body centres coincide, nothing more |",
]


def render_markdown(results: dict, plot_names: dict[str, dict[str, str]], json_name: str | None = None) -> str:
    meta = results["meta"]
    lines = ["# Benchmarks: oarmorph against ANTs, elastix and SimpleITK", ""]
    if meta["quick"]:
        n = {k: len(c["cases"]) for k, c in results["cohorts"].items()}
        counts = " + ".join(f"{v} {k}" for k, v in n.items()) or "no"
        lines += [
            f"> **Quick smoke run** (`--quick`: {counts} patients, {meta['threads']} thread(s)"
            + (f"; {meta['note']}" if meta.get("note") else "")
            + "). These numbers are a smoke test of the benchmark, not the benchmark: too few patients for the "
            "means to mean much, and seconds measured on a loaded machine. To be replaced by the full run "
            "(`make bench`, or `oarmorph bench registration`).",
            "",
        ]
    elif meta.get("note"):
        lines += [f"> {meta['note']}", ""]
    lines += [
        "Every method registers the same atlas bundle to the same patients: the patient's canonical 128^3 image "
        "(window aligned onto the atlas exactly as the oarmorph model was trained, `pipeline.segment.align_window`) "
        "is the fixed image, the atlas's the moving one, and each tool's transform becomes one pull field in "
        "canonical voxels (`imaging.canonical.FIELD_CONVENTION`); the atlas OARs then go onto the patient's own "
        "grid through `pipeline.segment.warp_atlas`, and Dice, HD95 and folding come from `training.evaluate` and "
        "`imaging.metrics`. Seconds per case: the shared preprocessing (canonical image, window alignment), the "
        "method's registration and its warp, wall clock; reading the CT is left out. Code: `benchmarks/registration/`"
        + (f"; raw numbers: `{json_name}`." if json_name else "."),
        "",
        *METHOD_NOTES,
        "",
        "## Set-up",
        "",
        *_set_up(meta),
        "",
    ]
    for key, reason in results.get("skipped_cohorts", {}).items():
        lines += [f"**{key}: not run**: {reason}", ""]
    for key, cohort in results["cohorts"].items():
        lines += [f"## {cohort['title']}", ""]
        lines += [
            f"Patients: {', '.join(cohort['cases'])} ({cohort['note']}). Atlas: {cohort['atlas']['name']} "
            f"(sha256 {cohort['atlas']['sha256'][:12]}...). Model: {cohort['model'] or 'none'}. Window alignment: "
            f"{'on' if cohort['align_windows'] else 'off'}, for every method.",
            "",
        ]
        skipped = [(n, m["reason"]) for n, m in cohort["methods"].items() if not m["ran"]]
        if skipped:
            lines += ["Not run here: " + "; ".join(f"{n} ({r})" for n, r in skipped) + ".", ""]
        calibrated = [n for n, m in cohort["methods"].items() if m["ran"] and m.get("mask_levels", "0.5") != "0.5"]
        if calibrated:
            lines += [
                f"Mask levels: {', '.join(calibrated)} at the model's calibrated level per OAR (its card, "
                "`oarmorph calibrate`), as `segment_ct` and the service contour; every other method at 0.5.",
                "",
            ]
        limited = [(n, m["patients_limit"]) for n, m in cohort["methods"].items() if m.get("patients_limit")]
        if limited:
            lines += [
                "On the first patients only (`--method-limit`, for time): "
                + "; ".join(f"{n}: {k} of {len(cohort['cases'])}" for n, k in limited)
                + ". Their means are over those patients; the other methods' over all.",
                "",
            ]
        if not cohort["records"]:
            lines += ["No results.", ""]
            continue
        lines += ["### Summary", "", *summary_table(cohort), ""]
        if key == "openkbp" or M.METHODS[M.REFERENCE].name in cohort["summary"]:
            lines += ["### Targets (issue 7)", "", *targets(cohort), ""]
        for failure in cohort["failures"]:
            lines.append(f"* FAILED: {failure['method']} on {failure['case']}: {failure['error']}")
        if cohort["failures"]:
            lines.append("")
        descriptions = {n: m["kind"] for n, m in cohort["methods"].items()}
        per_oar = table1_markdown(cohort["summary"], cohort["oars"], descriptions, "Per OAR")
        lines += ["### " + per_oar.split("\n", 1)[0].lstrip("# "), per_oar.split("\n", 1)[1]]
        plots = plot_names.get(key, {})
        if plots:
            lines += [f"![Dice per OAR and method]({plots['boxplot']})", "", f"![Dice against time]({plots['time']})"]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _relative(path: Path, markdown: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), markdown.parent.resolve())).as_posix()


def write_report(results: dict, markdown: Path, plots_dir: Path, json_path: Path | None = None) -> list[Path]:
    """Write the document, its plots (under ``plots_dir``) and the JSON; returns the files written."""
    markdown.parent.mkdir(parents=True, exist_ok=True)
    plots_dir.mkdir(parents=True, exist_ok=True)
    written, names = [], {}
    for key, cohort in results["cohorts"].items():
        if not cohort["records"]:
            continue
        box, time_plot = plots_dir / f"registration_{key}_dice.png", plots_dir / f"registration_{key}_time.png"
        dice_boxplot(cohort, box, f"{cohort['title']}: Dice per OAR")
        dice_vs_time(cohort, time_plot, f"{cohort['title']}: Dice against seconds per case")
        names[key] = {"boxplot": _relative(box, markdown), "time": _relative(time_plot, markdown)}
        written += [box, time_plot]
    json_name = _relative(json_path, markdown) if json_path is not None else None
    markdown.write_text(render_markdown(results, names, json_name))
    written.append(markdown)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(_finite(results), indent=1))
        written.append(json_path)
    return written
