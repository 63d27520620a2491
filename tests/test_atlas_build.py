"""Atlas bundles from cohorts: the documented choice rules, the bundle they write, recipes, and the shipped bundles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from anatomy.atlas_build import (
    RecipeMismatchError,
    build_from_cohort,
    content_digest,
    make_recipe,
    verify_bundle,
)
from anatomy.atlas_choice import choose_atlas_case
from anatomy.bundle import load_bundle
from anatomy.catalogue import OARS
from imaging.io import write_volume
from imaging.volume import Geometry, Volume
from oarmorph.cli import app
from training.cohort import read_cohort

REPO = Path(__file__).resolve().parents[1]
PHANTOM_BUNDLE = REPO / "bundles" / "phantom"
OPENKBP_RECIPE = REPO / "bundles" / "openkbp" / "RECIPE.json"
THIN_OARS = ("Lens_L", "Lens_R", "OpticNrv_L", "OpticNrv_R", "Cochlea_L", "Cochlea_R", "OpticChiasm", "Pituitary")

runner = CliRunner()

# patient -> (fraction of the lowest slices blanked to -1024 as OpenKBP does, OpenKBP mask names, outlier anatomy)
PATIENTS = {
    "pt_1": (0.40, ("LeftParotid", "Mandible", "SpinalCord"), False),
    "pt_2": (0.15, ("LeftParotid", "Mandible", "SpinalCord"), False),
    "pt_3": (0.00, ("LeftParotid", "SpinalCord"), False),  # holds the most anatomy, but has no mandible
    "pt_4": (0.05, ("LeftParotid", "Mandible", "SpinalCord"), True),  # least truncated complete one, atypical
}


def _write_patient(folder: Path, blank: float, names: tuple[str, ...], outlier: bool) -> None:
    """A small OpenKBP-like head and neck (z slices running down, origin far from 0) with a few masks."""
    g = Geometry((60, 64, 64), (4.0, 4.0, 3.0), (-126.0, -126.0, 80.0), (1, 0, 0, 0, 1, 0, 0, 0, -1))
    k, j, i = np.indices(g.shape)
    x, y, z = (i - 31.5) * 4.0, (j - 31.5) * 4.0, -k * 3.0  # mm; z = 0 at the top slice, running down
    head = (x / 70) ** 2 + (y / 88) ** 2 + ((z + 85) / 80) ** 2 <= 1
    neck = (x**2 + (y - 10) ** 2 <= 52**2) & (z < -85)
    hu = np.full(g.shape, -1000.0, np.float32)
    hu[head | neck] = 50.0
    hu[((x / 60) ** 2 + (y / 78) ** 2 + ((z + 85) / 70) ** 2 <= 1)] = 30.0  # brain
    spine = (x**2 + (y - 30) ** 2 <= 12**2) & (z < -110)
    hu[spine] = 500.0
    if outlier:
        hu[(x - 20) ** 2 + (y + 30) ** 2 + (z + 90) ** 2 <= 45**2] = 900.0
        hu[(x + 30) ** 2 + y**2 <= 15**2] = -500.0
    cut = round(blank * g.shape[0])
    if cut:
        hu[g.shape[0] - cut :] = -1024.0
    masks = {
        "LeftParotid": ((x - 45) / 12) ** 2 + ((y - 5) / 15) ** 2 + ((z + 130) / 15) ** 2 <= 1,
        "Mandible": (np.abs(np.hypot(x, y + 20) - 45) <= 5) & (y < -20) & (np.abs(z + 150) <= 8),
        "SpinalCord": (x**2 + (y - 30) ** 2 <= 5**2) & (z < -110),
    }
    folder.mkdir(parents=True)
    write_volume(Volume(hu, g), folder / "ct.nii.gz")
    for name in names:
        write_volume(Volume(masks[name].astype(np.uint8), g), folder / f"{name}.nii.gz")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("atlas_cohort") / "cohort"
    for case_id, spec in PATIENTS.items():
        _write_patient(root / case_id, *spec)
    (root / "LICENSE.txt").write_text("Test Licence\n\nfor unit tests only\n")
    return root


def test_least_truncated_rule_picks_the_complete_patient_with_most_anatomy(cohort):
    choice = choose_atlas_case(read_cohort(cohort))
    assert choice.required_oars == ["SpinalCord", "Parotid_L", "Bone_Mandible"]  # aliases mapped, catalogue order
    assert choice.incomplete == {"pt_3": ["Bone_Mandible"]}
    assert list(choice.scores) == ["pt_1", "pt_2", "pt_4"]
    assert choice.scores["pt_4"] > choice.scores["pt_2"] > choice.scores["pt_1"]
    assert choice.case_id == "pt_4"
    summary = choice.summary()
    assert summary["runner_up"] == "pt_2" and summary["n_complete"] == 3 and summary["n_cases"] == 4


def test_the_rule_agrees_with_training_choose_atlas(cohort, tmp_path):
    pytest.importorskip("torch")
    from training.cache import build_cache
    from training.data import choose_atlas

    cases = read_cohort(cohort)
    choice = choose_atlas_case(cases)
    build_cache(cases, tmp_path / "cache")
    assert choose_atlas(tmp_path / "cache", choice.required_oars).stem == choice.case_id


def test_typical_rule_avoids_the_atypical_patient(cohort):
    choice = choose_atlas_case(read_cohort(cohort), rule="typical")
    assert choice.case_id in ("pt_1", "pt_2")
    assert choice.scores["pt_4"] < min(choice.scores["pt_1"], choice.scores["pt_2"])
    with pytest.raises(ValueError, match="unknown atlas rule"):
        choose_atlas_case(read_cohort(cohort), rule="prettiest")


def test_bundle_has_catalogue_names_provenance_and_is_deterministic(cohort, tmp_path):
    cases = read_cohort(cohort)
    bundle, _ = build_from_cohort(cases, cohort, tmp_path / "a")
    loaded = load_bundle(tmp_path / "a", expected_sha256=bundle.sha256)
    assert loaded.oars == ["SpinalCord", "Parotid_L", "Bone_Mandible"]
    prov = loaded.provenance
    assert prov["source"]["case_id"] == "pt_4" and prov["source"]["cohort"] == str(cohort)
    assert prov["source"]["mask_files_to_catalogue"]["LeftParotid.nii.gz"] == "Parotid_L"
    assert prov["choice"]["rule"] == "least-truncated" and set(prov["choice"]["scores"]) == {"pt_1", "pt_2", "pt_4"}
    assert prov["catalogue_names"] == loaded.oars and prov["date"]
    assert prov["licence"]["licence_files"][0]["first_line"] == "Test Licence"
    assert np.array_equal(loaded.ct.array, cases[3].read_ct().array)
    again, _ = build_from_cohort(read_cohort(cohort), cohort, tmp_path / "b")
    assert again.sha256 == bundle.sha256
    assert content_digest(tmp_path / "a") == content_digest(tmp_path / "b")


def test_named_case_and_rebuild_into_the_same_folder_drop_stale_masks(cohort, tmp_path):
    out = tmp_path / "atlas"
    build_from_cohort(read_cohort(cohort), cohort, out)
    named, choice = build_from_cohort(read_cohort(cohort), cohort, out, case_id="pt_3")
    assert choice is None and named.provenance["choice"]["rule"] == "named"
    assert load_bundle(out).oars == ["SpinalCord", "Parotid_L"]  # no Bone_Mandible left over from the first build
    assert not (out / "masks" / "Bone_Mandible.nii.gz").exists()
    with pytest.raises(ValueError, match="no case"):
        build_from_cohort(read_cohort(cohort), cohort, out, case_id="pt_99")


def test_cli_build_verify_and_recipe(cohort, tmp_path):
    out = tmp_path / "bundle"
    result = runner.invoke(app, ["atlas", "build", "--cohort", str(cohort), "--out", str(out), "--write-recipe"])
    assert result.exit_code == 0, result.output
    assert "rule least-truncated: pt_4 among 3 of 4" in result.output
    recipe = json.loads((out / "RECIPE.json").read_text())
    assert recipe["case_id"] == "pt_4" and recipe["sha256"] == load_bundle(out).sha256

    result = runner.invoke(app, ["atlas", "build", "--cohort", str(cohort), "--out", str(out)])  # rebuild
    assert result.exit_code == 0 and "matches" in result.output, result.output
    result = runner.invoke(app, ["atlas", "verify", str(out), "--sha256", recipe["sha256"]])
    assert result.exit_code == 0 and "RECIPE.json verified" in result.output, result.output

    result = runner.invoke(app, ["atlas", "verify", str(out), "--sha256", "0" * 64])
    assert result.exit_code == 2 and "ATLAS_BUNDLE_CORRUPT" in result.output
    (out / "RECIPE.json").write_text(json.dumps({**recipe, "sha256": "f" * 64}))
    result = runner.invoke(app, ["atlas", "verify", str(out)])
    assert result.exit_code == 2 and "ATLAS_RECIPE_MISMATCH" in result.output and "content is the same" in result.output
    (out / "bundle.json").unlink()
    result = runner.invoke(app, ["atlas", "verify", str(out)])
    assert result.exit_code == 2 and "ATLAS_BUNDLE_MISSING" in result.output and "oarmorph atlas build" in result.output


def test_a_recipe_naming_another_case_is_refused(cohort, tmp_path):
    out = tmp_path / "bundle"
    bundle, _ = build_from_cohort(read_cohort(cohort), cohort, out)
    recipe = make_recipe(bundle, "oarmorph atlas build ...")
    (out / "RECIPE.json").write_text(json.dumps({**recipe, "case_id": "pt_2"}))
    with pytest.raises(RecipeMismatchError, match="names case pt_2"):
        build_from_cohort(read_cohort(cohort), cohort, out)


def test_shipped_phantom_bundle_has_all_36_oars_each_non_empty():
    bundle, _ = verify_bundle(PHANTOM_BUNDLE)
    assert bundle.oars == [o.name for o in OARS]
    for oar, (mask, geometry) in bundle.masks.items():
        assert mask.any(), oar
        assert geometry.spacing == pytest.approx((1.0, 1.0, 1.0)), oar
    for oar in THIN_OARS:  # the thin ones survive at 1 mm
        assert bundle.masks[oar][0].sum() >= 40, oar
    assert sum(p.stat().st_size for p in PHANTOM_BUNDLE.rglob("*") if p.is_file()) < 8_000_000
    assert np.isclose(bundle.ct.array.max(), 1900, atol=600) and bundle.ct.array.min() <= -1000


def test_shipped_phantom_bundle_is_what_the_generator_writes(tmp_path):
    from phantom.bundle import write_phantom_bundle

    write_phantom_bundle(tmp_path / "phantom")
    assert content_digest(tmp_path / "phantom") == content_digest(PHANTOM_BUNDLE)


@pytest.mark.shared_data
def test_openkbp_rule_picks_pt_96_and_the_rebuild_matches_the_recipe(shared_data_dir, tmp_path):
    recipe = json.loads(OPENKBP_RECIPE.read_text())
    cohort = shared_data_dir / recipe["cohort_in_shared_data"]
    if not cohort.is_dir():
        pytest.skip(f"{cohort} is absent")
    out = tmp_path / "openkbp"
    out.mkdir()
    shutil.copy(OPENKBP_RECIPE, out / "RECIPE.json")
    bundle, choice = build_from_cohort(read_cohort(cohort), cohort, out)
    assert choice.case_id == recipe["case_id"] == "pt_96"
    assert choice.n_cases == 170 and len(choice.scores) == 30
    assert bundle.oars == recipe["oars"]
    assert content_digest(out) == recipe["content_sha256"]
    verify_bundle(out)  # the sha256 of RECIPE.json
