"""The cascade's geometric layers against analytic answers (identity, shifts, translations, rotations)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from training.layers import (  # noqa: E402
    AffineToField,
    GaussianSmoothing,
    SpatialTransformer,
    VecInt,
    compose,
    identity_grid,
    resize_field,
)

SHAPE = (24, 20, 16)


def test_spatial_transformer_identity_and_a_known_shift():
    torch.manual_seed(0)
    src = torch.rand(1, 2, *SHAPE)
    st = SpatialTransformer(SHAPE)
    assert torch.allclose(st(src, torch.zeros(1, 3, *SHAPE)), src, atol=1e-5)
    flow = torch.zeros(1, 3, *SHAPE)
    flow[:, 0] = 2.0  # pull from two slices further along k
    flow[:, 2] = -1.0  # and one column back along i
    out = st(src, flow)
    assert torch.allclose(out[:, :, :-2, :, 1:], src[:, :, 2:, :, :-1], atol=1e-5)
    assert torch.all(out[:, :, -2:] == 0)  # pulled from outside: zero


def test_spatial_transformer_half_voxel_shift_is_linear_interpolation():
    src = torch.arange(SHAPE[2], dtype=torch.float32).expand(1, 1, *SHAPE).contiguous()
    flow = torch.zeros(1, 3, *SHAPE)
    flow[:, 2] = 0.5
    out = SpatialTransformer(SHAPE)(src, flow)
    assert torch.allclose(out[..., :-1], src[..., :-1] + 0.5, atol=1e-5)


def test_scaling_and_squaring_of_a_constant_field_is_a_translation():
    v = torch.zeros(1, 3, *SHAPE)
    v[:, 0], v[:, 1], v[:, 2] = 1.5, -0.75, 2.25
    disp = VecInt(SHAPE, steps=8)(v)
    assert torch.allclose(disp, v, atol=1e-4)


def test_scaling_and_squaring_of_a_rotation_generator_is_the_rotation():
    """v(x) = theta * J (x - c) in the (j, i) plane: exp(v) rotates by theta about the k axis through c."""
    shape = (8, 40, 40)
    theta = 0.3
    grid = identity_grid(shape)
    c = torch.tensor([(n - 1) / 2 for n in shape]).view(1, 3, 1, 1, 1)
    rel = grid - c
    v = torch.zeros(1, 3, *shape)
    v[:, 1] = -theta * rel[:, 2]
    v[:, 2] = theta * rel[:, 1]
    disp = VecInt(shape, steps=8)(v)
    cos, sin = math.cos(theta), math.sin(theta)
    expected_j = cos * rel[:, 1] - sin * rel[:, 2] - rel[:, 1]
    expected_i = sin * rel[:, 1] + cos * rel[:, 2] - rel[:, 2]
    inner = (slice(None), slice(None), slice(12, 28), slice(12, 28))  # away from the border
    assert torch.allclose(disp[:, 1][inner], expected_j[inner], atol=0.02)
    assert torch.allclose(disp[:, 2][inner], expected_i[inner], atol=0.02)
    assert torch.allclose(disp[:, 0], torch.zeros_like(disp[:, 0]), atol=1e-5)


def test_composition_of_translations_adds_them():
    st = SpatialTransformer(SHAPE, padding_mode="border")
    a, b = torch.zeros(1, 3, *SHAPE), torch.zeros(1, 3, *SHAPE)
    a[:, 0], b[:, 2] = 1.0, -2.0
    assert torch.allclose(compose(a, b, st), a + b, atol=1e-5)


def test_gaussian_smoothing_keeps_constants_and_spreads_a_spike():
    smooth = GaussianSmoothing(3, sigma=1.5)
    const = torch.full((1, 3, *SHAPE), 2.0)
    assert torch.allclose(smooth(const), const, atol=1e-5)
    spike = torch.zeros(1, 3, *SHAPE)
    spike[:, :, 12, 10, 8] = 1.0
    out = smooth(spike)
    assert abs(float(out.sum()) - 3.0) < 1e-4 and float(out.max()) < 0.1


def test_affine_field_identity_translation_and_scaling():
    to_field = AffineToField(SHAPE)
    params = torch.zeros(1, 12)
    assert torch.allclose(to_field(params), torch.zeros(1, 3, *SHAPE))
    params[0, 9:] = torch.tensor([1.0, 2.0, -3.0])
    assert torch.allclose(to_field(params)[0, :, 5, 5, 5], torch.tensor([1.0, 2.0, -3.0]))
    params = torch.zeros(1, 12)
    params[0, 0] = 0.1  # 10 % larger along k about the centre
    field = to_field(params)
    centre_k = (SHAPE[0] - 1) / 2
    assert float(field[0, 0, 0, 0, 0]) == pytest.approx(0.1 * (0 - centre_k))


def test_resizing_a_field_rescales_its_displacements():
    small = torch.zeros(1, 3, 9, 9, 9)
    small[:, 0] = 1.0  # one coarse voxel
    big = resize_field(small, (17, 17, 17))
    assert torch.allclose(big[:, 0], torch.full((1, 17, 17, 17), 2.0), atol=1e-5)
