"""Per-OAR mask thresholds: the warp at a level per OAR, the calibration that chooses them on patients, and their way
through ``oarmorph calibrate``, ``oarmorph export --thresholds``, the card, ``segment`` and the RTSTRUCT path."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from anatomy.bundle import write_bundle
from imaging.canonical import to_canonical
from imaging.ct_writer import write_ct_series
from imaging.io import read_ct, read_volume, write_volume
from imaging.volume import Volume
from imaging.warp import MASK_THRESHOLD, threshold_of, warp_masks_to_patient
from phantom.analytic import body_volume, landmark_volume, patient_grid
from pipeline.atlas import atlas_from_bundle
from pipeline.segment import segment_ct
from pipeline.structure_set import contour_to_rtstruct
from training.calibration import FORMAT, calibrate_thresholds, choose_levels, read_thresholds
from training.cohort import read_cohort
from training.evaluate import Method

runner = CliRunner()
OARS = {"Brainstem": "stem", "Parotid_L": "gland_l", "Eye_R": "eye_r"}  # catalogue name -> analytic landmark
SHIFT = (0.4, -0.35, 0.3)  # canonical voxels: a field off the grid, so the warped masks are soft at their borders


def _ct(offset=(0.0, 0.0, 0.0)) -> Volume:
    return body_volume(patient_grid(spacing=(3.0, 3.0, 4.0), top_z=15.0, offset=offset), offset)


def _shift_register(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    field = np.stack([np.full(image.shape, s, np.float32) for s in SHIFT])
    return field, field.copy()


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    ct = _ct()
    masks = {name: landmark_volume(ct.geometry, mark).array for name, mark in OARS.items()}
    folder = tmp_path_factory.mktemp("atlas") / "bundle"
    bundle = write_bundle(folder, "synthetic atlas", ct, masks, {"case_id": "case0"})
    return atlas_from_bundle(bundle), folder


def _warp(seg_atlas, ct: Volume, threshold):
    frame = to_canonical(ct).frame
    field, _ = _shift_register(np.zeros(frame.geometry.shape, np.float32))
    return warp_masks_to_patient(
        seg_atlas.masks, seg_atlas.frame.geometry, frame.geometry, field, ct.geometry, threshold=threshold
    )


def test_a_level_per_oar_moves_only_that_oars_contour(atlas):
    seg_atlas, _ = atlas
    ct = _ct()
    plain = _warp(seg_atlas, ct, MASK_THRESHOLD)
    levels = _warp(seg_atlas, ct, {"Brainstem": 0.2})  # the others: the default
    low, high = levels["Brainstem"].full().astype(bool), plain["Brainstem"].full().astype(bool)
    assert (high <= low).all() and low.sum() > high.sum()  # a lower level holds the higher one's contour and more
    for name in ("Parotid_L", "Eye_R"):
        assert np.array_equal(levels[name].full(), plain[name].full()), name
    assert threshold_of({"Brainstem": 0.3}, "Eye_R") == MASK_THRESHOLD
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="must lie in"):
            _warp(seg_atlas, ct, {"Eye_R": bad})


def test_the_soft_warp_cut_at_a_level_is_the_warp_at_that_level(atlas):
    seg_atlas, _ = atlas
    ct = _ct((1.0, -2.0, 3.0))
    soft = _warp(seg_atlas, ct, None)
    assert soft["Brainstem"].array.dtype == np.float32
    values = soft["Brainstem"].array
    assert ((values > 0.05) & (values < 0.95)).any()  # soft borders: the levels below do choose
    for level in (0.5, 0.3, 0.2):
        at = _warp(seg_atlas, ct, level)
        for name in OARS:
            cut = soft[name].at_level(level)
            assert cut.box_start == at[name].box_start and np.array_equal(cut.array, at[name].array), (name, level)


def _cohort(root, seg_atlas, truth_levels):
    """Two patients whose masks are the atlas's through the shift field at ``truth_levels``."""
    for case_id, offset in (("pt_1", (4.0, -3.0, 6.0)), ("pt_2", (-5.0, 2.0, -4.0))):
        ct = _ct(offset)
        (root / case_id / "labels").mkdir(parents=True)
        write_volume(ct.with_array(ct.array.astype(np.int16)), root / case_id / "ct.nii.gz")
        for name, mask in _warp(seg_atlas, ct, truth_levels).items():
            write_volume(Volume(mask.full(), ct.geometry), root / case_id / "labels" / f"{name}.nii.gz")
    return root


def test_the_calibration_finds_the_level_the_contours_were_drawn_at(atlas, tmp_path):
    seg_atlas, _ = atlas
    cohort = _cohort(tmp_path / "cohort", seg_atlas, {"Brainstem": 0.3})
    method = Method("shift", _shift_register, False, seg_atlas)
    doc = calibrate_thresholds(method, read_cohort(cohort), grid=(0.45, 0.4, 0.35, 0.3, 0.25), log=lambda m: None)
    assert doc["format"] == FORMAT and doc["cases"] == ["pt_1", "pt_2"] and 0.5 in doc["grid"]
    chosen = doc["thresholds"]
    assert chosen["Parotid_L"] == 0.5 and chosen["Eye_R"] == 0.5  # drawn at 0.5: nothing to move
    assert chosen["Brainstem"] < 0.5
    assert doc["dice_per_level"]["Brainstem"][f"{chosen['Brainstem']:g}"] == pytest.approx(1.0)
    assert doc["dice_per_level"]["Brainstem"]["0.5"] < 1.0
    assert doc["mean_dice"]["calibrated"] > doc["mean_dice"]["default"]
    assert doc["patients_per_oar"] == {name: 2 for name in OARS}
    # with these levels the pipeline reproduces the patients' contours
    case = read_cohort(cohort)[0]
    ct = case.read_ct()
    truth = case.read_masks(ct)
    result = segment_ct(ct, seg_atlas, _shift_register, align_windows=False, thresholds=chosen)
    for name in OARS:
        assert np.array_equal(result.masks[name].full().astype(bool), truth[name].astype(bool)), name


