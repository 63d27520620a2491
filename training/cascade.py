"""The cascade of Huang et al. (Eq. 3-4): one affine block and N dense diffeomorphic blocks.

    y = A(phi_1(phi_2(x)))        the atlas (moving) is moved by A first, then by each dense block

Each dense block sees the fixed image and the atlas warped by everything before it, predicts the mean and
log-variance of a stationary velocity field (sampled with the reparameterization trick in training, the mean
at inference), smooths it with a fixed Gaussian, and integrates it by scaling and squaring. The networks work
on ``net_shape`` (e.g. 64^3 on a CPU); their fields are resized to the image grid, so the model takes the
canonical 128^3 images and returns one composed pull field on them (``imaging.canonical.FIELD_CONVENTION``).
A dense block may run on a finer grid of its own (``DenseBlockConfig.net_shape``): coarse to fine, the first
block finds the large motion where it is cheap and the last sees (and moves) the thin OARs at the image's
resolution; the field composed so far is resized to the finer grid before the block adds its own.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .layers import AffineToField, GaussianSmoothing, SpatialTransformer, VecInt, compose, resize_field
from .networks import AffineLocalization, VelocityUNet


def _fp32(x: torch.Tensor):
    """Geometry (affine fields, warps, integration, composition) stays fp32 under a caller's autocast: only the
    networks run in bf16 on a GPU. A no-op when no autocast is on (CPU training, inference, export)."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


@dataclass
class DenseBlockConfig:
    widths: tuple[int, ...] = (12, 12, 12)
    dense: bool = True
    growth: int = 6
    layers_per_block: int = 2
    probabilistic: bool = True  # False: the network predicts the velocity directly (non-generative baselines)
    net_shape: tuple[int, int, int] | None = None  # its own grid (e.g. the image's); None: the cascade's net_shape


@dataclass
class CascadeConfig:
    image_shape: tuple[int, int, int] = (128, 128, 128)
    net_shape: tuple[int, int, int] = (64, 64, 64)
    affine_widths: tuple[int, ...] = (8, 12, 16, 24, 24)
    dense_blocks: list[DenseBlockConfig] = field(default_factory=lambda: [DenseBlockConfig(), DenseBlockConfig()])
    smoothing_sigma: float = 1.0  # voxels of each dense block's grid
    integration_steps: int = 8
    affine_translation_scale: float = 10.0  # the network's translation outputs are in units of this many voxels


@dataclass
class CascadeOutput:
    field: torch.Tensor  # composed pull field on image_shape, voxels, channels (k, j, i)
    affine_field: torch.Tensor  # the affine block's alone, on image_shape
    stage_fields: list[torch.Tensor]  # composed field after the affine block and after each dense block
    means: list[torch.Tensor] = field(default_factory=list)
    log_vars: list[torch.Tensor | None] = field(default_factory=list)
    velocities: list[torch.Tensor] = field(default_factory=list)
    affine_params: torch.Tensor | None = None


class BlockGrid(nn.Module):
    """The fixed layers of one of the cascade's grids: the affine as a field, warping, integration, composing.

    Only non-persistent buffers (identity grids, kernels): a checkpoint's weights do not depend on the grids.
    """

    def __init__(self, shape: tuple[int, int, int], integration_steps: int) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.to_field = AffineToField(self.shape)
        self.integrate = VecInt(self.shape, integration_steps)
        self.warp = SpatialTransformer(self.shape)
        self.compose = SpatialTransformer(self.shape, padding_mode="border")


def _proportional(shape: tuple[int, ...], image_shape: tuple[int, ...]) -> bool:
    """The affine's linear part is the same matrix in voxels of every grid only if all axes scale alike."""
    ratios = {round((n - 1) / (m - 1), 9) for n, m in zip(shape, image_shape, strict=True)}
    return len(ratios) == 1


