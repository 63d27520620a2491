"""The oarmorph demonstration atlas: a synthetic head-and-neck planning CT carrying all 36 catalogue OARs.

oarmorph registers this atlas to patients and carries its OARs into them, and the phantom patients are
deformed copies of it, so it is also the ground truth of every phantom test. It has to read like a
head-and-neck planning CT to a radiation oncologist: a head, face, neck and shoulders with skull, facial
bones, mandible and teeth, spine C1-T5, airway, lung apices, brain, vessels, glands and the 36 OARs, each
where it belongs relative to the others and with a plausible adult volume.

How it is built. Every structure is a simple solid in LPS millimetres (super-ellipsoids, lofts of
super-ellipse cross-sections along z, tubes along polylines, ellipses swept along curves in an axial plane,
half-spaces, and their unions, intersections and differences). A label volume (one uint8 per voxel, one
label per tissue) is painted in anatomical order: each solid is evaluated only inside its bounding box and
writes its tissue only over the tissues it may displace (a gland never replaces bone, a sinus does). The CT
is the label volume looked up in ``TISSUE_HU``; an OAR's mask is the set of voxels carrying that OAR's
tissues (the lens is inside the eye, the temporal lobes inside the brain), so every mask agrees with the CT
numbers by construction. No randomness: noise and deformations are added per patient elsewhere.

Left and right. The atlas is exactly left-right symmetric. The grid's x coordinates are integer multiples
of the spacing, symmetric about x = 0, and every lateral structure is described on the patient's left
(x > 0) and painted together with its mirror image, evaluated at the negated coordinates. Paired OARs share
one tissue and are told apart by the sign of x.

Coordinates (LPS mm): x to the patient's left, y posterior, z superior. The top of the skin (vertex) is at
z = 0, the mid-sagittal plane at x = 0. The grid covers x [-200, 200], y [-130, 140], z [-400, 8].

Landmarks (``AtlasPhantom.landmarks``, LPS mm):

* ``vertex``: the top point of the skin, (0, 2, 0).
* ``head_centre``: centre of the cranial cavity, midway between the inner table at the vertex and the
  foramen magnum and between the frontal and occipital inner tables.
* ``neck_pivot``: centre of the C2-C3 disc, the centre of neck flexion.
* ``c7``: centre of the C7 vertebral body.
* ``tmj_l``, ``tmj_r``: centres of the mandibular condyles, i.e. on the jaw's hinge axis.
* ``chin``: anterior-inferior point of the bony chin (the symphysis surface at 45 degrees, between
  pogonion and menton).
* ``molar_l``, ``molar_r``: crown centres of the lower first molars (for a dental implant).
* ``body_centre_neck``: centre of the neck's cross-section at the level of the thyroid gland.
* ``skin_top_of_shoulders``: highest skin point over the left shoulder at x = 120 mm (over the middle of
  the clavicle); ``skin_top_of_shoulder_l``/``_r`` are the two sides.
* also ``eye_l/r``, ``lens_l/r``, ``cochlea_l/r``, ``pituitary``, ``chiasm``, ``basion``,
  ``sternal_notch``, ``c2`` (centre of the C2 body) and ``hyoid`` (centre of the hyoid body).

Simplified on purpose: smooth cortex (no gyri) with a plain grey/white ribbon, no tentorium and no dural
sinuses but the cavernous ones, one cortical and one cancellous density per bone, teeth as super-ellipsoid
crowns and roots, mastoid and ethmoid cells as uniform partial-volume air, muscles of mastication and the
strap muscles not set apart from the surrounding muscle, no aortic arch (it would break the symmetry: a
brachiocephalic trunk rises on each side). OAR conventions (after Brouwer et al. 2015 where it fits the
expected volumes): the mandible excludes the teeth; the oral cavity is the tongue and floor of mouth with a
thin layer of air under the palate; Larynx_SG (epiglottis tip to the vocal folds) and Glottis (the ~1 cm of
the vocal folds) include their airway; SpinalCord runs from the foramen magnum to the bottom of the grid.

``build_atlas(1.0)`` takes about 2 s (two cores), ``build_atlas(2.0)`` about 0.3 s.
"""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from anatomy.catalogue import BY_NAME, OARS, Laterality
from imaging.volume import Geometry, Volume

from .deformation import rotation_matrix

# ----------------------------------------------------------------------------------------------------------
# Tissues and OARs
# ----------------------------------------------------------------------------------------------------------

# One label per tissue; the CT is this table looked up per voxel. OARs have their own tissues so their masks
# are exactly what was drawn. Values are those of a contrast-enhanced (arterial phase) planning CT.
TISSUE_HU: dict[str, float] = {
    "outside": -1000.0,
    "air": -1000.0,  # airway, sinuses, ear canal
    "lung": -850.0,
    "air_cells": -650.0,  # ethmoid and mastoid air cells with their thin septa, partial volume
    "fat": -100.0,
    "orbital_fat": -90.0,
    "skin": 40.0,
    "muscle": 50.0,
    "csf": 8.0,
    "grey": 35.0,
    "white": 28.0,
    "ventricle": 8.0,  # CSF inside the brain's contour: ventricles and fissures
    "brainstem": 32.0,
    "cord": 35.0,
    "pituitary": 60.0,
    "chiasm": 32.0,
    "optic_nerve": 32.0,
    "sclera": 55.0,
    "vitreous": 10.0,
    "lens": 95.0,
    "lacrimal": 45.0,
    "cochlea": 20.0,  # fluid-filled, seen against the dense otic capsule
    "parotid": -20.0,
    "submandibular": 40.0,
    "thyroid": 100.0,
    "carotid": 180.0,
    "artery": 180.0,
    "vein": 90.0,
    "tongue": 60.0,
    "oral_air": -1000.0,
    "lips": 45.0,
    "constrictor_s": 50.0,
    "constrictor_m": 50.0,
    "constrictor_i": 50.0,
    "cricopharyngeus": 50.0,
    "esophagus": 45.0,
    "supraglottis": 20.0,  # aryepiglottic folds, false cords and pre-epiglottic fat together
    "supraglottic_air": -1000.0,
    "epiglottis": 120.0,
    "vocal_folds": 50.0,
    "glottic_air": -1000.0,
    "cartilage": 200.0,  # thyroid and cricoid cartilage, partly calcified; tracheal rings
    "brachial_plexus": 35.0,
    "disc": 90.0,
    "bone_marrow": 200.0,  # long bones and ribs
    "vertebra_marrow": 250.0,
    "vertebra_cortex": 1000.0,
    "bone_diploe": 400.0,
    "mandible_marrow": 450.0,
    "bone_cortical": 1400.0,
    "mandible_cortex": 1400.0,
    "bone_petrous": 1800.0,
    "tooth": 2500.0,
}
TISSUES: tuple[str, ...] = tuple(TISSUE_HU)
_TISSUE_ID: dict[str, int] = {name: i for i, name in enumerate(TISSUES)}
_HU_LUT = np.array(list(TISSUE_HU.values()), np.float32)

SOFT: tuple[str, ...] = ("muscle", "fat")
BONES: tuple[str, ...] = (
    "bone_cortical",
    "bone_diploe",
    "bone_petrous",
    "vertebra_cortex",
    "vertebra_marrow",
    "disc",
    "bone_marrow",
    "mandible_cortex",
    "mandible_marrow",
    "cartilage",
)
CANCELLOUS: tuple[str, ...] = ("bone_diploe", "vertebra_marrow", "bone_marrow", "mandible_marrow")
INSIDE: tuple[str, ...] = tuple(t for t in TISSUES if t not in ("outside", "skin"))

# Plausible adult volumes (cc) of the 36 OARs; the atlas's volumes lie inside these ranges.
EXPECTED_VOLUME_CC: dict[str, tuple[float, float]] = {
    "Brain": (1200.0, 1500.0),
    "Lobe_Temporal_L": (40.0, 90.0),
    "Lobe_Temporal_R": (40.0, 90.0),
    "Brainstem": (20.0, 35.0),
    "SpinalCord": (10.0, 25.0),
    "Pituitary": (0.3, 1.2),
    "OpticChiasm": (0.2, 1.0),
    "OpticNrv_L": (0.3, 1.2),
    "OpticNrv_R": (0.3, 1.2),
    "Eye_L": (6.0, 9.0),
    "Eye_R": (6.0, 9.0),
    "Lens_L": (0.1, 0.35),
    "Lens_R": (0.1, 0.35),
    "Glnd_Lacrimal_L": (0.3, 1.0),
    "Glnd_Lacrimal_R": (0.3, 1.0),
    "Cochlea_L": (0.03, 0.12),
    "Cochlea_R": (0.03, 0.12),
    "Parotid_L": (15.0, 35.0),
    "Parotid_R": (15.0, 35.0),
    "Glnd_Submand_L": (5.0, 12.0),
    "Glnd_Submand_R": (5.0, 12.0),
    "Bone_Mandible": (40.0, 80.0),
    "Cavity_Oral": (40.0, 120.0),
    "Lips": (5.0, 20.0),
    "Musc_Constrict_S": (3.0, 12.0),
    "Musc_Constrict_M": (3.0, 12.0),
    "Musc_Constrict_I": (3.0, 12.0),
    "Cricopharyngeus": (1.0, 5.0),
    "Esophagus_S": (5.0, 20.0),
    "Larynx_SG": (10.0, 30.0),
    "Glottis": (2.0, 8.0),
    "Glnd_Thyroid": (10.0, 30.0),
    "BrachialPlex_L": (5.0, 25.0),
    "BrachialPlex_R": (5.0, 25.0),
    "A_Carotid_L": (3.0, 12.0),
    "A_Carotid_R": (3.0, 12.0),
}


@dataclass
class AtlasPhantom:
    """The atlas CT, its 36 OAR masks and named anatomical points.

    ``ct``: HU, float32, noise-free, on an LPS-aligned grid (identity direction) whose k runs upwards.
    ``masks``: TG-263 name -> (uint8 0/1 mask cropped to the OAR's bounding box plus 2 voxels, the crop's
    Geometry on ``ct``'s grid). ``landmarks``: name -> LPS point in mm (see the module docstring).
    """

    ct: Volume
    masks: dict[str, tuple[np.ndarray, Geometry]]
    landmarks: dict[str, np.ndarray]


# ----------------------------------------------------------------------------------------------------------
# Solids: a bounding box and a membership test on a grid given by its 1-D coordinate arrays
# ----------------------------------------------------------------------------------------------------------

_INF = np.inf


def _span(coords: np.ndarray, lo: float, hi: float) -> tuple[int, int]:
    """The index range of the ascending ``coords`` inside [lo, hi]."""
    return int(np.searchsorted(coords, lo - 1e-4, "left")), int(np.searchsorted(coords, hi + 1e-4, "right"))


def _evaluate(shape: Shape, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray) -> np.ndarray:
    """Membership of ``shape`` on the grid ``zs x ys x xs`` (array [k, j, i]), computed only inside its box."""
    out = np.zeros((zs.size, ys.size, xs.size), bool)
    i0, i1 = _span(xs, shape.lo[0], shape.hi[0])
    j0, j1 = _span(ys, shape.lo[1], shape.hi[1])
    k0, k1 = _span(zs, shape.lo[2], shape.hi[2])
    if i1 > i0 and j1 > j0 and k1 > k0:
        out[k0:k1, j0:j1, i0:i1] = shape.inside(xs[None, None, i0:i1], ys[None, j0:j1, None], zs[k0:k1, None, None])
    return out


