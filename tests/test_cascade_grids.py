"""A dense block on a grid of its own (``DenseBlockConfig.net_shape``): coarse to fine, units kept straight."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from training.cascade import Cascade, CascadeConfig, DenseBlockConfig  # noqa: E402

IMAGE = (32, 32, 32)
COARSE = (16, 16, 16)


def _cascade(second_block_shape=None, seed: int = 0) -> Cascade:
    torch.manual_seed(seed)
    blocks = [DenseBlockConfig(widths=(4, 4)), DenseBlockConfig(widths=(4, 4), net_shape=second_block_shape)]
    return Cascade(CascadeConfig(image_shape=IMAGE, net_shape=COARSE, affine_widths=(4, 4), dense_blocks=blocks))


def _images(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 1, *IMAGE, generator=g), torch.rand(1, 1, *IMAGE, generator=g)


def _set_affine(model: Cascade, translation_voxels: tuple[float, float, float], scale: float = 0.0) -> None:
    """The affine head's bias: y = c + (1 + scale) (x - c) + t, with t in image voxels."""
    with torch.no_grad():
        model.affine_net.head.weight.zero_()
        bias = torch.zeros(12)
        bias[[0, 4, 8]] = scale
        bias[9:] = torch.tensor(translation_voxels) / model.config.affine_translation_scale
        model.affine_net.head.bias.copy_(bias)


def _set_constant_velocity(model: Cascade, block: int, velocity) -> None:
    net = model.dense_nets[block]
    with torch.no_grad():
        net.mean.weight.zero_()
        net.mean.bias.copy_(torch.as_tensor(velocity, dtype=torch.float32))


def test_a_block_given_the_cascades_own_grid_is_the_same_model_as_one_given_none():
    fixed, moving = _images()
    default, explicit = _cascade(None), _cascade(COARSE)
    explicit.load_state_dict(default.state_dict())
    assert list(explicit.grids) == list(default.grids) == ["16x16x16"]
    with torch.no_grad():
        a, b = default(fixed, moving), explicit(fixed, moving)
    assert torch.equal(a.field, b.field)


def test_a_finer_block_loads_the_coarse_models_weights_the_grids_hold_no_state():
    assert _cascade(IMAGE).state_dict().keys() == _cascade(None).state_dict().keys()


def test_with_still_dense_blocks_every_stage_is_the_affine_also_through_a_finer_grid():
    model = _cascade(IMAGE)
    _set_affine(model, (2.5, -1.0, 4.0), scale=0.05)
    for block in range(2):
        _set_constant_velocity(model, block, (0.0, 0.0, 0.0))
    with torch.no_grad():
        out = model(*_images())
    assert len(out.stage_fields) == 3 and float(out.affine_field.abs().max()) > 4.0
    for stage in out.stage_fields[1:]:
        # the affine rebuilt on the finer grid is the coarse one resized: the same field on the image grid
        assert float((stage - out.affine_field).abs().max()) < 1e-4


@pytest.mark.parametrize("shape", [None, IMAGE], ids=["coarse grid", "image grid"])
def test_a_constant_velocity_moves_by_its_value_in_voxels_of_the_blocks_own_grid(shape):
    model = _cascade(shape)
    _set_affine(model, (0.0, 0.0, 0.0))
    _set_constant_velocity(model, 0, (0.0, 0.0, 0.0))
    _set_constant_velocity(model, 1, (0.5, -0.25, 0.75))
    with torch.no_grad():
        out = model(*_images())
    grid = shape or COARSE
    # a shift of v voxels of the block's grid is v (n_image - 1) / (n_grid - 1) voxels of the image
    expected = torch.tensor([0.5, -0.25, 0.75]) * (IMAGE[0] - 1) / (grid[0] - 1)
    interior = out.field[0, :, 8:-8, 8:-8, 8:-8]  # the smoothing's zero padding bends the border
    assert torch.allclose(interior.mean(dim=(1, 2, 3)), expected, atol=1e-3)
    assert float((interior - expected.view(3, 1, 1, 1)).abs().max()) < 1e-3


def test_a_finer_block_gets_gradients_and_its_kl_terms_are_on_its_grid():
    model = _cascade(IMAGE)
    out = model(*_images(), sample=True)
    assert out.velocities[0].shape[2:] == COARSE and out.velocities[1].shape[2:] == IMAGE
    (out.field.square().mean() + sum(m.square().mean() for m in out.means)).backward()
    assert all(p.grad is not None for p in model.dense_nets[1].parameters())


def test_a_block_grid_that_scales_the_axes_unequally_is_refused():
    with pytest.raises(ValueError, match="alike"):
        _cascade((32, 32, 16))
