"""Dice, HD95 and folding against answers known by construction."""

from __future__ import annotations

import numpy as np
import pytest

from imaging.metrics import dice, folded_fraction, hausdorff95, jacobian_determinant


def _box(shape, lo, hi):
    m = np.zeros(shape, bool)
    m[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = True
    return m


def test_dice_of_known_overlaps():
    a = _box((10, 10, 10), (0, 0, 0), (10, 10, 4))
    b = _box((10, 10, 10), (0, 0, 2), (10, 10, 6))
    assert dice(a, a) == 1.0 and dice(a, b) == pytest.approx(0.5)
    assert dice(np.zeros((3, 3, 3)), np.zeros((3, 3, 3))) == 1.0


def test_hd95_of_a_shifted_box_is_the_shift_in_mm():
    a = _box((30, 30, 30), (5, 5, 5), (20, 20, 20))
    b = _box((30, 30, 30), (5, 5, 8), (20, 20, 23))  # 3 voxels along i
    assert hausdorff95(a, b, (2.5, 1.0, 0.8)) == pytest.approx(3 * 0.8, abs=1e-6)
    assert hausdorff95(a, a, (1.0, 1.0, 1.0)) == 0.0
    assert hausdorff95(a, np.zeros_like(a), (1.0, 1.0, 1.0)) == float("inf")


def test_jacobian_of_identity_is_one_and_of_a_scaling_its_volume_ratio():
    zero = np.zeros((3, 8, 9, 10))
    assert np.allclose(jacobian_determinant(zero), 1.0) and folded_fraction(zero) == 0.0
    k, j, i = np.indices((8, 9, 10)).astype(float)
    scaling = np.stack([0.1 * k, 0.2 * j, -0.1 * i])  # x -> diag(1.1, 1.2, 0.9) x
    assert np.allclose(jacobian_determinant(scaling), 1.1 * 1.2 * 0.9)
    flip = np.stack([np.zeros_like(k), np.zeros_like(j), -2.0 * i])  # i -> -i: a fold everywhere
    assert folded_fraction(flip) == 1.0
