"""How long a full-size phantom patient takes on this machine (target: <= 20 s per patient on 2 cores).

Prints the one-off atlas build, then per patient: rendering (deformation, CT, 36 masks, noise, metal) and
writing (DICOM series, 36 NIfTI labels, RTSTRUCT, deformation field). Run: ``python benchmarks/bench_phantom.py``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from phantom.cohort import atlas_for, generate_patient, write_patient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    print(f"cores: {os.cpu_count()}")
    start = time.perf_counter()
    atlas = atlas_for("full")
    print(f"atlas build (1 mm, once per process): {time.perf_counter() - start:.1f} s, grid {atlas.ct.geometry.shape}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(args.patients):
            t0 = time.perf_counter()
            case = generate_patient(index, args.seed, "full")
            t1 = time.perf_counter()
            write_patient(case, tmp, args.seed, index, "full")
            t2 = time.perf_counter()
            g = case.ct.geometry
            rows.append((t1 - t0, t2 - t1))
            print(
                f"patient {index}: {g.shape[2]}x{g.shape[1]}x{g.shape[0]} ({case.scan.patient_position}, "
                f"{len(case.masks)} OARs{', metal' if case.scan.metal_implant else ''}): render {t1 - t0:.1f} s, "
                f"write {t2 - t1:.1f} s, total {t2 - t0:.1f} s"
            )
    totals = np.array([r + w for r, w in rows])
    print(f"per full-size patient: median {np.median(totals):.1f} s, max {totals.max():.1f} s (target <= 20 s)")


if __name__ == "__main__":
    main()
