"""The registration benchmark (benchmarks/registration): every adapter's field against a known transform, the
report writer on synthetic results, and a smoke run of the no-registration and affine-stage methods on a tiny
synthetic cohort through the real pipeline. Methods whose package (antspyx, itk-elastix) is absent skip, saying
so (``pip install -e '.[bench]'``, which ``make bench`` does)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # benchmarks/ is no installed package

from benchmarks.registration import fields as F  # noqa: E402
from benchmarks.registration import methods as M  # noqa: E402
from benchmarks.registration import report as R  # noqa: E402
from benchmarks.registration import run as run_module  # noqa: E402
from benchmarks.registration.cases import BenchCase, Cohort  # noqa: E402
from training.evaluate import summarise  # noqa: E402

SHAPE = (32, 32, 32)
SHIFT = np.array([2.0, -1.0, 1.0])  # canonical voxels (k, j, i): fixed x shows the atlas at x + SHIFT


def _needs(module: str, package: str):
    return pytest.mark.skipif(
        importlib.util.find_spec(module) is None, reason=f"{package} is not installed (pip install -e '.[bench]')"
    )


pytestmark = pytest.mark.filterwarnings("ignore:builtin type [Ss]wig")  # itk's SWIG wrappers, on import
needs_ants = _needs("ants", "antspyx")
needs_itk = _needs("itk", "itk-elastix")


def _blobs(shape=SHAPE) -> np.ndarray:
    """A smooth body with a few organs inside, in [0, 1]: something registration can lock onto."""
    k, j, i = np.indices(shape, dtype=float)
    c = (np.array(shape) - 1) / 2
    image = 0.5 * ((((k - c[0]) / 11) ** 2 + ((j - c[1]) / 9) ** 2 + ((i - c[2]) / 10) ** 2) <= 1)
    for centre, radius, value in (((12, 14, 18), 3.5, 0.4), ((20, 18, 12), 3.0, -0.3), ((16, 11, 11), 2.5, 0.3)):
        image += value * (((k - centre[0]) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2) <= radius**2)
    return np.clip(ndimage.gaussian_filter(image, 1.0), 0, 1).astype(np.float32)


def _shifted_pair() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(atlas, fixed, where to judge): fixed(x) = atlas(x + SHIFT), whole voxels."""
    atlas = _blobs()
    fixed = ndimage.shift(atlas, -SHIFT, order=1, mode="constant")
    inside = ndimage.binary_erosion(fixed > 0.2, iterations=2)
    return atlas, fixed.astype(np.float32), inside


def _shift_error(field: np.ndarray, inside: np.ndarray) -> float:
    """How far the field's median displacement inside the body is from SHIFT (voxels, worst channel): a wrong
    sign, a swapped axis or a transform applied the wrong way round is off by a voxel or more."""
    assert field.shape == (3, *SHAPE) and field.dtype == np.float32
    return float(np.abs(np.median(field[:, inside], axis=1) - SHIFT).max())


# --- field conversions against known transforms ---------------------------------------------------------------


def test_a_physical_displacement_becomes_canonical_voxels_in_array_order():
    d = np.zeros((*SHAPE, 3))
    d[..., 0], d[..., 1], d[..., 2] = 5.0, -2.5, 8.1  # x (along i), y (j), z (k) in mm
    field = F.displacement_mm_to_canonical(d)
    si, sj, sk = F.CANONICAL_SPACING
    assert np.allclose(field[:, 3, 4, 5], [8.1 / sk, -2.5 / sj, 5.0 / si])


def test_a_simpleitk_affine_gives_its_field_in_canonical_voxels():
    sp = np.array(F.CANONICAL_SPACING)
    matrix = np.array([[1.05, 0.02, 0.0], [0.0, 0.97, 0.03], [0.01, 0.0, 1.02]])
    t = sitk.AffineTransform(3)
    t.SetMatrix(matrix.ravel().tolist())
    t.SetTranslation((2.5, -5.0, 5.4))
    field = F.sitk_transform_to_field(t, SHAPE)
    k, j, i = 7, 11, 13
    p = np.array([i, j, k]) * sp
    expected_ijk = (matrix @ p + np.array([2.5, -5.0, 5.4]) - p) / sp
    assert np.allclose(field[:, k, j, i], expected_ijk[::-1], atol=1e-5)