class Cascade(nn.Module):
    def __init__(self, config: CascadeConfig) -> None:
        super().__init__()
        self.config = config
        self.affine_net = AffineLocalization(tuple(config.affine_widths))
        self.dense_nets = nn.ModuleList(
            VelocityUNet(tuple(b.widths), b.dense, b.growth, b.layers_per_block, b.probabilistic)
            for b in config.dense_blocks
        )
        self.smooth = GaussianSmoothing(3, config.smoothing_sigma)
        self.warp_img = SpatialTransformer(config.image_shape)
        # the grids: net_shape's (the affine block's, and the dense blocks' unless they name their own) and each
        # block's own, shared by the blocks of one shape
        net_shape = tuple(config.net_shape)
        self.block_shapes = [tuple(b.net_shape or net_shape) for b in config.dense_blocks]
        for s in set(self.block_shapes) - {net_shape}:
            if not _proportional(s, tuple(config.image_shape)):
                raise ValueError(f"a dense block's net_shape {s} must scale every axis of {config.image_shape} alike")
        shapes = sorted({net_shape, *self.block_shapes})
        self.grids = nn.ModuleDict({_key(s): BlockGrid(s, config.integration_steps) for s in shapes})

    def _to_net(self, x: torch.Tensor, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        shape = tuple(shape or self.config.net_shape)
        if tuple(x.shape[2:]) == shape:
            return x
        return F.interpolate(x, size=shape, mode="trilinear", align_corners=True)

    def _affine_on(self, params: torch.Tensor, grid: BlockGrid) -> torch.Tensor:
        """The affine block's field on ``grid``: translations (in image voxels) scale with the grid."""
        ratio = torch.tensor(
            [(n - 1) / (m - 1) for n, m in zip(grid.shape, self.config.image_shape, strict=True)],
            device=params.device,
            dtype=params.dtype,
        )
        return grid.to_field(torch.cat([params[:, :9], params[:, 9:] * ratio], dim=1))

    def _affine_params(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        raw = self.affine_net(torch.cat([fixed, moving], dim=1)).float()  # fp32 also under autocast
        scale = torch.ones(12, device=raw.device, dtype=raw.dtype)
        scale[9:] = self.config.affine_translation_scale
        return raw * scale

    @staticmethod
    def _with_affine(dense: torch.Tensor, affine_field: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Field of A(x + d(x)): d + u_A(x + d) = d + u_A(x) + W d, exact since A is affine."""
        return dense + affine_field + torch.einsum("bcd,bdkji->bckji", w, dense)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor, sample: bool = False) -> CascadeOutput:
        """``fixed``, ``moving``: [b, 1, *image_shape] canonical images. Fields are returned on image_shape."""
        cfg = self.config
        net_shape = tuple(cfg.net_shape)
        fixed_n, moving_n = self._to_net(fixed), self._to_net(moving)
        params = self._affine_params(fixed_n, moving_n)
        with _fp32(params):
            w = params[:, :9].view(-1, 3, 3)
            # the affine in net voxels: translations scale with the grid, the linear part does not
            affine_net_field = self._affine_on(params, self.grids[_key(net_shape)])
            dense = torch.zeros_like(affine_net_field)
        out = CascadeOutput(
            field=affine_net_field, affine_field=affine_net_field, stage_fields=[], affine_params=params
        )
        stage_net_fields = [affine_net_field]
        shape, affine_here = net_shape, affine_net_field
        for net, block_shape in zip(self.dense_nets, self.block_shapes, strict=True):
            grid = self.grids[_key(block_shape)]
            if block_shape != shape:  # the field so far, and the images, on this block's grid
                with _fp32(params):
                    dense = resize_field(dense, block_shape)
                    affine_here = self._affine_on(params, grid)
                fixed_n, moving_n = self._to_net(fixed, block_shape), self._to_net(moving, block_shape)
                shape = block_shape
            with _fp32(params):
                current = self._with_affine(dense, affine_here, w)
                moved = grid.warp(moving_n, current)
            mean, log_var = net(torch.cat([fixed_n, moved], dim=1))
            mean = mean.float()
            log_var = None if log_var is None else log_var.float()
            with _fp32(params):
                velocity = mean
                if sample and log_var is not None:
                    velocity = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
                velocity = self.smooth(velocity)
                phi = grid.integrate(velocity)
                dense = compose(dense, phi, grid.compose)  # phi first, then what came before it
                stage_net_fields.append(self._with_affine(dense, affine_here, w))
            out.means.append(mean)
            out.log_vars.append(log_var)
            out.velocities.append(velocity)
        with _fp32(params):
            out.stage_fields = [self._to_image(f) for f in stage_net_fields]
        out.field = out.stage_fields[-1]
        out.affine_field = out.stage_fields[0]
        return out

    def _to_image(self, f: torch.Tensor) -> torch.Tensor:
        if tuple(f.shape[2:]) == tuple(self.config.image_shape):
            return f
        return resize_field(f, tuple(self.config.image_shape))

    def warp(self, image: torch.Tensor, field: torch.Tensor) -> torch.Tensor:
        return self.warp_img(image, field)


def _key(shape: tuple[int, ...]) -> str:
    return "x".join(str(n) for n in shape)
