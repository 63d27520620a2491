"""The geometric layers of the cascade, one small module per idea (after VoxelMorph's PyTorch layers).

Tensors are ``[batch, channel, k, j, i]`` on a canonical grid. A field is a pull displacement in voxels with
channels in array order (k, j, i), exactly ``imaging.canonical.FIELD_CONVENTION``: the warped image at x is the
moving image at x + u(x).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def identity_grid(shape: tuple[int, int, int], device=None, dtype=torch.float32) -> torch.Tensor:
    """Voxel indices ``[1, 3, k, j, i]`` (channel c holds the index along axis c)."""
    vectors = [torch.arange(n, device=device, dtype=dtype) for n in shape]
    return torch.stack(torch.meshgrid(*vectors, indexing="ij"))[None]


class SpatialTransformer(nn.Module):
    """Warp ``src`` by a pull field: trilinear (or nearest) sampling at x + u(x), zero outside."""

    def __init__(self, shape: tuple[int, int, int], mode: str = "bilinear", padding_mode: str = "zeros") -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.mode = mode
        self.padding_mode = padding_mode
        self.register_buffer("grid", identity_grid(self.shape), persistent=False)
        self.register_buffer(
            "scale", torch.tensor([2.0 / (n - 1) for n in self.shape]).view(1, 3, 1, 1, 1), persistent=False
        )

    def forward(self, src: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        locs = (self.grid + flow) * self.scale - 1.0  # to [-1, 1] with align_corners=True
        locs = locs.permute(0, 2, 3, 4, 1).flip(-1)  # grid_sample wants (x, y, z) = (i, j, k) last
        return F.grid_sample(src, locs, mode=self.mode, padding_mode=self.padding_mode, align_corners=True)


class VecInt(nn.Module):
    """Scaling and squaring: the displacement of exp(v) for a stationary velocity field v, in ``steps`` squarings."""

    def __init__(self, shape: tuple[int, int, int], steps: int = 8) -> None:
        super().__init__()
        self.steps = steps
        # border padding: a displacement sampled just outside the grid keeps its border value
        self.transformer = SpatialTransformer(shape, padding_mode="border")

    def forward(self, velocity: torch.Tensor) -> torch.Tensor:
        disp = velocity / (2**self.steps)
        for _ in range(self.steps):
            disp = disp + self.transformer(disp, disp)
        return disp


def compose(outer: torch.Tensor, inner: torch.Tensor, transformer: SpatialTransformer) -> torch.Tensor:
    """The field of ``x -> y(x) = z + outer(z)`` with ``z = x + inner(x)`` (inner applied first)."""
    return inner + transformer(outer, inner)


class GaussianSmoothing(nn.Module):
    """Fixed (not learned) separable Gaussian smoothing of each channel, sigma in voxels."""

    def __init__(self, channels: int, sigma: float) -> None:
        super().__init__()
        radius = max(1, math.ceil(2.5 * sigma))
        x = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = torch.exp(-0.5 * (x / sigma) ** 2)
        self.register_buffer("kernel", (kernel / kernel.sum()), persistent=False)
        self.channels = channels
        self.radius = radius

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, r = self.channels, self.radius
        k = self.kernel.to(x.dtype)
        for axis in range(3):
            shape = [1, 1, 1]
            shape[axis] = k.numel()
            weight = k.view(1, 1, *shape).repeat(c, 1, 1, 1, 1)
            pad = [0, 0, 0, 0, 0, 0]
            pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = r
            x = F.conv3d(F.pad(x, pad, mode="replicate"), weight, groups=c)
        return x


class AffineToField(nn.Module):
    """12 affine parameters -> the pull field of y = c + (I + W)(x - c) + t, in voxels (c: the grid centre).

    Parameters are (W row-major, 9 values, then t, 3 values in voxels), all zero for the identity.
    """

    def __init__(self, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.register_buffer("grid", identity_grid(tuple(shape)), persistent=False)
        self.register_buffer("centre", torch.tensor([(n - 1) / 2 for n in shape]).view(1, 3, 1, 1, 1), persistent=False)

    def matrix(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = params[:, :9].view(-1, 3, 3)
        return w, params[:, 9:12]

    def forward(self, params: torch.Tensor) -> torch.Tensor:
        w, t = self.matrix(params)
        rel = self.grid - self.centre  # [1, 3, k, j, i]
        disp = torch.einsum("bcd,bdkji->bckji", w, rel.expand(params.shape[0], -1, -1, -1, -1))
        return disp + t.view(-1, 3, 1, 1, 1)


def resize_field(field: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """A field on another grid size: trilinear resampling with the displacements rescaled to the new voxels.

    Fields are computed at a low resolution (cheap) and used at the image's (e.g. 64^3 -> 128^3). With
    align_corners=True the corner voxels coincide, so a voxel displacement scales by (n_new - 1)/(n_old - 1).
    """
    old = field.shape[2:]
    factors = torch.tensor(
        [(n - 1) / (o - 1) for n, o in zip(shape, old, strict=True)], dtype=field.dtype, device=field.device
    ).view(1, 3, 1, 1, 1)
    return F.interpolate(field, size=shape, mode="trilinear", align_corners=True) * factors


def _pad_linear(x: torch.Tensor, dim: int) -> torch.Tensor:
    """One more voxel at each end of ``dim``, linearly extrapolated (exact for an affine field)."""
    n = x.shape[dim]
    first = 2 * x.narrow(dim, 0, 1) - x.narrow(dim, 1, 1)
    last = 2 * x.narrow(dim, n - 1, 1) - x.narrow(dim, n - 2, 1)
    return torch.cat([first, x, last], dim=dim)


def upsample_area_field(field: torch.Tensor, factors: tuple[int, int, int]) -> torch.Tensor:
    """A field computed on an image reduced by block averaging (``mode="area"``), on the original grid.

    Block averaging by an integer factor f puts coarse voxel c at fine index f * c + (f - 1) / 2 (2c + 0.5 for
    128 -> 64), so the fine field is u_f(x) = f * u_c((x - (f - 1) / 2) / f): trilinear interpolation with
    half-pixel centres, displacements times f, and linear extrapolation over the half coarse voxel beyond the
    outermost centres (exact for an affine field). ``resize_field``'s corner-to-corner convention is right
    between the cascade's own grids (their images are resized the same way) but not here: it would scale every
    displacement by (n_f - 1)/(n_c - 1) (127/63, 0.8 % too much) and read the field up to half a fine voxel off.
    """
    # Scaled on the coarse grid: interpolation is linear, so this is the same field (to the bit for the usual
    # power-of-two factors) for an eighth of the multiplications of scaling the 128^3 result.
    scale = torch.tensor([float(f) for f in factors], dtype=field.dtype, device=field.device).view(1, 3, 1, 1, 1)
    padded = field * scale
    for dim in (2, 3, 4):
        padded = _pad_linear(padded, dim)
    size = tuple(int(n * f) for n, f in zip(padded.shape[2:], factors, strict=True))
    fine = F.interpolate(padded, size=size, mode="trilinear", align_corners=False)
    n_k, n_j, n_i = (int(n * f) for n, f in zip(field.shape[2:], factors, strict=True))
    fk, fj, fi = factors
    return fine[:, :, fk : fk + n_k, fj : fj + n_j, fi : fi + n_i]  # one Slice in the ONNX model (merge_slices)