@needs_ants
def test_an_ants_translation_gives_that_field(tmp_path):
    import ants

    image = F.to_ants(_blobs())
    sp = np.array(F.CANONICAL_SPACING)
    tx = ants.create_ants_transform(transform_type="AffineTransform", dimension=3, translation=tuple(SHIFT[::-1] * sp))
    ants.write_transform(tx, str(tmp_path / "t.mat"))
    field = F.ants_transforms_to_field([str(tmp_path / "t.mat")], image, image)
    assert np.abs(field - SHIFT[:, None, None, None]).max() < 1e-4


@needs_itk
def test_an_elastix_translation_gives_that_field(tmp_path, monkeypatch):
    import itk

    if not hasattr(itk, "transformix_deformation_field"):
        pytest.skip("itk is installed without itk-elastix (pip install -e '.[bench]')")
    sp = np.array(F.CANONICAL_SPACING)
    moving = F.to_itk(_blobs())
    pm = itk.ParameterObject.New().GetDefaultParameterMap("translation")
    values = {
        "Transform": ["TranslationTransform"],
        "NumberOfParameters": ["3"],
        "TransformParameters": [str(v) for v in SHIFT[::-1] * sp],
        "InitialTransformParameterFileName": ["NoInitialTransform"],
        "HowToCombineTransforms": ["Compose"],
        "FixedImageDimension": ["3"],
        "MovingImageDimension": ["3"],
        "FixedInternalImagePixelType": ["float"],
        "MovingInternalImagePixelType": ["float"],
        "Size": [str(n) for n in SHAPE[::-1]],
        "Index": ["0", "0", "0"],
        "Spacing": [str(s) for s in sp],
        "Origin": ["0", "0", "0"],
        "Direction": ["1", "0", "0", "0", "1", "0", "0", "0", "1"],
        "UseDirectionCosines": ["true"],
    }
    for key, value in values.items():
        pm[key] = value
    po = itk.ParameterObject.New()
    po.AddParameterMap(pm)
    monkeypatch.chdir(tmp_path)
    field = F.elastix_parameters_to_field(moving, po)
    assert np.abs(field - SHIFT[:, None, None, None]).max() < 1e-4
    assert not list(tmp_path.iterdir())  # transformix writes its deformationField.nii elsewhere


def test_no_registration_is_the_zero_canonical_field():
    """The canonical windows already sit on each body (and the patient's is window-aligned onto the atlas): the
    zero field is the translation that makes the body centres coincide (the smoke run below checks it on patients
    lying elsewhere on the couch)."""
    atlas, fixed, _ = _shifted_pair()
    field = M.no_registration(atlas)(fixed)
    assert field.shape == (3, *SHAPE) and field.dtype == np.float32 and not field.any()


# --- each tool registering a known shift (end to end: the tool, its transform, the conversion) ------------------


def test_simpleitk_recovers_a_known_shift():
    atlas, fixed, inside = _shifted_pair()
    assert _shift_error(M.simpleitk_demons(atlas, threads=1, demons_iterations=(20, 10, 5))(fixed), inside) < 0.35


@needs_ants
def test_ants_syn_recovers_a_known_shift():
    atlas, fixed, inside = _shifted_pair()
    assert _shift_error(M.ants_syn(atlas)(fixed), inside) < 0.35


