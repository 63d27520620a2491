"""The canonical space: the one preprocessing shared by training, export, the CLI, the worker and benchmarks.

Following Huang et al. ("All scans were reoriented to a standard orientation, cropped to a head and neck
window above the fourth thoracic vertebrae, down sampled to a size of 128x128x128, thresholded to a soft
tissue interval between -170 and 230 HU, and normalized to between 0 and 1"), each case gets its own
canonical grid: a 128^3 ``Geometry`` placed in that case's own patient space (LPS, mm).

Orientation
    Axis i runs to the patient's left (+x), j to posterior (+y), k from head to feet (-z). Because DICOM
    patient coordinates already follow the patient, HFS, FFS, prone or supine scans all land the same way
    up; no per-position flips are needed beyond reading the geometry correctly.

How the window is found (``find_canonical_frame``)
    1. The CT is resampled to a coarse LPS-aligned working grid (4 mm) and the body is segmented there:
       HU > -400, a small opening (detaches the couch and headrest), largest connected component.
    2. Vertex: the highest axial level whose body cross-section exceeds ``min_vertex_area_mm2``. The window's
       first plane sits ``top_margin_mm`` above it, and the window runs ``(nk - 1) * sk`` mm downwards
       (128 x 2.7 mm = 346 mm: vertex to about T4 in an adult).
    3. In-plane centre: the centroid of the body in the top ``centre_depth_mm`` of the window (head and upper
       neck, so shoulders, arms and the couch do not pull it).
    Shorter and longer scans: a scan that ends in the neck leaves the bottom of the window outside the
    scanned volume; it is filled with air (-1024 HU, i.e. 0 after windowing) and ``fov_mask`` says which
    canonical voxels were really scanned. A scan that goes on into the chest is simply cut at the window's
    bottom. A scan whose first slice already cuts through the head (``top_cut``; common in OpenKBP, whose
    CTs are truncated around the treatment) has no visible vertex: the window then starts at the top of the
    scanned body, so the anatomy sits higher in the window than usual, which the affine block absorbs.

Intensities
    A Gaussian anti-aliasing filter (sigma from the ratio of canonical to original spacing) then trilinear
    resampling; outside the scan -1024 HU; then clip to [-170, 230] HU and scale to [0, 1].

The displacement-field contract (see ``FIELD_CONVENTION``) is defined here too, because it is a property of
the canonical space; ``imaging.warp`` implements its way back to the patient.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np
import SimpleITK as sitk

from .body import body_mask
from .errors import NoBodyFoundError
from .volume import Geometry, Volume, nonzero_box
from .warp import crop_to_content

CANONICAL_DIRECTION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # i -> L, j -> P, k -> inferior

FIELD_CONVENTION = (
    "Pull field on the fixed (patient) canonical grid, shape (3, 128, 128, 128), array order [c, k, j, i]. "
    "Channel c is the displacement along canonical array axis c (0: k, head to feet; 1: j, anterior to "
    "posterior; 2: i, right to left), in canonical voxels. For fixed canonical voxel x = (k, j, i), "
    "y = x + u(x) is the continuous index in the atlas canonical grid whose content belongs at x. "
    "Affine and dense blocks are composed into one field: y = A(phi1(phi2(x)))."
)


@dataclass(frozen=True)
class CanonicalSpec:
    """Parameters of the canonical space; they go into every model card."""

    shape: tuple[int, int, int] = (128, 128, 128)  # (nk, nj, ni)
    spacing: tuple[float, float, float] = (2.5, 2.5, 2.7)  # mm along i (R->L), j (A->P), k (S->I)
    hu_window: tuple[float, float] = (-170.0, 230.0)
    body_threshold_hu: float = -400.0
    top_margin_mm: float = 8.0
    min_vertex_area_mm2: float = 400.0
    top_cut_area_mm2: float = 4000.0  # a top slice cutting more body than this means the vertex was not scanned
    centre_depth_mm: float = 180.0
    max_vertex_extrapolation_mm: float = 30.0
    work_spacing_mm: float = 4.0
    air_hu: float = -1024.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CanonicalSpec:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


DEFAULT_SPEC = CanonicalSpec()


@dataclass(frozen=True)
class CanonicalFrame:
    """A case's canonical grid and how it was found (diagnostics become job warnings)."""

    geometry: Geometry
    vertex_z_mm: float  # LPS z of the vertex: detected, extrapolated (top_cut) or the scan's top
    top_cut: bool  # the scan starts inside the head: the vertex was not scanned
    scanned_z_range_mm: tuple[float, float]  # (lowest, highest) z of the scanned volume
    window_z_range_mm: tuple[float, float]  # (lowest, highest) z of the canonical window

    @property
    def scan_shorter_than_window(self) -> bool:
        return self.scanned_z_range_mm[0] > self.window_z_range_mm[0] + 1e-6

    def to_dict(self) -> dict:
        d = asdict(self)
        d["geometry"] = self.geometry.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> CanonicalFrame:
        return cls(
            Geometry.from_dict(d["geometry"]),
            float(d["vertex_z_mm"]),
            bool(d["top_cut"]),
            tuple(d["scanned_z_range_mm"]),
            tuple(d["window_z_range_mm"]),
        )


