"""Binary mask slices to planar polygons and back, in continuous index space.

Why this exists: a structure set stores outlines, not voxels, and the outline must run along the boundary of
the mask (the iso-line at 0.5 between voxel centres), not through the centres of the boundary voxels, or every
structure comes back half a voxel too small. Polygons here are ``(N, 2)`` arrays of ``(i, j)`` = (column, row)
continuous indices of one slice; voxel ``(i, j)`` is centred at integer ``(i, j)``.

The two functions are inverse to each other on any binary slice: ``polygons_to_mask_slice`` rasterises with
the even-odd rule (the RTSTRUCT convention: holes are separate contours, nothing says which is which) and a
voxel is inside when its centre is inside. Marching-squares vertices always sit half a voxel from any voxel
centre, so no centre lies on an outline and the round trip is exact, saddles included.
"""

from __future__ import annotations

import numpy as np
from skimage.measure import find_contours


def mask_slice_to_polygons(mask2d: np.ndarray) -> list[np.ndarray]:
    """Closed outlines of a binary slice ``[j, i]``, each ``(N, 2)`` in ``(i, j)``, the closing point not repeated.

    Outer boundaries and hole boundaries come out alike (even-odd semantics). Voxels touching only at a corner
    are separated (marching squares with 8-connected background), which the even-odd fill reproduces exactly.
    A single voxel gives a diamond around its centre. Collinear vertices are removed: marching squares on a
    binary mask emits one vertex per voxel edge, most of them on straight runs, and the polygon does not change.
    """
    mask = np.asarray(mask2d)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D slice, got shape {mask.shape}")
    padded = np.pad(mask != 0, 1).astype(np.float64)  # zero border: every outline closes
    polygons = []
    for contour in find_contours(padded, 0.5):
        if len(contour) < 4 or not np.array_equal(contour[0], contour[-1]):
            raise AssertionError("marching squares returned an open contour on a zero-padded slice")
        points_ij = contour[:-1, ::-1] - 1.0  # (row, col) of the padded slice -> (i, j) of the slice
        polygons.append(_without_collinear_vertices(points_ij))
    return polygons


def _without_collinear_vertices(points_ij: np.ndarray) -> np.ndarray:
    """Drop vertices lying on the straight segment between their neighbours (exact: vertices are on a half grid).

    A maximal run of such vertices lies on one line, so removing all of them at once keeps the polygon.
    """
    doubled = np.rint(points_ij * 2.0).astype(np.int64)  # marching-squares vertices are multiples of 0.5
    incoming = doubled - np.roll(doubled, 1, axis=0)
    outgoing = np.roll(doubled, -1, axis=0) - doubled
    cross = incoming[:, 0] * outgoing[:, 1] - incoming[:, 1] * outgoing[:, 0]
    dot = (incoming * outgoing).sum(axis=1)
    repeated = ~incoming.any(axis=1)
    redundant = repeated | ((cross == 0) & (dot > 0))
    return doubled[~redundant] / 2.0


def polygons_to_mask_slice(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Even-odd fill of ``polygons`` (each ``(N, 2)`` in ``(i, j)``) on a slice of ``shape`` ``(nj, ni)``.

    A voxel is inside when its centre is inside an odd number of polygons (XOR of the fills). Scanline with
    half-open rules: an edge meets row ``j`` when ``min(y) <= j < max(y)``, so a vertex on a row is counted once
    and horizontal edges never; a crossing at ``x`` switches voxels ``i >= x``. Open or explicitly closed
    polygons are both accepted.
    """
    nj, ni = int(shape[0]), int(shape[1])
    out = np.zeros((nj, ni), dtype=bool)
    window = even_odd_fill_window(polygons, (nj, ni))
    if window is not None:
        (j0, i0), filled = window
        out[j0 : j0 + filled.shape[0], i0 : i0 + filled.shape[1]] = filled
    return out


def even_odd_fill_window(
    polygons: list[np.ndarray], shape: tuple[int, int]
) -> tuple[tuple[int, int], np.ndarray] | None:
    """The fill of ``polygons_to_mask_slice`` restricted to the polygons' bounding box: ``((j0, i0), window)``.

    ``None`` when nothing is inside. Readers of large grids use it to touch only the voxels an outline covers.
    """
    nj, ni = int(shape[0]), int(shape[1])
    starts, ends = [], []
    for polygon in polygons:
        p = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
        if len(p) < 2:
            continue
        starts.append(p)
        ends.append(np.roll(p, -1, axis=0))
    if not starts:
        return None
    a = np.concatenate(starts)
    b = np.concatenate(ends)
    y_low = np.minimum(a[:, 1], b[:, 1])
    y_high = np.maximum(a[:, 1], b[:, 1])
    first_row = np.maximum(np.ceil(y_low), 0).astype(np.int64)
    last_row = np.minimum(np.ceil(y_high) - 1, nj - 1).astype(np.int64)  # rows j with y_low <= j < y_high
    rows_per_edge = np.maximum(last_row - first_row + 1, 0)
    total = int(rows_per_edge.sum())
    if total == 0:
        return None
    edge = np.repeat(np.arange(len(a)), rows_per_edge)
    offsets = np.cumsum(rows_per_edge) - rows_per_edge
    row = first_row[edge] + (np.arange(total) - offsets[edge])
    ax, ay, bx, by = a[edge, 0], a[edge, 1], b[edge, 0], b[edge, 1]
    x = ax + (row - ay) * (bx - ax) / (by - ay)
    column = np.clip(np.ceil(x), 0, ni).astype(np.int64)  # voxels i >= x change side
    j0, j1 = int(row.min()), int(row.max()) + 1
    i0, i1 = int(column.min()), int(column.max())
    if i1 <= i0:
        return None
    width = i1 - i0 + 1
    toggles = np.bincount((row - j0) * width + (column - i0), minlength=(j1 - j0) * width)
    parity = np.cumsum(toggles.reshape(j1 - j0, width), axis=1)[:, : width - 1] & 1
    return (j0, i0), parity.astype(bool)