@needs_itk
def test_elastix_field_reproduces_elastixs_own_result_and_finds_the_shift():
    """elastix's affine + B-spline on a tiny image lands within about half a voxel of the shift (its own result
    image says the same), and the field converted from its transform resamples the atlas into that very image."""
    import itk

    if not hasattr(itk, "elastix_registration_method"):
        pytest.skip("itk is installed without itk-elastix (pip install -e '.[bench]')")
    atlas, fixed, inside = _shifted_pair()
    parameters = M.elastix_parameter_object(resolutions=2, iterations=100)
    parameters.SetParameter("WriteResultImage", "true")
    parameters.SetParameter("ResampleInterpolator", "FinalLinearInterpolator")  # as the check below samples
    result, transform = itk.elastix_registration_method(
        F.to_itk(fixed), F.to_itk(atlas), parameter_object=parameters, log_to_console=False, number_of_threads=1
    )
    field = F.elastix_parameters_to_field(F.to_itk(atlas), transform)
    ours = ndimage.map_coordinates(atlas, np.indices(SHAPE, dtype=np.float32) + field, order=1)
    theirs = itk.array_from_image(result)
    assert np.abs(ours - theirs)[inside].mean() < 0.005
    assert np.abs(theirs - fixed)[inside].mean() < 0.5 * np.abs(atlas - fixed)[inside].mean()
    assert _shift_error(field, inside) < 0.6  # the identity is 2 voxels off


def test_a_missing_package_is_a_reason_not_an_error(monkeypatch):
    monkeypatch.setattr(M, "_module_present", lambda name: name not in ("ants", "itk.elastix"))
    assert "antspyx is not installed" in M.unavailable("ants", None)
    assert "itk-elastix is not installed" in M.unavailable("elastix", None)
    assert M.unavailable("none", None) is None
    assert "no oarmorph model" in M.unavailable("affine", None)


# --- the report from synthetic results ---------------------------------------------------------------------------


def _record(method: str, case: str, dice: dict[str, float], seconds: float) -> dict:
    return {
        "method": method,
        "case": case,
        "seconds": seconds + 1.0,
        "stage_seconds": {"preprocessing": 0.5, "registration": seconds, "warping": 0.5},
        "registration_cpu_seconds": seconds * 1.9,
        "nonpositive_jacobian_percent": 0.0,
        "window_shift": [0, 0],
        "oars": {
            o: {"dice": d, "hd95_mm": 5.0 / d, "volume_cc": 10.0, "truth_volume_cc": 11.0} for o, d in dice.items()
        },
    }


def _synthetic_results(quick: bool) -> dict:
    rng = np.random.default_rng(3)
    oars = ["Parotid_L", "Parotid_R", "SpinalCord"]
    speed = {"oarmorph (ONNX, CPU)": 0.6, "ANTs SyN": 60.0, "elastix": 90.0, "no registration": 0.05}
    level = {"oarmorph (ONNX, CPU)": 0.75, "ANTs SyN": 0.7, "elastix": 0.68, "no registration": 0.4}
    records = [
        _record(m, f"pt_{n}", {o: float(np.clip(level[m] + rng.normal(0, 0.05), 0, 1)) for o in oars}, s)
        for n in range(4)
        for m, s in speed.items()
    ]
    names = {m.name: m for m in M.METHODS.values()}
    methods = {m: {"key": names[m].key, "kind": names[m].kind, "ran": True, "reason": None} for m in speed}
    methods["oarmorph (PyTorch, GPU)"] = {"key": "oarmorph-gpu", "kind": "", "ran": False, "reason": "no CUDA GPU"}
    cohort = {
        "title": "Synthetic cohort (4 patients)",
        "note": "made up",
        "cases": [f"pt_{n}" for n in range(4)],
        "atlas": {"name": "atlas", "sha256": "ab" * 32, "oars": oars},
        "model": "tiny 1.0.0",
        "model_dir": None,
        "align_windows": True,
        "oars": oars,
        "methods": methods,
        "summary": summarise(records, oars),
        "timing": run_module.timing(records, "oarmorph (ONNX, CPU)"),
        "records": records,
        "failures": [{"method": "elastix", "case": "pt_9", "error": "RuntimeError: made up"}],
    }
    meta = {
        "started_utc": "2026-01-01T00:00:00+00:00",
        "quick": quick,
        "threads": 2,
        "methods_requested": list(speed),
        "hardware": {"cpu_model": "Test CPU", "cores": 2, "python": "3.11", "platform": "test"},
        "versions": {"numpy": "2"},
        "git_commit": "abc",
        "command": "oarmorph bench registration",
        "load_average_start": [1.0, 1.0, 1.0],
        "load_average_end": [1.0, 1.0, 1.0],
        "wall_seconds": 60.0,
        "note": "",
    }
    return {"meta": meta, "cohorts": {"openkbp": cohort}, "skipped_cohorts": {"phantom": "no phantom here"}}


