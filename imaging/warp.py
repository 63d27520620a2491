"""From a canonical displacement field back to the patient: atlas OARs on the patient's own grid.

Implements the way back of the geometric contract (``imaging.canonical.FIELD_CONVENTION``). For each
patient voxel centre p (LPS):

    p --fixed frame^-1--> x (continuous fixed canonical index)
      --trilinear u(x), held at its border value outside the window--> y = x + u(x)
      --atlas frame--> q (atlas LPS) --atlas mask grid^-1--> sample the atlas mask (trilinear), keep >= 0.5

(0.5, ``MASK_THRESHOLD``, unless the model carries thresholds of its own per OAR, calibrated on patients:
``training.calibration``.)

Only the field is coarse: the atlas masks are sampled at their own resolution and the result lands on the
patient's own grid, so lenses, optic nerves and cochleae survive. Each OAR is evaluated only inside its own
bounding box, found cheaply from where the field sends the fixed canonical voxels; that is what keeps 36
OARs on a 512 x 512 x 200 CT in seconds on two cores. Every OAR is its own mask: overlaps (lens in eye,
glottis in larynx) are kept as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .volume import Geometry, nonzero_box

MASK_THRESHOLD = 0.5  # where a warped soft atlas mask becomes the contour, for an OAR without a calibrated one
_CHUNK_VOXELS = 1 << 21  # points evaluated at once: bounds the temporary arrays to ~100 MB


@dataclass
class WarpedMask:
    """An OAR on the patient grid, stored as its bounding box (a full 512^2 x 200 array per OAR would not fit)."""

    box_start: tuple[int, int, int]  # (k0, j0, i0) on the patient grid
    array: np.ndarray  # uint8 [k, j, i] inside the box (float32 soft values when warped with threshold=None)
    grid_shape: tuple[int, int, int]
    voxel_volume_mm3: float
    reaches_window_border: bool  # part of it comes from where the field is held at its border value
    cut_by_scan: bool  # the warped OAR continues beyond the scanned volume

    @property
    def volume_cc(self) -> float:
        return float(self.array.sum()) * self.voxel_volume_mm3 / 1000.0

    @property
    def empty(self) -> bool:
        return not self.array.any()

    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(s, s + n) for s, n in zip(self.box_start, self.array.shape, strict=True))  # type: ignore[return-value]

    def full(self) -> np.ndarray:
        out = np.zeros(self.grid_shape, self.array.dtype)
        out[self.slices()] = self.array
        return out

    def at_level(self, level: float) -> WarpedMask:
        """A soft mask (``warp_masks_to_patient(..., threshold=None)``) as the contour at ``level``: the very voxels
        the warp at that level keeps (its flags stay the soft mask's)."""
        return replace(self, array=(self.array >= threshold_of(level, "at_level")).astype(np.uint8))


def _sample(array: np.ndarray, coords_kji: np.ndarray, mode: str) -> np.ndarray:
    # "grid-constant": a voxel fades to 0 over the half voxel beyond the last one, as a voxel of size 1 should
    return ndimage.map_coordinates(array, coords_kji, order=1, mode=mode, cval=0.0, prefilter=False)


def fixed_points_to_atlas(
    points_lps: np.ndarray, fixed_frame: Geometry, atlas_frame: Geometry, displacement: np.ndarray
) -> np.ndarray:
    """Map patient (fixed) LPS points ``(N, 3)`` to the atlas LPS points whose content belongs there."""
    x_ijk = fixed_frame.physical_to_index(points_lps)
    x_kji = x_ijk[:, ::-1].T  # (3, N) in array order
    y_kji = np.empty_like(x_kji)
    for c in range(3):
        y_kji[c] = x_kji[c] + _sample(displacement[c], x_kji, mode="nearest")
    return atlas_frame.index_to_physical(y_kji[::-1].T)


def _box_corners_ijk(lo_kji: np.ndarray, hi_kji: np.ndarray) -> np.ndarray:
    return np.array(
        [[i, j, k] for k in (lo_kji[0], hi_kji[0]) for j in (lo_kji[1], hi_kji[1]) for i in (lo_kji[2], hi_kji[2])],
        float,
    )


class FieldBlockBounds:
    """Per block of fixed voxels, the range of atlas indices the pull map ``y`` takes there.

    Finding which fixed voxels land in an OAR's atlas box means testing all 128^3 voxels, once per OAR (36 OARs:
    most of the warping time). A block whose range misses the box holds none of them, so the exact test runs only
    on the blocks that may: the same voxels, found at a fraction of the cost.
    """

    def __init__(self, y_kji_grid: np.ndarray, block: int = 4) -> None:
        self._start(y_kji_grid.shape[1:], block, y_kji_grid.dtype)
        for c in range(3):
            self.fill_component(c, y_kji_grid[c])

    @classmethod
    def empty(cls, shape: tuple[int, ...], block: int = 4, dtype=np.float32) -> FieldBlockBounds:
        """Bounds to be filled one component at a time (``fill_component``, e.g. each on its own thread)."""
        out = cls.__new__(cls)
        out._start(shape, block, dtype)
        return out

    def _start(self, shape: tuple[int, ...], block: int, dtype) -> None:
        if block < 1 or block & (block - 1):
            raise ValueError(f"block must be a power of two, got {block}")
        self.block = block
        self.shape = np.array(shape)
        blocks = tuple(int(-(-n // block)) for n in shape)
        self.low = np.empty((3, *blocks), dtype)
        self.high = np.empty((3, *blocks), dtype)

    def fill_component(self, c: int, y_component: np.ndarray) -> None:
        """The block bounds of component ``c`` of ``y`` ([k, j, i] on the fixed grid)."""
        pad = [(0, int(-n % self.block)) for n in self.shape]
        y = np.pad(y_component, pad, mode="edge") if any(p[1] for p in pad) else y_component
        low = high = y
        # halve each axis log2(block) times: pairwise min and max of strided views, k first, so that the pass
        # over the whole array reads whole planes and the strided one along i runs on a sixteenth of it
        for axis in (0, 1, 2):
            for _ in range(self.block.bit_length() - 1):
                even = (slice(None),) * axis + (slice(0, None, 2),)
                odd = (slice(None),) * axis + (slice(1, None, 2),)
                low, high = np.minimum(low[even], low[odd]), np.maximum(high[even], high[odd])
        self.low[c], self.high[c] = low, high

    def voxels_landing_in(
        self, y_kji_grid: np.ndarray, lo: np.ndarray, hi: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Min and max fixed index (k, j, i) of the voxels whose ``y`` lies in [lo, hi] per axis (None: none)."""
        maybe = np.ones(self.low.shape[1:], bool)
        for c in range(3):
            maybe &= (self.high[c] >= lo[c]) & (self.low[c] <= hi[c])
        if not maybe.any():
            return None
        nzb = np.nonzero(maybe)
        start = np.array([v.min() for v in nzb]) * self.block
        stop = np.minimum((np.array([v.max() for v in nzb]) + 1) * self.block, self.shape)
        region = tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))
        inside = np.ones(tuple(stop - start), bool)
        for c in range(3):
            yc = y_kji_grid[c][region]
            inside &= (yc >= lo[c]) & (yc <= hi[c])
        if not inside.any():
            return None
        nz = np.nonzero(inside)
        first = np.array([v.min() for v in nz], float) + start
        last = np.array([v.max() for v in nz], float) + start
        return first, last


def _patient_box(
    atlas_mask_box_lps: np.ndarray,
    y_kji_grid: np.ndarray,
    fixed_frame: Geometry,
    atlas_frame: Geometry,
    patient: Geometry,
    margin_mm: float,
    blocks: FieldBlockBounds | None = None,
) -> tuple[np.ndarray, np.ndarray, bool, bool] | None:
    """Bounding box on the patient grid of where an atlas OAR can land (None if nowhere)."""
    a_idx = atlas_frame.physical_to_index(atlas_mask_box_lps)[:, ::-1]  # (8, 3) kji
    lo, hi = a_idx.min(axis=0) - 1.0, a_idx.max(axis=0) + 1.0
    found = (blocks or FieldBlockBounds(y_kji_grid)).voxels_landing_in(y_kji_grid, lo, hi)
    if found is None:
        return None
    f_lo, f_hi = found[0] - 1.0, found[1] + 1.0
    shape = np.array(fixed_frame.shape)
    low, high = f_lo < 0, f_hi > shape - 1
    reaches_border = bool(low.any() or high.any())
    # Beyond the window the field is held at its border value, so an OAR that reaches a face of the window
    # goes on past it: open the box on that side to the end of the patient grid.
    beyond = float(np.ptp(patient.corners_physical(), axis=0).max()) / min(fixed_frame.spacing) + 2.0
    f_lo = np.where(low, -beyond, f_lo)
    f_hi = np.where(high, shape - 1 + beyond, f_hi)
    corners_lps = fixed_frame.index_to_physical(_box_corners_ijk(f_lo, f_hi))
    p_ijk = patient.physical_to_index(corners_lps)
    margin_vox = margin_mm / np.asarray(patient.spacing)
    p_lo = np.floor(p_ijk.min(axis=0) - margin_vox)[::-1].astype(int)
    p_hi = np.ceil(p_ijk.max(axis=0) + margin_vox)[::-1].astype(int) + 1
    grid = np.array(patient.shape)
    cut = bool((p_lo < 0).any() or (p_hi > grid).any())
    p_lo, p_hi = np.clip(p_lo, 0, grid), np.clip(p_hi, 0, grid)
    if (p_hi <= p_lo).any():
        return None
    return p_lo, p_hi, reaches_border, cut


def physical_field_to_index_units(displacement_mm: np.ndarray, geometry: Geometry) -> np.ndarray:
    """A displacement field in LPS mm (components x, y, z; array ``(3, nk, nj, ni)``) on ``geometry``, as the
    index-unit field ``warp_masks_to_patient`` takes with ``geometry`` as both fixed and atlas frame.

    Then y = x + u(x) is the index (on ``geometry``) of the point p + d(p): the same pull map, so an ITK
    displacement field (e.g. a phantom's true deformation) is applied by the very code that applies the model's.
    """
    to_index = np.linalg.inv(geometry.direction_matrix * np.asarray(geometry.spacing)[None, :])  # mm -> (i, j, k)
    ijk = np.einsum("ab,b...->a...", to_index, np.asarray(displacement_mm, np.float64))
    return ijk[::-1].astype(np.float32)  # channels in array order (k, j, i)


def crop_to_content(mask: np.ndarray, geometry: Geometry, pad: int = 1) -> tuple[np.ndarray, Geometry] | None:
    """The mask cut to its non-zero bounding box plus ``pad`` voxels, with the matching geometry (None if empty)."""
    box = nonzero_box(mask, pad)
    if box is None:
        return None
    return mask[box], geometry.sub_grid(tuple(b.start for b in box), tuple(b.stop for b in box))


def threshold_of(threshold: float | Mapping[str, float], name: str) -> float:
    """The level at which OAR ``name``'s warped soft mask becomes its contour; refused outside (0, 1]."""
    level = float(threshold.get(name, MASK_THRESHOLD) if isinstance(threshold, Mapping) else threshold)
    if not 0.0 < level <= 1.0:
        raise ValueError(f"mask threshold for {name} must lie in (0, 1], got {level}")
    return level


def check_levels(levels: Mapping[str, float]) -> dict[str, float]:
    """A level per OAR name, each checked as ``threshold_of`` does (ValueError otherwise)."""
    if not isinstance(levels, Mapping):
        raise ValueError(f"mask thresholds must map OAR names to levels in (0, 1], got {levels!r}")
    return {str(name): threshold_of(level, str(name)) for name, level in levels.items()}


def _mask_box_lps(mask_array: np.ndarray, geometry: Geometry) -> np.ndarray:
    lo = np.zeros(3) - 0.5
    hi = np.array(mask_array.shape, float) - 0.5
    return geometry.index_to_physical(_box_corners_ijk(lo, hi))


def warp_masks_to_patient(
    atlas_masks: Mapping[str, tuple[np.ndarray, Geometry]],
    atlas_frame: Geometry,
    fixed_frame: Geometry,
    displacement: np.ndarray,
    patient: Geometry,
    *,
    threshold: float | Mapping[str, float] | None = MASK_THRESHOLD,
    margin_mm: float = 6.0,
) -> dict[str, WarpedMask]:
    """Warp every atlas OAR (``name -> (mask [k, j, i], its geometry)``) onto the patient grid.

    ``threshold``: one level for every OAR, or a level per OAR name (``MASK_THRESHOLD`` for a name it lacks).
    A level must lie in (0, 1]; the OAR's box bounds where its warped mask is non-zero, so it holds any level.
    None: the soft values themselves (float32), for choosing levels (``WarpedMask.at_level``)."""
    levels = {name: None if threshold is None else threshold_of(threshold, name) for name in atlas_masks}
    displacement = np.asarray(displacement, np.float32)
    if displacement.shape != (3, *fixed_frame.shape):
        raise ValueError(f"displacement must have shape (3, {fixed_frame.shape}), got {displacement.shape}")
    # scipy's interpolation and numpy's large-array arithmetic release the GIL: the work runs on the threads
    # SimpleITK is allowed (the one thread setting of the imaging layer: the benchmarks pin it, elsewhere
    # SimpleITK's default, every core), each voxel computed exactly as alone
    workers = max(1, sitk.ProcessObject.GetGlobalDefaultNumberOfThreads())
    pool = ThreadPoolExecutor(workers) if workers > 1 else None
    run = pool.map if pool is not None else map
    try:
        # where each fixed canonical voxel samples the atlas canonical grid: y = x + u(x), the index added along
        # its own axis (the same float32 sums as adding np.indices, without its 3 x 128^3 array), and its bounds
        # per block, one component per task
        y_kji_grid = np.empty_like(displacement)
        blocks = FieldBlockBounds.empty(fixed_frame.shape)

        def grid_component(c: int) -> None:
            shape = [1, 1, 1]
            shape[c] = fixed_frame.shape[c]
            np.add(displacement[c], np.arange(shape[c], dtype=np.float32).reshape(shape), out=y_kji_grid[c])
            blocks.fill_component(c, y_kji_grid[c])

        list(run(grid_component, range(3)))

        def locate(item: tuple[str, tuple[np.ndarray, Geometry]]):
            full_mask, full_geometry = item[1]
            cropped = crop_to_content(full_mask, full_geometry)  # cheap when the atlas bundle stores cropped masks
            if cropped is None:
                return None
            mask, mask_geometry = cropped
            box = _mask_box_lps(mask, mask_geometry)
            found = _patient_box(box, y_kji_grid, fixed_frame, atlas_frame, patient, margin_mm, blocks)
            return None if found is None else (mask.astype(np.float32, copy=False), mask_geometry, *found)

        items = list(atlas_masks.items())
        located = list(run(locate, items))
        # Each OAR's box cut into slabs of about equal size along k, so that the threads finish together (one
        # task per OAR can leave one thread alone with the largest box): every voxel is computed as before.
        sizes = [int(np.prod(f[3] - f[2])) for f in located if f is not None]
        slab_voxels = max(sum(sizes) // (4 * workers), 1 << 15) if sizes else 1
        tasks = []
        for n, found in enumerate(located):
            if found is None:
                continue
            p_lo, p_hi = found[2], found[3]
            plane = int(np.prod(p_hi[1:] - p_lo[1:]))
            step = max(1, slab_voxels // max(plane, 1))
            tasks += [(n, k0, min(k0 + step, int(p_hi[0]))) for k0 in range(int(p_lo[0]), int(p_hi[0]), step)]

        def sample_slab(task: tuple[int, int, int]) -> np.ndarray:
            n, k0, k1 = task
            mask, mask_geometry, p_lo, p_hi = located[n][:4]
            sub = patient.sub_grid((k0, int(p_lo[1]), int(p_lo[2])), (k1, int(p_hi[1]), int(p_hi[2])))
            values = _sample_mask_on_grid(mask, mask_geometry, sub, fixed_frame, atlas_frame, displacement)
            level = levels[items[n][0]]
            return values if level is None else (values >= level).astype(np.uint8)

        slabs = list(run(sample_slab, tasks))
    finally:
        if pool is not None:
            pool.shutdown()
    out: dict[str, WarpedMask] = {}
    for n, (name, _) in enumerate(items):
        found = located[n]
        if found is None:
            out[name] = WarpedMask(
                (0, 0, 0), np.zeros((0, 0, 0), np.uint8), patient.shape, patient.voxel_volume_mm3, False, False
            )
            continue
        _, _, p_lo, p_hi, reaches_border, cut = found
        warped = np.concatenate([slab for task, slab in zip(tasks, slabs, strict=True) if task[0] == n], axis=0)
        touches = cut and _touches_clipped_faces(warped, p_lo, p_hi, np.array(patient.shape))
        out[name] = WarpedMask(
            tuple(int(v) for v in p_lo),  # type: ignore[arg-type]
            warped,
            patient.shape,
            patient.voxel_volume_mm3,
            reaches_border and bool(warped.any()),
            touches,
        )
    return out


def _touches_clipped_faces(mask: np.ndarray, lo: np.ndarray, hi: np.ndarray, grid: np.ndarray) -> bool:
    """True when the mask reaches a face of the patient grid (the structure goes on beyond the scan)."""
    for axis in range(3):
        if lo[axis] == 0 and mask.take(0, axis=axis).any():
            return True
        if hi[axis] == grid[axis] and mask.take(-1, axis=axis).any():
            return True
    return False


def _sample_mask_on_grid(
    mask: np.ndarray,
    mask_geometry: Geometry,
    target: Geometry,
    fixed_frame: Geometry,
    atlas_frame: Geometry,
    displacement: np.ndarray,
) -> np.ndarray:
    # Both ends of the chain are affine, so they collapse into two 4x4 matrices: target index -> fixed
    # canonical index, and atlas canonical index -> atlas-mask index. Only the field lookup is per point.
    to_fixed = fixed_frame.physical_to_index_matrix @ target.index_to_physical_matrix
    to_mask = mask_geometry.physical_to_index_matrix @ atlas_frame.index_to_physical_matrix
    nk, nj, ni = target.shape
    ii = np.arange(ni, dtype=np.float64)[None, None, :]
    jj = np.arange(nj, dtype=np.float64)[None, :, None]
    out = np.empty(target.shape, np.float32)
    slices_per_chunk = max(1, _CHUNK_VOXELS // max(nj * ni, 1))
    for k0 in range(0, nk, slices_per_chunk):
        kk = np.arange(k0, min(nk, k0 + slices_per_chunk), dtype=np.float64)[:, None, None]
        # fixed canonical continuous index, in (i, j, k) rows of the matrix; stored as kji for sampling
        x_ijk = [to_fixed[r, 0] * ii + to_fixed[r, 1] * jj + to_fixed[r, 2] * kk + to_fixed[r, 3] for r in range(3)]
        x_kji = np.stack([np.broadcast_to(x_ijk[r], (kk.shape[0], nj, ni)).ravel() for r in (2, 1, 0)])
        y_kji = x_kji + np.stack([_sample(displacement[c], x_kji, mode="nearest") for c in range(3)])
        y_ijk = y_kji[::-1]
        m_kji = np.stack(
            [
                to_mask[r, 0] * y_ijk[0] + to_mask[r, 1] * y_ijk[1] + to_mask[r, 2] * y_ijk[2] + to_mask[r, 3]
                for r in (2, 1, 0)
            ]
        )
        out[k0 : k0 + kk.shape[0]] = _sample(mask, m_kji, mode="grid-constant").reshape(kk.shape[0], nj, ni)
    return out
