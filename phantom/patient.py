"""One phantom patient: draw anatomy and scanner parameters, render the CT and the true OAR masks.

Rendering goes through the stored ground truth itself: the composed pull map is sampled on a coarse grid
(``DeformationField``), and the atlas CT and each atlas OAR mask are resampled through it with SimpleITK
(a displacement-field transform has exactly the ITK convention the field is stored in). The CT then gets
scanner noise and, for some patients, a dental implant with metal streaks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import SimpleITK as sitk

from imaging.body import body_mask
from imaging.volume import Geometry, Volume

from .atlas import AtlasPhantom
from .deformation import (
    AnatomyParams,
    AtlasAnchors,
    DeformationField,
    random_smooth_field,
    rotation_matrix,
    sample_pull_field,
)

SIZES = ("small", "full")
AIR_HU = -1000.0
SCALED_ORGANS = {  # OAR -> (lowest, highest) linear scale drawn
    "Parotid_L": (0.82, 1.2),
    "Parotid_R": (0.82, 1.2),
    "Glnd_Submand_L": (0.85, 1.15),
    "Glnd_Submand_R": (0.85, 1.15),
    "Glnd_Thyroid": (0.8, 1.2),
    "Cavity_Oral": (0.92, 1.08),
}


@dataclass(frozen=True)
class ScanParams:
    """Where and how the phantom patient was scanned."""

    patient_position: str  # HFS or FFS
    pixel_spacing_mm: float
    slice_thickness_mm: float
    rows: int
    columns: int
    slices: int
    top_mm_above_vertex: float  # negative: the field of view cuts the top of the skull
    fov_offset_mm: tuple[float, float]  # FOV centre relative to the head's centre, x and y
    noise_hu: float
    metal_implant: bool

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PatientCase:
    ct: Volume
    masks: dict[str, tuple[np.ndarray, tuple[int, int, int]]]  # OAR -> (box array, box start kji) on ct's grid
    field: DeformationField
    anatomy: AnatomyParams
    scan: ScanParams
    meta: dict = field(default_factory=dict)

    def full_mask(self, name: str) -> np.ndarray:
        box, start = self.masks[name]
        out = np.zeros(self.ct.geometry.shape, np.uint8)
        out[tuple(slice(s, s + n) for s, n in zip(start, box.shape, strict=True))] = box
        return out


def anchors_of(atlas: AtlasPhantom) -> AtlasAnchors:
    """The deformation's anchors, measured on the atlas (body outline per axial level, organ centres)."""
    ct = atlas.ct
    g = ct.geometry
    body = body_mask(ct.array, fill_holes=False)
    zs, cxy, axes = [], [], []
    for k in range(0, g.shape[0], max(1, round(4.0 / g.spacing[2]))):
        jj, ii = np.nonzero(body[k])
        if ii.size < 50:
            continue
        pts = g.index_to_physical(np.stack([ii, jj, np.full(ii.size, k)], axis=1).astype(float))
        zs.append(pts[0, 2])
        cxy.append(pts[:, :2].mean(axis=0))
        axes.append(2.0 * pts[:, :2].std(axis=0))  # an ellipse's semi-axis is twice its standard deviation
    order = np.argsort(zs)
    organs = {}
    for name in SCALED_ORGANS:
        mask, mg = atlas.masks[name]
        nz = np.argwhere(mask)
        centre = mg.index_to_physical(nz[:, ::-1].mean(axis=0))
        radius = (3.0 * nz.shape[0] * mg.voxel_volume_mm3 / (4.0 * np.pi)) ** (1.0 / 3.0)
        organs[name] = (centre, float(radius))
    lm = atlas.landmarks
    return AtlasAnchors(
        neck_pivot=np.asarray(lm["neck_pivot"], float),
        head_centre=np.asarray(lm["head_centre"], float),
        tmj_l=np.asarray(lm["tmj_l"], float),
        tmj_r=np.asarray(lm["tmj_r"], float),
        chin=np.asarray(lm["chin"], float),
        organ_centres=organs,
        outline_z=np.asarray(zs)[order],
        outline_centre_xy=np.asarray(cxy)[order],
        outline_semi_axes=np.asarray(axes)[order],
    )