class Shape(ABC):
    """A solid in LPS mm: ``lo``/``hi`` bound it, ``inside`` tests broadcastable coordinate arrays.

    ``inside`` receives x of shape (1, 1, ni), y (1, nj, 1) and z (nk, 1, 1), ascending, and returns a
    boolean array broadcastable to (nk, nj, ni).
    """

    lo: np.ndarray
    hi: np.ndarray

    @abstractmethod
    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Which of the points are inside the solid."""

    def grown(self, d: float) -> Shape:
        """The solid with its surface moved outwards by about ``d`` mm (inwards for negative ``d``).

        Defined by the primitive solids; a boolean combination (e.g. a difference) has no offset of its own.
        """
        raise TypeError(f"{type(self).__name__} cannot be grown: grow its parts instead")


def _frame_along(direction: Sequence[float]) -> np.ndarray:
    """A rotation whose first column is ``direction`` (the solid's local x runs along it)."""
    e1 = np.asarray(direction, float) / np.linalg.norm(direction)
    up = np.array([0.0, 0.0, 1.0]) if abs(e1[2]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e2 = np.cross(up, e1)
    e2 /= np.linalg.norm(e2)
    return np.stack([e1, e2, np.cross(e1, e2)], axis=1)


class Ellipsoid(Shape):
    """Super-ellipsoid ``(|x/a|^p + |y/b|^p)^(q/p) + |z/c|^q <= 1`` in its own frame (p = q = 2: ellipsoid).

    ``rotation``'s columns are the solid's local axes in LPS.
    """

    def __init__(
        self,
        centre: Sequence[float],
        semi: Sequence[float],
        p_xy: float = 2.0,
        p_z: float = 2.0,
        rotation: np.ndarray | None = None,
    ) -> None:
        self.centre = np.asarray(centre, float)
        self.semi = np.maximum(np.asarray(semi, float), 1e-3)
        self.p_xy, self.p_z = float(p_xy), float(p_z)
        self.rotation = None if rotation is None else np.asarray(rotation, float)
        half = self.semi if self.rotation is None else np.abs(self.rotation) @ self.semi
        self.lo, self.hi = self.centre - half, self.centre + half

    def grown(self, d: float) -> Ellipsoid:
        return Ellipsoid(self.centre, self.semi + d, self.p_xy, self.p_z, self.rotation)

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        cx, cy, cz = self.centre
        a, b, c = self.semi
        if self.rotation is None:
            u, v, w = np.abs(x - cx) / a, np.abs(y - cy) / b, np.abs(z - cz) / c
        else:
            dx, dy, dz = x - cx, y - cy, z - cz
            r = self.rotation
            u = np.abs(dx * r[0, 0] + dy * r[1, 0] + dz * r[2, 0]) / a
            v = np.abs(dx * r[0, 1] + dy * r[1, 1] + dz * r[2, 1]) / b
            w = np.abs(dx * r[0, 2] + dy * r[1, 2] + dz * r[2, 2]) / c
        if self.p_xy == 2.0 and self.p_z == 2.0:
            return (u * u + v * v) + w * w <= 1.0
        p, q = self.p_xy, self.p_z
        return (u**p + v**p) ** (q / p) + w**q <= 1.0


class Loft(Shape):
    """Stacked super-ellipse cross-sections, parameters interpolated linearly in z between key rows.

    Each key row: z, x of the centre, y of the widest point, half width, distance to the front (towards -y),
    distance to the back, exponent of the front half, exponent of the back half. Outside the keys' z range
    the loft is empty. Body outlines, vertical tubes (airway, spinal canal, vessels) and vertebrae are lofts.
    """

    def __init__(self, rows: Iterable[Sequence[float]]) -> None:
        keys = np.array([[*r, 2.0, 2.0][:8] if len(r) == 6 else list(r) for r in rows], float)
        if keys.ndim != 2 or keys.shape[1] != 8 or not np.all(np.isfinite(keys)):
            raise ValueError("loft keys are rows of 6 or 8 finite numbers")
        keys = keys[np.argsort(keys[:, 0])]
        self.keys = keys
        z, cx, ym, a, df, db = (keys[:, i] for i in range(6))
        self.lo = np.array([np.min(cx - a), np.min(ym - df), z[0]])
        self.hi = np.array([np.max(cx + a), np.max(ym + db), z[-1]])

    @classmethod
    def tube(cls, rows: Iterable[Sequence[float]], p: float = 2.0) -> Loft:
        """A loft from rows (z, cx, cy, half_width, half_depth): symmetric front and back."""
        return cls([(z, cx, cy, a, d, d, p, p) for z, cx, cy, a, d in rows])

    def grown(self, d: float) -> Loft:
        keys = self.keys.copy()
        keys[:, 3:6] = np.maximum(keys[:, 3:6] + d, 1e-3)
        keys[0, 0] -= d
        keys[-1, 0] += d
        return Loft(keys)

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        zc = z.ravel().astype(np.float64)
        keys = self.keys
        params = [np.interp(zc, keys[:, 0], keys[:, i]).astype(np.float32)[:, None, None] for i in range(1, 8)]
        cx, ym, a, df, db, pf, pb = params
        a, df, db = np.maximum(a, 1e-3), np.maximum(df, 1e-3), np.maximum(db, 1e-3)
        valid = ((zc >= keys[0, 0]) & (zc <= keys[-1, 0]))[:, None, None]
        u = np.abs(x - cx) / a  # (nk, 1, ni)
        dy = y - ym  # (nk, nj, 1)
        front = dy < 0
        if np.all(keys[:, 6] == 2.0) and np.all(keys[:, 7] == 2.0):
            v = np.where(front, dy / df, dy / db)
            return ((u * u + v * v) <= 1.0) & valid
        vf = (np.maximum(-dy, 0) / df) ** pf
        vb = (np.maximum(dy, 0) / db) ** pb
        return (np.where(front, u**pf + vf, u**pb + vb) <= 1.0) & valid


class Tube(Shape):
    """Union of capsules along a polyline, the radius varying linearly along each segment (a cone if it grows)."""

    def __init__(self, points: Sequence[Sequence[float]], radii: float | Sequence[float]) -> None:
        self.points = np.asarray(points, float)
        self.radii = np.broadcast_to(np.asarray(radii, float), (len(self.points),)).copy()
        r = self.radii[:, None]
        self.lo = np.min(self.points - r, axis=0)
        self.hi = np.max(self.points + r, axis=0)

    def grown(self, d: float) -> Tube:
        return Tube(self.points, np.maximum(self.radii + d, 1e-3))

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        xs, ys, zs = x.ravel(), y.ravel(), z.ravel()
        out = np.zeros((zs.size, ys.size, xs.size), bool)
        for a, b, ra, rb in zip(self.points[:-1], self.points[1:], self.radii[:-1], self.radii[1:], strict=True):
            r = max(ra, rb)
            lo, hi = np.minimum(a, b) - r, np.maximum(a, b) + r
            i0, i1 = _span(xs, lo[0], hi[0])
            j0, j1 = _span(ys, lo[1], hi[1])
            k0, k1 = _span(zs, lo[2], hi[2])
            if i1 <= i0 or j1 <= j0 or k1 <= k0:
                continue
            px = xs[None, None, i0:i1] - np.float32(a[0])
            py = ys[None, j0:j1, None] - np.float32(a[1])
            pz = zs[k0:k1, None, None] - np.float32(a[2])
            u = (b - a).astype(np.float32)
            t = np.clip((px * u[0] + py * u[1] + pz * u[2]) / np.float32(max(float(u @ u), 1e-9)), 0.0, 1.0)
            d2 = (px - t * u[0]) ** 2 + (py - t * u[1]) ** 2 + (pz - t * u[2]) ** 2
            rad = np.float32(ra) + t * np.float32(rb - ra)
            out[k0:k1, j0:j1, i0:i1] |= d2 <= rad * rad
        return out


class SweptEllipse(Shape):
    """An ellipse swept along a curve lying in an axial plane: the mandible, dental arches, lips, hyoid.

    At each point of the polyline ``curve_xy`` the cross-section is an ellipse with horizontal half-width
    ``half_width`` (across the curve) and vertical half-height ``half_height`` centred at ``z_centre``; all
    three are interpolated along each segment.
    """

    def __init__(
        self,
        curve_xy: Sequence[Sequence[float]],
        z_centre: float | Sequence[float],
        half_width: float | Sequence[float],
        half_height: float | Sequence[float],
    ) -> None:
        self.curve = np.asarray(curve_xy, float)
        n = len(self.curve)
        self.zc = np.broadcast_to(np.asarray(z_centre, float), (n,)).copy()
        self.sh = np.broadcast_to(np.asarray(half_width, float), (n,)).copy()
        self.sv = np.broadcast_to(np.asarray(half_height, float), (n,)).copy()
        r = self.sh.max()
        self.lo = np.array([*(self.curve.min(axis=0) - r), np.min(self.zc - self.sv)])
        self.hi = np.array([*(self.curve.max(axis=0) + r), np.max(self.zc + self.sv)])

    def grown(self, d: float) -> SweptEllipse:
        return SweptEllipse(self.curve, self.zc, np.maximum(self.sh + d, 1e-3), np.maximum(self.sv + d, 1e-3))

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        xs, ys, zs = x.ravel(), y.ravel(), z.ravel()
        out = np.zeros((zs.size, ys.size, xs.size), bool)
        for s in range(len(self.curve) - 1):
            a, b = self.curve[s], self.curve[s + 1]
            r = max(self.sh[s], self.sh[s + 1])
            i0, i1 = _span(xs, min(a[0], b[0]) - r, max(a[0], b[0]) + r)
            j0, j1 = _span(ys, min(a[1], b[1]) - r, max(a[1], b[1]) + r)
            k0, k1 = _span(
                zs,
                min(self.zc[s] - self.sv[s], self.zc[s + 1] - self.sv[s + 1]),
                max(self.zc[s] + self.sv[s], self.zc[s + 1] + self.sv[s + 1]),
            )
            if i1 <= i0 or j1 <= j0 or k1 <= k0:
                continue
            px = xs[None, i0:i1] - np.float32(a[0])  # (1, ni)
            py = ys[j0:j1, None] - np.float32(a[1])  # (nj, 1)
            u = (b - a).astype(np.float32)
            t = np.clip((px * u[0] + py * u[1]) / np.float32(max(float(u @ u), 1e-9)), 0.0, 1.0)
            dh2 = (px - t * u[0]) ** 2 + (py - t * u[1]) ** 2
            zc = np.float32(self.zc[s]) + t * np.float32(self.zc[s + 1] - self.zc[s])
            sh = np.float32(self.sh[s]) + t * np.float32(self.sh[s + 1] - self.sh[s])
            sv = np.float32(self.sv[s]) + t * np.float32(self.sv[s + 1] - self.sv[s])
            dz = zs[k0:k1, None, None] - zc[None]
            out[k0:k1, j0:j1, i0:i1] |= (dh2 / (sh * sh))[None] + dz * dz / (sv * sv)[None] <= 1.0
        return out


class HalfSpace(Shape):
    """Points on the side of the plane through ``point`` that ``normal`` points to."""

    def __init__(self, point: Sequence[float], normal: Sequence[float]) -> None:
        self.point = np.asarray(point, float)
        self.normal = np.asarray(normal, float) / np.linalg.norm(normal)
        self.lo, self.hi = np.full(3, -_INF), np.full(3, _INF)

    def grown(self, d: float) -> HalfSpace:
        return HalfSpace(self.point - d * self.normal, self.normal)

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        p, n = self.point, self.normal.astype(np.float32)
        return (x - np.float32(p[0])) * n[0] + (y - np.float32(p[1])) * n[1] + (z - np.float32(p[2])) * n[2] >= 0


class AboveSurface(Shape):
    """Points above a height field ``z >= height(x, y)`` (``height`` even in x keeps the atlas symmetric)."""

    def __init__(self, height: Callable[[np.ndarray, np.ndarray], np.ndarray], offset_mm: float = 0.0) -> None:
        self.height, self.offset = height, float(offset_mm)
        self.lo, self.hi = np.full(3, -_INF), np.full(3, _INF)

    def grown(self, d: float) -> AboveSurface:
        return AboveSurface(self.height, self.offset - d)

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        return z >= self.height(x, y) + np.float32(self.offset)


class Box(Shape):
    """Axis-aligned box (infinite bounds allowed): slabs that cut a solid at given levels."""

    def __init__(self, lo: Sequence[float], hi: Sequence[float]) -> None:
        self.lo, self.hi = np.asarray(lo, float), np.asarray(hi, float)

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        lo, hi = self.lo, self.hi
        return ((x >= lo[0]) & (x <= hi[0])) & ((y >= lo[1]) & (y <= hi[1])) & ((z >= lo[2]) & (z <= hi[2]))


class Union(Shape):
    def __init__(self, *parts: Shape) -> None:
        self.parts = parts
        self.lo = np.min([p.lo for p in parts], axis=0)
        self.hi = np.max([p.hi for p in parts], axis=0)

    def grown(self, d: float) -> Union:
        return Union(*(p.grown(d) for p in self.parts))

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        out = _evaluate(self.parts[0], x.ravel(), y.ravel(), z.ravel())
        for p in self.parts[1:]:
            out |= _evaluate(p, x.ravel(), y.ravel(), z.ravel())
        return out


class Intersection(Shape):
    def __init__(self, *parts: Shape) -> None:
        self.parts = parts
        self.lo = np.max([p.lo for p in parts], axis=0)
        self.hi = np.min([p.hi for p in parts], axis=0)

    def grown(self, d: float) -> Intersection:
        return Intersection(*(p.grown(d) for p in self.parts))

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        out = _evaluate(self.parts[0], x.ravel(), y.ravel(), z.ravel())
        for p in self.parts[1:]:
            out &= _evaluate(p, x.ravel(), y.ravel(), z.ravel())
        return out


class Difference(Shape):
    def __init__(self, base: Shape, removed: Shape) -> None:
        self.base, self.removed = base, removed
        self.lo, self.hi = base.lo, base.hi

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        xs, ys, zs = x.ravel(), y.ravel(), z.ravel()
        return _evaluate(self.base, xs, ys, zs) & ~_evaluate(self.removed, xs, ys, zs)


class MirrorX(Shape):
    """The mirror image (x -> -x) of a solid, evaluated at exactly negated coordinates (exact symmetry)."""

    def __init__(self, shape: Shape) -> None:
        self.shape = shape
        self.lo = np.array([-shape.hi[0], shape.lo[1], shape.lo[2]])
        self.hi = np.array([-shape.lo[0], shape.hi[1], shape.hi[2]])

    def grown(self, d: float) -> MirrorX:
        return MirrorX(self.shape.grown(d))

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        mirrored = np.ascontiguousarray(-x.ravel()[::-1])
        return _evaluate(self.shape, mirrored, y.ravel(), z.ravel())[:, :, ::-1]


def both_sides(shape: Shape) -> Shape:
    """A solid described on the patient's left together with its mirror image on the right."""
    return Union(shape, MirrorX(shape))


# ----------------------------------------------------------------------------------------------------------
# The painter
# ----------------------------------------------------------------------------------------------------------


class _Canvas:
    """The label volume being painted, on the grid ``zs x ys x xs`` (1-D ascending LPS coordinates)."""

    _CHUNK_VOXELS = 4_000_000

    def __init__(self, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray) -> None:
        self.xs, self.ys, self.zs = xs, ys, zs
        self.labels = np.zeros((zs.size, ys.size, xs.size), np.uint8)
        self.boxes: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # label -> (lo, hi) index box (k, j, i)

    def paint(self, shape: Shape, tissue: str, over: Sequence[str] = INSIDE) -> None:
        """Give ``tissue`` to the voxels inside ``shape`` that now carry one of the tissues in ``over``."""
        label = _TISSUE_ID[tissue]
        allowed = np.zeros(256, bool)
        allowed[[_TISSUE_ID[t] for t in over]] = True
        i0, i1 = _span(self.xs, shape.lo[0], shape.hi[0])
        j0, j1 = _span(self.ys, shape.lo[1], shape.hi[1])
        k0, k1 = _span(self.zs, shape.lo[2], shape.hi[2])
        if i1 <= i0 or j1 <= j0 or k1 <= k0:
            return
        step = max(1, self._CHUNK_VOXELS // ((j1 - j0) * (i1 - i0)))
        xs, ys = self.xs[i0:i1], self.ys[j0:j1]
        for ka in range(k0, k1, step):
            kb = min(k1, ka + step)
            inside = _evaluate(shape, xs, ys, self.zs[ka:kb])
            sub = self.labels[ka:kb, j0:j1, i0:i1]
            inside &= allowed[sub]
            if inside.any():
                sub[inside] = label
                self._grow_box(label, np.array([ka, j0, i0]), np.array([kb, j1, i1]))

    def _grow_box(self, label: int, lo: np.ndarray, hi: np.ndarray) -> None:
        if label in self.boxes:
            blo, bhi = self.boxes[label]
            lo, hi = np.minimum(lo, blo), np.maximum(hi, bhi)
        self.boxes[label] = (lo, hi)

    def bone(
        self,
        shape: Shape,
        cortex_mm: float,
        cortex: str = "bone_cortical",
        marrow: str = "bone_diploe",
        over: Sequence[str] = SOFT,
    ) -> None:
        """A bone: a cancellous core inside a cortical shell, displacing only ``over`` (never other bone)."""
        self.paint(shape.grown(-cortex_mm), marrow, over)
        self.paint(shape, cortex, over)

    def carve(self, shape: Shape, tissue: str, wall_mm: float = 1.2, over: Sequence[str] = BONES + SOFT) -> None:
        """A cavity in bone (sinus, orbit, canal) whose bony wall is cortical where it crosses cancellous bone."""
        if wall_mm > 0:
            self.paint(shape.grown(wall_mm), "bone_cortical", CANCELLOUS)
        self.paint(shape, tissue, over)


# ----------------------------------------------------------------------------------------------------------
# Anatomy: key dimensions shared by several regions (LPS mm, left side where lateral)
# ----------------------------------------------------------------------------------------------------------

# Cranium: the head's skin dome and the skull's outer table are super-ellipsoids about the same centre.
_HEAD_CENTRE = (0.0, 2.0, -82.0)
_HEAD_DOME = Ellipsoid(_HEAD_CENTRE, (78.0, 98.0, 82.0), p_xy=2.1, p_z=2.2)
_SCALP_MM, _SKULL_MM = 5.0, 6.5
_SKULL_OUTER = _HEAD_DOME.grown(-_SCALP_MM)
_CRANIAL_CAVITY_TOP_Z = -(_SCALP_MM + _SKULL_MM)
_FORAMEN_MAGNUM_Z = -146.0

_EYE_CENTRE = (32.0, -74.0, -108.0)
_EYE_RADIUS = 12.0
_LENS_CENTRE = (32.0, -81.0, -108.0)
_OPTIC_APEX = (14.0, -38.0, -105.0)  # orbital apex, entrance of the optic canal
_CHIASM = (0.0, -18.0, -99.0)
_PITUITARY = (0.0, -20.0, -110.0)
_COCHLEA = (30.0, -2.0, -122.0)
_EAM_Z = -124.0
_TMJ = (50.0, -12.0, -128.0)  # condyle centre
_BASION = (0.0, 12.0, _FORAMEN_MAGNUM_Z)
_OCCLUSAL_Z = -185.5


@dataclass(frozen=True)
class _Vertebra:
    name: str
    z_top: float
    z_bottom: float
    y_body: float  # centre of the body
    body_half_width: float
    body_half_depth: float
    canal_half_width: float
    canal_half_depth: float
    spinous_length: float
    spinous_drop: float

    @property
    def z_mid(self) -> float:
        return 0.5 * (self.z_top + self.z_bottom)

    @property
    def y_canal(self) -> float:
        return self.y_body + self.body_half_depth + 1.0 + self.canal_half_depth

    @property
    def thoracic(self) -> bool:
        return self.name.startswith("T")


# C2 to T5 with a mild cervical lordosis and the start of the thoracic kyphosis (bodies move back below C5).
_VERTEBRAE: tuple[_Vertebra, ...] = (
    _Vertebra("C2", -166.0, -198.0, 14.0, 8.5, 8.0, 12.0, 8.0, 22.0, 6.0),
    _Vertebra("C3", -203.0, -217.0, 12.0, 9.0, 7.5, 12.5, 7.5, 16.0, 6.0),
    _Vertebra("C4", -222.0, -236.0, 11.0, 9.5, 7.5, 12.5, 7.5, 16.0, 6.0),
    _Vertebra("C5", -241.0, -255.0, 11.0, 10.0, 8.0, 13.0, 7.5, 17.0, 7.0),
    _Vertebra("C6", -260.0, -274.0, 13.0, 11.0, 8.0, 13.0, 7.5, 22.0, 8.0),
    _Vertebra("C7", -279.0, -294.0, 16.0, 12.0, 8.5, 12.5, 7.5, 30.0, 10.0),
    _Vertebra("T1", -299.0, -316.0, 20.0, 13.0, 9.5, 10.5, 8.0, 32.0, 16.0),
    _Vertebra("T2", -321.0, -339.0, 26.0, 13.5, 10.5, 9.0, 8.0, 32.0, 20.0),
    _Vertebra("T3", -344.0, -363.0, 32.0, 14.0, 11.5, 8.5, 8.0, 32.0, 22.0),
    _Vertebra("T4", -368.0, -387.0, 38.0, 14.5, 12.0, 8.5, 8.0, 32.0, 22.0),
    _Vertebra("T5", -392.0, -411.0, 44.0, 15.0, 12.5, 8.5, 8.0, 32.0, 22.0),
)
_LEVEL = {v.name: v for v in _VERTEBRAE}

# Dental arches (the teeth's centres) from the midline back, left side; the upper arch overlaps the lower.
_LOWER_ARCH = (
    (0.0, -78.0),
    (11.0, -76.5),
    (20.0, -71.0),
    (27.0, -62.5),
    (32.5, -51.5),
    (37.0, -39.5),
    (40.5, -27.0),
    (43.0, -15.0),
)
_UPPER_ARCH = (
    (0.0, -80.5),
    (12.0, -79.0),
    (21.5, -73.0),
    (29.0, -64.0),
    (35.0, -52.5),
    (39.5, -40.0),
    (43.0, -27.0),
    (45.5, -14.5),
)
# (mesiodistal width, buccolingual depth, crown height, root length) from the central incisor to the 2nd molar
_LOWER_TEETH = (
    (5.4, 5.8, 9.0, 12.5),
    (5.9, 6.2, 9.0, 14.0),
    (6.9, 7.5, 10.0, 16.0),
    (7.0, 7.7, 8.5, 14.0),
    (7.1, 8.0, 8.0, 14.5),
    (11.2, 10.3, 7.5, 14.0),
    (10.5, 10.0, 7.0, 13.0),
)
_UPPER_TEETH = (
    (8.6, 7.0, 10.5, 13.0),
    (6.6, 6.5, 9.0, 13.0),
    (7.6, 8.0, 10.0, 17.0),
    (7.0, 9.0, 8.5, 14.0),
    (6.8, 9.0, 7.5, 14.0),
    (10.3, 11.5, 7.5, 13.0),
    (9.5, 11.0, 7.0, 13.0),
)
_FIRST_MOLAR = 5


# ----------------------------------------------------------------------------------------------------------
# Regions (painted in this order by _paint_atlas)
# ----------------------------------------------------------------------------------------------------------

# z, y of the widest point, half width, front distance, back distance, front and back exponents,
# subcutaneous fat laterally, in front, behind (the skin itself is 1.5 mm on top of the fat).
_BODY_ROWS = (
    (-104.0, 2.0, 76.0, 95.5, 95.5, 2.1, 2.1, 3.0, 3.0, 3.0),
    (-115.0, 2.0, 73.5, 95.0, 92.0, 2.1, 2.2, 3.0, 4.0, 3.5),
    (-125.0, 3.0, 71.0, 95.0, 88.0, 2.1, 2.2, 3.5, 5.0, 4.0),
    (-140.0, 4.0, 70.0, 95.0, 84.0, 2.2, 2.3, 4.0, 7.0, 5.0),
    (-155.0, 4.0, 69.0, 96.0, 80.0, 2.3, 2.3, 5.0, 7.0, 6.0),
    (-170.0, 6.0, 66.0, 100.0, 70.0, 2.4, 2.3, 5.0, 5.0, 7.0),
    (-185.0, 6.0, 63.0, 102.0, 64.0, 2.4, 2.3, 5.0, 4.0, 8.0),
    (-200.0, 6.0, 60.0, 102.0, 61.0, 2.3, 2.3, 5.0, 5.0, 8.0),
    (-212.0, 6.0, 58.0, 101.0, 60.0, 2.2, 2.3, 5.0, 6.0, 8.0),
    (-222.0, 8.0, 56.0, 99.0, 58.0, 2.1, 2.3, 5.0, 7.0, 8.0),
    (-230.0, 8.0, 55.0, 88.0, 58.0, 2.1, 2.3, 5.0, 7.0, 9.0),
    (-238.0, 8.0, 55.0, 74.0, 58.0, 2.1, 2.3, 5.0, 6.0, 9.0),
    (-250.0, 8.0, 55.0, 68.0, 60.0, 2.2, 2.3, 5.5, 5.0, 10.0),
    (-270.0, 8.0, 57.0, 68.0, 62.0, 2.2, 2.3, 6.0, 5.0, 10.0),
    (-283.0, 10.0, 62.0, 71.0, 64.0, 2.3, 2.4, 7.0, 5.0, 11.0),
    (-291.0, 12.0, 85.0, 75.0, 68.0, 2.5, 2.5, 8.0, 6.0, 12.0),
    (-298.0, 14.0, 122.0, 82.0, 74.0, 2.8, 2.6, 10.0, 7.0, 13.0),
    (-304.0, 16.0, 152.0, 90.0, 80.0, 3.0, 2.7, 11.0, 8.0, 14.0),
    (-312.0, 18.0, 176.0, 100.0, 84.0, 3.0, 2.8, 12.0, 9.0, 14.0),
    (-325.0, 20.0, 188.0, 110.0, 88.0, 3.2, 2.8, 12.0, 10.0, 14.0),
    (-345.0, 20.0, 192.0, 115.0, 90.0, 3.2, 2.8, 12.0, 10.0, 14.0),
    (-402.0, 20.0, 192.0, 120.0, 92.0, 3.2, 2.8, 12.0, 10.0, 14.0),
)


def _body_loft(inset_lat: float, inset_front: float, inset_back: float, fat: bool) -> Loft:
    rows = []
    for z, ym, a, df, db, pf, pb, f_lat, f_front, f_back in _BODY_ROWS:
        extra = (f_lat, f_front, f_back) if fat else (0.0, 0.0, 0.0)
        rows.append(
            (z, 0.0, ym, a - inset_lat - extra[0], df - inset_front - extra[1], db - inset_back - extra[2], pf, pb)
        )
    return Loft(rows)


def _shoulder_top(x: float) -> tuple[float, float]:
    """Highest z of the skin above lateral position ``x`` on the shoulders, and the y where it is reached."""
    rows = np.array([(r[0], r[1], r[2]) for r in _BODY_ROWS if r[0] <= -270.0])  # z, y of the widest point, half width
    z = float(np.interp(x, rows[:, 2], rows[:, 0]))  # from the neck down the half width only grows
    return z, float(np.interp(z, rows[::-1, 0], rows[::-1, 1]))


def _paint_body(c: _Canvas) -> None:
    """Skin, subcutaneous fat (a few mm on the scalp, thicker on the neck, back and shoulders) and muscle."""
    nose = Loft(
        [
            (-100.0, 0.0, -88.0, 5.0, 7.0, 4.0, 1.6, 2.0),
            (-112.0, 0.0, -88.0, 6.5, 12.0, 6.0, 1.5, 2.0),
            (-130.0, 0.0, -89.0, 8.0, 17.0, 6.0, 1.4, 2.0),
            (-148.0, 0.0, -91.0, 11.0, 24.0, 6.0, 1.4, 2.0),
            (-155.0, 0.0, -93.0, 15.0, 24.0, 6.0, 1.6, 2.0),
            (-161.0, 0.0, -95.0, 15.0, 20.0, 6.0, 1.8, 2.0),
            (-166.0, 0.0, -95.0, 8.0, 8.0, 6.0, 2.0, 2.0),
            (-168.0, 0.0, -95.0, 4.0, 3.0, 3.0, 2.0, 2.0),
        ]
    )
    ears = both_sides(Ellipsoid((72.0, 10.0, -121.0), (4.5, 14.0, 25.0), rotation=rotation_matrix("z", 15.0)))
    c.paint(Union(_HEAD_DOME, _body_loft(0.0, 0.0, 0.0, False), nose, ears), "skin", ("outside",))
    c.paint(Union(_HEAD_DOME.grown(-1.5), _body_loft(1.5, 1.5, 1.5, False)), "fat", ("skin",))
    c.paint(Union(_HEAD_DOME.grown(-4.5), _body_loft(1.5, 1.5, 1.5, True)), "muscle", ("fat",))
    nostrils = both_sides(Tube([(6.5, -112.0, -162.0), (8.0, -104.0, -157.0), (9.0, -92.0, -152.0)], 3.2))
    c.paint(nostrils, "air", ("skin", "muscle", "fat"))


def _paint_soft_tissue_planes(c: _Canvas) -> None:
    """Fat spaces between the neck's muscles and the muscles that stand out against them."""
    fat_spaces = [
        both_sides(Ellipsoid((23.0, -14.0, -160.0), (6.0, 9.0, 16.0))),  # parapharyngeal
        both_sides(Ellipsoid((38.0, -50.0, -168.0), (8.0, 9.0, 12.0))),  # buccal
        Ellipsoid((0.0, -50.0, -233.0), (26.0, 18.0, 8.0)),  # submental
        both_sides(Ellipsoid((32.0, -28.0, -229.0), (13.0, 16.0, 12.0))),  # submandibular space
        both_sides(Ellipsoid((31.0, -6.0, -255.0), (11.0, 10.0, 40.0))),  # carotid space
        both_sides(Ellipsoid((44.0, 22.0, -262.0), (12.0, 14.0, 36.0))),  # posterior cervical triangle
        both_sides(Ellipsoid((62.0, 2.0, -302.0), (28.0, 22.0, 16.0))),  # supraclavicular fossa
        Ellipsoid((0.0, -32.0, -385.0), (30.0, 45.0, 45.0)),  # superior mediastinum
        both_sides(Ellipsoid((128.0, 36.0, -385.0), (24.0, 32.0, 30.0))),  # axilla
    ]
    for space in fat_spaces:
        c.paint(space, "fat", ("muscle",))
    sternocleidomastoid = Tube(
        [
            (52.0, 20.0, -142.0),
            (50.0, 4.0, -195.0),
            (45.0, -16.0, -250.0),
            (33.0, -46.0, -295.0),
            (20.0, -68.0, -322.0),
        ],
        [7.0, 8.0, 7.5, 6.5, 5.0],
    )
    scalene_anterior = Tube([(24.0, 6.0, -235.0), (33.0, -2.0, -275.0), (42.0, -10.0, -312.0)], [4.0, 5.0, 5.0])
    scalene_middle = Tube([(26.0, 16.0, -225.0), (38.0, 14.0, -270.0), (50.0, 10.0, -310.0)], [4.0, 5.5, 5.0])
    for muscle in (sternocleidomastoid, scalene_anterior, scalene_middle):
        c.paint(both_sides(muscle), "muscle", SOFT)


def _skull_base_height(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Lower edge of the calvarium (z, mm): the nasion level in front, the foramen magnum level behind.

    A plane rising towards the face, lowered laterally in front (the middle cranial fossae reach forward
    beside the orbits) and behind (the cerebellar hemispheres sit deep beside the foramen magnum).
    """
    x2 = x * x
    front = np.clip((-5.0 - y) / 30.0, 0.0, 1.0)
    back = np.clip((y - 10.0) / 30.0, 0.0, 1.0)
    return -100.0 - 0.3 * (y + 90.0) - x2 * (0.006 * front + 0.004 * back)


def _skull_cut(rise_mm: float = 0.0) -> AboveSurface:
    return AboveSurface(_skull_base_height, rise_mm)


def _paint_skull(c: _Canvas) -> None:
    """Calvarium (cortical tables around the diploe), skull base, facial skeleton, palate and mastoids."""
    c.paint(Intersection(_SKULL_OUTER, _skull_cut()), "bone_cortical", SOFT)
    c.paint(Intersection(_SKULL_OUTER.grown(-1.8), _skull_cut(1.8)), "bone_diploe", ("bone_cortical",))
    c.paint(Intersection(_SKULL_OUTER.grown(-5.2), _skull_cut(5.2)), "bone_cortical", ("bone_diploe",))

    skull_base = [
        Ellipsoid((0.0, -88.0, -92.0), (22.0, 9.0, 13.0)),  # glabella (holds the frontal sinus)
        Ellipsoid((0.0, -58.0, -112.0), (40.0, 24.0, 14.0), 2.5, 2.5),  # orbital walls, ethmoid
        Ellipsoid((0.0, -56.0, -143.0), (40.0, 29.0, 15.0), 2.0, 2.5),  # maxilla (sinuses carved later)
        Ellipsoid((0.0, -26.0, -124.0), (17.0, 20.0, 13.0), 2.5, 2.5),  # sphenoid body
        Ellipsoid((0.0, 35.0, -143.0), (42.0, 30.0, 8.0), 2.5, 2.0),  # occipital bone around the foramen magnum
        both_sides(Ellipsoid((40.0, 4.0, -129.0), (20.0, 22.0, 6.0))),  # temporal bone under the middle fossa
        both_sides(Ellipsoid((48.0, -60.0, -124.0), (9.0, 11.0, 13.0))),  # zygomatic body
        both_sides(Tube([(47.0, -70.0, -112.0), (48.0, -75.0, -96.0)], 4.0)),  # lateral orbital rim
        both_sides(Tube([(50.0, -52.0, -127.0), (58.0, -38.0, -128.0), (62.0, -22.0, -126.0)], 3.5)),  # arch
        both_sides(Ellipsoid((50.0, 18.0, -136.0), (11.0, 14.0, 15.0))),  # mastoid process
        both_sides(Ellipsoid((14.0, 16.0, -148.0), (7.0, 11.0, 5.0))),  # occipital condyle
        both_sides(Ellipsoid((16.0, -26.0, -150.0), (5.0, 6.0, 16.0))),  # pterygoid plates
        both_sides(Tube([(4.0, -95.0, -104.0), (6.0, -101.0, -128.0)], 2.5)),  # nasal bones
        both_sides(SweptEllipse(_UPPER_ARCH, -172.0, 6.5, 8.0)),  # upper alveolar process
        Ellipsoid((0.0, -50.0, -164.0), (24.0, 27.0, 3.2), 2.5, 2.0),  # hard palate
    ]
    for part in skull_base:
        c.bone(part, 1.5)


def _paint_spine(c: _Canvas) -> None:
    """C1-T5: bodies and discs, arches, spinous and transverse processes, articular pillars (the canal and
    cord are carved later)."""
    vertebral = {"cortex": "vertebra_cortex", "marrow": "vertebra_marrow"}
    # atlas (C1) and dens
    c.bone(Tube([(0.0, 16.0, -190.0), (0.0, 16.0, -153.0)], 5.5), 1.2, **vertebral)
    ring = Difference(
        Loft([(-161.0, 0.0, 28.0, 22.0, 22.0, 22.0), (-153.0, 0.0, 28.0, 22.0, 22.0, 22.0)]),
        Loft([(-162.0, 0.0, 29.0, 16.0, 17.5, 17.5), (-152.0, 0.0, 29.0, 16.0, 17.5, 17.5)]),
    )
    c.paint(ring, "vertebra_cortex", SOFT)
    c.bone(both_sides(Ellipsoid((18.0, 19.0, -157.0), (7.5, 10.0, 7.0))), 1.5, **vertebral)
    c.bone(both_sides(Tube([(22.0, 19.0, -157.0), (36.0, 18.0, -157.0)], 4.5)), 1.5, **vertebral)

    for upper, lower in itertools.pairwise(_VERTEBRAE):
        disc = Loft.tube(
            [
                (upper.z_bottom, 0.0, upper.y_body, upper.body_half_width, upper.body_half_depth),
                (lower.z_top, 0.0, lower.y_body, lower.body_half_width, lower.body_half_depth),
            ],
            p=2.3,
        )
        c.paint(disc, "disc", SOFT)
    for v in _VERTEBRAE:
        body = Loft.tube(
            [
                (v.z_bottom, 0.0, v.y_body, v.body_half_width, v.body_half_depth),
                (v.z_top, 0.0, v.y_body, v.body_half_width, v.body_half_depth),
            ],
            p=2.3,
        )
        c.bone(body, 1.5, **vertebral)
        z_arch_top, z_arch_bottom = v.z_top - 1.5, v.z_bottom - 2.5
        arch = Loft.tube(
            [
                (z_arch_bottom, 0.0, v.y_canal, v.canal_half_width + 5.0, v.canal_half_depth + 4.5),
                (z_arch_top, 0.0, v.y_canal, v.canal_half_width + 5.0, v.canal_half_depth + 4.5),
            ]
        )
        c.paint(arch, "vertebra_cortex", SOFT)
        lamina_back = v.y_canal + v.canal_half_depth + 3.0
        spinous = Tube(
            [(0.0, lamina_back, v.z_mid - 2.0), (0.0, lamina_back + v.spinous_length, v.z_mid - 2.0 - v.spinous_drop)],
            [5.0 if v.thoracic else 4.0, 4.0 if v.thoracic else 3.0],
        )
        c.bone(spinous, 1.2, **vertebral)
        if v.thoracic:
            transverse = Tube(
                [
                    (v.canal_half_width + 1.0, v.y_canal - 2.0, v.z_mid),
                    (v.canal_half_width + 20.0, v.y_canal + 8.0, v.z_mid + 2.0),
                ],
                5.0,
            )
        else:
            reach = 17.0 if v.name == "C7" else 13.0
            transverse = Tube(
                [(v.canal_half_width + 1.0, v.y_body + 2.0, v.z_mid), (v.canal_half_width + reach, v.y_body, v.z_mid)],
                3.5 if v.name != "C2" else 4.0,
            )
        c.bone(both_sides(transverse), 1.2, **vertebral)
    pillar_rows = []
    for v in _VERTEBRAE:
        size = (5.0, 5.0) if v.thoracic else (5.5, 6.5)
        pillar_rows.append((v.z_mid, v.canal_half_width + 6.5, v.y_canal + (3.0 if v.thoracic else 1.0), *size))
    pillar_rows.append((-160.0, 19.0, 30.0, 5.5, 6.5))
    c.bone(both_sides(Loft.tube(pillar_rows)), 1.3, **vertebral)


def _spinal_canal() -> tuple[Loft, Loft]:
    """The dural sac (CSF) and the spinal cord from the foramen magnum down."""
    canal = [
        (-124.0, 0.0, 24.0, 15.0, 15.0),
        (-138.0, 0.0, 29.0, 15.0, 17.0),
        (-148.0, 0.0, 31.0, 14.5, 15.0),
        (-157.0, 0.0, 32.0, 13.0, 11.0),
    ]
    cord = [(_FORAMEN_MAGNUM_Z - 2.0, 0.0, 30.0, 6.5, 5.5), (-157.0, 0.0, 32.0, 6.3, 5.0)]
    for v in _VERTEBRAE:
        canal.append((v.z_mid, 0.0, v.y_canal, v.canal_half_width, v.canal_half_depth))
        if v.name in ("C5", "C6"):
            half = (7.0, 4.8)
        elif v.thoracic:
            half = (5.0, 4.2) if v.name == "T1" else (4.4, 4.0)
        else:
            half = (6.0, 4.5)
        cord.append((v.z_mid, 0.0, v.y_canal + 0.5, *half))
    return Loft.tube(canal), Loft.tube(cord)


_RIBS = (  # half axes (lateral, antero-posterior), centre y, level of the head, drop to the front, arc
    (54.0, 60.0, -15.0, "T1", 30.0, 0.75, 2.75),
    (82.0, 78.0, 0.0, "T2", 45.0, 0.55, 2.80),
    (98.0, 88.0, 5.0, "T3", 55.0, 0.50, 2.85),
    (108.0, 95.0, 8.0, "T4", 60.0, 0.45, 2.85),
)


def _paint_thoracic_inlet(c: _Canvas) -> None:
    """Lung apices, first four ribs, clavicles, manubrium, scapulae and humeral heads."""
    lung = Loft.tube(
        [
            (-303.0, 36.0, 12.0, 0.5, 0.5),
            (-308.0, 36.0, 12.0, 9.0, 11.0),
            (-316.0, 37.0, 12.0, 14.0, 18.0),
            (-326.0, 40.0, 12.0, 20.0, 26.0),
            (-340.0, 46.0, 13.0, 28.0, 38.0),
            (-360.0, 53.0, 14.0, 37.0, 50.0),
            (-380.0, 57.0, 15.0, 42.0, 56.0),
            (-402.0, 60.0, 16.0, 45.0, 60.0),
        ]
    )
    c.paint(both_sides(Intersection(lung, HalfSpace((15.0, 0.0, 0.0), (1.0, 0.0, 0.0)))), "lung", SOFT)
    long_bone = {"marrow": "bone_marrow", "over": (*SOFT, "lung")}
    for half_x, half_y, cy, level, drop, t0, t1 in _RIBS:
        v = _LEVEL[level]
        tip = (v.canal_half_width + 20.0, v.y_canal + 8.0, v.z_mid + 2.0)
        ts = np.linspace(t0, t1, 12)
        arc = [(half_x * math.sin(t), cy + half_y * math.cos(t), v.z_mid - drop * (1 - math.cos(t)) / 2) for t in ts]
        c.bone(both_sides(Tube([tip, *arc], 5.0)), 1.8, **long_bone)
    clavicle = Tube(
        [
            (20.0, -70.0, -325.0),
            (45.0, -72.0, -321.0),
            (75.0, -64.0, -316.0),
            (105.0, -48.0, -312.0),
            (130.0, -25.0, -312.0),
            (150.0, -2.0, -314.0),
            (160.0, 14.0, -316.0),
        ],
        [8.0, 7.5, 7.0, 6.5, 6.5, 6.5, 7.0],
    )
    c.bone(both_sides(clavicle), 2.0, **long_bone)
    c.bone(Ellipsoid((0.0, -80.0, -345.0), (26.0, 7.0, 22.0), 2.5, 2.5), 1.5, **long_bone)  # manubrium
    c.bone(Ellipsoid((0.0, -86.0, -395.0), (16.0, 6.0, 28.0), 2.5, 2.5), 1.5, **long_bone)  # sternal body
    scapula = Ellipsoid((105.0, 80.0, -375.0), (36.0, 3.5, 52.0), 4.0, 3.0, rotation=rotation_matrix("z", -23.0))
    c.bone(both_sides(scapula), 1.2, **long_bone)
    spine_and_acromion = Tube(
        [(80.0, 92.0, -336.0), (135.0, 80.0, -328.0), (155.0, 55.0, -318.0), (165.0, 25.0, -316.0)],
        [5.0, 5.5, 6.0, 6.0],
    )
    c.bone(both_sides(spine_and_acromion), 1.5, **long_bone)
    c.bone(both_sides(Ellipsoid((136.0, 38.0, -348.0), (8.0, 14.0, 16.0))), 1.5, **long_bone)  # glenoid neck
    humerus = Union(
        Ellipsoid((158.0, 30.0, -348.0), (22.0, 22.0, 22.0)), Tube([(160.0, 31.0, -350.0), (166.0, 35.0, -420.0)], 12.0)
    )
    c.bone(both_sides(humerus), 2.0, **long_bone)


def _lower_teeth_and_upper() -> tuple[list[Shape], list[Shape], np.ndarray]:
    """Crowns and roots of the lower and upper teeth (left side), and the lower first molar's crown centre."""
    lower, upper = [], []
    molar = np.zeros(3)
    for arch, sizes, jaw in ((_LOWER_ARCH, _LOWER_TEETH, lower), (_UPPER_ARCH, _UPPER_TEETH, upper)):
        pts = np.asarray(arch, float)
        seg = np.diff(pts, axis=0)
        cum = np.concatenate([[0.0], np.cumsum(np.hypot(seg[:, 0], seg[:, 1]))])
        s = 0.0
        for n, (width, depth, crown, root) in enumerate(sizes):
            s_mid = s + width / 2.0 + 0.15
            s += width + 0.3
            x, y = np.interp(s_mid, cum, pts[:, 0]), np.interp(s_mid, cum, pts[:, 1])
            i = min(int(np.searchsorted(cum, s_mid)) - 1, len(seg) - 1)
            angle = math.degrees(math.atan2(seg[i, 1], seg[i, 0]))
            rot = rotation_matrix("z", angle)
            sign = -1.0 if jaw is lower else 1.0  # the lower crowns point up, their roots down
            z_crown = _OCCLUSAL_Z + sign * (0.25 + crown / 2.0)
            z_root = _OCCLUSAL_Z + sign * (0.25 + crown + root / 2.0 - 3.0)
            jaw.append(Ellipsoid((x, y, z_crown), (width / 2.0 - 0.2, depth / 2.0, crown / 2.0), 2.6, 2.6, rot))
            jaw.append(Ellipsoid((x, y, z_root), (width * 0.32, depth * 0.33, root / 2.0 + 1.0), 2.0, 2.0, rot))
            if jaw is lower and n == _FIRST_MOLAR:
                molar = np.array([x, y, z_crown])
    return lower, upper, molar


_MANDIBLE_CURVE = (
    (0.0, -82.0),
    (12.0, -80.0),
    (22.0, -74.0),
    (30.0, -64.0),
    (36.0, -52.0),
    (41.0, -40.0),
    (45.0, -27.0),
    (47.0, -15.0),
    (48.0, -5.0),
)
_MANDIBLE_Z = (-209.0, -208.5, -207.0, -205.0, -203.0, -201.0, -199.5, -198.0, -197.0)
_MANDIBLE_HALF_WIDTH = (6.0, 6.0, 5.8, 5.5, 5.5, 5.5, 5.0, 4.8, 4.5)
_MANDIBLE_HALF_HEIGHT = (14.0, 14.0, 13.5, 13.0, 12.5, 12.0, 11.5, 11.0, 10.0)


def _mandible() -> Shape:
    body = SweptEllipse(_MANDIBLE_CURVE, _MANDIBLE_Z, _MANDIBLE_HALF_WIDTH, _MANDIBLE_HALF_HEIGHT)
    ramus = Loft.tube(
        [
            (-206.0, 48.0, -10.0, 4.2, 9.0),
            (-195.0, 48.5, -17.0, 4.5, 14.0),
            (-170.0, 49.0, -22.0, 4.5, 15.5),
            (-150.0, 49.5, -24.0, 4.0, 14.0),
        ],
        p=2.2,
    )
    condyle = Union(
        Tube([(49.5, -14.0, -152.0), (50.0, -13.0, -141.0), (50.0, -12.0, -132.0)], [5.0, 4.0, 4.0]),
        Ellipsoid(_TMJ, (9.0, 5.0, 4.5)),
    )
    coronoid = Tube([(48.5, -30.0, -152.0), (47.0, -36.0, -142.0)], [5.5, 2.5])
    return both_sides(Union(body, ramus, condyle, coronoid))


def _paint_jaw(c: _Canvas) -> None:
    """Mandible (cortex around marrow), teeth on both alveolar ridges, hyoid, laryngeal cartilages."""
    c.bone(_mandible(), 2.0, cortex="mandible_cortex", marrow="mandible_marrow", over=(*SOFT, "bone_diploe"))
    lower, upper, _ = _lower_teeth_and_upper()
    for tooth in lower + upper:
        c.paint(both_sides(tooth), "tooth", BONES + SOFT)
    hyoid = SweptEllipse(
        [(0.0, -44.0), (9.0, -42.0), (16.0, -36.0), (24.0, -26.0), (31.0, -14.0)],
        [-218.0, -218.0, -217.5, -216.0, -214.0],
        [3.5, 3.2, 2.5, 2.0, 2.0],
        [5.0, 5.0, 4.0, 2.5, 2.5],
    )
    c.bone(both_sides(hyoid), 1.0)
    thyroid_cartilage = SweptEllipse(
        [(0.0, -53.0), (7.0, -48.0), (14.0, -40.0), (19.0, -30.0), (21.0, -20.0), (21.5, -12.0)],
        -240.0,
        1.5,
        [15.0, 16.0, 17.0, 17.0, 17.0, 16.0],
    )
    c.paint(both_sides(thyroid_cartilage), "cartilage", SOFT)
    cricoid = Union(
        Difference(
            Loft.tube([(-272.0, 0.0, -27.0, 15.0, 15.5), (-259.0, 0.0, -27.0, 15.0, 15.5)]),
            Loft.tube([(-273.0, 0.0, -27.0, 12.0, 12.5), (-258.0, 0.0, -27.0, 12.0, 12.5)]),
        ),
        Ellipsoid((0.0, -13.0, -260.0), (11.0, 2.5, 11.0), 2.5, 2.5),  # the signet's lamina
    )
    c.paint(cricoid, "cartilage", SOFT)


def _paint_face_cavities(c: _Canvas) -> None:
    """Orbits, nasal cavity with septum and turbinates, paranasal sinuses, nasopharynx."""
    orbit = Tube([_OPTIC_APEX, (33.0, -90.0, -108.0)], [3.0, 19.0])
    c.carve(both_sides(orbit), "orbital_fat")
    c.carve(Ellipsoid((0.0, -56.0, -140.0), (13.0, 33.0, 20.0), 2.5, 3.0), "air")  # nasal cavity
    c.carve(both_sides(Ellipsoid((27.0, -56.0, -140.0), (12.0, 16.0, 15.0))), "air")  # maxillary sinuses
    c.carve(Ellipsoid((0.0, -62.0, -110.0), (10.0, 20.0, 12.0)), "air_cells", 0.8)  # ethmoid
    c.carve(Ellipsoid((0.0, -86.0, -88.0), (13.0, 5.0, 9.0)), "air")  # frontal sinus
    c.carve(Ellipsoid((0.0, -36.0, -122.0), (13.0, 11.0, 10.0)), "air")  # sphenoid sinus
    c.carve(Ellipsoid((0.0, -19.0, -152.0), (13.0, 9.0, 10.0)), "air", 0.0)  # nasopharynx
    c.paint(Ellipsoid((0.0, -58.0, -140.0), (1.0, 31.0, 19.0)), "cartilage", ("air",))  # septum
    for turbinate in (
        Ellipsoid((11.0, -52.0, -150.0), (4.0, 22.0, 4.5)),
        Ellipsoid((9.0, -50.0, -135.0), (3.5, 17.0, 4.0)),
    ):
        c.paint(both_sides(turbinate), "muscle", ("air",))


_TEMPORAL_LOBE_REGION = Ellipsoid((42.0, -12.0, -102.0), (23.0, 37.0, 24.0))


def _paint_cranial_contents(c: _Canvas) -> None:
    """Cranial cavity (CSF), petrous bones and inner ears, brain, ventricles, brainstem, pituitary, chiasm."""
    inner = _SKULL_OUTER.grown(-_SKULL_MM)
    c.paint(Intersection(inner, _skull_cut(_SKULL_MM)), "csf", BONES + SOFT)
    left = HalfSpace((0.0, 0.0, 0.0), (1.0, 0.0, 0.0))
    anterior_base = Intersection(  # floor of the anterior fossa, its edge swept back laterally (sphenoid wings)
        inner.grown(1.0),
        HalfSpace((0.0, -40.0, -92.0), (0.0, -0.12, -1.0)),
        HalfSpace((0.0, -30.0, 0.0), (-0.5, -1.0, 0.0)),
        left,
    )
    petrous_ridge = Intersection(  # temporal bone in front of the petrous ridges, under the middle fossae
        Box((16.0, -_INF, -150.0), (_INF, _INF, -120.0)), HalfSpace((16.0, 4.0, 0.0), (0.7, -1.0, 0.0))
    )
    skull_base = [
        both_sides(anterior_base),
        both_sides(petrous_ridge),
        Ellipsoid((0.0, -26.0, -121.0), (15.0, 19.0, 11.0), 2.5, 2.5),  # sphenoid body under the sella
        Ellipsoid(
            (0.0, 0.0, -124.0), (12.0, 6.0, 26.0), rotation=rotation_matrix("x", 28.6)
        ),  # clivus and dorsum sellae
    ]
    for part in skull_base:
        c.paint(part, "bone_cortical", ("csf",))
    petrous = Ellipsoid((33.0, 3.0, -126.0), (24.0, 9.0, 8.0), rotation=_frame_along((-36.0, -24.0, 6.0)))
    c.paint(both_sides(petrous), "bone_petrous", (*BONES, *SOFT, "csf"))
    internal_acoustic_meatus = Tube([(17.0, 8.0, -119.0), (27.0, 2.0, -121.0)], 2.2)
    c.paint(both_sides(internal_acoustic_meatus), "csf", ("bone_petrous", "bone_cortical"))
    c.paint(both_sides(Ellipsoid(_COCHLEA, (2.6, 2.6, 2.1))), "cochlea", ("bone_petrous",))
    c.paint(both_sides(Ellipsoid((41.0, 2.0, _EAM_Z), (3.0, 5.0, 6.0))), "air", BONES)  # middle ear
    ear_canal = Tube([(44.0, 2.0, _EAM_Z), (60.0, 2.0, _EAM_Z), (70.0, 3.0, _EAM_Z + 2.0)], 3.5)
    c.paint(both_sides(ear_canal), "air", (*BONES, *SOFT, "skin"))
    c.paint(both_sides(Ellipsoid((50.0, 16.0, -134.0), (7.0, 10.0, 11.0))), "air_cells", BONES)  # mastoid cells
    _paint_face_cavities(c)

    c.paint(Intersection(inner.grown(-2.5), _skull_cut(_SKULL_MM + 2.5)), "grey", ("csf",))
    c.paint(Intersection(inner.grown(-7.5), _skull_cut(_SKULL_MM + 7.5)), "white", ("grey",))
    cisterns = Union(
        Ellipsoid((0.0, -16.0, -101.0), (15.0, 14.0, 7.0)),  # suprasellar
        Ellipsoid((0.0, 6.0, -118.0), (14.0, 10.0, 22.0)),  # prepontine
    )
    c.paint(cisterns, "csf", ("grey", "white"))
    c.paint(Ellipsoid((0.0, 48.0, -127.0), (24.0, 12.0, 9.0)), "white", ("grey",))  # cerebellar white matter
    deep_grey = Union(
        both_sides(Ellipsoid((10.0, 10.0, -72.0), (8.0, 13.0, 9.0))),  # thalamus
        both_sides(Ellipsoid((22.0, -6.0, -72.0), (6.0, 14.0, 10.0))),  # lentiform nucleus
        both_sides(Ellipsoid((14.0, -24.0, -62.0), (5.0, 9.0, 8.0))),  # head of the caudate
    )
    c.paint(deep_grey, "grey", ("white",))
    ventricles = Union(
        both_sides(
            Tube(
                [
                    (12.0, -36.0, -60.0),
                    (13.0, -12.0, -54.0),
                    (16.0, 14.0, -58.0),
                    (22.0, 30.0, -64.0),
                    (18.0, 52.0, -68.0),
                ],
                [4.0, 4.5, 4.5, 6.0, 3.0],
            )
        ),
        both_sides(Tube([(22.0, 30.0, -64.0), (32.0, 12.0, -84.0), (33.0, -12.0, -94.0)], [4.0, 3.0, 2.5])),
        Ellipsoid((0.0, 2.0, -76.0), (2.5, 14.0, 9.0)),  # third ventricle
        Ellipsoid((0.0, 28.0, -118.0), (7.0, 3.5, 7.0)),  # fourth ventricle
        Difference(
            Ellipsoid((0.0, 2.0, -40.0), (1.0, 90.0, 60.0)),
            Union(Ellipsoid((0.0, 0.0, -72.0), (30.0, 50.0, 20.0)), inner.grown(-25.0)),
        ),  # interhemispheric fissure: the falx between the hemispheres' medial surfaces
        both_sides(Ellipsoid((52.0, -14.0, -80.0), (14.0, 1.8, 9.0), rotation=rotation_matrix("z", -40.0))),  # Sylvian
    )
    c.paint(ventricles, "ventricle", ("grey", "white", "csf"))

    canal, _ = _spinal_canal()  # the foramen magnum and dural sac, for the medulla and the cord
    c.paint(canal, "csf", (*BONES, *SOFT))
    brainstem = Union(
        Loft.tube(  # midbrain, pons and medulla as one column, leaning back as it descends
            [
                (-82.0, 0.0, 7.0, 11.0, 9.0),
                (-90.0, 0.0, 9.0, 12.5, 10.5),
                (-100.0, 0.0, 12.0, 13.0, 11.0),
                (-122.0, 0.0, 17.0, 10.5, 9.0),
                (-135.0, 0.0, 24.0, 8.5, 7.5),
                (_FORAMEN_MAGNUM_Z - 2.0, 0.0, 30.0, 7.5, 7.0),
            ]
        ),
        Ellipsoid((0.0, 16.0, -112.0), (17.0, 13.0, 13.5)),  # the pons' bulge
    )
    c.paint(brainstem, "brainstem", ("csf", "grey", "white", "ventricle"))
    c.paint(Ellipsoid((0.0, -20.0, -115.0), (8.0, 7.0, 2.5)), "bone_cortical", ("csf", "air"))  # sella floor
    c.paint(Ellipsoid(_PITUITARY, (7.0, 5.5, 4.5)), "pituitary", (*BONES, "csf", "air", "grey", "white"))
    cavernous_sinus = Ellipsoid((13.0, -20.0, -110.0), (5.5, 10.0, 6.0))
    c.paint(both_sides(cavernous_sinus), "vein", ("csf", "grey", "white"))


def _paint_cord(c: _Canvas) -> None:
    _, cord = _spinal_canal()
    c.paint(cord, "cord", ("csf",))


def _paint_vessels(c: _Canvas) -> None:
    """Carotid and vertebral arteries, jugular veins and the subclavian vessels (contrast-enhanced)."""
    through = (*SOFT, *BONES, "lung", "csf")
    carotid = Tube(
        [
            (16.0, -16.0, -352.0),
            (22.0, -11.0, -325.0),
            (25.0, -8.0, -300.0),
            (27.0, -7.0, -275.0),
            (26.0, -8.0, -245.0),
            (24.0, -9.0, -224.0),
            (26.0, -4.0, -205.0),
            (28.0, 1.0, -185.0),
            (28.0, 4.0, -165.0),
            (26.0, 5.0, -150.0),
            (24.0, 4.0, -141.0),
        ],
        [3.8, 3.8, 3.8, 3.8, 4.0, 4.4, 3.0, 2.8, 2.8, 2.7, 2.7],
    )
    c.paint(both_sides(carotid), "carotid", through)
    arteries = [
        Tube([(24.0, 4.0, -141.0), (21.0, -4.0, -130.0), (17.0, -12.0, -120.0), (14.0, -16.0, -108.0)], 2.5),
        Tube(
            [
                (24.0, -9.0, -224.0),
                (28.0, -14.0, -205.0),
                (36.0, -10.0, -188.0),
                (42.0, -3.0, -170.0),
                (46.0, -1.0, -150.0),
            ],
            [3.0, 2.6, 2.4, 2.2, 2.0],
        ),  # external carotid
        Tube([(12.0, -20.0, -402.0), (16.0, -16.0, -352.0)], 5.5),  # brachiocephalic
        Tube(
            [
                (16.0, -16.0, -352.0),
                (28.0, -10.0, -322.0),
                (45.0, -4.0, -306.0),
                (70.0, -6.0, -310.0),
                (100.0, -12.0, -326.0),
                (130.0, -12.0, -348.0),
                (150.0, -5.0, -380.0),
            ],
            4.5,
        ),  # subclavian
    ]
    foramina = [
        (v.canal_half_width + 7.5, v.y_body + 1.0, v.z_mid)
        for v in _VERTEBRAE
        if v.name in ("C6", "C5", "C4", "C3", "C2")
    ]
    vertebral = [(28.0, -10.0, -322.0), (24.0, 6.0, -298.0), *sorted(foramina, key=lambda p: p[2])]
    vertebral += [(27.0, 18.0, -157.0), (22.0, 30.0, -150.0), (10.0, 22.0, -142.0), (3.0, 6.0, -128.0)]
    arteries.append(Tube(vertebral, 2.0))
    for artery in arteries:
        c.paint(both_sides(artery), "artery", through)
    jugular = Tube(
        [
            (30.0, 14.0, -144.0),
            (35.0, 8.0, -160.0),
            (36.5, 2.0, -180.0),
            (37.0, -2.0, -210.0),
            (37.0, -5.0, -245.0),
            (35.0, -8.0, -280.0),
            (30.0, -14.0, -320.0),
            (16.0, -36.0, -360.0),
            (12.0, -40.0, -402.0),
        ],
        [4.5, 5.0, 5.5, 6.0, 6.5, 6.5, 6.5, 7.0, 7.0],
    )
    subclavian_vein = Tube(
        [(30.0, -14.0, -320.0), (60.0, -28.0, -322.0), (95.0, -30.0, -330.0), (128.0, -22.0, -350.0)], 5.0
    )
    for vein in (jugular, subclavian_vein):
        c.paint(both_sides(vein), "vein", through)


def _paint_orbit_contents(c: _Canvas) -> None:
    """Recti, lacrimal glands, optic nerves and chiasm, globes with their lenses."""
    for target in ((44.0, -68.0, -108.0), (21.0, -68.0, -108.0), (32.0, -68.0, -97.0), (32.0, -68.0, -119.0)):
        c.paint(both_sides(Tube([(15.0, -40.0, -105.0), target], [1.5, 2.5])), "muscle", ("orbital_fat",))
    c.paint(both_sides(Ellipsoid((43.0, -77.0, -97.0), (4.5, 9.0, 4.0))), "lacrimal", (*BONES, *SOFT, "orbital_fat"))
    optic_nerve = Tube(
        [
            (29.5, -63.0, -108.0),
            (22.0, -50.0, -107.0),
            (_OPTIC_APEX[0], -39.0, -104.5),
            (10.0, -30.0, -102.0),
            (6.0, -21.0, -99.5),
        ],
        1.75,
    )
    c.paint(both_sides(optic_nerve), "optic_nerve", (*BONES, *SOFT, "orbital_fat", "csf", "grey", "white"))
    c.paint(Ellipsoid(_CHIASM, (8.0, 5.0, 2.2)), "chiasm", ("csf", "optic_nerve", "grey", "white"))
    globe_over = (*SOFT, "orbital_fat", "optic_nerve", "lacrimal", *BONES)
    c.paint(both_sides(Ellipsoid(_EYE_CENTRE, (_EYE_RADIUS,) * 3)), "sclera", globe_over)
    c.paint(both_sides(Ellipsoid(_EYE_CENTRE, (_EYE_RADIUS - 1.0,) * 3)), "vitreous", ("sclera",))
    c.paint(both_sides(Ellipsoid(_LENS_CENTRE, (4.5, 2.0, 4.5))), "lens", ("vitreous",))


def _paint_mouth(c: _Canvas) -> None:
    """Tongue and floor of mouth (the oral cavity), a little air under the palate, lips."""
    tongue = Union(
        Ellipsoid((0.0, -46.0, -182.0), (25.0, 30.0, 15.0)), Ellipsoid((0.0, -24.0, -198.0), (21.0, 14.0, 17.0))
    )
    c.paint(tongue, "tongue", SOFT)
    c.paint(Ellipsoid((0.0, -46.0, -167.5), (17.0, 24.0, 2.5)), "oral_air", ("tongue",))
    soft_palate = Tube([(0.0, -24.0, -164.0), (0.0, -18.0, -174.0), (0.0, -13.0, -184.0)], [5.0, 4.5, 3.5])
    c.paint(soft_palate, "muscle", ("tongue", "fat"))
    lips = SweptEllipse(
        [(0.0, -88.5), (10.0, -87.5), (18.0, -84.5), (24.0, -79.5)],
        [-184.0, -184.0, -184.0, -185.0],
        [5.5, 5.2, 4.5, 3.0],
        [15.0, 14.5, 13.0, 9.0],
    )
    c.paint(both_sides(lips), "lips", SOFT)


_PHARYNX_WALL = Loft.tube(  # outer surface of the pharyngeal mucosa; the constrictors wrap around it
    [
        (-146.0, 0.0, -14.0, 15.0, 9.0),
        (-160.0, 0.0, -10.0, 17.0, 6.0),
        (-175.0, 0.0, -6.0, 17.0, 7.5),
        (-195.0, 0.0, -7.0, 18.0, 8.0),
        (-210.0, 0.0, -9.0, 19.0, 7.0),
        (-225.0, 0.0, -9.0, 20.0, 7.0),
        (-245.0, 0.0, -10.0, 21.0, 7.5),
        (-262.0, 0.0, -10.0, 20.0, 7.5),
    ]
)
_CONSTRICTOR_LEVELS = {
    "constrictor_s": (-198.0, -148.0),
    "constrictor_m": (-222.0, -198.0),
    "constrictor_i": (-262.0, -222.0),
}
_CRICOPHARYNGEUS_Z = (-274.0, -262.0)


def _paint_pharynx_and_larynx(c: _Canvas) -> None:
    """Pharyngeal constrictors, airway lumen, supraglottic and glottic larynx, oesophagus, trachea."""
    band = Difference(_PHARYNX_WALL.grown(3.5), _PHARYNX_WALL)
    for tissue, (z0, z1) in _CONSTRICTOR_LEVELS.items():
        c.paint(Intersection(band, Box((-_INF, -13.5, z0), (_INF, _INF, z1))), tissue, SOFT)
    c.paint(
        Loft.tube([(_CRICOPHARYNGEUS_Z[0], 0.0, -5.0, 12.0, 6.0), (_CRICOPHARYNGEUS_Z[1], 0.0, -5.0, 12.0, 6.0)]),
        "cricopharyngeus",
        SOFT,
    )
    oesophagus = [
        (-274.0, 0.0, -5.0, 11.0, 6.0),
        (-290.0, 0.0, -1.0, 11.0, 6.0),
        (-310.0, 0.0, 3.0, 11.0, 6.0),
        (-330.0, 0.0, 7.0, 11.0, 6.0),
    ]
    c.paint(Loft.tube(oesophagus), "esophagus", SOFT)
    c.paint(
        Loft.tube([(-330.0, 0.0, 7.0, 11.0, 6.0), (-370.0, 0.0, 15.0, 11.0, 6.0), (-402.0, 0.0, 21.0, 11.0, 6.0)]),
        "muscle",
        SOFT,
    )  # thoracic oesophagus (not an OAR)

    c.paint(
        Loft(
            [
                (-240.0, 0.0, -34.0, 3.0, 1.5, 1.5),
                (-228.0, 0.0, -27.0, 9.0, 1.5, 1.5),
                (-210.0, 0.0, -20.0, 8.0, 1.5, 1.5),
            ]
        ),
        "epiglottis",
        SOFT,
    )
    supraglottis = Loft(
        [
            (-249.0, 0.0, -30.0, 12.0, 15.0, 14.0, 2.2, 2.2),
            (-230.0, 0.0, -30.0, 12.5, 15.0, 14.0, 2.2, 2.2),
            (-212.0, 0.0, -29.0, 12.0, 14.0, 13.0, 2.2, 2.2),
        ]
    )
    c.paint(supraglottis, "supraglottis", SOFT)
    vestibule = Loft.tube(
        [
            (-248.0, 0.0, -30.0, 3.0, 9.0),
            (-238.0, 0.0, -29.0, 5.0, 10.0),
            (-225.0, 0.0, -27.0, 6.0, 10.0),
            (-212.0, 0.0, -24.0, 7.0, 8.0),
        ]
    )
    c.paint(vestibule, "supraglottic_air", ("supraglottis",))
    c.paint(Loft.tube([(-259.0, 0.0, -30.0, 11.5, 13.5), (-249.0, 0.0, -30.0, 11.5, 13.5)]), "vocal_folds", SOFT)
    c.paint(
        Loft.tube([(-259.0, 0.0, -31.0, 2.2, 11.0), (-249.0, 0.0, -31.0, 1.6, 11.0)]), "glottic_air", ("vocal_folds",)
    )
    c.paint(Loft.tube([(-272.0, 0.0, -27.0, 9.0, 10.0), (-259.0, 0.0, -27.0, 9.5, 10.5)]), "air", SOFT)  # subglottis
    c.paint(both_sides(Ellipsoid((13.0, -14.0, -236.0), (3.2, 5.5, 11.0))), "air", SOFT)  # pyriform sinuses
    lumen = Loft.tube(
        [
            (-140.0, 0.0, -19.0, 8.0, 6.0),
            (-150.0, 0.0, -18.0, 13.0, 8.5),
            (-160.0, 0.0, -14.0, 12.0, 7.0),
            (-166.0, 0.0, -6.0, 11.0, 4.0),
            (-180.0, 0.0, -5.0, 12.0, 4.5),
            (-195.0, 0.0, -6.0, 14.0, 5.0),
            (-205.0, 0.0, -10.0, 15.0, 6.0),
            (-214.0, 0.0, -14.0, 15.0, 8.0),
            (-220.0, 0.0, -8.0, 15.0, 3.5),
            (-228.0, 0.0, -6.0, 14.0, 2.2),
            (-245.0, 0.0, -6.0, 13.0, 1.5),
            (-258.0, 0.0, -6.0, 10.0, 1.2),
        ]
    )
    c.paint(lumen, "air", (*SOFT, "tongue"))
    trachea = [
        (-402.0, 0.0, 5.0, 11.5, 10.5),
        (-370.0, 0.0, -1.0, 11.5, 10.5),
        (-340.0, 0.0, -7.0, 11.5, 10.5),
        (-310.0, 0.0, -13.0, 11.5, 10.5),
        (-290.0, 0.0, -19.0, 11.5, 10.5),
        (-272.0, 0.0, -25.0, 11.0, 10.0),
    ]
    c.paint(Loft.tube(trachea), "cartilage", SOFT)
    c.paint(Loft.tube(trachea).grown(-2.0), "air", ("cartilage",))


def _paint_glands(c: _Canvas) -> None:
    """Parotid, submandibular and thyroid glands."""
    parotid = Union(
        Ellipsoid((58.5, -4.0, -164.0), (6.5, 17.0, 34.0)), Ellipsoid((47.0, 3.0, -167.0), (8.0, 9.0, 24.0))
    )
    c.paint(both_sides(parotid), "parotid", SOFT)
    c.paint(both_sides(Ellipsoid((32.0, -26.0, -222.0), (10.0, 13.0, 10.0))), "submandibular", SOFT)
    thyroid = Union(
        both_sides(Ellipsoid((19.0, -20.0, -283.0), (8.0, 10.0, 21.0))),
        Ellipsoid((0.0, -33.0, -292.0), (12.0, 4.0, 7.0)),
    )
    c.paint(thyroid, "thyroid", SOFT)


_PLEXUS_CONVERGENCE = (50.0, 4.0, -298.0)


def _paint_brachial_plexus(c: _Canvas) -> None:
    """Roots C5-T1 from their neural foramina between the scalenes to the trunks over the first rib."""
    roots = []
    for upper, lower in itertools.pairwise(_VERTEBRAE[2:8]):  # the C4/5 ... T1/T2 foramina
        z = 0.5 * (upper.z_bottom + lower.z_top)
        start = (upper.canal_half_width + 5.0, upper.y_body + 9.0, z)
        middle = (0.5 * (start[0] + _PLEXUS_CONVERGENCE[0]) - 4.0, 7.0, 0.5 * (z + _PLEXUS_CONVERGENCE[2]) + 4.0)
        roots.append(Tube([start, middle, _PLEXUS_CONVERGENCE], 2.5))
    trunk = Tube(
        [_PLEXUS_CONVERGENCE, (68.0, 2.0, -306.0), (92.0, -4.0, -318.0), (115.0, -6.0, -333.0), (135.0, -2.0, -350.0)],
        3.0,
    )
    c.paint(both_sides(Union(*roots, trunk)), "brachial_plexus", SOFT)


def _paint_atlas(c: _Canvas) -> None:
    _paint_body(c)
    _paint_soft_tissue_planes(c)
    _paint_skull(c)
    _paint_spine(c)
    _paint_thoracic_inlet(c)
    _paint_jaw(c)
    _paint_cranial_contents(c)
    _paint_cord(c)
    _paint_vessels(c)
    _paint_orbit_contents(c)
    _paint_mouth(c)
    _paint_pharynx_and_larynx(c)
    _paint_glands(c)
    _paint_brachial_plexus(c)


# ----------------------------------------------------------------------------------------------------------
# OAR masks and landmarks
# ----------------------------------------------------------------------------------------------------------

_BRAIN_TISSUES = ("grey", "white", "ventricle")
# OAR base name -> (its tissues, the region it is limited to on the left side, if any)
_OAR_TISSUES: dict[str, tuple[tuple[str, ...], Shape | None]] = {
    "Brain": (_BRAIN_TISSUES, None),
    "Lobe_Temporal": (_BRAIN_TISSUES, _TEMPORAL_LOBE_REGION),
    "Brainstem": (("brainstem",), None),
    "SpinalCord": (("cord",), None),
    "Pituitary": (("pituitary",), None),
    "OpticChiasm": (("chiasm",), None),
    "OpticNrv": (("optic_nerve",), None),
    "Eye": (("sclera", "vitreous", "lens"), None),
    "Lens": (("lens",), None),
    "Glnd_Lacrimal": (("lacrimal",), None),
    "Cochlea": (("cochlea",), None),
    "Parotid": (("parotid",), None),
    "Glnd_Submand": (("submandibular",), None),
    "Bone_Mandible": (("mandible_cortex", "mandible_marrow"), None),
    "Cavity_Oral": (("tongue", "oral_air"), None),
    "Lips": (("lips",), None),
    "Musc_Constrict_S": (("constrictor_s",), None),
    "Musc_Constrict_M": (("constrictor_m",), None),
    "Musc_Constrict_I": (("constrictor_i",), None),
    "Cricopharyngeus": (("cricopharyngeus",), None),
    "Esophagus_S": (("esophagus",), None),
    "Larynx_SG": (("supraglottis", "supraglottic_air", "epiglottis"), None),
    "Glottis": (("vocal_folds", "glottic_air"), None),
    "Glnd_Thyroid": (("thyroid",), None),
    "BrachialPlex": (("brachial_plexus",), None),
    "A_Carotid": (("carotid",), None),
}


def oar_tissues(name: str) -> tuple[str, ...]:
    """The tissues an OAR's mask is made of (their HU are in ``TISSUE_HU``)."""
    base = name[:-2] if BY_NAME[name].laterality is not Laterality.MIDLINE else name
    return _OAR_TISSUES[base][0]


def _oar_masks(c: _Canvas, geometry: Geometry) -> dict[str, tuple[np.ndarray, Geometry]]:
    masks: dict[str, tuple[np.ndarray, Geometry]] = {}
    for oar in OARS:
        lateral = oar.laterality is not Laterality.MIDLINE
        tissues, region = _OAR_TISSUES[oar.name[:-2] if lateral else oar.name]
        ids = [_TISSUE_ID[t] for t in tissues]
        boxes = [c.boxes[i] for i in ids if i in c.boxes]
        if not boxes:
            continue
        shape = np.array(c.labels.shape)
        lo = np.maximum(np.min([b[0] for b in boxes], axis=0) - 3, 0)
        hi = np.minimum(np.max([b[1] for b in boxes], axis=0) + 3, shape)
        (k0, j0, i0), (k1, j1, i1) = lo, hi
        member = np.zeros(256, bool)
        member[ids] = True
        mask = member[c.labels[k0:k1, j0:j1, i0:i1]]
        if oar.laterality is Laterality.LEFT:
            mask &= (c.xs[i0:i1] > 0)[None, None, :]
        elif oar.laterality is Laterality.RIGHT:
            mask &= (c.xs[i0:i1] < 0)[None, None, :]
        if region is not None:
            solid = region if oar.laterality is Laterality.LEFT else MirrorX(region)
            mask &= _evaluate(solid, c.xs[i0:i1], c.ys[j0:j1], c.zs[k0:k1])
        if not mask.any():
            continue
        nz = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
        start = np.array([max(0, n[0] - 2) for n in nz])
        stop = np.array([min(s, n[-1] + 3) for n, s in zip(nz, mask.shape, strict=True)])
        crop = mask[start[0] : stop[0], start[1] : stop[1], start[2] : stop[2]].astype(np.uint8)
        first = lo + start
        masks[oar.name] = (crop, geometry.sub_grid(tuple(first), tuple(first + np.array(crop.shape))))
    return masks


def _landmarks() -> dict[str, np.ndarray]:
    """Named LPS points, straight from the anatomy's defining dimensions (the same at every spacing)."""
    c2, c3, c7 = _LEVEL["C2"], _LEVEL["C3"], _LEVEL["C7"]
    _, _, molar = _lower_teeth_and_upper()
    symphysis_y, symphysis_z = _MANDIBLE_CURVE[0][1], _MANDIBLE_Z[0]
    diagonal = math.sqrt(0.5)
    chin = (0.0, symphysis_y - _MANDIBLE_HALF_WIDTH[0] * diagonal, symphysis_z - _MANDIBLE_HALF_HEIGHT[0] * diagonal)
    thyroid_z = -283.0
    rows = np.array([(r[0], r[1] - r[3], r[1] + r[4]) for r in _BODY_ROWS])
    front = np.interp(thyroid_z, rows[::-1, 0], rows[::-1, 1])
    back = np.interp(thyroid_z, rows[::-1, 0], rows[::-1, 2])
    shoulder_z, shoulder_y = _shoulder_top(120.0)
    cavity_top = _CRANIAL_CAVITY_TOP_Z
    points = {
        "vertex": (0.0, _HEAD_CENTRE[1], 0.0),
        "head_centre": (0.0, _HEAD_CENTRE[1], 0.5 * (cavity_top + _FORAMEN_MAGNUM_Z)),
        "neck_pivot": (0.0, 0.5 * (c2.y_body + c3.y_body), 0.5 * (c2.z_bottom + c3.z_top)),
        "c7": (0.0, c7.y_body, c7.z_mid),
        "c2": (0.0, c2.y_body, c2.z_mid),
        "tmj_l": _TMJ,
        "tmj_r": (-_TMJ[0], _TMJ[1], _TMJ[2]),
        "chin": chin,
        "molar_l": tuple(molar),
        "molar_r": (-molar[0], molar[1], molar[2]),
        "body_centre_neck": (0.0, 0.5 * (front + back), thyroid_z),
        "skin_top_of_shoulders": (120.0, shoulder_y, shoulder_z),
        "skin_top_of_shoulder_l": (120.0, shoulder_y, shoulder_z),
        "skin_top_of_shoulder_r": (-120.0, shoulder_y, shoulder_z),
        "eye_l": _EYE_CENTRE,
        "eye_r": (-_EYE_CENTRE[0], *_EYE_CENTRE[1:]),
        "lens_l": _LENS_CENTRE,
        "lens_r": (-_LENS_CENTRE[0], *_LENS_CENTRE[1:]),
        "cochlea_l": _COCHLEA,
        "cochlea_r": (-_COCHLEA[0], *_COCHLEA[1:]),
        "pituitary": _PITUITARY,
        "chiasm": _CHIASM,
        "basion": _BASION,
        "sternal_notch": (0.0, -78.0, -323.0),
        "hyoid": (0.0, -44.0, -218.0),
    }
    return {name: np.asarray(p, float) for name, p in points.items()}


# ----------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------

GRID_LO_MM = (-200.0, -130.0, -400.0)
GRID_HI_MM = (200.0, 140.0, 8.0)


def _axis(lo: float, hi: float, spacing: float, outward: bool) -> np.ndarray:
    """Integer lattice indices covering [lo, hi] (outward) or inside it."""
    if outward:
        return np.arange(math.floor(lo / spacing + 1e-9), math.ceil(hi / spacing - 1e-9) + 1)
    return np.arange(math.ceil(lo / spacing - 1e-9), math.floor(hi / spacing + 1e-9) + 1)


def _build(spacing_mm: float, lo_mm: Sequence[float], hi_mm: Sequence[float], outward: bool) -> AtlasPhantom:
    if spacing_mm <= 0:
        raise ValueError(f"spacing must be positive, got {spacing_mm}")
    s = float(spacing_mm)
    if outward:  # the full grid: x symmetric about 0
        half = math.ceil(GRID_HI_MM[0] / s - 1e-9)
        ii = np.arange(-half, half + 1)
    else:
        ii = _axis(lo_mm[0], hi_mm[0], s, outward)
    jj = _axis(lo_mm[1], hi_mm[1], s, outward)
    kk = _axis(lo_mm[2], hi_mm[2], s, outward)
    if not (ii.size and jj.size and kk.size):
        raise ValueError("the requested region holds no voxel")
    xs, ys, zs = ((idx * s).astype(np.float32) for idx in (ii, jj, kk))
    canvas = _Canvas(xs, ys, zs)
    _paint_atlas(canvas)
    geometry = Geometry((zs.size, ys.size, xs.size), (s, s, s), (float(xs[0]), float(ys[0]), float(zs[0])))
    ct = Volume(_HU_LUT[canvas.labels], geometry, {"source": "oarmorph phantom atlas", "spacing_mm": s})
    return AtlasPhantom(ct, _oar_masks(canvas, geometry), _landmarks())


def build_atlas(spacing_mm: float = 1.0) -> AtlasPhantom:
    """The atlas on an isotropic grid of ``spacing_mm`` covering x [-200, 200], y [-130, 140], z [-400, 8] mm.

    Voxel centres lie on integer multiples of the spacing, so the grid is symmetric about x = 0 and a coarser
    grid whose spacing divides a finer one samples the same anatomy at shared voxels.
    """
    return _build(spacing_mm, GRID_LO_MM, GRID_HI_MM, outward=True)


def build_atlas_region(spacing_mm: float, lo_mm: Sequence[float], hi_mm: Sequence[float]) -> AtlasPhantom:
    """The atlas on the part of its lattice inside the box [lo_mm, hi_mm] (LPS): identical, voxel for voxel,
    to that crop of ``build_atlas(spacing_mm)``. For fine-grid looks at small structures without the cost of the
    whole grid; OARs outside the box are absent from ``masks``, those cut by it are cut.
    """
    return _build(spacing_mm, lo_mm, hi_mm, outward=False)


def full_mask(atlas: AtlasPhantom, name: str) -> np.ndarray:
    """The OAR's uint8 mask on ``atlas.ct``'s grid."""
    crop, crop_geometry = atlas.masks[name]
    g = atlas.ct.geometry
    start = np.rint((np.asarray(crop_geometry.origin) - np.asarray(g.origin)) / np.asarray(g.spacing)).astype(int)
    i0, j0, k0 = start
    out = np.zeros(g.shape, np.uint8)
    nk, nj, ni = crop.shape
    out[k0 : k0 + nk, j0 : j0 + nj, i0 : i0 + ni] = crop
    return out
