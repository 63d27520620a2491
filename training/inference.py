"""The deterministic inference cascade: a patient's canonical 128^3 image in, one 128^3 pull field out.

This is the one model the CLI, the evaluation, the worker and the ONNX export run. It wraps a trained
``Cascade`` with everything that must not differ between training and serving:

* the input reduction of the data pipeline (``training.data._resize``: block averaging, ``mode="area"``,
  from the canonical 128^3 to the training ``image_shape``);
* the atlas's canonical image, baked in as a buffer at that ``image_shape`` (so the atlas a model was
  trained against travels with it, and the export has one input);
* the mean velocities (``sample=False``): no randomness at inference;
* the field back on the canonical 128^3 grid in 128^3 voxel units (``layers.upsample_area_field``: coarse
  voxel c sits at fine index 2c + 0.5, not at 2.016c as a corner-to-corner resize would put it);
* the affine stage's field written on the 128^3 grid from its 12 parameters (``affine_field_on``): the
  same field as upsampling it (interpolation reproduces an affine field exactly), without a second
  128^3 resize and crop in the exported graph (about a tenth of a CPU inference).

Inputs and outputs follow ``imaging.canonical.FIELD_CONVENTION``. ``TorchRegister`` adapts it to the
torch-free ``pipeline`` (numpy in, numpy out).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from imaging.canonical import DEFAULT_SPEC

from .cache import load_cached
from .cascade import Cascade
from .layers import upsample_area_field
from .train import TrainConfig, build_model

CANONICAL_SHAPE = tuple(DEFAULT_SPEC.shape)


def _factors(canonical_shape: tuple[int, ...], image_shape: tuple[int, ...]) -> tuple[int, int, int]:
    factors = tuple(c // n for c, n in zip(canonical_shape, image_shape, strict=True))
    if any(f * n != c for f, n, c in zip(factors, image_shape, canonical_shape, strict=True)):
        raise ValueError(f"the training image_shape {image_shape} must divide the canonical shape {canonical_shape}")
    return factors  # type: ignore[return-value]


def affine_field_on(
    params: torch.Tensor, canonical_shape: tuple[int, ...], image_shape: tuple[int, ...], net_shape: tuple[int, ...]
) -> torch.Tensor:
    """The affine block's pull field on the canonical grid, [b, 3, *canonical_shape], from its parameters.

    The cascade builds it on ``net_shape`` (``layers.AffineToField``: u(y) = W (y - c) + t / r with t in
    ``image_shape`` voxels), takes it to ``image_shape`` corner to corner (``resize_field``: times r =
    (n_img - 1) / (n_net - 1)) and the inference to the canonical grid by block centres
    (``upsample_area_field``: times f = n_can / n_img). Each step maps grid centre to grid centre, so on the
    canonical grid u_c(x) = sum_d W_cd (s_c / s_d) (x_d - C_d) + f_c t_c, with s = f r and C the canonical
    centre. Written as three broadcast 1-D terms: one full-size tensor, no 128^3 constant in the model.
    """
    dev, dtype = params.device, params.dtype
    f = torch.tensor([c / n for c, n in zip(canonical_shape, image_shape, strict=True)], device=dev, dtype=dtype)
    r = torch.tensor([(n - 1) / (m - 1) for n, m in zip(image_shape, net_shape, strict=True)], device=dev, dtype=dtype)
    s = f * r
    w = params[:, :9].view(-1, 3, 3) * (s.view(1, 3, 1) / s.view(1, 1, 3))  # L_cd
    t = params[:, 9:12] * f  # [b, 3]
    b = w.shape[0]
    out = t.view(b, 3, 1, 1, 1)
    for d, n in enumerate(canonical_shape):
        shape = [1, 1, 1, 1, 1]
        shape[2 + d] = n
        centred = (torch.arange(n, device=dev, dtype=dtype) - (n - 1) / 2).view(shape)
        out = out + w[:, :, d].view(b, 3, 1, 1, 1) * centred
    return out


class InferenceCascade(nn.Module):
    """``forward(fixed [1, 1, 128, 128, 128] in [0, 1]) -> (field, affine_field)``, each [1, 3, 128, 128, 128]."""

    def __init__(
        self,
        cascade: Cascade,
        atlas_image: np.ndarray | torch.Tensor,
        canonical_shape: tuple[int, int, int] = CANONICAL_SHAPE,
    ) -> None:
        super().__init__()
        self.cascade = cascade.eval()
        self.canonical_shape = tuple(canonical_shape)
        self.factors = _factors(self.canonical_shape, tuple(cascade.config.image_shape))
        atlas = torch.as_tensor(np.asarray(atlas_image, np.float32)).reshape(1, 1, *self.canonical_shape)
        self.register_buffer("atlas", self.reduce(atlas))

    def reduce(self, image: torch.Tensor) -> torch.Tensor:
        """The training resolution, exactly as ``training.data._resize`` makes it (block means)."""
        if self.factors == (1, 1, 1):
            return image
        return F.avg_pool3d(image, kernel_size=self.factors, stride=self.factors)

    def forward(self, fixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.cascade(self.reduce(fixed), self.atlas, sample=False)
        if self.factors == (1, 1, 1):
            return out.field, out.affine_field
        cfg = self.cascade.config
        affine = affine_field_on(out.affine_params, self.canonical_shape, cfg.image_shape, cfg.net_shape)
        return upsample_area_field(out.field, self.factors), affine


def train_config_from_checkpoint(checkpoint: dict) -> TrainConfig:
    """The run's ``TrainConfig`` (keys a newer or older trainer wrote and this one lacks are dropped)."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    data = {k: v for k, v in dict(checkpoint["config"]).items() if k in known}
    data["image_shape"] = tuple(data.get("image_shape", TrainConfig.image_shape))
    return TrainConfig(**data)


