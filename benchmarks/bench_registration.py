"""oarmorph against ANTs SyN, elastix, SimpleITK, its affine stage and no registration: Dice, HD95, folding and
seconds per case on OpenKBP validation and phantom test patients, written to docs/benchmarks.md with its plots.

Run: ``python benchmarks/bench_registration.py [--quick] [--threads 2]`` or ``oarmorph bench registration``
(``make bench`` installs the ``bench`` extra, antspyx and itk-elastix, first). Methods whose package, model or
GPU is absent are skipped, saying why. A benchmark, not a test: seconds depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is no installed package

from benchmarks.registration.command import (
    COHORTS,
    DEFAULT_JSON,
    DEFAULT_MARKDOWN,
    DEFAULT_PLOTS,
    bench_registration,
    summary_lines,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 OpenKBP validation + 1 small phantom patient")
    parser.add_argument("--threads", type=int, default=2, help="threads for every method (default 2)")
    parser.add_argument("--cohort", action="append", choices=COHORTS, help="repeat; default: both")
    parser.add_argument("--methods", default=None, help="comma-separated keys (default: all); see methods.py")
    parser.add_argument("--limit", type=int, default=None, help="at most N patients per cohort")
    parser.add_argument("--openkbp", type=Path, default=None, help="OpenKBP validation folder")
    parser.add_argument("--phantom-cohort", type=Path, default=None, help="a phantom cohort folder (its test split)")
    parser.add_argument("--phantom-size", choices=("small", "full"), default="small")
    parser.add_argument("--out", type=Path, default=DEFAULT_MARKDOWN, help="the document (docs/benchmarks.md)")
    parser.add_argument("--plots-dir", type=Path, default=DEFAULT_PLOTS)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--from-json", type=Path, default=None, help="only redo the document from these results")
    parser.add_argument("--note", default="", help="a line for the document (e.g. the machine's load)")
    args = parser.parse_args(argv)
    results = bench_registration(
        quick=args.quick,
        threads=args.threads,
        cohorts=args.cohort or COHORTS,
        methods=args.methods.split(",") if args.methods else None,
        limit=args.limit,
        openkbp_dir=args.openkbp,
        phantom_dir=args.phantom_cohort,
        phantom_size=args.phantom_size,
        markdown=args.out,
        plots_dir=args.plots_dir,
        json_path=args.json,
        from_json=args.from_json,
        note=args.note,
    )
    for line in summary_lines(results):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
