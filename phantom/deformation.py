"""The known deformation from the atlas to a phantom patient, as a pull map: patient point p -> atlas point q.

A patient is the atlas seen through ``q = pull(p)``: its CT at p is the atlas CT at q, and so are its OAR
masks. The map is a composition of simple, smooth pieces, each written directly in the pull direction:

    setup (patient position on the couch: rotation and a table offset far from the origin)
    -> head pose above the neck (flexion/extension, rotation, tilt about the C2-C3 pivot, blended over the neck)
    -> jaw opening (rotation about the temporomandibular axis, blended below the occlusal plane)
    -> head size (scaling about the head centre, fading out down the neck)
    -> weight (the subcutaneous fat layer thickened or thinned radially, slice by slice)
    -> organ sizes (local scalings about OAR centres with a smooth fall-off)
    -> a smooth random field (Gaussian-filtered noise, a few millimetres)

Every piece is smooth and, at the amplitudes drawn, invertible; the composed map is sampled on a coarse grid
(``DeformationField``) and its Jacobian determinant checked there (``min_jacobian`` goes into meta.json). That
sampled field is the ground truth that is stored: the patient's CT and masks are rendered through it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

from imaging.volume import Geometry


def rotation_matrix(axis: str, degrees: float | np.ndarray) -> np.ndarray:
    """Rotation matrices about a coordinate axis (LPS); broadcasts over an array of angles -> (..., 3, 3)."""
    t = np.radians(np.asarray(degrees, float))
    c, s = np.cos(t), np.sin(t)
    one, zero = np.ones_like(t), np.zeros_like(t)
    rows = {
        "x": [[one, zero, zero], [zero, c, -s], [zero, s, c]],
        "y": [[c, zero, s], [zero, one, zero], [-s, zero, c]],
        "z": [[c, -s, zero], [s, c, zero], [zero, zero, one]],
    }[axis]
    return np.moveaxis(np.array(rows), (0, 1), (-2, -1))


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


@dataclass(frozen=True)
class AnatomyParams:
    """What was drawn for one patient (all in the atlas' frame, degrees and millimetres)."""

    setup_rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)  # about x, y, z of the whole patient
    table_offset_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)  # where the atlas origin sits in the scanner
    neck_flexion_deg: float = 0.0  # + chin towards the chest (about the left-right axis)
    head_rotation_deg: float = 0.0  # + turned to the patient's left (about the cranio-caudal axis)
    head_tilt_deg: float = 0.0  # + left ear towards the left shoulder (about the antero-posterior axis)
    jaw_opening_deg: float = 0.0  # mouth opening about the temporomandibular axis
    head_scale: float = 1.0
    fat_change_mm: float = 0.0  # + thicker subcutaneous fat (weight gain)
    organ_scale: dict[str, float] = field(default_factory=dict)  # OAR name -> linear scale
    random_field_mm: float = 0.0  # largest displacement of the smooth random field
    random_field_seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class AtlasAnchors:
    """The atlas points the deformation pieces turn about, and the body outline the weight change needs."""

    neck_pivot: np.ndarray
    head_centre: np.ndarray
    tmj_l: np.ndarray
    tmj_r: np.ndarray
    chin: np.ndarray
    organ_centres: dict[str, tuple[np.ndarray, float]]  # OAR -> (centre, radius of influence mm)
    outline_z: np.ndarray  # axial levels (mm) where the body outline is known
    outline_centre_xy: np.ndarray  # (n, 2) body centre per level
    outline_semi_axes: np.ndarray  # (n, 2) body semi-axes (x, y) per level, mm
    fat_thickness_mm: float = 8.0


def _head_pose(p: np.ndarray, a: AnatomyParams, anchors: AtlasAnchors) -> np.ndarray:
    """Undo the head pose: points above the neck pivot turn back by the pose angles, blended over the 120 mm of
    the cervical spine around the pivot (a sharper blend would shear the neck)."""
    if not (a.neck_flexion_deg or a.head_rotation_deg or a.head_tilt_deg):
        return p
    w = _smoothstep((p[..., 2] - (anchors.neck_pivot[2] - 60.0)) / 120.0)
    # forward pose = Rz(rotation) Ry(tilt) Rx(flexion) about the pivot; the pull map is its inverse
    rot = (
        rotation_matrix("x", -a.neck_flexion_deg * w)
        @ rotation_matrix("y", -a.head_tilt_deg * w)
        @ rotation_matrix("z", -a.head_rotation_deg * w)
    )
    rel = p - anchors.neck_pivot
    return anchors.neck_pivot + np.einsum("...ij,...j->...i", rot, rel)


