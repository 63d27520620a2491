"""A few training steps on CPU at 32^3 reduce the loss; an interrupted run resumes where it stopped."""

from __future__ import annotations

import csv
import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from imaging.canonical import CanonicalFrame  # noqa: E402
from imaging.volume import Geometry  # noqa: E402
from training.cache import CachedCase, save_cached  # noqa: E402
from training.train import TrainConfig, train  # noqa: E402

SHAPE = (32, 32, 32)


def _case(case_id: str, shift: tuple[int, int, int]) -> CachedCase:
    k, j, i = np.indices(SHAPE)
    c = np.array([16, 16, 16]) + np.array(shift)
    body = ((k - c[0]) ** 2 / 100 + (j - c[1]) ** 2 / 64 + (i - c[2]) ** 2 / 81) <= 1
    organ = ((k - c[0] - 3) ** 2 + (j - c[1]) ** 2 + (i - c[2] - 3) ** 2) <= 9
    image = np.where(body, 0.5, 0.0) + np.where(organ, 0.3, 0.0)
    frame = CanonicalFrame(Geometry(SHAPE, (2.5, 2.5, 2.7), (0.0, 0.0, 0.0)), 0.0, False, (-300.0, 0.0), (-300.0, 0.0))
    return CachedCase(
        case_id, image.astype(np.float32), np.ones(SHAPE, np.float32), {"Parotid_L": organ.astype(np.float32)}, frame
    )


@pytest.fixture()
def caches(tmp_path):
    for split, shifts in {"train": [(0, 0, 0), (2, -2, 1), (-2, 1, 2), (1, 2, -2)], "validation": [(1, -1, 1)]}.items():
        (tmp_path / split).mkdir()
        for n, s in enumerate(shifts):
            save_cached(_case(f"{split}{n}", s), tmp_path / split / f"{split}{n}.npz")
    return tmp_path


def _config(caches, steps: int) -> TrainConfig:
    return TrainConfig(
        name="t",
        cache_train=str(caches / "train"),
        cache_validation=str(caches / "validation"),
        oars=["Parotid_L"],
        atlas_case="train0",
        image_shape=SHAPE,
        model={"net_shape": [16, 16, 16], "affine_widths": [8, 8, 8]},
        lr=2e-3,
        steps=steps,
        mi_samples=None,
        validate_every=1000,
        checkpoint_every=10,
        threads=1,
        run_dir=str(caches / "runs"),
    )


def _losses(run) -> list[float]:
    with (run / "log.csv").open() as fh:
        return [float(r["total"]) for r in csv.DictReader(fh)]


def test_a_few_steps_reduce_the_loss(caches):
    run = train(_config(caches, 40), log=lambda *_: None)
    losses = _losses(run)
    assert len(losses) == 40
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    assert (run / "latest.pt").is_file() and (run / "best.pt").is_file()


def test_training_resumes_from_its_checkpoint(caches):
    cfg = _config(caches, 10)
    run = train(cfg, log=lambda *_: None)
    first = torch.load(run / "latest.pt", weights_only=False)
    assert first["state"]["step"] == 10
    messages = []
    train(dataclasses.replace(cfg, steps=20), log=messages.append)
    assert any("resumed at step 10" in m for m in messages)
    assert len(_losses(run)) == 20
    assert torch.load(run / "latest.pt", weights_only=False)["state"]["step"] == 20
