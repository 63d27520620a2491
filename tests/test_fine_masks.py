"""The OAR terms at the canonical 128^3 resolution on crops (``training.fine_masks``): the same geometry as the
inference's 128^3 field, the same Dice as scoring whole grids."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from training.fine_masks import crop, fine_dice, fine_soft_dice, pull_points  # noqa: E402
from training.layers import upsample_area_field  # noqa: E402

N = 128  # the canonical grid


def _ball(centre, radius) -> np.ndarray:
    k, j, i = np.ogrid[:N, :N, :N]
    d2 = (k - centre[0]) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2
    return (d2 <= radius**2).astype(np.float32)


def _smooth_field(seed: int, shape=(64, 64, 64), amplitude=3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 3, 4, 4, 4, generator=g) * amplitude
    return torch.nn.functional.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)


def test_pulled_points_follow_the_inference_field_on_the_canonical_grid():
    field = _smooth_field(0)
    fine = upsample_area_field(field, (2, 2, 2))  # the inference's 128^3 field (voxels of 128^3)
    g = torch.Generator().manual_seed(1)
    points = torch.randint(2, N - 2, (500, 3), generator=g).float()  # away from the faces (extrapolated there)
    y = pull_points(field, points, (N, N, N))
    k, j, i = points.long().t()
    expected = points + fine[0, :, k, j, i].t()
    assert torch.allclose(y, expected, atol=1e-4)


def test_crop_keeps_the_mask_and_grows_its_box_within_the_grid():
    mask = _ball((10, 60, 126), 3)
    known = np.ones_like(mask)
    c = crop(mask, known, 4)
    assert c.start == (3, 53, 119) and c.shape == (15, 15, 9)  # clipped at the i face
    assert int(c.mask.sum()) == int(mask.sum()) * 255
    assert crop(np.zeros_like(mask), known, 4) is None


def _crops(masks, known, margin=6):
    return [crop(m, known, margin) for m in masks]


def test_fine_dice_is_the_dice_of_the_whole_grid():
    """Against warping every voxel of the 128^3 atlas masks with the upsampled field and thresholding."""
    atlas = [_ball((60, 64, 50), 6), _ball((40, 70, 80), 2)]
    patient = [_ball((62, 63, 52), 6), _ball((41, 71, 80), 2)]
    known = np.ones((N, N, N), np.float32)
    known[:30] = 0.0  # a scan that ends: the second OAR's top is cut
    field = _smooth_field(2, amplitude=2.0)
    got = fine_dice(field, _crops(patient, known), torch.from_numpy(known), _crops(atlas, np.ones_like(known)), True)
    full = upsample_area_field(field, (2, 2, 2))
    grid = torch.stack(torch.meshgrid(*[torch.arange(N, dtype=torch.float32)] * 3, indexing="ij"))
    y = grid + full[0]
    norm = (2 * y / (N - 1) - 1).permute(1, 2, 3, 0).flip(-1)[None]
    for n, (a, t) in enumerate(zip(atlas, patient, strict=True)):
        warped = torch.nn.functional.grid_sample(
            torch.from_numpy(a)[None, None], norm, align_corners=True, padding_mode="zeros"
        )[0, 0]
        p, q = (warped >= 0.5).numpy() & (known > 0), (t >= 0.5) & (known > 0)
        expected = 2 * (p & q).sum() / (p.sum() + q.sum())
        assert got[n] == pytest.approx(expected, abs=2e-3), n  # the field at the faces: held, not extrapolated
    assert 0.2 < got[0] < 0.95


def test_fine_soft_dice_is_zero_at_a_perfect_match_and_pulls_towards_it():
    atlas_mask = _ball((64, 64, 64), 3)
    known = np.ones((N, N, N), np.float32)
    atlas = _crops([atlas_mask], known)
    shifted = _crops([_ball((66, 64, 64), 3)], known)  # the patient's OAR 2 voxels further along k
    present = torch.ones(1, 1)
    still = torch.zeros(1, 3, 64, 64, 64)
    assert float(fine_soft_dice(still, [atlas], atlas, present, False, None, None)) == pytest.approx(0.0, abs=1e-6)
    # a pull of -1 voxel of 64^3 (-2 of 128^3) along k reads the atlas where the patient's OAR is: a match
    moved = still.clone()
    moved[:, 0] = -1.0
    assert float(fine_soft_dice(moved, [shifted], atlas, present, False, None, None)) < 1e-3
    field = still.clone().requires_grad_(True)
    loss = fine_soft_dice(field, [shifted], atlas, present, False, None, None)
    loss.backward()
    assert float(loss.detach()) > 0.3
    assert float(field.grad[0, 0].sum()) > 0  # descending the gradient moves the pull towards negative k


def test_fine_soft_dice_counts_only_the_oars_the_patient_has_and_samples_large_boxes():
    known = np.ones((N, N, N), np.float32)
    atlas = _crops([_ball((64, 64, 64), 10), _ball((30, 30, 30), 3)], known)
    patient = _crops([_ball((64, 64, 64), 10), _ball((36, 30, 30), 3)], known)
    still = torch.zeros(1, 3, 64, 64, 64)
    both = fine_soft_dice(still, [patient], atlas, torch.ones(1, 2), False, None, None)
    first = fine_soft_dice(still, [patient], atlas, torch.tensor([[1.0, 0.0]]), False, None, None)
    assert float(first) == pytest.approx(0.0, abs=1e-6) and float(both) > 0.3
    g = torch.Generator().manual_seed(0)
    sampled = fine_soft_dice(still, [patient], atlas, torch.ones(1, 2), False, 2000, g)  # the big box: 2000 points
    assert float(sampled) == pytest.approx(float(both), abs=0.02)
