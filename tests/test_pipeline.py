"""The one inference path: the 64 -> 128 field conversion, window alignment by moving the frame, segment_ct,
``oarmorph segment`` and ``oarmorph evaluate`` on small synthetic cases."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch")

from tiny_cohort import save_tiny_cascade, tiny_cascade_config  # noqa: E402

from anatomy.bundle import write_bundle  # noqa: E402
from imaging.canonical import shift_arrays, shift_frame, to_canonical  # noqa: E402
from imaging.io import read_volume, write_volume  # noqa: E402
from imaging.metrics import dice  # noqa: E402
from imaging.volume import Volume  # noqa: E402
from oarmorph.cli import app  # noqa: E402
from phantom.analytic import body_volume, landmark_volume, patient_grid  # noqa: E402
from pipeline.atlas import atlas_from_bundle  # noqa: E402
from pipeline.segment import segment_ct  # noqa: E402
from training.cache import CachedCase, save_cached  # noqa: E402
from training.data import _resize  # noqa: E402
from training.inference import InferenceCascade, TorchRegister, load_inference_cascade  # noqa: E402
from training.layers import resize_field, upsample_area_field  # noqa: E402
from training.train import TrainConfig, build_model  # noqa: E402

runner = CliRunner()
OARS = {"Brainstem": "stem", "Parotid_L": "gland_l", "Eye_R": "eye_r"}  # catalogue name -> analytic landmark
CANONICAL = (128, 128, 128)


def _identity_register(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    zero = np.zeros((3, *image.shape), np.float32)
    return zero, zero.copy()


def _ct(top_z: float = 15.0, offset=(0.0, 0.0, 0.0)) -> Volume:
    return body_volume(patient_grid(spacing=(3.0, 3.0, 4.0), top_z=top_z, offset=offset), offset)


def _masks(ct: Volume, offset=(0.0, 0.0, 0.0)) -> dict[str, np.ndarray]:
    return {name: landmark_volume(ct.geometry, mark, offset).array for name, mark in OARS.items()}


@pytest.fixture(scope="module")
def atlas_ct():
    return _ct()


@pytest.fixture(scope="module")
def atlas(atlas_ct, tmp_path_factory):
    """An atlas bundle built on the fly from a synthetic case (write_bundle), as the pipeline loads it."""
    folder = tmp_path_factory.mktemp("atlas") / "bundle"
    bundle = write_bundle(folder, "synthetic atlas", atlas_ct, _masks(atlas_ct), {"case_id": "case0"})
    return atlas_from_bundle(bundle), folder


def _config(**kw) -> TrainConfig:
    return tiny_cascade_config(list(OARS), **kw)


def _checkpoint(path, cfg: TrainConfig, translation_k: float = 0.0):
    """A checkpoint as training writes it; the affine head's bias moves the atlas by a known translation."""
    scale = cfg.model.get("affine_translation_scale", 10.0)
    return save_tiny_cascade(path, cfg, affine_bias={9: translation_k / scale})


# --- the field's way from the training grid to the canonical grid -----------------------------------------------


def _affine_field(shape, matrix, shift, to_fine=lambda c: c, fine_to_grid=lambda y: y) -> np.ndarray:
    """u(x) = grid(A fine(x) + t) - x: the pull field on ``shape`` of the canonical-voxel affine y = A p + t."""
    idx = np.indices(shape, dtype=np.float64)
    p = to_fine(idx)
    y = np.einsum("ab,b...->a...", matrix, p) + np.asarray(shift, float).reshape(3, 1, 1, 1)
    return (fine_to_grid(y) - idx).astype(np.float32)


@pytest.mark.parametrize(
    "matrix, shift",
    [(np.eye(3), (3.25, -5.5, 1.0)), (np.diag([1.1, 0.9, 1.05]), (-6.4, 12.8, 0.0))],
    ids=["pure shift", "scaling"],
)
def test_a_64_cubed_affine_field_sends_128_cubed_voxels_where_the_affine_does(matrix, shift):
    # area reduction puts 64-grid voxel c at 128-grid position 2c + 0.5
    coarse = _affine_field((64, 64, 64), matrix, shift, lambda c: 2 * c + 0.5, lambda y: (y - 0.5) / 2)
    fine = upsample_area_field(torch.from_numpy(coarse)[None], (2, 2, 2))[0].numpy()
    expected = _affine_field(CANONICAL, matrix, shift)
    assert fine.shape == (3, *CANONICAL)
    assert np.abs(fine - expected).max() < 1e-4  # everywhere, the border voxels included
    # the corner-to-corner resize of the cascade's own grids scales by 127/63 and reads half a voxel off
    corner = resize_field(torch.from_numpy(coarse)[None], CANONICAL)[0].numpy()
    assert np.abs(corner - expected).max() > 0.02


