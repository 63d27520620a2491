"""The OAR terms at the canonical resolution (128^3), on crops, for a cascade trained at a coarser one.

Why: a CPU run trains on 64^3 images (about 5 mm voxels on a head and neck), where a lens, a cochlea or the
optic chiasm is less than one voxel and its soft mask a faint blur: the seg loss can barely place it, and the
validation Dice at 64^3 does not rank checkpoints as the patients' own grids (about 3 mm) do. The cascade's
field is coarse anyway (``training.inference``: the 64^3 field is upsampled to 128^3 by block centres), so the
finer OAR terms need no finer network, only the atlas's and the patient's 128^3 masks where the OARs are:

* each case keeps, per OAR, the 128^3 soft mask in its bounding box grown by a margin (``FineMask``: a few MB a
  case instead of 36 x 128^3);
* a canonical point x maps into the field's grid as c = (x - (f - 1) / 2) / f (f = 128 / n, block centres, as
  ``layers.upsample_area_field``), and is pulled to y = x + f u(c) (trilinear, held at the border);
* the atlas's 128^3 mask is read at y (trilinear, zero outside its crop: the mask is zero there) and compared
  with the patient's at x.

The training term (``fine_soft_dice``) scores each OAR on the patient's grown box (a random subset of its
points when the box is large), so a warped OAR that lands beyond the margin is the coarse term's to penalise.
The validation Dice (``fine_dice``) is exact: every 128^3 point, thresholded at 0.5 as the evaluation is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from imaging.volume import nonzero_box


@dataclass
class FineMask:
    """One OAR's canonical soft mask (and the case's known mask) in a box: ``start`` (k, j, i) on the canonical
    grid of shape ``grid`` (the cache's, 128^3)."""

    start: tuple[int, int, int]
    mask: torch.Tensor  # uint8 [k, j, i], 0-255 for 0-1
    known: torch.Tensor  # uint8 [k, j, i], 0-255 for 0-1
    grid: tuple[int, int, int]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.mask.shape)  # type: ignore[return-value]

    def to(self, device: torch.device | str) -> FineMask:
        return FineMask(self.start, self.mask.to(device), self.known.to(device), self.grid)


def crop(mask: np.ndarray, known: np.ndarray, margin: int) -> FineMask | None:
    """The mask's non-zero box grown by ``margin`` voxels (within the grid, at least 2 voxels a side), or None."""
    grown = nonzero_box(mask, margin)
    if grown is None:
        return None
    lo, hi = [], []
    for axis, side in enumerate(grown):
        n, a, b = mask.shape[axis], side.start, side.stop
        if b - a < 2:  # trilinear sampling of a crop needs two voxels along each axis
            a, b = (a, a + 2) if a + 2 <= n else (b - 2, b)
        lo.append(a)
        hi.append(b)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))

    def as_uint8(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(np.rint(np.clip(a[box], 0.0, 1.0) * 255), np.uint8))

    return FineMask(tuple(lo), as_uint8(mask), as_uint8(known), tuple(mask.shape))  # type: ignore[arg-type]