@dataclass
class CanonicalImage:
    """The model's input for one case."""

    image: np.ndarray  # float32 [k, j, i] in [0, 1]
    frame: CanonicalFrame
    fov_mask: np.ndarray  # uint8 [k, j, i]: 1 where the canonical voxel lies inside the scanned volume
    spec: CanonicalSpec = field(default_factory=CanonicalSpec)


def _bounding_box_lps(geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    ni, nj, nk = geometry.size_ijk
    corners = np.array([[i, j, k] for i in (-0.5, ni - 0.5) for j in (-0.5, nj - 0.5) for k in (-0.5, nk - 0.5)])
    pts = geometry.index_to_physical(corners)
    return pts.min(axis=0), pts.max(axis=0)


def _antialias_sigmas_mm(source_spacing: tuple[float, ...], target_spacing: float) -> list[float]:
    # Gaussian whose FWHM makes up the difference between the target and the source voxel size
    return [float(np.sqrt(max(target_spacing**2 - s**2, 0.0)) / 2.355) for s in source_spacing]


def _prefiltered(volume: Volume, antialias_to_mm: float | None) -> sitk.Image:
    """The volume as a float SimpleITK image, Gaussian anti-aliased for sampling at ``antialias_to_mm``."""
    img = volume.to_sitk()
    if img.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):
        img = sitk.Cast(img, sitk.sitkFloat32)
    if antialias_to_mm is not None:
        sigmas = _antialias_sigmas_mm(volume.geometry.spacing, antialias_to_mm)
        if max(sigmas) > 0:
            img = sitk.SmoothingRecursiveGaussian(img, [max(s, 1e-3) for s in sigmas])
    return img


def _sample_on(img: sitk.Image, target: Geometry, default: float, interpolator: int = sitk.sitkLinear) -> np.ndarray:
    """``img`` resampled onto ``target`` (float32), ``default`` where a point falls outside its buffer.

    Only the target voxels within reach of the image are resampled (``_footprint``); the rest is ``default``,
    which is what ITK gives them. A cropped OAR mask reaches a small part of a 128^3 window: ITK would otherwise
    visit every voxel of it to answer "outside" for most.
    """
    box = _footprint(img, target)
    if box is None:
        return np.full(target.shape, default, np.float32)
    (k0, j0, i0), (k1, j1, i1) = box
    whole = box == ((0, 0, 0), target.shape)
    ref = (target if whole else target.sub_grid(*box)).reference_image(sitk.sitkFloat32)
    part = sitk.GetArrayFromImage(
        sitk.Resample(img, ref, sitk.Transform(), interpolator, float(default), sitk.sitkFloat32)
    )
    if whole:
        return part
    out = np.full(target.shape, default, np.float32)
    out[k0:k1, j0:j1, i0:i1] = part
    return out


def _footprint(img: sitk.Image, target: Geometry) -> tuple[tuple[int, int, int], tuple[int, int, int]] | None:
    """The box (start, stop, [k, j, i]) of ``target`` voxels that may fall inside ``img``'s buffer: its corners'
    outer edges (continuous index -0.5 and n - 0.5) on the target grid, one voxel more on each side for
    rounding. None when the image lies wholly outside."""
    size = np.array(img.GetSize(), float)
    edges = [(-0.5, n - 0.5) for n in size]
    corners = np.array([[i, j, k] for k in edges[2] for j in edges[1] for i in edges[0]], float)
    physical = np.array([img.TransformContinuousIndexToPhysicalPoint(tuple(c)) for c in corners])
    ijk = target.physical_to_index(physical)
    lo = np.maximum(np.floor(ijk.min(axis=0)).astype(int) - 1, 0)[::-1]
    hi = np.minimum(np.ceil(ijk.max(axis=0)).astype(int) + 2, np.array(target.size_ijk))[::-1]
    if (hi <= lo).any():
        return None
    return tuple(int(v) for v in lo), tuple(int(v) for v in hi)  # type: ignore[return-value]