def test_the_report_writes_tables_targets_and_both_plots(tmp_path):
    results = _synthetic_results(quick=True)
    md, plots = tmp_path / "docs" / "benchmarks.md", tmp_path / "docs" / "benchmarks"
    written = R.write_report(results, md, plots, plots / "registration.json")
    text = md.read_text()
    assert "Quick smoke run" in text and "Test CPU, 2 cores" in text
    assert "| Method | Method type | Patients | Mean Dice | HD95 (mm) |" in text
    assert "| oarmorph (ONNX, CPU) | learned cascade, ONNX Runtime CPU | " in text
    assert "time / oarmorph, case" in text and "| 100x |" in text  # ANTs' registration: 60 s / 0.6 s
    assert "Mean Dice: oarmorph" in text and "**met**" in text  # the made-up model beats ANTs here
    assert "Per-OAR gap, oarmorph minus ANTs SyN" in text
    assert "oarmorph (PyTorch, GPU) (no CUDA GPU)" in text and "phantom: not run" in text
    assert "FAILED: elastix on pt_9" in text
    assert "| Parotid_L | Parotid_R | SpinalCord |" in text  # the per-OAR table of training.evaluate
    for name in ("registration_openkbp_dice.png", "registration_openkbp_time.png"):
        path = plots / name
        assert path in written and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
        assert f"](benchmarks/{name})" in text
    again = json.loads((plots / "registration.json").read_text())
    assert again["cohorts"]["openkbp"]["summary"].keys() == results["cohorts"]["openkbp"]["summary"].keys()
    full = R.render_markdown(_synthetic_results(quick=False), {})
    assert "Quick smoke run" not in full


