"""Agreement between structures and the regularity of a field: Dice, HD95 in mm, folded voxels.

Used by evaluation (training), the service's QA summary and the benchmarks, so every number that compares
methods is computed by the same code.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """2|A & B| / (|A| + |B|); 1.0 when both are empty."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / total if total else 1.0


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1), border_value=0)


def hausdorff95(a: np.ndarray, b: np.ndarray, spacing_kji: tuple[float, float, float]) -> float:
    """The 95th percentile of the symmetric surface distances, in mm (inf if exactly one mask is empty).

    ``spacing_kji``: the voxel size along the array axes (k, j, i), i.e. ``Geometry.spacing[::-1]``.
    """
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if not a.any() and not b.any():
        return 0.0
    if not a.any() or not b.any():
        return float("inf")
    sa, sb = _surface(a), _surface(b)
    dist_to_b = ndimage.distance_transform_edt(~sb, sampling=spacing_kji)
    dist_to_a = ndimage.distance_transform_edt(~sa, sampling=spacing_kji)
    distances = np.concatenate([dist_to_b[sa], dist_to_a[sb]])
    return float(np.percentile(distances, 95))


def jacobian_determinant(field_kji: np.ndarray) -> np.ndarray:
    """det(I + grad u) of a displacement field ``(3, nk, nj, ni)`` in voxels (central differences)."""
    grads = np.stack([np.stack(np.gradient(field_kji[c]), axis=0) for c in range(3)])  # [c, axis, k, j, i]
    jac = grads + np.eye(3)[:, :, None, None, None]
    return np.linalg.det(np.moveaxis(jac, (0, 1), (-2, -1)))


def folded_fraction(field_kji: np.ndarray) -> float:
    """Fraction of voxels where the transform folds (non-positive Jacobian determinant)."""
    return float((jacobian_determinant(field_kji) <= 0).mean())