def _resample(
    volume: Volume, target: Geometry, default: float, antialias_to_mm: float | None, interpolator: int = sitk.sitkLinear
) -> np.ndarray:
    return _sample_on(_prefiltered(volume, antialias_to_mm), target, default, interpolator)


def _extrapolated_vertex(area: np.ndarray, top: int, top_z: float, step_mm: float, limit_mm: float) -> float | None:
    """Where the skull cap would close above a scan that starts inside the head, or None if unknowable.

    Near the vertex the head is a dome whose cross-section grows about linearly with depth, so the area of
    the top levels extrapolates to zero at the vertex. A flat profile (a box-shaped truncation, as in
    OpenKBP) gives no estimate within ``limit_mm``.
    """
    below = top - 3
    if below < 0:
        return None
    slope = (float(area[below]) - float(area[top])) / (3 * step_mm)  # mm^2 lost per mm upwards
    if slope <= 0:
        return None
    distance = float(area[top]) / slope
    return top_z + step_mm / 2 + distance if distance <= limit_mm else None


def find_canonical_frame(ct: Volume, spec: CanonicalSpec = DEFAULT_SPEC) -> CanonicalFrame:
    """Place the canonical window on a CT (see the module docstring for how)."""
    lo, hi = _bounding_box_lps(ct.geometry)
    w = spec.work_spacing_mm
    size = np.maximum(np.ceil((hi - lo) / w).astype(int), 1)
    # working grid: LPS-aligned, k running upwards (+z) so that row k is the axial level lo_z + k * w
    work = Geometry((size[2], size[1], size[0]), (w, w, w), tuple(lo + w / 2), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    hu = _resample(ct, work, spec.air_hu, antialias_to_mm=None)
    body = body_mask(hu, spec.body_threshold_hu)
    area = body.sum(axis=(1, 2)) * w * w  # mm^2 per axial level, index k = z level
    levels = np.nonzero(area >= spec.min_vertex_area_mm2)[0]
    if levels.size == 0:
        raise NoBodyFoundError(
            "No patient body was found in this CT (no region above -400 HU large enough): is it a CT of a patient?",
            body_voxels=int(body.sum()),
        )
    top = int(levels.max())
    z_of = lambda k: float(work.origin[2] + k * w)  # noqa: E731
    # a large cross-section at the first body level: the scan (or a truncated field) starts inside the head
    top_cut = bool(area[top] >= spec.top_cut_area_mm2)
    if top_cut:
        vertex_z = _extrapolated_vertex(area, top, z_of(top), w, spec.max_vertex_extrapolation_mm)
    else:  # sub-level refinement: where the cross-section crosses the threshold between two levels
        above = float(area[top + 1]) if top + 1 < size[2] else 0.0
        frac = (float(area[top]) - spec.min_vertex_area_mm2) / max(float(area[top]) - above, 1e-6)
        vertex_z = z_of(top) + float(np.clip(frac, 0.0, 1.0)) * w
    body_top = z_of(top) + w / 2
    window_top = vertex_z + spec.top_margin_mm if vertex_z is not None else body_top
    vertex_z = body_top if vertex_z is None else vertex_z
    nk, nj, ni = spec.shape
    si, sj, sk = spec.spacing
    window_bottom = window_top - (nk - 1) * sk
    # centroid of the body in the head and upper neck
    zs = work.origin[2] + np.arange(size[2]) * w
    in_depth = (zs <= window_top) & (zs >= window_top - spec.centre_depth_mm)
    sel = body[in_depth] if in_depth.any() else body
    _, jj, ii = np.nonzero(sel)
    if ii.size == 0:
        _, jj, ii = np.nonzero(body)
    cx = work.origin[0] + ii.mean() * w
    cy = work.origin[1] + jj.mean() * w
    origin = (cx - (ni - 1) / 2 * si, cy - (nj - 1) / 2 * sj, window_top)
    geometry = Geometry(spec.shape, spec.spacing, origin, CANONICAL_DIRECTION)
    return CanonicalFrame(
        geometry=geometry,
        vertex_z_mm=vertex_z,
        top_cut=top_cut,
        scanned_z_range_mm=(float(lo[2]), float(hi[2])),
        window_z_range_mm=(float(window_bottom), float(window_top)),
    )


def window_hu(hu: np.ndarray, spec: CanonicalSpec = DEFAULT_SPEC) -> np.ndarray:
    """Clip to the soft-tissue window and scale to [0, 1] (float32)."""
    lo, hi = spec.hu_window
    return ((np.clip(hu, lo, hi) - lo) / (hi - lo)).astype(np.float32)


EDGE_TOLERANCE = 1e-6  # voxels: half-voxel edges that two grids share, to floating-point rounding


def scanned_mask(source: Geometry, target: Geometry) -> np.ndarray:
    """Which voxels of ``target`` lie inside the scanned grid ``source`` (uint8): the voxels a nearest-neighbour
    resampling would take from it, i.e. ITK's ``IsInsideBuffer``, -0.5 <= continuous index < n - 0.5 per axis.

    Axis-aligned grids (every CT here and the canonical window) need no image at all: each source axis depends on
    one target axis, so the mask is the outer product of three 1-D tests. Resampling a grid of ones instead cost a
    full-size float copy of the CT (200 MB for 512 x 512 x 200) and a resampling pass for each canonical image.
    """
    m = source.physical_to_index_matrix @ target.index_to_physical_matrix  # target (i, j, k, 1) -> source index
    linear = m[:3, :3]
    axis_of = np.abs(linear) > 1e-12
    if not (axis_of.sum(axis=1) == 1).all():  # oblique: let ITK decide, voxel by voxel
        ones = _prefiltered(Volume(np.ones(source.shape, np.uint8), source), None)
        return _sample_on(ones, target, 0.0, sitk.sitkNearestNeighbor).astype(np.uint8)
    ni, nj, nk = target.size_ijk
    src_size = source.size_ijk
    inside = [np.ones(n, bool) for n in (ni, nj, nk)]  # along target i, j, k
    for c in range(3):  # source axis c follows the one target axis t
        t = int(np.argmax(axis_of[c]))
        idx = m[c, t] * np.arange(inside[t].size, dtype=np.float64) + m[c, 3]
        # a centre on the outer edge of the first voxel (-0.5, to rounding) counts as inside; ITK's own rounding
        # takes such a centre in on some grids and leaves it out on others (tests/test_canonical.py)
        inside[t] &= (idx >= -0.5 - EDGE_TOLERANCE) & (idx < src_size[c] - 0.5 - EDGE_TOLERANCE)
    in_i, in_j, in_k = inside
    return (in_k[:, None, None] & in_j[None, :, None] & in_i[None, None, :]).astype(np.uint8)


class CanonicalSampler:
    """A CT made ready for canonical grids: anti-aliased once, so that another window of the same CT (``shifted``,
    the window matching of ``pipeline.segment.align_window``) costs only the rows that the move uncovers."""

    def __init__(self, ct: Volume, spec: CanonicalSpec = DEFAULT_SPEC) -> None:
        self.ct, self.spec = ct, spec
        self._hu = _prefiltered(ct, antialias_to_mm=min(spec.spacing))

    def _sample(self, geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
        hu = _sample_on(self._hu, geometry, self.spec.air_hu)
        return window_hu(hu, self.spec), scanned_mask(self.ct.geometry, geometry)

    def image(self, frame: CanonicalFrame | None = None) -> CanonicalImage:
        frame = frame or find_canonical_frame(self.ct, self.spec)
        image, fov = self._sample(frame.geometry)
        return CanonicalImage(image, frame, fov, self.spec)

    def shifted(self, canonical: CanonicalImage, dk: int, dj: int) -> CanonicalImage:
        """``self.image(shift_frame(canonical.frame, dk, dj))``: the arrays moved by (dk, dj) (the same sample
        points), and the rows the move uncovers sampled from the CT."""
        frame = shift_frame(canonical.frame, dk, dj)
        image = shift_arrays(canonical.image, dk, dj)
        fov = shift_arrays(canonical.fov_mask, dk, dj)
        nk, nj, ni = image.shape
        dk, dj = int(np.clip(dk, -nk, nk)), int(np.clip(dj, -nj, nj))
        k_strip = (0, dk) if dk > 0 else (nk + dk, nk)
        k_rest = (max(dk, 0), nk + min(dk, 0))
        j_strip = (0, dj) if dj > 0 else (nj + dj, nj)
        for (k0, k1), (j0, j1) in ((k_strip, (0, nj)), (k_rest, j_strip)):
            if k1 > k0 and j1 > j0:
                part, part_fov = self._sample(frame.geometry.sub_grid((k0, j0, 0), (k1, j1, ni)))
                image[k0:k1, j0:j1], fov[k0:k1, j0:j1] = part, part_fov
        return CanonicalImage(image, frame, fov, self.spec)


def to_canonical(ct: Volume, spec: CanonicalSpec = DEFAULT_SPEC, frame: CanonicalFrame | None = None) -> CanonicalImage:
    """THE preprocessing: a CT volume (HU, any geometry) to the model's 128^3 input in [0, 1]."""
    return CanonicalSampler(ct, spec).image(frame)


def mask_to_canonical(mask: Volume, frame: CanonicalFrame | Geometry) -> np.ndarray:
    """A patient-space mask as a soft (partial-volume) mask on a canonical grid, float32 in [0, 1].

    Used for the segmentation loss in training and for coarse bounding boxes; never as the final contour
    (``imaging.warp`` samples the sharp mask at the patient's own resolution).
    """
    geometry = frame.geometry if isinstance(frame, CanonicalFrame) else frame
    target_mm = min(geometry.spacing)
    # Smoothing and sampling only the mask's box: a 512 x 512 x 200 CT's OAR is a few thousandths of its grid,
    # and anti-aliasing all of it for each of 36 OARs made a full-size phantom patient's cache take minutes.
    # The margin holds the Gaussian to 4 sigma and the sampling footprint; beyond it the result is 0 anyway.
    sigmas = _antialias_sigmas_mm(mask.geometry.spacing, target_mm)
    pad = int(np.ceil((4.0 * max(sigmas) + 2.0 * max(geometry.spacing)) / min(mask.geometry.spacing))) + 1
    cropped = crop_to_content(np.asarray(mask.array), mask.geometry, pad)
    if cropped is None:
        return np.zeros(geometry.shape, np.float32)
    soft = Volume(cropped[0].astype(np.float32), cropped[1])
    out = _resample(soft, geometry, 0.0, antialias_to_mm=target_mm)
    return np.clip(out, 0.0, 1.0)


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    """Means of f x f x f blocks (float32). A sum of the f^3 strided views: four times faster than a mean over
    the axes of a 6-D reshape, and the same to the last bit or two (the same shifts on all 203 OpenKBP CTs)."""
    k, j, i = (n // f for n in a.shape)
    a = a[: k * f, : j * f, : i * f]
    total = np.zeros((k, j, i), np.float32)
    for dk in range(f):
        for dj in range(f):
            for di in range(f):
                total += a[dk::f, dj::f, di::f]
    return total / np.float32(f**3)


def block_mean_levels(a: np.ndarray, scales: tuple[int, ...]) -> dict[int, np.ndarray]:
    """``_block_mean`` at each scale, a coarser one made from the finer one it divides (4 from 2: an eighth of
    the strided sums; means of equal block means are the block mean, to float rounding)."""
    out: dict[int, np.ndarray] = {}
    for s in sorted(scales):
        finer = max((f for f in out if s % f == 0), default=None)
        out[s] = _block_mean(a, s) if finer is None else _block_mean(out[finer], s // finer)
    return out


MI_BINS = 24  # joint-histogram bins per image for window matching


def intensity_bins(a: np.ndarray, bins: int = MI_BINS) -> np.ndarray:
    """Each value's bin of ``bins`` equal bins over [0, 1], exactly as ``np.histogram2d(range=[0, 1])`` bins it.

    ``window_shift`` bins each image once and scores every candidate shift on the shifted bin indices
    (``weighted_mi``): histogramming the shifted values again was most of a case's preprocessing time.
    """
    edges = np.linspace(0.0, 1.0, bins + 1)
    flat = a.ravel()
    idx = np.searchsorted(edges, flat, side="right") - 1
    idx[flat == edges[-1]] = bins - 1  # numpy's histogram counts the last edge into the last bin
    idx[(flat < 0.0) | (flat > 1.0)] = -1  # outside the range: not counted (as numpy's histogram)
    return idx.reshape(a.shape).astype(np.int16)


def weighted_mi(a_bins: np.ndarray, b_bins: np.ndarray, w: np.ndarray, bins: int = MI_BINS) -> float:
    """Mutual information of two binned images (``intensity_bins``) under voxel weights ``w``."""
    if w.sum() < 50:
        return -np.inf
    a, b, weights = a_bins.ravel(), b_bins.ravel(), w.ravel()
    inside = (a >= 0) & (b >= 0)
    if not inside.all():
        a, b, weights = a[inside], b[inside], weights[inside]
    return _mi_of_joint_index(a.astype(np.int64) * bins + b, weights, bins)


def _mi_of_joint_index(joint_index: np.ndarray, weights: np.ndarray, bins: int) -> float:
    """Mutual information from each voxel's joint bin (a * bins + b, all valid) and its weight."""
    joint = np.bincount(joint_index.ravel(), weights=weights.ravel(), minlength=bins * bins)
    joint = joint.reshape(bins, bins) / joint.sum()
    pa, pb = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / (pa @ pb)[nz])).sum())


def shift_arrays(a: np.ndarray, dk: int, dj: int) -> np.ndarray:
    """``a`` moved by (dk, dj) voxels, zero-filled: out[k, j] = a[k - dk, j - dj]."""
    out = np.zeros_like(a)
    nk, nj = a.shape[:2]
    src_k = slice(max(-dk, 0), nk - max(dk, 0))
    dst_k = slice(max(dk, 0), nk - max(-dk, 0))
    src_j = slice(max(-dj, 0), nj - max(dj, 0))
    dst_j = slice(max(dj, 0), nj - max(-dj, 0))
    out[dst_k, dst_j] = a[src_k, src_j]
    return out


def shift_frame(frame: CanonicalFrame, dk: int, dj: int) -> CanonicalFrame:
    """The frame whose canonical image is ``shift_arrays(image, dk, dj)``: the window moved by (-dk, -dj) voxels.

    Where ``shift_arrays`` fills the uncovered rows with zeros, ``to_canonical`` on this frame samples the CT
    there, so the inference path loses nothing; and the field's way back uses this frame, so the contract holds.
    """
    g = frame.geometry
    geometry = replace(g, origin=tuple(g.index_to_physical(np.array([0.0, -float(dj), -float(dk)]))))
    z = [float(geometry.index_to_physical(np.array([0.0, 0.0, float(k)]))[2]) for k in (0, g.shape[0] - 1)]
    return replace(frame, geometry=geometry, window_z_range_mm=(min(z), max(z)))


def known_mask(ct: Volume, canonical: CanonicalImage, missing_hu: float = -1024.0) -> np.ndarray:
    """Canonical voxels the CT really holds (float32 in [0, 1]): scanned and not blanked to exactly ``missing_hu``.

    OpenKBP blanks everything outside a region around the treatment to -1024 HU; that is no air, so window
    matching (``window_shift``) and the similarity loss count only these voxels.
    """
    kept = Volume((ct.array != missing_hu).astype(np.uint8), ct.geometry)
    return (mask_to_canonical(kept, canonical.frame) * canonical.fov_mask).astype(np.float32)


WINDOW_SEARCH_SCALES = (4, 2)  # coarse then fine block size of the window search


def _overlap(n: int, d: int, case_rows: tuple[int, int] | None = None, atlas_rows: tuple[int, int] | None = None):
    """For a shift by ``d`` voxels along an axis of ``n``: the case's rows that land inside, and where they land.

    ``case_rows`` and ``atlas_rows`` (half-open) narrow it to the rows where each side holds any weight: the rows
    left out have zero overlap weight, so the joint histogram does not change (they add 0 to its bins)."""
    lo, hi = max(-d, 0), n - max(d, 0)
    for first, stop, offset in ((*(case_rows or (0, n)), 0), (*(atlas_rows or (0, n)), d)):
        lo, hi = max(lo, first - offset), min(hi, stop - offset)
    hi = max(hi, lo)
    return slice(lo, hi), slice(lo + d, hi + d)


def _rows_with_weight(weight: np.ndarray) -> tuple[tuple[int, int], ...]:
    """Per axis, the half-open range of rows where ``weight`` has any non-zero voxel ((0, 0) when none)."""
    box = nonzero_box(weight)
    return tuple((b.start, b.stop) for b in box) if box is not None else ((0, 0),) * weight.ndim


@dataclass(frozen=True)
class WindowReference:
    """The atlas side of ``window_shift`` at each search scale (binned block means and known fraction).

    It depends on the atlas alone, so it is made once per atlas (``WindowReference.of``), not once per case.
    """

    levels: dict[int, tuple[np.ndarray, np.ndarray]]  # scale -> (intensity bins, known fraction)

    @classmethod
    def of(cls, atlas_image: np.ndarray, atlas_known: np.ndarray) -> WindowReference:
        image, known = (
            block_mean_levels(atlas_image, WINDOW_SEARCH_SCALES),
            block_mean_levels(atlas_known, WINDOW_SEARCH_SCALES),
        )
        return cls({s: (intensity_bins(image[s]), known[s]) for s in WINDOW_SEARCH_SCALES})


def window_shift(
    image: np.ndarray,
    known: np.ndarray,
    reference: WindowReference,
    max_shift: tuple[int, int] = (40, 16),
    min_overlap: float = 0.7,
) -> tuple[int, int]:
    """The whole-voxel shift (dk, dj) of a case's canonical arrays that best matches the atlas's (MI on the voxels
    both hold), searched coarse to fine. Moving a case's arrays by (dk, dj) is the same as moving its canonical
    window by (-dk, -dj) voxels, so the field contract is untouched; it takes out what the window's anchoring
    leaves (a CT truncated above the vertex starts its window lower in the body).

    Each candidate is scored on the overlap of the case's rows and the atlas's (views, no shifted copies): the
    rows a shift would zero-fill have no overlap weight, so the joint histogram (``weighted_mi``'s, to the bit)
    is the one of the shifted arrays.
    """

    def best(scale: int, centre: tuple[int, int], radius: tuple[int, int], step: int) -> tuple[int, int]:
        img_bins, kn = intensity_bins(image_levels[scale]), known_levels[scale]
        a_bins, a_kn = reference.levels[scale]
        # Block means of [0, 1] images always have a bin, so each candidate's joint bins are one sum of the
        # case's (times MI_BINS, made once) and the atlas's: weighted_mi's histogram to the bit, without its
        # per-candidate copies and checks (most of the search's time).
        all_binned = bool((img_bins >= 0).all() and (a_bins >= 0).all())
        case_rows = img_bins.astype(np.int64) * MI_BINS
        scored = []
        own = float(kn.sum())
        nk, nj = kn.shape[:2]
        # Only the rows where the case, and the atlas, hold any known voxel can weigh: a truncated OpenKBP CT
        # fills a part of its window, and scoring the zero-weight rest was a third of the search's time.
        (ck, cj, ci), (ak, aj, ai) = _rows_with_weight(kn), _rows_with_weight(a_kn)
        cols = slice(max(ci[0], ai[0]), max(min(ci[1], ai[1]), max(ci[0], ai[0])))  # not shifted: both sides
        for dk in range(centre[0] - radius[0], centre[0] + radius[0] + 1, step):
            src_k, dst_k = _overlap(nk, dk // scale, ck, ak)
            for dj in range(centre[1] - radius[1], centre[1] + radius[1] + 1, step):
                src_j, dst_j = _overlap(nj, dj // scale, cj, aj)
                case_at, atlas_at = (src_k, src_j, cols), (dst_k, dst_j, cols)
                overlap = kn[case_at] * a_kn[atlas_at]
                weight = overlap.sum()
                if weight < min_overlap * own:  # MI over a sliver of the case says nothing
                    continue
                if not all_binned or weight < 50:
                    mi = weighted_mi(img_bins[case_at], a_bins[atlas_at], overlap)
                else:
                    mi = _mi_of_joint_index(case_rows[case_at] + a_bins[atlas_at], overlap, MI_BINS)
                scored.append((mi, -abs(dk) - abs(dj), dk, dj))
        if not scored:
            return centre
        top = max(scored)
        return top[2], top[3]

    image_levels = block_mean_levels(image, WINDOW_SEARCH_SCALES)
    known_levels = block_mean_levels(known, WINDOW_SEARCH_SCALES)
    coarse_scale, fine_scale = WINDOW_SEARCH_SCALES
    coarse = best(coarse_scale, (0, 0), max_shift, coarse_scale)
    return best(fine_scale, coarse, (4, 4), fine_scale)