def load_checkpoint(path: str | Path) -> dict:
    return torch.load(Path(path), map_location="cpu", weights_only=False)


def load_inference_cascade(
    checkpoint_path: str | Path,
    atlas_cache_path: str | Path | None = None,
    atlas_image: np.ndarray | None = None,
) -> tuple[InferenceCascade, TrainConfig, dict]:
    """A training checkpoint (``runs/<name>/best.pt``) as an ``InferenceCascade``.

    The atlas image is the canonical 128^3 image of the atlas the run trained against: ``atlas_image`` when
    given (e.g. ``to_canonical`` of an atlas bundle's CT), else the cached case ``atlas_cache_path``, else
    ``<cache_train>/<atlas_case>.npz`` of the run's own config. Returns the model, the run's config and the
    checkpoint's metadata (step, atlas case).
    """
    ckpt = load_checkpoint(checkpoint_path)
    cfg = train_config_from_checkpoint(ckpt)
    cascade = build_model(cfg)
    cascade.load_state_dict(ckpt["model"])
    if atlas_image is None:
        path = Path(atlas_cache_path) if atlas_cache_path else Path(cfg.cache_train) / f"{ckpt['atlas_case']}.npz"
        atlas_image = load_cached(path).image
    model = InferenceCascade(cascade, atlas_image).eval()
    meta = {
        "checkpoint": str(checkpoint_path),
        "atlas_case": ckpt.get("atlas_case"),
        "step": ckpt.get("state", {}).get("step"),
        "align_windows": cfg.align_windows,
    }
    return model, cfg, meta


class TorchRegister:
    """The ``register`` callable of ``pipeline.segment_ct``: canonical 128^3 image -> (field, affine field)."""

    def __init__(self, model: InferenceCascade, threads: int | None = None) -> None:
        self.model = model.eval()
        if threads:
            torch.set_num_threads(threads)

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        fixed = torch.from_numpy(np.ascontiguousarray(image, np.float32))[None, None]
        with torch.inference_mode():
            field, affine = self.model(fixed)
        return field[0].numpy(), affine[0].numpy()
