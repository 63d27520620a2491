"""Phantom patients: DICOM that reads back, true masks and a true deformation that agree, same seed same bytes."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from anatomy.catalogue import BY_NAME
from imaging.dicom_ct import read_ct_series
from imaging.io import read_mask
from imaging.rtstruct import CtReference, read_rtstruct
from imaging.warp import physical_field_to_index_units, warp_masks_to_patient
from phantom.cohort import atlas_for, generate_cohort
from phantom.deformation import DeformationField

REPO = Path(__file__).resolve().parents[1]
SEED = 11
N = 4


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantom") / "cohort"
    generate_cohort(N, SEED, out, "small")
    return out


def cases(cohort: Path) -> list[Path]:
    return [cohort / c for c in json.loads((cohort / "cohort.json").read_text())["cases"]]


def test_every_case_has_its_files_and_the_split_covers_them(cohort):
    split = json.loads((cohort / "split.json").read_text())
    ids = [p.name for p in cases(cohort)]
    assert sorted(split["train"] + split["validation"] + split["test"]) == sorted(ids)
    assert all(split[k] for k in ("train", "validation", "test"))
    for case in cases(cohort):
        for name in ("rtstruct.dcm", "deformation.nii.gz", "meta.json"):
            assert (case / name).is_file(), (case, name)
        assert len(list((case / "ct").glob("*.dcm"))) == json.loads((case / "meta.json").read_text())["scan"]["slices"]
        labels = sorted(p.name.removesuffix(".nii.gz") for p in (case / "labels").glob("*.nii.gz"))
        assert labels and set(labels) <= set(BY_NAME)


def test_series_read_back_with_the_geometry_written(cohort):
    positions = set()
    for case in cases(cohort):
        meta = json.loads((case / "meta.json").read_text())
        ct = read_ct_series(case / "ct")
        written = meta["ct_geometry"]
        assert list(ct.geometry.shape) == written["shape"]
        np.testing.assert_allclose(ct.geometry.spacing, written["spacing"], atol=1e-4)
        np.testing.assert_allclose(ct.geometry.origin, written["origin"], atol=1e-3)
        np.testing.assert_allclose(ct.geometry.direction, written["direction"], atol=1e-6)
        assert ct.meta["patient_position"] == meta["scan"]["patient_position"]
        assert -1100 < float(ct.array.min()) and float(ct.array.max()) > 1000  # air and bone
        assert "Phantom" in ct.meta["dicom"]["PatientName"]
        positions.add(ct.meta["patient_position"])
        assert meta["min_jacobian"] > 0.0 and meta["folded_fraction"] == 0.0  # invertible


def test_the_true_deformation_maps_atlas_masks_onto_the_true_patient_masks(cohort):
    """Applied by the imaging layer's own warping, the stored field reproduces the stored masks."""
    atlas = atlas_for("small")
    worst = {}
    for case in cases(cohort):
        field = DeformationField.from_sitk(sitk.ReadImage(str(case / "deformation.nii.gz")))
        index_field = physical_field_to_index_units(field.displacement, field.geometry)
        ct_geometry = read_ct_series(case / "ct").geometry
        labels = {p.name.removesuffix(".nii.gz"): p for p in (case / "labels").glob("*.nii.gz")}
        warped = warp_masks_to_patient(
            {n: atlas.masks[n] for n in labels}, field.geometry, field.geometry, index_field, ct_geometry
        )
        for name, path in labels.items():
            truth = read_mask(path, reference=ct_geometry).array
            if truth.sum() < 20:  # a sliver at the edge of the field of view: Dice means little
                continue
            worst[name] = min(worst.get(name, 1.0), dice(warped[name].full(), truth))
    assert worst and min(worst.values()) >= 0.95, sorted(worst.items(), key=lambda kv: kv[1])[:5]


def test_rtstruct_holds_the_true_masks_and_passes_dciodvfy(cohort):
    case = cases(cohort)[0]
    ct = read_ct_series(case / "ct")
    structure_set = read_rtstruct(case / "rtstruct.dcm", CtReference.from_volume(ct))
    for path in (case / "labels").glob("*.nii.gz"):
        name = path.name.removesuffix(".nii.gz")
        roi = structure_set.rois[name]
        assert roi.color == BY_NAME[name].color and roi.interpreted_type == "ORGAN"
        assert np.array_equal(roi.mask, read_mask(path, reference=ct.geometry).array), name
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy absent (apt-get install dicom3tools)")
    result = subprocess.run(["dciodvfy", str(case / "rtstruct.dcm")], capture_output=True, text=True, check=False)
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
    assert not errors, errors


def test_same_seed_same_bytes(cohort, tmp_path):
    generate_cohort(1, SEED, tmp_path, "small")
    first = cohort / json.loads((cohort / "cohort.json").read_text())["cases"][0]
    again = tmp_path / first.name

    def digest(folder: Path) -> dict[str, str]:
        return {
            str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        }

    assert digest(first) == digest(again)


def test_patients_differ_in_pose_scanner_and_anatomy(cohort):
    metas = [json.loads((c / "meta.json").read_text()) for c in cases(cohort)]
    assert len({m["scan"]["pixel_spacing_mm"] for m in metas}) == N
    assert len({round(m["anatomy"]["neck_flexion_deg"], 3) for m in metas}) == N
    assert len({tuple(m["ct_geometry"]["origin"]) for m in metas}) == N
    assert max(abs(v) for m in metas for v in m["ct_geometry"]["origin"]) > 200  # origins far from zero


def test_the_true_deformation_through_the_canonical_field_contract_reproduces_the_patient(cohort):
    """The true pull map written as a canonical field (FIELD_CONVENTION), band-limited to the CPU models' 32^3
    and sent through segment_ct with the shipped phantom bundle: the ceiling of benchmarks/bench_field_ceiling.py,
    and a check of the whole way from a canonical field back to the patient's grid."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # benchmarks/ is no installed package
    from benchmarks.bench_field_ceiling import band_limited, ceilings
    from pipeline.atlas import load_atlas
    from training.cohort import read_case

    linear = np.stack(np.meshgrid(*[np.linspace(-3, 5, 40)] * 3, indexing="ij")).astype(np.float32)
    assert np.allclose(band_limited(linear, 9), linear, atol=1e-5)  # trilinear keeps an affine field exactly
    wiggle = np.sin(np.arange(40) * 2.5)[None, :, None, None] * np.ones((3, 40, 40, 40), np.float32)
    assert np.abs(band_limited(wiggle, 9)).mean() < 0.8 * np.abs(wiggle).mean()  # and loses what 9^3 cannot hold
    atlas = load_atlas(REPO / "bundles" / "phantom")
    dices = ceilings(read_case(cases(cohort)[0]), atlas, [32])[32]
    assert len(dices) >= 30 and np.mean(list(dices.values())) >= 0.8, dices