def draw_parameters(rng: np.random.Generator, size: str) -> tuple[AnatomyParams, ScanParams]:
    """The anatomy, pose and scanner of one patient (ranges in the module's README section of docs)."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}")
    extreme = rng.random() < 0.2  # a fifth of the patients at the ends of the pose ranges
    span = 1.0 if extreme else 0.6
    anatomy = AnatomyParams(
        setup_rotation_deg=tuple(float(v) for v in rng.uniform(-3, 3, 3)),
        table_offset_mm=(float(rng.uniform(-60, 60)), float(rng.uniform(-250, 250)), float(rng.uniform(-900, 900))),
        neck_flexion_deg=float(rng.uniform(-15, 15) * span),
        head_rotation_deg=float(rng.uniform(-15, 15) * span),
        head_tilt_deg=float(rng.uniform(-8, 8) * span),
        jaw_opening_deg=float(rng.uniform(3, 12) if rng.random() < 0.35 else 0.0),
        head_scale=float(rng.uniform(0.92, 1.08)),
        fat_change_mm=float(rng.uniform(-4, 12)),
        organ_scale={name: float(rng.uniform(lo, hi)) for name, (lo, hi) in SCALED_ORGANS.items()},
        random_field_mm=float(rng.uniform(1.5, 4.0)),
        random_field_seed=int(rng.integers(0, 2**31)),
    )
    position = "FFS" if rng.random() < 0.3 else "HFS"
    cut_top = rng.random() < 0.2
    top = float(rng.uniform(-35, -10) if cut_top else rng.uniform(5, 25))
    if size == "full":
        pixel = float(rng.uniform(0.6, 1.2))
        matrix = 512 if rng.random() < 0.8 else int(rng.choice([384, 448]))
        thickness = float(rng.choice([1.0, 1.25, 1.5, 2.0, 2.5, 3.0]))
        slices = int(rng.integers(150, 251))
        noise = float(rng.uniform(8, 20))
    else:
        pixel = float(rng.uniform(2.6, 3.4))
        matrix = int(rng.choice([96, 112, 128]))
        thickness = float(rng.choice([5.0, 6.0]))
        slices = int(rng.integers(62, 76))
        noise = float(rng.uniform(5, 12))
    scan = ScanParams(
        patient_position=position,
        pixel_spacing_mm=round(pixel, 4),
        slice_thickness_mm=thickness,
        rows=matrix,
        columns=matrix,
        slices=slices,
        top_mm_above_vertex=round(top, 2),
        fov_offset_mm=(float(rng.uniform(-15, 15)), float(rng.uniform(-15, 15))),
        noise_hu=round(noise, 2),
        metal_implant=bool(rng.random() < 0.25),
    )
    return anatomy, scan


def _forward_setup(point: np.ndarray, anatomy: AnatomyParams) -> np.ndarray:
    """An atlas point in scanner coordinates, for the rigid part of the pose (enough to place the FOV)."""
    rx, ry, rz = anatomy.setup_rotation_deg
    rot = rotation_matrix("z", rz) @ rotation_matrix("y", ry) @ rotation_matrix("x", rx)
    return rot @ np.asarray(point, float) + np.asarray(anatomy.table_offset_mm)


def scan_geometry(scan: ScanParams, anatomy: AnatomyParams, atlas: AtlasPhantom) -> Geometry:
    """The CT grid: axial slices from ``top_mm_above_vertex`` downwards, FOV centred near the head."""
    vertex = _forward_setup(atlas.landmarks["vertex"], anatomy)
    centre = _forward_setup(atlas.landmarks["head_centre"], anatomy)
    s, t = scan.pixel_spacing_mm, scan.slice_thickness_mm
    cx, cy = centre[0] + scan.fov_offset_mm[0], centre[1] + scan.fov_offset_mm[1]
    x0 = cx - (scan.columns - 1) / 2 * s
    y0 = cy - (scan.rows - 1) / 2 * s
    top = vertex[2] + scan.top_mm_above_vertex
    bottom = top - (scan.slices - 1) * t
    if scan.patient_position == "HFS":  # IOP (1,0,0, 0,1,0): the slice normal points to the head
        return Geometry((scan.slices, scan.rows, scan.columns), (s, s, t), (x0, y0, bottom))
    # FFS: rows run to the patient's right, the slice normal to the feet
    x_first = x0 + (scan.columns - 1) * s
    return Geometry(
        (scan.slices, scan.rows, scan.columns), (s, s, t), (x_first, y0, top), (-1, 0, 0, 0, 1, 0, 0, 0, -1)
    )


def field_grid(patient: Geometry, spacing_mm: float) -> Geometry:
    """An LPS-aligned grid covering the patient's CT (plus a margin), where the ground-truth field is stored."""
    corners = patient.corners_physical()
    lo, hi = corners.min(axis=0) - 2 * spacing_mm, corners.max(axis=0) + 2 * spacing_mm
    n = np.ceil((hi - lo) / spacing_mm).astype(int) + 1
    return Geometry((n[2], n[1], n[0]), (spacing_mm,) * 3, tuple(lo))