def test_ties_keep_the_default_and_oars_without_patients_stay_at_it():
    dices = {"A": {0.5: [0.8, 0.9], 0.4: [0.85, 0.85], 0.3: [0.7, 0.7]}, "B": {0.5: [0.6], 0.4: [0.7], 0.3: [0.7]}}
    assert choose_levels(dices, ["A", "B", "C"]) == {"A": 0.5, "B": 0.4, "C": 0.5}


def test_a_file_that_is_no_calibration_is_refused(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"format": FORMAT, "thresholds": {"Brainstem": 2.0}}))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        read_thresholds(path)
    path.write_text(json.dumps({"thresholds": {"Brainstem": 0.4}}))
    with pytest.raises(ValueError, match="not a mask-threshold calibration"):
        read_thresholds(path)


def test_the_rtstruct_path_applies_the_cards_levels(atlas, tmp_path):
    seg_atlas, _ = atlas
    ct = _ct((2.0, 1.0, -3.0))
    write_ct_series(ct.with_array(ct.array.astype(np.int16)), tmp_path / "series")
    volume = read_ct(tmp_path / "series")

    def contour(card, name):
        model = SimpleNamespace(atlas=seg_atlas, register=_shift_register, align_windows=False, card=card)
        return contour_to_rtstruct(volume, model, tmp_path / name).segmentation.masks

    base = {"name": "shift", "version": "0"}
    plain = contour(base, "plain.dcm")
    lowered = contour({**base, "mask_thresholds": {"Brainstem": 0.2}}, "lowered.dcm")
    assert lowered["Brainstem"].volume_cc > plain["Brainstem"].volume_cc
    assert lowered["Eye_R"].volume_cc == plain["Eye_R"].volume_cc


# --- the CLI: calibrate a checkpoint, export it with its levels, run the exported model --------------------------


def test_calibrate_export_and_segment_carry_the_levels(atlas, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from tiny_cohort import save_tiny_cascade, tiny_cascade_config

    from model_export.bundle import load_model_dir
    from model_export.card import read_card
    from oarmorph.cli import app

    seg_atlas, bundle_dir = atlas
    cohort = _cohort(tmp_path / "cohort", seg_atlas, {"Brainstem": 0.3})
    ckpt = save_tiny_cascade(tmp_path / "best.pt", tiny_cascade_config(list(OARS)), velocity_std=0.05)
    cal = tmp_path / "calibration.json"
    res = runner.invoke(
        app, ["calibrate", "--model", str(ckpt), "--atlas-bundle", str(bundle_dir), "--cohort", str(cohort),
              "--out", str(cal), "--levels", "0.4,0.3,0.2", "--threads", "1"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = read_thresholds(cal)
    assert set(doc["thresholds"]) == set(OARS) and doc["grid"] == [0.5, 0.4, 0.3, 0.2]
    assert doc["cohort"]["patients"] == 2 and len(doc["weights_sha256"]) == 64
    # the tiny model's own levels may all be 0.5; the export must carry whatever they are, and one set by hand
    doc["thresholds"]["Brainstem"] = 0.2
    cal.write_text(json.dumps(doc))
    out = tmp_path / "model"
    export = ["export", str(ckpt), "--atlas", str(bundle_dir), "--out", str(out), "--thresholds", str(cal)]
    res = runner.invoke(app, export)
    assert res.exit_code == 0, res.output
    card = read_card(out)
    assert card["mask_thresholds"] == doc["thresholds"]
    assert card["calibration"]["cases"] == ["pt_1", "pt_2"] and card["calibration"]["cohort"]["patients"] == 2
    loaded = load_model_dir(out, threads=1)  # card.json and the ONNX metadata agree, levels included
    assert loaded.mask_thresholds == doc["thresholds"] and loaded.summary()["mask_thresholds"]["Brainstem"] == 0.2
    plain_out = tmp_path / "plain"
    res = runner.invoke(app, ["export", str(ckpt), "--atlas", str(bundle_dir), "--out", str(plain_out)])
    assert res.exit_code == 0, res.output
    assert "mask_thresholds" not in read_card(plain_out)
    assert load_model_dir(plain_out, threads=1).mask_thresholds is None

    def brainstem_cc(model_dir, name):
        ct_path = write_volume(_ct((3.0, 0.0, -2.0)), tmp_path / f"{name}.nii.gz")
        masks = tmp_path / name
        res = runner.invoke(
            app, ["segment", str(ct_path), "--masks-dir", str(masks), "--bundle", str(model_dir), "--threads", "1"]
        )
        assert res.exit_code == 0, res.output
        return read_volume(masks / "Brainstem.nii.gz").array.sum(), read_volume(masks / "Eye_R.nii.gz").array.sum()

    (low_stem, low_eye), (plain_stem, plain_eye) = brainstem_cc(out, "low"), brainstem_cc(plain_out, "plain")
    assert low_stem > plain_stem and (low_eye == plain_eye) == (doc["thresholds"]["Eye_R"] == 0.5)
    # levels fitted to other weights are refused
    other = save_tiny_cascade(tmp_path / "other.pt", tiny_cascade_config(list(OARS)), affine_bias={9: 0.1})
    res = runner.invoke(app, ["export", str(other), "--atlas", str(bundle_dir), "--out", str(tmp_path / "x"),
                              "--thresholds", str(cal)])  # fmt: skip
    assert res.exit_code == 2 and "calibrated for weights" in res.output
