"""The test-time-shift benchmark's fusion: the mean of soft masks on the patient grid, whatever their boxes."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # benchmarks/ is no installed package

from imaging.warp import WarpedMask  # noqa: E402


def _soft(start, shape, value, grid=(10, 12, 14)) -> WarpedMask:
    return WarpedMask(start, np.full(shape, value, np.float32), grid, 1.0, False, False)


def test_fused_is_the_mean_of_the_soft_masks_on_the_whole_grid():
    pytest.importorskip("torch")  # the script runs the PyTorch inference
    from benchmarks.bench_test_time_shifts import fused

    masks = [_soft((1, 2, 3), (3, 4, 5), 0.9), _soft((2, 4, 1), (5, 3, 2), 0.3), _soft((1, 2, 3), (1, 1, 1), 0.6)]
    out = fused(masks)
    assert out.grid_shape == (10, 12, 14) and out.box_start == (1, 2, 1)
    assert np.allclose(out.full(), np.mean([m.full() for m in masks], axis=0))
    assert np.array_equal(out.at_level(0.5).full(), np.mean([m.full() for m in masks], axis=0) >= 0.5)
    assert np.array_equal(fused(masks[:1]).full(), masks[0].full())
