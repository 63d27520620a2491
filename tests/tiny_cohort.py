"""A tiny synthetic cohort (32^3 cached cases: an ellipsoid body with one organ, shifted per case) and the
training configuration that runs on it in seconds; shared by the training tests and the DDP worker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imaging.canonical import CanonicalFrame
from imaging.volume import Geometry
from training.cache import CachedCase, save_cached

SHAPE = (32, 32, 32)
SHIFTS = {"train": [(0, 0, 0), (2, -2, 1), (-2, 1, 2), (1, 2, -2)], "validation": [(1, -1, 1)]}


def synthetic_case(case_id: str, shift: tuple[int, int, int]) -> CachedCase:
    k, j, i = np.indices(SHAPE)
    c = np.array([16, 16, 16]) + np.array(shift)
    body = ((k - c[0]) ** 2 / 100 + (j - c[1]) ** 2 / 64 + (i - c[2]) ** 2 / 81) <= 1
    organ = ((k - c[0] - 3) ** 2 + (j - c[1]) ** 2 + (i - c[2] - 3) ** 2) <= 9
    image = np.where(body, 0.5, 0.0) + np.where(organ, 0.3, 0.0)
    frame = CanonicalFrame(Geometry(SHAPE, (2.5, 2.5, 2.7), (0.0, 0.0, 0.0)), 0.0, False, (-300.0, 0.0), (-300.0, 0.0))
    return CachedCase(
        case_id, image.astype(np.float32), np.ones(SHAPE, np.float32), {"Parotid_L": organ.astype(np.float32)}, frame
    )


def make_caches(root: Path) -> Path:
    """``root/train`` (train0, the atlas, and three patients) and ``root/validation`` (one patient)."""
    for split, shifts in SHIFTS.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        for n, s in enumerate(shifts):
            save_cached(synthetic_case(f"{split}{n}", s), root / split / f"{split}{n}.npz")
    return root


def tiny_config_dict(caches: Path, steps: int, **overrides) -> dict:
    """The fields of a TrainConfig (plain JSON types, so that it can be written as a YAML/JSON file)."""
    return {
        "name": "t",
        "cache_train": str(caches / "train"),
        "cache_validation": str(caches / "validation"),
        "oars": ["Parotid_L"],
        "atlas_case": "train0",
        "image_shape": list(SHAPE),
        "model": {"net_shape": [16, 16, 16], "affine_widths": [8, 8, 8]},
        "lr": 2e-3,
        "steps": steps,
        "mi_samples": None,
        "validate_every": 1000,
        "checkpoint_every": 10,
        "threads": 1,
        "run_dir": str(caches / "runs"),
        "progress": "log",
        **overrides,
    }


TINY_MODEL = {"net_shape": [16, 16, 16], "affine_widths": [8, 8, 8]}


def tiny_cascade_config(oars: list[str], **overrides):
    """The TrainConfig of a tiny cascade (32^3 images, 16^3 networks) for checkpoints made without training."""
    from training.train import TrainConfig

    return TrainConfig(name="tiny", oars=list(oars), image_shape=SHAPE, model=dict(TINY_MODEL), **overrides)


def save_tiny_cascade(
    path: Path,
    cfg,
    affine_bias: dict[int, float] | None = None,
    velocity_std: float | None = None,
    state: dict | None = None,
) -> Path:
    """A checkpoint as training writes it, of a seeded untrained cascade whose fields are known: ``affine_bias``
    sets entries of the affine head's bias (index 9: translation along k, in tenths of a 32^3 voxel by default),
    ``velocity_std`` draws the dense blocks' velocity heads (displacements of several voxels)."""
    import dataclasses

    import torch

    from training.train import build_model

    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        for index, value in (affine_bias or {}).items():
            model.affine_net.head.bias[index] = value
        if velocity_std is not None:
            for net in model.dense_nets:
                net.mean.weight.normal_(0.0, velocity_std)
    ckpt = {"model": model.state_dict(), "config": dataclasses.asdict(cfg), "atlas_case": "case0"}
    if state is not None:
        ckpt.update({"optimizer": {"unused": True}, "state": state})
    torch.save(ckpt, path)
    return path


# the keys of a checkpoint written before TensorBoard, DDP and devices (runs of that code must still resume)
FIRST_LAYOUT = {"model", "optimizer", "state", "generator", "torch_rng", "python_rng", "config", "atlas_case"}


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread, as the tiny configuration trains with: on a busy 2-core machine two threads per
    process made a 32^3 step 10x slower. Autouse in every module that imports it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
