"""The losses behave as their equations say."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from training.losses import (  # noqa: E402
    gradient_smoothness,
    kl_divergence,
    mi_loss,
    mmd,
    mutual_information,
    segmentation_mse,
    segmentation_soft_dice,
)


def _phantom_image(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    k, j, i = torch.meshgrid(*(torch.linspace(-1, 1, 24),) * 3, indexing="ij")
    img = ((k**2 + j**2 + i**2) < 0.6).float() * 0.6 + ((k - 0.2) ** 2 + j**2 < 0.05).float() * 0.3
    return (img + 0.02 * torch.randn(img.shape, generator=g)).clamp(0, 1)[None, None]


def test_mi_of_an_image_with_itself_beats_a_shuffled_copy_and_its_gradient_flows():
    img = _phantom_image()
    shuffled = img.flatten()[torch.randperm(img.numel(), generator=torch.Generator().manual_seed(1))].view_as(img)
    assert mutual_information(img, img) > mutual_information(img, shuffled) + 0.3
    moving = shuffled.clone().requires_grad_(True)
    mi_loss(img, moving).backward()
    assert moving.grad is not None and torch.isfinite(moving.grad).all() and moving.grad.abs().sum() > 0


def test_mi_ignores_voxels_without_data():
    img = _phantom_image()
    other = img.clone()
    other[..., :12] = 0.0  # blanked half (OpenKBP's -1024): with the weight it must not count
    weight = torch.ones_like(img)
    weight[..., :12] = 0.0
    assert mutual_information(img, other, weight) == pytest.approx(
        float(mutual_information(img, img, weight)), rel=1e-4
    )
    assert mutual_information(img, other) < mutual_information(img, img)


def test_kl_is_zero_at_the_prior_and_positive_elsewhere():
    lam = 20.0
    mean = torch.zeros(1, 3, 10, 10, 10)
    ones = torch.ones(1, 1, 10, 10, 10)
    degree = torch.nn.functional.conv3d(
        ones,
        torch.tensor(
            [[[[0, 0, 0], [0, 1, 0], [0, 0, 0]], [[0, 1, 0], [1, 0, 1], [0, 1, 0]], [[0, 0, 0], [0, 1, 0], [0, 0, 0]]]],
            dtype=torch.float32,
        )[None],
        padding=1,
    )
    log_var = (-torch.log(lam * degree)).expand(1, 3, 10, 10, 10)
    assert float(kl_divergence(mean, log_var, lam)) == pytest.approx(0.0, abs=1e-6)
    assert kl_divergence(mean, log_var + 0.5, lam) > 0
    assert kl_divergence(mean, log_var - 0.5, lam) > 0
    wavy = torch.sin(torch.arange(10.0)).view(1, 1, 1, 1, 10).expand(1, 3, 10, 10, 10)
    assert kl_divergence(wavy, log_var, lam) > kl_divergence(0.1 * wavy, log_var, lam) > 0
    constant = torch.full((1, 3, 10, 10, 10), 3.0)
    assert float(kl_divergence(constant, log_var, lam)) == pytest.approx(0.0, abs=1e-6)  # smooth: no penalty


def test_segmentation_loss_ignores_absent_oars():
    warped = torch.zeros(2, 3, 4, 4, 4)
    target = torch.zeros(2, 3, 4, 4, 4)
    target[:, 1] = 1.0  # OAR 1 differs everywhere...
    present = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 1.0]])  # ...but no patient has it contoured
    assert float(segmentation_mse(warped, target, present)) == 0.0
    present[1, 1] = 1.0
    assert float(segmentation_mse(warped, target, present)) == pytest.approx(1.0 / 5.0)


def test_soft_dice_loss_is_zero_on_a_match_half_on_half_overlap_and_ignores_absent_oars():
    target = torch.zeros(1, 2, 4, 4, 4)
    target[0, 0, :2] = 1.0  # 32 voxels
    warped = target.clone()
    present = torch.tensor([[1.0, 0.0]])
    warped[0, 1] = 1.0  # an absent OAR, wrong everywhere: not counted
    assert float(segmentation_soft_dice(warped, target, present)) == pytest.approx(0.0, abs=1e-6)
    shifted = torch.zeros_like(target)
    shifted[0, 0, 1:3] = 1.0  # 16 of 32 voxels overlap: Dice (2*16+1)/(64+1)
    expected = 1.0 - 33.0 / 65.0
    assert float(segmentation_soft_dice(shifted, target, present)) == pytest.approx(expected)


def test_smoothness_of_a_constant_is_zero_and_of_a_ramp_is_its_slope_squared():
    assert float(gradient_smoothness(torch.full((1, 3, 6, 6, 6), 2.0))) == 0.0
    ramp = torch.arange(6.0).view(1, 1, 1, 1, 6).expand(1, 3, 6, 6, 6) * 0.5
    assert float(gradient_smoothness(ramp)) == pytest.approx(0.25 / 3)


def test_mmd_is_small_for_gaussian_samples_and_large_for_shifted_ones():
    g = torch.Generator().manual_seed(0)
    gaussian = torch.randn(1, 3, 16, 16, 16, generator=g)
    assert float(mmd(gaussian, generator=g)) < 0.01
    assert float(mmd(gaussian + 3.0, generator=g)) > 0.3
    assert math.isfinite(float(mmd(gaussian * 0.0, generator=g)))