@pytest.mark.parametrize(
    "image_shape, net_shape", [((64, 64, 64), (32, 32, 32)), ((32, 32, 32), (32, 32, 32)), ((64, 32, 64), (32, 16, 32))]
)
def test_the_affine_field_written_from_its_parameters_is_the_upsampled_one(image_shape, net_shape):
    from training.inference import affine_field_on
    from training.layers import AffineToField

    torch.manual_seed(1)
    params = torch.randn(2, 12) * torch.tensor([0.05] * 9 + [5.0] * 3)
    # what the cascade makes (net grid, translations scaled to it, then corner to corner to image_shape) ...
    ratio = torch.tensor([(n - 1) / (m - 1) for n, m in zip(net_shape, image_shape, strict=True)])
    on_net = AffineToField(net_shape)(torch.cat([params[:, :9], params[:, 9:] * ratio], dim=1))
    on_image = resize_field(on_net, image_shape) if net_shape != image_shape else on_net
    # ... and what the inference did with it: upsampled by block centres to the canonical grid
    factors = tuple(c // n for c, n in zip(CANONICAL, image_shape, strict=True))
    upsampled = upsample_area_field(on_image, factors)
    written = affine_field_on(params, CANONICAL, image_shape, net_shape)
    assert written.shape == upsampled.shape == (2, 3, *CANONICAL)
    assert float((written - upsampled).abs().max()) < 1e-4  # voxels; the fields reach about 30
    assert float(upsampled.abs().max()) > 10


def test_the_inference_cascade_reduces_as_training_does_and_returns_canonical_fields(atlas):
    seg_atlas, _ = atlas
    cfg = _config()
    torch.manual_seed(0)
    model = InferenceCascade(build_model(cfg), seg_atlas.image)
    assert torch.allclose(model.atlas[0], _resize(seg_atlas.image, (32, 32, 32)), atol=1e-6)  # baked in as trained
    fixed = torch.from_numpy(seg_atlas.image)[None, None]
    assert torch.allclose(model.reduce(fixed)[0], _resize(seg_atlas.image, (32, 32, 32)), atol=1e-6)
    field, affine = model(fixed)
    again, _ = model(fixed)
    assert field.shape == affine.shape == (1, 3, *CANONICAL)
    assert torch.equal(field, again)  # mean velocities: deterministic


def test_a_checkpoint_loads_into_the_inference_cascade(tmp_path, atlas):
    seg_atlas, _ = atlas
    cfg = _config()
    ckpt = _checkpoint(tmp_path / "best.pt", cfg, translation_k=2.0)  # 2 voxels of the 32^3 grid
    frame = seg_atlas.frame
    save_cached(CachedCase("case0", seg_atlas.image, seg_atlas.known, {}, frame), tmp_path / "case0.npz")
    model, loaded_cfg, meta = load_inference_cascade(ckpt, tmp_path / "case0.npz")
    assert loaded_cfg.image_shape == (32, 32, 32) and meta["atlas_case"] == "case0"
    field, affine = TorchRegister(model)(seg_atlas.image)
    assert field.shape == (3, *CANONICAL) and field.dtype == np.float32
    assert np.allclose(affine[0], 8.0, atol=1e-3) and np.allclose(affine[1:], 0.0, atol=1e-3)  # 2 x 4 voxels
    assert np.allclose(field[0], 8.0, atol=0.05)


# --- window alignment moves the frame ----------------------------------------------------------------------------


def test_a_shifted_frame_resamples_what_shifted_arrays_hold(atlas_ct):
    can = to_canonical(atlas_ct)
    for dk, dj in ((7, -3), (-12, 5)):
        frame = shift_frame(can.frame, dk, dj)
        moved = to_canonical(atlas_ct, frame=frame)
        expected = shift_arrays(can.image, dk, dj)
        ks = slice(max(dk, 0), 128 + min(dk, 0))
        js = slice(max(dj, 0), 128 + min(dj, 0))
        assert np.abs(moved.image[ks, js] - expected[ks, js]).max() < 1e-4
        g, g0 = frame.geometry, can.frame.geometry
        # the same physical point has index x - (-dk, -dj) in the moved window: fields computed there map back right
        p = g0.index_to_physical(np.array([40.0, 50.0, 60.0]))
        assert np.allclose(g.physical_to_index(p), [40.0, 50.0 + dj, 60.0 + dk])
        assert frame.window_z_range_mm[1] == pytest.approx(can.frame.window_z_range_mm[1] + dk * g.spacing[2])


def test_segment_ct_on_its_own_atlas_with_an_identity_register_recovers_every_oar(atlas, atlas_ct):
    seg_atlas, _ = atlas
    truth = _masks(atlas_ct)
    for align in (False, True):
        result = segment_ct(atlas_ct, seg_atlas, _identity_register, align_windows=align)
        assert result.window_shift == (0, 0)
        assert set(result.masks) == set(OARS)
        for name, mask in result.masks.items():
            assert mask.grid_shape == atlas_ct.geometry.shape
            assert dice(mask.full(), truth[name]) >= 0.95, (align, name)
    assert result.folded_fraction == 0.0
    assert set(result.seconds) == {"preprocessing", "registration", "warping", "checks"}
    assert not result.warnings


def test_window_alignment_of_a_scan_cut_inside_the_head(atlas):
    """A scan starting 60 mm below the vertex anchors its window at its top, so its anatomy sits ~25 voxels higher
    than the atlas's; aligning the window (a moved frame, resampled) brings an identity registration back."""
    seg_atlas, _ = atlas
    ct = _ct(top_z=-60.0)
    truth = _masks(ct)
    plain = segment_ct(ct, seg_atlas, _identity_register, align_windows=False)
    aligned = segment_ct(ct, seg_atlas, _identity_register, align_windows=True)
    assert any("top is cut" in w for w in aligned.warnings)
    assert aligned.window_shift[0] > 15  # its arrays move down: out[k] = a[k - dk]
    for name in OARS:
        d_plain = dice(plain.masks[name].full(), truth[name])
        d_aligned = dice(aligned.masks[name].full(), truth[name])
        assert d_aligned > 0.85 and d_plain < 0.3, (name, d_plain, d_aligned)


# --- the command line ----------------------------------------------------------------------------------------------


def test_oarmorph_segment_writes_one_mask_per_oar_on_the_input_grid(tmp_path, atlas, atlas_ct):
    _, bundle_dir = atlas
    ct_path = write_volume(atlas_ct, tmp_path / "patient.nii.gz")
    ckpt = _checkpoint(tmp_path / "best.pt", _config())
    out = tmp_path / "masks"
    res = runner.invoke(
        app, ["segment", str(ct_path), "--masks-dir", str(out), "--checkpoint", str(ckpt), "--atlas-bundle",
              str(bundle_dir), "--threads", "1"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    truth = _masks(atlas_ct)
    for name in OARS:
        vol = read_volume(out / f"{name}.nii.gz")
        assert vol.geometry.same_grid(atlas_ct.geometry)
        assert dice(vol.array, truth[name]) > 0.9, name  # a fresh cascade is about the identity
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["oars"]) == set(OARS) and summary["oars"]["Brainstem"]["volume_cc"] > 1.0
    assert set(summary["seconds"]) >= {"preprocessing", "registration", "warping"}
    assert "folded_fraction" in summary and "warnings" in summary
    # the same model as a model directory (checkpoint.pt and atlas/)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    shutil.copy(ckpt, model_dir / "checkpoint.pt")
    shutil.copytree(bundle_dir, model_dir / "atlas")
    res = runner.invoke(app, ["segment", str(ct_path), "--masks-dir", str(tmp_path / "m2"), "--bundle", str(model_dir)])
    assert res.exit_code == 0, res.output
    assert np.array_equal(
        read_volume(tmp_path / "m2" / "Brainstem.nii.gz").array, read_volume(out / "Brainstem.nii.gz").array
    )
    res = runner.invoke(app, ["segment", str(ct_path), "--masks-dir", str(tmp_path / "m3"), "--checkpoint", str(ckpt)])
    assert res.exit_code == 2 and "MODEL_NOT_FOUND" in res.output


def test_oarmorph_evaluate_writes_table_results_and_boxplot(tmp_path, atlas):
    _, bundle_dir = atlas
    cohort = tmp_path / "cohort"
    for case_id, offset in (("pt_1", (4.0, -3.0, 6.0)), ("pt_2", (-5.0, 2.0, -4.0))):
        ct = _ct(offset=offset)
        (cohort / case_id / "labels").mkdir(parents=True)
        write_volume(ct.with_array(ct.array.astype(np.int16)), cohort / case_id / "ct.nii.gz")
        aliases = {"Brainstem": "Brainstem", "Parotid_L": "LeftParotid", "Eye_R": "Eye_R"}  # OpenKBP-style names
        for name, mask in _masks(ct, offset).items():
            write_volume(Volume(mask, ct.geometry), cohort / case_id / "labels" / f"{aliases[name]}.nii.gz")
    ckpt = _checkpoint(tmp_path / "best.pt", _config())
    out = tmp_path / "eval"
    res = runner.invoke(
        app, ["evaluate", "--model", f"tiny={ckpt}", "--cohort", str(cohort), "--atlas-bundle", str(bundle_dir),
              "--out", str(out), "--threads", "1"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    table = (out / "table1.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| tiny")]
    assert [r.split(" | ")[0] for r in rows[:2]] == ["| tiny", "| tiny, affine stage"]
    header = next(line for line in table.splitlines() if line.startswith("| Method | Method type"))
    assert "Parotid_L" in header and "HD95 (mm)" in header and "≤ 0 (%)" in header
    assert "±" in rows[0]
    results = json.loads((out / "results.json").read_text())
    assert results["cases"] == ["pt_1", "pt_2"] and len(results["records"]) == 4
    record = results["records"][0]
    assert set(record["oars"]) == set(OARS) and record["oars"]["Brainstem"]["dice"] > 0.8
    assert record["oars"]["Brainstem"]["hd95_mm"] < 10.0 and record["nonpositive_jacobian_percent"] == 0.0
    assert results["summary"]["tiny"]["per_oar"]["Parotid_L"]["n"] == 2
    assert (out / "boxplot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