def _jaw(p: np.ndarray, a: AnatomyParams, anchors: AtlasAnchors) -> np.ndarray:
    """Close the opened jaw: the lower face turns back about the temporomandibular (left-right) axis.

    The rotation is weighted by the direction from the hinge (1 between 35 and 75 degrees below the anterior
    direction, i.e. the mandible, fading to 0 towards the occlusal plane and the neck), so the shear of the
    blend does not grow with the distance from the hinge, and it fades out 110-190 mm from the hinge.
    """
    if not a.jaw_opening_deg:
        return p
    hinge = (anchors.tmj_l + anchors.tmj_r) / 2.0
    dy, dz = p[..., 1] - hinge[1], p[..., 2] - hinge[2]
    phi = np.degrees(np.arctan2(-dz, -dy))  # 0: anterior, 90: straight down, 180: posterior
    w = _smoothstep(phi / 35.0) * (1.0 - _smoothstep((phi - 75.0) / 45.0))
    w = w * (1.0 - _smoothstep((np.hypot(dy, dz) - 110.0) / 80.0))
    rot = rotation_matrix("x", -a.jaw_opening_deg * w)  # opening turns the chin down and back: undo it
    return hinge + np.einsum("...ij,...j->...i", rot, p - hinge)


def _head_size(p: np.ndarray, a: AnatomyParams, anchors: AtlasAnchors) -> np.ndarray:
    if a.head_scale == 1.0:
        return p
    w = _smoothstep((p[..., 2] - (anchors.neck_pivot[2] - 30.0)) / 60.0)[..., None]
    factor = 1.0 + (1.0 / a.head_scale - 1.0) * w
    return anchors.head_centre + (p - anchors.head_centre) * factor


def _weight(p: np.ndarray, a: AnatomyParams, anchors: AtlasAnchors) -> np.ndarray:
    """Thicker (or thinner) subcutaneous fat: the outer band of the body is stretched radially, per axial level.

    In the body's elliptical coordinate rho (1 on the skin), the atlas band [1 - f, 1] is pulled from the patient
    band [1 - f, 1 + c] with f the atlas fat thickness and c the change, both as fractions of the semi-axis.
    """
    if not a.fat_change_mm:
        return p
    z = p[..., 2]
    cx = np.interp(z, anchors.outline_z, anchors.outline_centre_xy[:, 0])
    cy = np.interp(z, anchors.outline_z, anchors.outline_centre_xy[:, 1])
    ax = np.interp(z, anchors.outline_z, anchors.outline_semi_axes[:, 0])
    ay = np.interp(z, anchors.outline_z, anchors.outline_semi_axes[:, 1])
    dx, dy = p[..., 0] - cx, p[..., 1] - cy
    rho = np.sqrt((dx / ax) ** 2 + (dy / ay) ** 2) + 1e-9
    scale = np.sqrt(ax * ay)
    f = anchors.fat_thickness_mm / scale
    c = a.fat_change_mm / scale
    inner = 1.0 - f
    band = (rho - inner) * f / (f + c)  # [inner, 1 + c] -> [inner, 1]
    target = np.where(rho <= inner, rho, np.where(rho <= 1.0 + c, inner + band, rho - c))
    # blend the change in over the neck (none above the skull base, full from the neck down)
    w = 1.0 - _smoothstep((z - (anchors.neck_pivot[2] + 10.0)) / 60.0)
    ratio = 1.0 + (target / rho - 1.0) * w
    out = p.copy()
    out[..., 0] = cx + dx * ratio
    out[..., 1] = cy + dy * ratio
    return out


def _organ_sizes(p: np.ndarray, a: AnatomyParams, anchors: AtlasAnchors) -> np.ndarray:
    out = p
    for name, s in a.organ_scale.items():
        if s == 1.0 or name not in anchors.organ_centres:
            continue
        centre, radius = anchors.organ_centres[name]
        r = np.linalg.norm(out - centre, axis=-1, keepdims=True)
        w = 1.0 - _smoothstep((r - radius) / radius)  # 1 inside the organ's radius, 0 beyond twice it
        out = centre + (out - centre) * (1.0 + (1.0 / s - 1.0) * w)
    return out


