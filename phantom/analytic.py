"""A small analytic head-and-neck body, defined in LPS millimetres and sampled on any grid.

Used by the geometry tests (the same anatomy scanned HFS, FFS, anywhere in space, at any voxel size) and
by the demo when no real CT is at hand. The full 36-OAR phantom generator builds on it.

Head (ellipsoid with a skull shell), neck (cylinder), shoulders (a wide ellipsoid), and a few small
"organs" used as landmarks. The vertex is at z = VERTEX_Z + offset.
"""

from __future__ import annotations

import numpy as np

from imaging.volume import Geometry, Volume

VERTEX_Z = 0.0
LANDMARKS = {  # name: (centre relative to the vertex in LPS mm, radius mm)
    "eye_l": (np.array([32.0, -75.0, -75.0]), 12.0),
    "eye_r": (np.array([-32.0, -75.0, -75.0]), 12.0),
    "lens_l": (np.array([32.0, -84.0, -75.0]), 2.5),
    "stem": (np.array([0.0, 5.0, -110.0]), 9.0),
    "gland_l": (np.array([45.0, -5.0, -160.0]), 14.0),
}


def _inside_ellipsoid(p: np.ndarray, centre, radii) -> np.ndarray:
    return (((p - np.asarray(centre)) / np.asarray(radii)) ** 2).sum(axis=-1) <= 1.0


def hu_at(points: np.ndarray, offset=(0.0, 0.0, 0.0)) -> np.ndarray:
    """HU of the body at LPS points ``(..., 3)``; the whole body is translated by ``offset``."""
    p = np.asarray(points, float) - np.asarray(offset, float)
    hu = np.full(p.shape[:-1], -1000.0)
    head_c, head_r = (0.0, -10.0, -100.0), (75.0, 95.0, 100.0)
    neck = ((p[..., 0] / 55.0) ** 2 + ((p[..., 1] + 5.0) / 60.0) ** 2 <= 1.0) & (p[..., 2] < -150) & (p[..., 2] > -330)
    shoulders = _inside_ellipsoid(p, (0.0, 10.0, -330.0), (200.0, 90.0, 70.0))
    head = _inside_ellipsoid(p, head_c, head_r)
    body = head | neck | shoulders
    hu[body] = 40.0
    skull = head & ~_inside_ellipsoid(p, head_c, (head_r[0] - 7, head_r[1] - 7, head_r[2] - 7)) & (p[..., 2] > -120)
    hu[skull] = 1200.0
    hu[_inside_ellipsoid(p, (0.0, -10.0, -95.0), (60.0, 78.0, 80.0)) & (p[..., 2] > -120)] = 30.0  # brain
    spine = ((p[..., 0] / 9.0) ** 2 + ((p[..., 1] - 25.0) / 9.0) ** 2 <= 1.0) & (p[..., 2] < -130) & (p[..., 2] > -380)
    hu[spine] = 700.0
    for centre, radius in LANDMARKS.values():
        inside = ((p - centre) ** 2).sum(axis=-1) <= radius**2
        hu[inside] = hu[inside] + 60.0
    return hu


def landmark_mask_at(points: np.ndarray, name: str, offset=(0.0, 0.0, 0.0)) -> np.ndarray:
    centre, radius = LANDMARKS[name]
    p = np.asarray(points, float) - np.asarray(offset, float)
    return (((p - centre) ** 2).sum(axis=-1) <= radius**2).astype(np.uint8)


def grid_points(geometry: Geometry) -> np.ndarray:
    nk, nj, ni = geometry.shape
    k, j, i = np.meshgrid(np.arange(nk), np.arange(nj), np.arange(ni), indexing="ij")
    return geometry.index_to_physical(np.stack([i, j, k], axis=-1).astype(float))


def body_volume(geometry: Geometry, offset=(0.0, 0.0, 0.0)) -> Volume:
    return Volume(hu_at(grid_points(geometry), offset).astype(np.float32), geometry)


def patient_grid(
    position: str = "HFS",
    spacing=(1.2, 1.2, 3.0),
    extent_mm=(400.0, 300.0, 420.0),
    top_z: float = 15.0,
    offset=(0.0, 0.0, 0.0),
) -> Geometry:
    """A scan covering ``extent_mm`` around the body, from ``top_z`` above the vertex downwards."""
    n = [round(e / s) for e, s in zip(extent_mm, spacing, strict=True)]
    off = np.asarray(offset, float)
    x0, y0 = -extent_mm[0] / 2 + off[0], -extent_mm[1] / 2 - 10 + off[1]
    z_top = VERTEX_Z + top_z + off[2]
    z_bottom = z_top - (n[2] - 1) * spacing[2]
    if position == "HFS":
        direction, origin = (1, 0, 0, 0, 1, 0, 0, 0, 1), (x0, y0, z_bottom)
    elif position == "FFS":  # rows run to the patient's right, slices from head to feet
        direction, origin = (-1, 0, 0, 0, 1, 0, 0, 0, -1), (x0 + (n[0] - 1) * spacing[0], y0, z_top)
    else:
        raise ValueError(position)
    return Geometry((n[2], n[1], n[0]), spacing, origin, direction)


def landmark_volume(geometry: Geometry, name: str, offset=(0.0, 0.0, 0.0)) -> Volume:
    """The landmark's mask on ``geometry``, evaluated only inside its bounding box (fast on big grids)."""
    centre, radius = LANDMARKS[name]
    c = centre + np.asarray(offset, float)
    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float) * (radius + 3) + c
    idx = geometry.physical_to_index(corners)
    lo = np.clip(np.floor(idx.min(axis=0)).astype(int), 0, None)[::-1]
    hi = np.minimum(np.ceil(idx.max(axis=0)).astype(int) + 1, np.array(geometry.size_ijk))[::-1]
    out = np.zeros(geometry.shape, np.uint8)
    if (hi > lo).all():
        sub = geometry.sub_grid(tuple(lo), tuple(hi))
        out[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = landmark_mask_at(grid_points(sub), name, offset)
    return Volume(out, geometry)