def _resample(image: sitk.Image, reference: Geometry, transform: sitk.Transform, default: float) -> np.ndarray:
    ref = reference.reference_image(sitk.sitkFloat32)
    out = sitk.Resample(image, ref, transform, sitk.sitkLinear, float(default), sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def _grid_points(g: Geometry) -> np.ndarray:
    nk, nj, ni = g.shape
    k, j, i = np.meshgrid(np.arange(nk), np.arange(nj), np.arange(ni), indexing="ij")
    return g.index_to_physical(np.stack([i, j, k], axis=-1).astype(float))


def _patient_box(
    mask_geometry: Geometry,
    mask_shape: tuple[int, int, int],
    p: np.ndarray,
    q: np.ndarray,
    field_spacing_mm: float,
    patient: Geometry,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Patient index box (start, stop in kji) of the field-grid points ``p`` whose pull ``q`` lands in a mask crop."""
    idx = mask_geometry.physical_to_index(q)
    margin = field_spacing_mm / min(mask_geometry.spacing) + 1.0
    inside = np.all((idx >= -margin) & (idx <= np.array(mask_shape[::-1]) - 1 + margin), axis=-1)
    if not inside.any():
        return None
    pi = patient.physical_to_index(p[inside])
    pad = field_spacing_mm / np.asarray(patient.spacing) + 1.0
    lo = np.floor(pi.min(axis=0) - pad)[::-1].astype(int)
    hi = np.ceil(pi.max(axis=0) + pad)[::-1].astype(int) + 1
    lo, hi = np.clip(lo, 0, patient.shape), np.clip(hi, 0, patient.shape)
    return (lo, hi) if (hi > lo).all() else None


def _add_metal(hu: np.ndarray, patient: Geometry, centre_lps: np.ndarray, rng: np.random.Generator) -> dict:
    """A titanium dental implant (a 4 mm x 11 mm cylinder, axis cranio-caudal) and the streaks it casts."""
    c = patient.physical_to_index(centre_lps)  # i, j, k
    radius_mm, half_height_mm = 2.0, 5.5
    s = np.asarray(patient.spacing)
    ks = np.arange(hu.shape[0])
    z_mm = np.abs(ks - c[2]) * s[2]
    affected = ks[z_mm <= half_height_mm + s[2] / 2]
    jj, ii = np.mgrid[0 : hu.shape[1], 0 : hu.shape[2]]
    dx, dy = (ii - c[0]) * s[0], (jj - c[1]) * s[1]
    r = np.hypot(dx, dy)
    theta = np.arctan2(dy, dx)
    angles = rng.uniform(0, np.pi, 6)
    streaks = np.zeros_like(r)
    for n, a in enumerate(angles):
        across = np.abs(np.sin(theta - a)) * r  # distance from the streak's line
        streaks += (1 if n % 2 else -1) * rng.uniform(500, 1200) * np.exp(-((across / 1.2) ** 2))
    streaks *= np.exp(-r / 60.0) * (r > radius_mm + 1.0)
    metal = r <= radius_mm
    for k in affected:
        hu[k] += streaks.astype(hu.dtype)
        hu[k][metal] = 3000.0
    return {"implant_centre_lps_mm": [float(v) for v in centre_lps], "implant_slices": [int(k) for k in affected]}


def _invert_pull(target: np.ndarray, deformation: DeformationField, start: np.ndarray) -> np.ndarray:
    """The patient point whose pull lands on an atlas point (Newton steps on the sampled field)."""
    p = np.asarray(start, float)
    for _ in range(30):
        q = p + deformation.displacement_at(p[None])[0]
        eps = 0.5
        jac = np.empty((3, 3))
        for a in range(3):
            dp = np.zeros(3)
            dp[a] = eps
            jac[:, a] = ((p + dp) + deformation.displacement_at((p + dp)[None])[0] - q) / eps
        step = np.linalg.solve(jac, target - q)
        p = p + step
        if np.linalg.norm(step) < 1e-3:
            break
    return p


def render_patient(
    atlas: AtlasPhantom,
    anchors: AtlasAnchors,
    anatomy: AnatomyParams,
    scan: ScanParams,
    rng: np.random.Generator,
    field_spacing_mm: float,
) -> PatientCase:
    patient = scan_geometry(scan, anatomy, atlas)
    grid = field_grid(patient, field_spacing_mm)
    # the random field acts last, on atlas points: it is defined on a grid over the atlas
    random_field = random_smooth_field(
        field_grid(atlas.ct.geometry, 8.0), anatomy.random_field_mm, anatomy.random_field_seed
    )
    deformation = sample_pull_field(grid, anatomy, anchors, random_field)
    jac = deformation.jacobian_determinant()
    transform = sitk.DisplacementFieldTransform(sitk.Cast(deformation.to_sitk(), sitk.sitkVectorFloat64))

    hu = _resample(atlas.ct.to_sitk(), patient, transform, AIR_HU)
    p = _grid_points(grid)
    q = p + np.moveaxis(deformation.displacement, 0, -1)
    masks: dict[str, tuple[np.ndarray, tuple[int, int, int]]] = {}
    for name, (mask, mg) in atlas.masks.items():
        box = _patient_box(mg, mask.shape, p, q, field_spacing_mm, patient)
        if box is None:
            continue
        lo, hi = box
        sub = patient.sub_grid(tuple(lo), tuple(hi))
        values = _resample(Volume(mask.astype(np.float32), mg).to_sitk(), sub, transform, 0.0)
        inside = (values >= 0.5).astype(np.uint8)
        if inside.any():
            masks[name] = (inside, tuple(int(v) for v in lo))
    meta: dict = {"min_jacobian": float(jac.min()), "folded_fraction": float((jac <= 0).mean())}
    if scan.metal_implant:
        molar = atlas.landmarks["molar_l" if rng.random() < 0.5 else "molar_r"]
        guess = _forward_setup(molar, anatomy)
        meta.update(_add_metal(hu, patient, _invert_pull(np.asarray(molar, float), deformation, guess), rng))
    hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(scan.noise_hu)
    np.clip(hu, -1024.0, 3071.0, out=hu)
    return PatientCase(Volume(hu, patient), masks, deformation, anatomy, scan, meta)