def pull_points(field: torch.Tensor, points: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Points x [P, 3] (k, j, i) of the canonical ``grid`` pulled through one case's field [1, 3, *image_shape]
    (image voxels, an integer fraction of the grid's):
    y = x + f u((x - (f - 1) / 2) / f) [P, 3], as the inference's 128^3 field is (to within the half coarse voxel
    at the faces, where this holds the border value and ``upsample_area_field`` extrapolates linearly)."""
    n = torch.tensor(field.shape[2:], dtype=points.dtype, device=points.device)
    f = torch.tensor(grid, dtype=points.dtype, device=points.device) / n
    c = (points - (f - 1) / 2) / f
    grid = (2 * c / (n - 1) - 1).flip(-1).view(1, -1, 1, 1, 3)  # grid_sample wants (i, j, k)
    u = F.grid_sample(field, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return points + u.view(3, -1).t() * f


def sample(values: torch.Tensor, start: tuple[int, int, int], points: torch.Tensor) -> torch.Tensor:
    """Trilinear values [P] of a crop [k, j, i] (float) at canonical points [P, 3]; zero outside the crop."""
    n = torch.tensor(values.shape, dtype=points.dtype, device=points.device)
    local = points - torch.tensor(start, dtype=points.dtype, device=points.device)
    grid = (2 * local / (n - 1) - 1).flip(-1).view(1, -1, 1, 1, 3)
    out = F.grid_sample(values[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.view(-1)


def box_points(
    fine: FineMask, budget: int | None, gen: torch.Generator | None
) -> tuple[torch.Tensor, float, torch.Tensor]:
    """Points of a crop (all, or ``budget`` of them drawn uniformly): canonical [P, 3] float, the voxels each
    stands for, and their index [P, 3] in the crop."""
    shape = fine.shape
    total = int(np.prod(shape))
    device = fine.mask.device
    if budget is None or total <= budget:
        flat = torch.arange(total, device=device)
    else:
        flat = torch.randint(0, total, (budget,), generator=gen, device=device)
    k = flat // (shape[1] * shape[2])
    j = (flat // shape[2]) % shape[1]
    i = flat % shape[2]
    local = torch.stack([k, j, i], dim=1)
    points = (local + torch.tensor(fine.start, device=device)).float()
    return points, total / float(flat.numel()), local


def _at(crop_values: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
    return crop_values[local[:, 0], local[:, 1], local[:, 2]].float() / 255.0


def fine_soft_dice(
    field: torch.Tensor,
    fixed: list[list[FineMask | None]],
    atlas: list[FineMask | None],
    present: torch.Tensor,
    within_known: bool,
    budget: int | None,
    gen: torch.Generator | None,
    eps: float = 1.0,
) -> torch.Tensor:
    """1 - soft Dice per OAR at 128^3 on each patient's grown OAR boxes, averaged over the OARs the patients have.

    ``field`` [b, 3, *image_shape]; ``fixed[b][n]``, ``atlas[n]``: the crops; ``present`` [b, n_oars]. ``eps`` is
    in 128^3 voxels (counts are scaled back from the sampled points to the box).
    """
    losses = []
    for b, crops in enumerate(fixed):
        for n, target_crop in enumerate(crops):
            atlas_crop = atlas[n]
            if target_crop is None or atlas_crop is None or present[b, n] <= 0:
                continue
            points, weight, local = box_points(target_crop, budget, gen)
            y = pull_points(field[b : b + 1], points, target_crop.grid)
            warped = sample(atlas_crop.mask.float() / 255.0, atlas_crop.start, y)
            target = _at(target_crop.mask, local)
            if within_known:
                known = _at(target_crop.known, local)
                warped, target = warped * known, target * known
            inter = weight * (warped * target).sum()
            sums = weight * (warped.sum() + target.sum())
            losses.append(1.0 - (2.0 * inter + eps) / (sums + eps))
    if not losses:
        return field.sum() * 0.0
    return torch.stack(losses).mean()


def fine_dice(
    field: torch.Tensor,
    fixed: list[FineMask | None],
    fixed_known: torch.Tensor,
    atlas: list[FineMask | None],
    within_known: bool,
) -> dict[int, float]:
    """Dice per OAR (threshold 0.5) of one case on the whole canonical grid: every point whose pull lands in the
    atlas OAR's crop is sampled, the rest is outside the warped OAR. ``field`` [1, 3, *image_shape];
    ``fixed_known`` [*grid] in [0, 1], the canonical grid's shape."""
    shape = tuple(fixed_known.shape)
    device = field.device
    axes = [torch.arange(s, device=device, dtype=torch.float32) for s in shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).view(-1, 3)
    y = pull_points(field, grid, shape)
    known = (fixed_known.reshape(-1) >= 0.5) if within_known else None
    out = {}
    for n, target_crop in enumerate(fixed):
        atlas_crop = atlas[n]
        if target_crop is None:
            continue
        predicted = torch.zeros(grid.shape[0], dtype=torch.bool, device=device)
        if atlas_crop is not None:
            lo = torch.tensor(atlas_crop.start, dtype=y.dtype, device=device)
            hi = lo + torch.tensor(atlas_crop.shape, dtype=y.dtype, device=device) - 1
            reach = ((y >= lo) & (y <= hi)).all(dim=1).nonzero().view(-1)
            if reach.numel():
                values = sample(atlas_crop.mask.float() / 255.0, atlas_crop.start, y[reach])
                predicted[reach] = values >= 0.5
        truth = torch.zeros(shape, dtype=torch.bool, device=device)
        k, j, i = target_crop.start
        sk, sj, si = target_crop.shape
        truth[k : k + sk, j : j + sj, i : i + si] = target_crop.mask >= 128
        truth = truth.view(-1)
        if known is not None:
            predicted, truth = predicted & known, truth & known
        denom = float(predicted.sum() + truth.sum())
        out[n] = 2.0 * float((predicted & truth).sum()) / denom if denom else 1.0
    return out
