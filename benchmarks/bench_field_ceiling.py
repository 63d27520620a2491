"""How much Dice a registration field of a given resolution can reach at best, on phantom patients.

A phantom patient comes with its true atlas-to-patient pull map (``deformation.nii.gz``). Written as a pull
field on the patient's canonical grid (the contract of ``imaging.canonical.FIELD_CONVENTION``), sampled on an
N^3 grid and interpolated back to 128^3 as the model's fields are (trilinear, corners aligned), and sent through
the very inference path (``pipeline.segment.segment_ct``: the same warp to the patient's own grid, the same
Dice), it gives the ceiling of a model whose displacement lives on N^3: what the field's resolution alone
costs, with a perfect network. The shipped CPU models compute their dense fields on 32^3 (``net_shape``).

Run: ``python benchmarks/bench_field_ceiling.py --cohort /work/data/phantom60 --split test``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from imaging.canonical import CanonicalFrame, to_canonical
from phantom.deformation import DeformationField
from pipeline.atlas import SegmentationAtlas, load_atlas
from pipeline.segment import segment_ct
from training.cohort import read_cohort
from training.evaluate import compare


def true_canonical_field(frame: CanonicalFrame, atlas_frame: CanonicalFrame, truth: DeformationField) -> np.ndarray:
    """The true pull map as a canonical field: (3, k, j, i) in canonical voxels, y = x + u(x) in the atlas grid."""
    shape = frame.geometry.shape
    kji = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), axis=-1)
    points = frame.geometry.index_to_physical(kji[..., ::-1].reshape(-1, 3))
    atlas_points = points + truth.displacement_at(points)
    y = atlas_frame.geometry.physical_to_index(atlas_points)[:, ::-1].reshape(*shape, 3)
    return np.moveaxis(y - kji, -1, 0).astype(np.float32)


def band_limited(field: np.ndarray, n: int) -> np.ndarray:
    """The field sampled on n^3 nodes (corners aligned) and trilinearly interpolated back to its grid."""
    shape = field.shape[1:]
    if all(s == n for s in shape):
        return field
    coarse_at = [np.linspace(0, s - 1, n) for s in shape]
    # sample at the coarse nodes (trilinear between fine voxels), then back up at every fine voxel
    nodes = np.stack(np.meshgrid(*coarse_at, indexing="ij"))
    coarse = np.stack([ndimage.map_coordinates(c, nodes, order=1, mode="nearest") for c in field])
    fine_at = np.stack(np.meshgrid(*[np.arange(s) * (n - 1) / (s - 1) for s in shape], indexing="ij"))
    return np.stack([ndimage.map_coordinates(c, fine_at, order=1, mode="nearest") for c in coarse]).astype(np.float32)


def ceilings(case, atlas: SegmentationAtlas, resolutions: list[int]) -> dict[int, dict[str, float]]:
    ct = case.read_ct()
    truth_masks = case.read_masks(ct)
    truth = DeformationField.from_sitk(sitk.ReadImage(str(Path(case.folder) / "deformation.nii.gz")))
    frame = to_canonical(ct).frame
    exact = true_canonical_field(frame, atlas.frame, truth)
    out = {}
    for n in resolutions:
        field = band_limited(exact, n)
        result = segment_ct(ct, atlas, lambda image, f=field: (f, f), align_windows=False)
        out[n] = {
            name: compare(result.masks[name], truth_masks[name], ct.geometry)["dice"]
            for name in result.masks
            if name in truth_masks
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", type=Path, required=True, help="A phantom cohort (with deformation.nii.gz)")
    parser.add_argument("--split", default=None)
    parser.add_argument("--bundle", type=Path, default=Path("bundles/phantom"))
    parser.add_argument("--resolutions", type=int, nargs="+", default=[16, 32, 48, 64, 128])
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args(argv)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    atlas = load_atlas(args.bundle)
    cases = read_cohort(args.cohort, args.split)[: args.limit]
    per_res: dict[int, dict[str, list[float]]] = {n: {} for n in args.resolutions}
    for case in cases:
        t0 = time.perf_counter()
        for n, dices in ceilings(case, atlas, args.resolutions).items():
            for name, d in dices.items():
                per_res[n].setdefault(name, []).append(d)
        means = ", ".join(f"{n}^3 {np.mean([np.mean(x) for x in v.values()]):.3f}" for n, v in per_res.items())
        print(f"{case.case_id} ({time.perf_counter() - t0:.1f} s): running means {means}", flush=True)
    oars = list(per_res[args.resolutions[0]])
    thin = ["OpticNrv_L", "OpticNrv_R", "Lens_L", "Lens_R", "Cochlea_L", "Cochlea_R"]
    print(f"\n{len(cases)} patients of {args.cohort} ({args.split or 'all'}); Dice of the true field on N^3")
    print("| field grid | mean Dice (all OARs) | " + " | ".join(t for t in thin) + " |")
    print("|---|---|" + "---|" * len(thin))
    for n in args.resolutions:
        mean = np.mean([np.mean(per_res[n][o]) for o in oars])
        cells = " | ".join(f"{np.mean(per_res[n][t]):.3f}" if t in per_res[n] else "-" for t in thin)
        print(f"| {n}^3 | {mean:.3f} | {cells} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