def _setup(p: np.ndarray, a: AnatomyParams) -> np.ndarray:
    """Scanner -> atlas frame: undo the table offset and the patient's rotation on the couch."""
    rx, ry, rz = a.setup_rotation_deg
    rot = rotation_matrix("z", rz) @ rotation_matrix("y", ry) @ rotation_matrix("x", rx)
    return (p - np.asarray(a.table_offset_mm)) @ rot  # row vectors: (R^T (p - t))^T = (p - t)^T R


def pull_points(
    p: np.ndarray, a: AnatomyParams, anchors: AtlasAnchors, random_field: DeformationField | None
) -> np.ndarray:
    """Patient LPS points ``(..., 3)`` -> the atlas points they show (without the random field if None)."""
    q = _setup(np.asarray(p, float), a)
    q = _head_pose(q, a, anchors)
    q = _jaw(q, a, anchors)
    q = _head_size(q, a, anchors)
    q = _weight(q, a, anchors)
    q = _organ_sizes(q, a, anchors)
    if random_field is not None:
        q = q + random_field.displacement_at(q)
    return q


@dataclass
class DeformationField:
    """A displacement field ``d`` (LPS mm) on a grid: the pull map is ``q = p + d(p)``, trilinear in between,
    held at the border value outside (the ITK displacement-field convention)."""

    displacement: np.ndarray  # (3, nk, nj, ni) float32, components x, y, z in mm
    geometry: Geometry

    def displacement_at(self, points: np.ndarray) -> np.ndarray:
        idx = self.geometry.physical_to_index(points.reshape(-1, 3))[:, ::-1].T
        comps = [
            ndimage.map_coordinates(self.displacement[c], idx, order=1, mode="nearest", prefilter=False)
            for c in range(3)
        ]
        return np.stack(comps, axis=-1).reshape(points.shape)

    def jacobian_determinant(self) -> np.ndarray:
        """det(d q / d p) at the grid points (central differences)."""
        spacing = np.asarray(self.geometry.spacing)  # i, j, k -> axes 2, 1, 0 of the arrays
        d = self.geometry.direction_matrix
        # gradient along array axes (k, j, i) -> derivatives along the grid directions, then to LPS
        grads = np.stack(
            [np.stack(np.gradient(self.displacement[c], *spacing[::-1]), axis=-1)[..., ::-1] for c in range(3)],
            axis=-2,
        )  # (..., 3 comps, 3 grid axes i j k)
        jac = np.eye(3) + grads @ d.T
        return np.linalg.det(jac)

    def to_sitk(self):
        import SimpleITK as sitk

        img = sitk.GetImageFromArray(np.moveaxis(self.displacement, 0, -1).astype(np.float64), isVector=True)
        img.SetSpacing(self.geometry.spacing)
        img.SetOrigin(self.geometry.origin)
        img.SetDirection(self.geometry.direction)
        return img

    @classmethod
    def from_sitk(cls, img) -> DeformationField:
        import SimpleITK as sitk

        arr = sitk.GetArrayFromImage(img)  # (nk, nj, ni, 3)
        geometry = Geometry(arr.shape[:3], img.GetSpacing(), img.GetOrigin(), img.GetDirection())
        return cls(np.moveaxis(arr, -1, 0).astype(np.float32), geometry)


def random_smooth_field(
    geometry: Geometry, amplitude_mm: float, seed: int, smoothness_mm: float = 25.0
) -> DeformationField:
    """Gaussian-filtered white noise on ``geometry``, scaled so its largest displacement is ``amplitude_mm``."""
    rng = np.random.default_rng(seed)
    sigma = [smoothness_mm / s for s in geometry.spacing[::-1]]
    comps = []
    for _ in range(3):
        noise = ndimage.gaussian_filter(rng.standard_normal(geometry.shape), sigma, mode="nearest")
        comps.append(noise)
    disp = np.stack(comps)
    peak = np.abs(disp).max()
    disp = disp * (amplitude_mm / peak) if peak > 0 else disp
    return DeformationField(disp.astype(np.float32), geometry)


def sample_pull_field(
    grid: Geometry, a: AnatomyParams, anchors: AtlasAnchors, random_field: DeformationField | None
) -> DeformationField:
    """The composed pull map sampled on ``grid`` (the stored ground truth)."""
    nk, nj, ni = grid.shape
    k, j, i = np.meshgrid(np.arange(nk), np.arange(nj), np.arange(ni), indexing="ij")
    p = grid.index_to_physical(np.stack([i, j, k], axis=-1).astype(float))
    q = pull_points(p, a, anchors, random_field)
    return DeformationField(np.moveaxis(q - p, -1, 0).astype(np.float32), grid)
