"""``oarmorph bench registration`` and ``python benchmarks/bench_registration.py``: one function behind both.

Full run (``make bench``): every OpenKBP validation patient and the phantom test split, 2 threads. ``--quick``:
2 OpenKBP validation patients and 1 small phantom patient (a smoke test; the document says so).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

from .cases import REPO
from .threads import pin_threads

COHORTS = ("openkbp", "phantom")
QUICK_LIMITS = {"openkbp": 2, "phantom": 1}
DEFAULT_MARKDOWN = REPO / "docs" / "benchmarks.md"
DEFAULT_PLOTS = REPO / "docs" / "benchmarks"
DEFAULT_JSON = DEFAULT_PLOTS / "registration.json"


def bench_registration(
    quick: bool = False,
    threads: int = 2,
    cohorts: Sequence[str] = COHORTS,
    methods: Sequence[str] | None = None,
    limit: int | None = None,
    method_limits: dict[str, int] | None = None,
    openkbp_dir: Path | None = None,
    phantom_dir: Path | None = None,
    phantom_size: str = "small",
    markdown: Path = DEFAULT_MARKDOWN,
    plots_dir: Path = DEFAULT_PLOTS,
    json_path: Path | None = DEFAULT_JSON,
    from_json: Path | None = None,
    note: str = "",
    openkbp_model: Path | None = None,
    phantom_model: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Run the benchmark (or only redo the document from ``from_json``) and write the report; returns the results."""
    from .report import write_report

    if from_json is not None:
        results = json.loads(Path(from_json).read_text())
        for cohort in results["cohorts"].values():  # JSON wrote the HD95 of an empty contour as null
            for record in cohort["records"]:
                for v in record["oars"].values():
                    v["hd95_mm"] = math.inf if v.get("hd95_mm") is None else v["hd95_mm"]
        for path in write_report(results, markdown, plots_dir, None):
            log(f"wrote {path}")
        return results
    pin_threads(threads)  # before antspyx or itk is imported: they read the environment when they start
    from . import cases as C
    from . import methods as M
    from .run import run_benchmark

    keys = list(methods or M.DEFAULT_METHODS)
    unknown = [k for k in [*keys, *(method_limits or {})] if k not in M.METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(M.METHODS)}")
    bad = [c for c in cohorts if c not in COHORTS]
    if bad:
        raise ValueError(f"unknown cohort(s) {', '.join(bad)}; known: {', '.join(COHORTS)}")
    chosen, skipped = [], {}
    for key in cohorts:
        n = limit if limit is not None else (QUICK_LIMITS[key] if quick else None)
        if key == "openkbp":
            found = C.openkbp_cohort(n, openkbp_dir, openkbp_model or C.OPENKBP_MODEL)
            if isinstance(found, str):
                skipped[key] = found
                log(f"openkbp: skipped: {found}")
                continue
            chosen.append(found)
        else:
            chosen.append(C.phantom_cohort(n, phantom_dir, phantom_size, phantom_model or C.PHANTOM_MODEL))
    results = run_benchmark(chosen, keys, threads, quick, skipped, log, note, method_limits)
    for path in write_report(results, markdown, plots_dir, json_path):
        log(f"wrote {path}")
    return results


def parse_method_limits(items: Sequence[str]) -> dict[str, int]:
    """``["elastix=10", ...]`` -> ``{"elastix": 10}`` (the slow methods on the first N patients only)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"--method-limit takes METHOD=N with N >= 1, got {item!r}")
        out[key.strip()] = int(value)
    return out


def summary_lines(results: dict) -> list[str]:
    out = []
    for key, cohort in results["cohorts"].items():
        for name, s in cohort["summary"].items():
            t = cohort["timing"][name]
            dice = "n/a" if s["mean_dice"] is None else f"{s['mean_dice']:.3f}"
            out.append(
                f"{key}: {name}: mean Dice {dice}, {t['median_seconds']:.1f} s/case "
                f"(registration {t['median_registration_seconds']:.2f} s)"
            )
    return out