def test_oarmorph_bench_registration_redoes_the_document_from_its_json(tmp_path):
    from typer.testing import CliRunner

    from oarmorph.cli import app
    from training.evaluate import _finite

    (tmp_path / "r.json").write_text(json.dumps(_finite(_synthetic_results(quick=True))))
    out, plots = tmp_path / "b.md", tmp_path / "plots"
    args = [
        "bench",
        "registration",
        "--from-json",
        str(tmp_path / "r.json"),
        "--out",
        str(out),
        "--plots-dir",
        str(plots),
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "Quick smoke run" in out.read_text() and (plots / "registration_openkbp_time.png").is_file()
    assert "openkbp: ANTs SyN: mean Dice" in res.output


def test_the_report_says_plainly_when_the_targets_are_not_met():
    results = _synthetic_results(quick=False)
    cohort = results["cohorts"]["openkbp"]
    for r in cohort["records"]:
        if r["method"] == "ANTs SyN":
            r["stage_seconds"]["registration"], r["seconds"] = 10.0, 11.0
            for v in r["oars"].values():
                v["dice"] = 0.95
    cohort["summary"] = summarise(cohort["records"], cohort["oars"])
    cohort["timing"] = run_module.timing(cohort["records"], "oarmorph (ONNX, CPU)")
    text = "\n".join(R.targets(cohort))
    assert text.count("**NOT met**") == 3 and "target (at least ANTs's) **NOT met**" in text  # Dice, case, registration
    assert "-0.2" in text  # the per-OAR gap


# --- a quick-style smoke run on tiny synthetic data: no registration and the affine stage ------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny cascade exported as ONNX against an analytic atlas: its affine stage moves the atlas by a known
    translation along k."""
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from tiny_cohort import save_tiny_cascade, tiny_cascade_config

    from anatomy.bundle import write_bundle
    from model_export.export import export_model
    from phantom.analytic import body_volume, landmark_volume, patient_grid

    root = tmp_path_factory.mktemp("bench")
    ct = body_volume(patient_grid(spacing=(3.0, 3.0, 4.0)))
    marks = {"Brainstem": "stem", "Parotid_L": "gland_l", "Eye_R": "eye_r"}
    bundle = write_bundle(
        root / "atlas", "synthetic atlas", ct, {n: landmark_volume(ct.geometry, m).array for n, m in marks.items()}
    )
    # affine bias 9: 0.5 voxel of 32^3 along k, 2 canonical voxels
    save_tiny_cascade(root / "c.pt", tiny_cascade_config(list(marks)), affine_bias={9: 0.05})
    export_model(root / "c.pt", bundle.path, root / "model", "tiny", "1.0.0", True, log=lambda s: None)
    return root / "model", marks


def test_a_quick_run_of_no_registration_and_the_affine_stage_on_synthetic_patients(tiny_model, tmp_path, monkeypatch):
    from phantom.analytic import body_volume, landmark_volume, patient_grid

    model_dir, marks = tiny_model
    offsets = [(0.0, 0.0, 0.0), (40.0, -25.0, -60.0)]  # mm; the second patient lies elsewhere on the couch

    def case(n, offset):
        def read_ct():
            return body_volume(patient_grid(spacing=(3.0, 3.0, 4.0), offset=offset), offset)

        def truth(ct):
            return {name: landmark_volume(ct.geometry, mark, offset).array for name, mark in marks.items()}

        return BenchCase(f"syn{n}", read_ct, truth)

    cohort = Cohort("phantom", "Synthetic patients", [case(n, o) for n, o in enumerate(offsets)], model_dir)
    monkeypatch.setattr(M, "_module_present", lambda name: name != "ants")  # as if antspyx were absent
    results = run_module.run_benchmark([cohort], ["oarmorph", "affine", "none", "ants"], 1, True, log=lambda s: None)
    c = results["cohorts"]["phantom"]
    assert c["methods"]["ANTs SyN"] == {
        "key": "ants",
        "kind": M.METHODS["ants"].kind,
        "ran": False,
        "reason": "antspyx is not installed (pip install -e '.[bench]')",
        "mask_levels": "0.5",
    }
    assert c["methods"]["oarmorph (ONNX, CPU)"]["mask_levels"] == "0.5"  # its card has no calibrated levels
    assert set(c["summary"]) == {"oarmorph (ONNX, CPU)", "oarmorph affine stage", "no registration"}
    assert not c["failures"] and len(c["records"]) == 6
    for r in c["records"]:
        assert set(r["oars"]) == set(marks) and r["stage_seconds"]["registration"] >= 0.0
        if r["method"] == "no registration":  # the same anatomy, its centre moved onto the patient's
            assert min(v["dice"] for v in r["oars"].values()) > 0.75, r
    t = c["timing"]
    assert t["oarmorph (ONNX, CPU)"]["ratio_to_oarmorph"] == 1.0
    assert c["summary"]["no registration"]["nonpositive_jacobian_percent_mean"] == 0.0

    # the affine method is the model's affine_field, through the same warp as every method
    from model_export.bundle import load_model_dir
    from pipeline.segment import segment_ct

    loaded = load_model_dir(model_dir, threads=1, device="cpu")
    ct = cohort.cases[1].read_ct()
    seg = segment_ct(ct, loaded.atlas, loaded.register, loaded.align_windows)
    image, _, _ = run_module.prepare_fixed(ct, loaded.atlas, loaded.align_windows)
    assert np.array_equal(M.oarmorph_onnx(loaded.register, affine_only=True)(image), seg.affine_field)

    written = R.write_report(results, tmp_path / "benchmarks.md", tmp_path / "plots", tmp_path / "r.json")
    assert all(p.is_file() for p in written)
    assert "ANTs SyN (antspyx is not installed" in (tmp_path / "benchmarks.md").read_text()

    # a slow method on the first patients only: its records, its patient count and the report say so
    limited = run_module.run_benchmark(
        [cohort], ["affine", "none"], 1, True, log=lambda s: None, method_limits={"none": 1}
    )["cohorts"]["phantom"]
    assert [r["case"] for r in limited["records"] if r["method"] == "no registration"] == ["syn0"]
    assert [r["case"] for r in limited["records"] if r["method"] == "oarmorph affine stage"] == ["syn0", "syn1"]
    assert limited["methods"]["no registration"]["patients_limit"] == 1
    assert limited["summary"]["no registration"]["cases"] == 1
    text = R.render_markdown({"meta": results["meta"], "cohorts": {"phantom": limited}}, {})
    assert "no registration: 1 of 2" in text


def test_the_model_warps_at_its_calibrated_levels_and_the_other_methods_at_one_half(tiny_model, tmp_path):
    """A card with mask_thresholds: the oarmorph method contours at them (as segment_ct does), the affine stage and
    the classical methods at 0.5, and the report says which."""
    from model_export.bundle import load_model_dir
    from model_export.export import export_model
    from phantom.analytic import body_volume, landmark_volume, patient_grid
    from pipeline.segment import segment_ct

    model_dir, marks = tiny_model
    weights = json.loads((model_dir / "card.json").read_text())["checkpoint"]["weights_sha256"]
    calibrated = tmp_path / "model"
    levels = {"weights_sha256": weights, "thresholds": {"Brainstem": 0.95, "Parotid_L": 0.05}}
    root = model_dir.parent  # the fixture's checkpoint and atlas
    export_model(
        root / "c.pt", root / "atlas", calibrated, "tiny", "1.0.0", True, log=lambda s: None, calibration=levels
    )

    def read_ct():
        return body_volume(patient_grid(spacing=(3.0, 3.0, 4.0)))

    def truth(ct):
        return {name: landmark_volume(ct.geometry, mark).array for name, mark in marks.items()}

    cases = [BenchCase("syn0", read_ct, truth)]
    runs = {
        label: run_module.run_benchmark(
            [Cohort("phantom", "Synthetic", cases, d)], ["oarmorph", "affine"], 1, True, log=lambda s: None
        )
        for label, d in (("plain", model_dir), ("calibrated", calibrated))
    }
    volume = {
        (label, r["method"], oar): v["volume_cc"]
        for label, result in runs.items()
        for r in result["cohorts"]["phantom"]["records"]
        for oar, v in r["oars"].items()
    }
    model, affine = "oarmorph (ONNX, CPU)", "oarmorph affine stage"
    assert volume[("calibrated", model, "Brainstem")] < volume[("plain", model, "Brainstem")]
    assert volume[("calibrated", model, "Parotid_L")] > volume[("plain", model, "Parotid_L")]
    assert volume[("calibrated", model, "Eye_R")] == volume[("plain", model, "Eye_R")]  # not named: 0.5
    for oar in marks:
        assert volume[("calibrated", affine, oar)] == volume[("plain", affine, oar)]
    # the very contours segment_ct makes with the card's levels
    loaded = load_model_dir(calibrated, threads=1, device="cpu")
    ct = read_ct()
    seg = segment_ct(ct, loaded.atlas, loaded.register, loaded.align_windows, thresholds=loaded.mask_thresholds)
    for oar in marks:
        assert volume[("calibrated", model, oar)] == pytest.approx(seg.masks[oar].volume_cc, abs=1e-9)
    methods = runs["calibrated"]["cohorts"]["phantom"]["methods"]
    assert methods[model]["mask_levels"] != "0.5" and methods[affine]["mask_levels"] == "0.5"
    assert f"Mask levels: {model} at the model's calibrated level per OAR" in R.render_markdown(runs["calibrated"], {})
    assert "Mask levels" not in R.render_markdown(runs["plain"], {})


def test_method_limits_are_parsed_or_refused():
    from benchmarks.registration.command import parse_method_limits

    assert parse_method_limits(["elastix=10", "ants=3"]) == {"elastix": 10, "ants": 3}
    for bad in ("elastix", "elastix=0", "elastix=x"):
        with pytest.raises(ValueError, match="METHOD=N"):
            parse_method_limits([bad])
