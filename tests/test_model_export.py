"""The ONNX export and the torch-free runtime on a tiny model: the checker at opset 20 and the card in the metadata,
ONNX Runtime against PyTorch, refusing a foreign atlas, the CPU fallback's log line, and ``oarmorph segment`` on
model.onnx without torch."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from tiny_cohort import save_tiny_cascade, tiny_cascade_config  # noqa: E402

from anatomy.bundle import write_bundle  # noqa: E402
from imaging.canonical import DEFAULT_SPEC, FIELD_CONVENTION  # noqa: E402
from imaging.io import read_volume, write_volume  # noqa: E402
from model_export import runtime as runtime_module  # noqa: E402
from model_export.bundle import load_model_dir  # noqa: E402
from model_export.card import (  # noqa: E402
    ModelAtlasMismatchError,
    ModelAtlasMissingError,
    card_from_metadata,
    card_to_metadata,
    read_card,
)
from model_export.parity import run_parity  # noqa: E402
from model_export.runtime import OnnxRegister, RuntimeUnavailableError, gridsample_providers  # noqa: E402
from oarmorph.cli import app  # noqa: E402
from phantom.analytic import body_volume, landmark_volume, patient_grid  # noqa: E402

runner = CliRunner()
OARS = {"Brainstem": "stem", "Parotid_L": "gland_l", "Eye_R": "eye_r"}  # catalogue name -> analytic landmark
REPO = Path(__file__).resolve().parents[1]


def _ct(top_z: float = 15.0, offset=(0.0, 0.0, 0.0)):
    return body_volume(patient_grid(spacing=(3.0, 3.0, 4.0), top_z=top_z, offset=offset), offset)


def _bundle(folder: Path, ct, name: str = "synthetic atlas"):
    masks = {n: landmark_volume(ct.geometry, mark).array for n, mark in OARS.items()}
    return write_bundle(folder, name, ct, masks, {"case_id": "case0"})


def _checkpoint(path: Path) -> Path:
    """A tiny cascade (32^3 images, 16^3 networks) whose fields are far from the identity: an affine translation
    and random velocity heads, so that parity compares displacements of several voxels."""
    history = [
        {"step": s, "cascade": {"per_oar": {"Brainstem": d}, "mean": d}, "affine": {"mean": d / 2}}
        for s, d in ((10, 0.4), (20, 0.6), (30, 0.5))
    ]
    # bias 9: 1.5 voxels of 32^3 along k (6 canonical voxels)
    return save_tiny_cascade(
        path,
        tiny_cascade_config(list(OARS)),
        affine_bias={9: 0.15, 0: 0.03},
        velocity_std=0.05,
        state={"step": 30, "best": 0.6, "history": history},
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``oarmorph export`` of the tiny checkpoint against a synthetic atlas bundle."""
    root = tmp_path_factory.mktemp("export")
    bundle = _bundle(root / "bundle", _ct())
    ckpt = _checkpoint(root / "best.pt")
    out = root / "model"
    res = runner.invoke(app, ["export", str(ckpt), "--atlas", str(bundle.path), "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out, bundle


def test_the_export_passes_the_full_checker_at_opset_20_and_carries_its_card(exported):
    out, bundle = exported
    proto = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    assert {o.domain or "": o.version for o in proto.opset_import} == {"": 20}
    assert sum(n.op_type == "GridSample" for n in proto.graph.node) >= 10  # warps, squarings, compositions
    assert [i.name for i in proto.graph.input] == ["fixed"]
    assert [o.name for o in proto.graph.output] == ["field", "affine_field"]
    card = read_card(out)
    metadata = {p.key: p.value for p in proto.metadata_props}
    assert metadata == card_to_metadata(card) and card_from_metadata(metadata) == card
    assert card["field_convention"] == FIELD_CONVENTION
    assert card["canonical_space"] == json.loads(json.dumps(DEFAULT_SPEC.to_dict()))
    assert card["oars"] == bundle.oars and set(card["oars"]) == set(OARS) and card["align_windows"] is False
    assert card["atlas"]["sha256"] == bundle.sha256 and card["atlas"]["baked_in"]["shape"] == [32, 32, 32]
    assert card["validation"]["best"]["step"] == 20 and card["validation"]["last"]["step"] == 30
    assert card["training"]["config"]["image_shape"] == [32, 32, 32]
    assert card["training"]["data"]["atlas_case"] == "case0"
    assert card["git_commit"] and card["checkpoint"]["step"] == 30
    assert card["onnx"]["opset"] == 20 and card["onnx"]["input"]["shape"] == [1, 1, 128, 128, 128]
    assert (out / "atlas" / "bundle.json").is_file()
    assert "optimizer" not in torch.load(out / "checkpoint.pt", weights_only=False)  # weights, config, history


def test_the_exported_crop_of_each_field_is_one_slice(exported):
    out, _ = exported
    graph = onnx.load(str(out / "model.onnx")).graph
    users = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node.op_type)
    # a Slice feeding only another Slice copies the 128^3 field once too often (merge_slices fuses those)
    assert not [n.name for n in graph.node if n.op_type == "Slice" and users.get(n.output[0]) == ["Slice"]]


def test_merge_slices_fuses_a_chain_into_one_slice_with_the_same_output():
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from model_export.export import merge_slices

    def const(name, values):
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(values, np.int64)))

    nodes = [const("s2", [1]), const("e2", [5]), const("a2", [2]), const("s3", [2]), const("e3", [6]), const("a3", [3])]
    nodes += [const("s4", [0]), const("e4", [7]), const("a4", [4]), const("st4", [2])]
    nodes += [
        helper.make_node("Slice", ["x", "s2", "e2", "a2"], ["y2"]),
        helper.make_node("Slice", ["y2", "s3", "e3", "a3"], ["y3"]),
        helper.make_node("Slice", ["y3", "s4", "e4", "a4", "st4"], ["y"]),
        helper.make_node("Slice", ["x", "s2", "e2", "a2"], ["side"]),  # feeds two users: left alone
        helper.make_node("Relu", ["side"], ["r1"]),
        helper.make_node("Slice", ["side", "s3", "e3", "a3"], ["r2"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8, 8])
    shapes = {"y": [1, 2, 4, 4, 4], "r1": [1, 2, 4, 8, 8], "r2": [1, 2, 4, 4, 8]}
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n, shape in shapes.items()]
    proto = helper.make_model(helper.make_graph(nodes, "g", [x], outs), opset_imports=[helper.make_opsetid("", 20)])
    data = np.random.default_rng(0).random((1, 2, 8, 8, 8), dtype=np.float32)

    def run(model):
        return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"x": data}
        )

    before = run(proto)
    assert merge_slices(proto) == 2
    onnx.checker.check_model(proto, full_check=True)
    assert sum(n.op_type == "Slice" for n in proto.graph.node) == 3  # the chain's one, and the side branch's two
    assert {i.name for i in proto.graph.initializer} <= {i for n in proto.graph.node for i in n.input}
    after = run(proto)
    assert after[0].shape == (1, 2, 4, 4, 4)
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)


def test_onnx_runtime_matches_pytorch_on_a_tiny_model(exported):
    out, _ = exported
    cases = [("atlas", _ct), ("moved", lambda: _ct(top_z=5.0, offset=(6.0, -4.0, 8.0)))]
    result = run_parity(out, cases, threads=2, log=lambda _: None)
    assert result["passed"], result
    assert result["max_displacement_diff"] <= 0.01 and result["max_affine_displacement_diff"] <= 0.01
    assert result["min_dice"] >= 0.999
    for row in result["cases"]:
        assert row["max_displacement"] > 3.0  # the fields compared are far from the identity
        assert set(row["dice"]) == set(OARS)


def test_loading_refuses_an_atlas_that_is_not_the_models(exported, tmp_path):
    out, _ = exported
    other = _bundle(tmp_path / "other", _ct(top_z=0.0), "another atlas")
    with pytest.raises(ModelAtlasMismatchError) as err:
        load_model_dir(out, atlas=other.path, warmup=False)
    assert err.value.code == "MODEL_ATLAS_MISMATCH"
    # a model directory whose atlas/ was replaced
    swapped = tmp_path / "swapped"
    shutil.copytree(out, swapped)
    shutil.rmtree(swapped / "atlas")
    shutil.copytree(other.path, swapped / "atlas")
    ct_path = write_volume(_ct(), tmp_path / "ct.nii.gz")
    res = runner.invoke(app, ["segment", str(ct_path), "--masks-dir", str(tmp_path / "m"), "--bundle", str(swapped)])
    assert res.exit_code == 2 and "MODEL_ATLAS_MISMATCH" in res.output
    # card.json edited to another atlas: it no longer matches model.onnx's metadata
    card = json.loads((out / "card.json").read_text())
    card["atlas"]["sha256"] = other.sha256
    (swapped / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelAtlasMismatchError, match=r"model\.onnx was exported with atlas"):
        load_model_dir(swapped, warmup=False)


def test_a_model_without_its_atlas_copy_finds_the_bundle_its_card_names(exported, tmp_path):
    out, bundle = exported
    sibling = out.parent / "model_by_reference"  # same depth: the card's relative path still points at the bundle
    shutil.copytree(out, sibling, ignore=shutil.ignore_patterns("atlas"))
    loaded = load_model_dir(sibling, warmup=False)
    assert loaded.atlas_dir.resolve() == bundle.path.resolve() and loaded.atlas.sha256 == bundle.sha256
    far = tmp_path / "a" / "b" / "model"
    shutil.copytree(sibling, far)
    with pytest.raises(ModelAtlasMissingError) as err:
        load_model_dir(far, warmup=False)
    assert err.value.code == "MODEL_ATLAS_MISSING"


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider':UserWarning")
def test_without_cuda_the_session_falls_back_to_the_cpu_and_says_so(exported, caplog, monkeypatch):
    model = exported[0] / "model.onnx"
    with caplog.at_level(logging.INFO, logger="oarmorph.runtime"):
        reg = OnnxRegister(model, threads=1, device="auto", warmup=False)
    assert reg.provider == "CPUExecutionProvider" and not reg.on_gpu
    assert "CUDAExecutionProvider unavailable" in caplog.text and "falling back to CPUExecutionProvider" in caplog.text
    with pytest.raises(RuntimeUnavailableError):
        OnnxRegister(model, device="cuda", warmup=False)
    # the GPU build without a usable GPU: CUDA is listed, the session still comes up on the CPU, with a warning
    caplog.clear()
    monkeypatch.setattr(
        runtime_module.ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    with caplog.at_level(logging.INFO, logger="oarmorph.runtime"):
        reg = OnnxRegister(model, threads=1, device="auto", warmup=True)
    assert reg.provider == "CPUExecutionProvider" and reg.warmup_seconds is not None
    assert any(
        r.levelno == logging.WARNING and "falling back to CPUExecutionProvider" in r.message for r in caplog.records
    )


def test_bound_buffers_give_what_a_plain_run_gives(exported):
    """The IO-binding path (the default on CUDA), exercised on CPU buffers here."""
    model = exported[0] / "model.onnx"
    plain = OnnxRegister(model, threads=1, device="cpu", warmup=False)
    bound = OnnxRegister(model, threads=1, device="cpu", warmup=True, io_binding=True)
    rng = np.random.default_rng(3)
    for _ in range(2):  # the bound input buffer is refilled in place
        image = rng.random((128, 128, 128), dtype=np.float32)
        for a, b in zip(plain(image), bound(image), strict=True):
            assert a.shape == (3, 128, 128, 128) and np.array_equal(a, b)


def test_the_profile_says_where_each_gridsample_ran(exported):
    placement = gridsample_providers(exported[0] / "model.onnx", device="cpu", threads=1)
    assert set(placement["providers"]) == {"CPUExecutionProvider"} and not placement["all_on_cuda"]
    assert sum(placement["providers"].values()) >= 20  # every GridSample node, warm-up and profiled run


def test_oarmorph_segment_on_model_onnx_never_imports_torch(exported, tmp_path):
    out, _ = exported
    ct_path = write_volume(_ct(offset=(3.0, 0.0, -2.0)), tmp_path / "patient.nii.gz")
    masks = tmp_path / "masks"
    code = textwrap.dedent(
        f"""
        import sys
        from oarmorph.cli import app
        try:
            app(["segment", {str(ct_path)!r}, "--masks-dir", {str(masks)!r}, "--bundle", {str(out)!r},
                 "--threads", "1"], standalone_mode=False)
        finally:
            loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "training")))
            print("TORCH_MODULES", loaded)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "TORCH_MODULES []" in done.stdout, done.stdout
    summary = json.loads((masks / "summary.json").read_text())
    assert summary["model"]["runtime"] == "onnxruntime (CPUExecutionProvider)"
    assert set(summary["oars"]) == set(OARS)
    assert read_volume(masks / "Brainstem.nii.gz").array.any()


def test_pytorch_still_runs_an_exported_directory_from_its_checkpoint(exported, tmp_path):
    """Without model.onnx, --bundle falls back to checkpoint.pt (the card's atlas, sha256 checked)."""
    out, _ = exported
    torch_only = tmp_path / "torch_only"
    shutil.copytree(out, torch_only, ignore=shutil.ignore_patterns("model.onnx"))
    ct_path = write_volume(_ct(), tmp_path / "ct.nii.gz")
    res = runner.invoke(
        app,
        ["segment", str(ct_path), "--masks-dir", str(tmp_path / "m"), "--bundle", str(torch_only), "--threads", "1"],
    )
    assert res.exit_code == 0, res.output
    assert "step" in json.loads((tmp_path / "m" / "summary.json").read_text())["model"]
    assert np.isfinite(read_volume(tmp_path / "m" / "Brainstem.nii.gz").array).all()


def test_the_card_names_the_best_validation_by_the_dice_the_run_ranked_best_pt_with():
    from model_export.export import validation_table

    def entry(step, canonical, fine=None):
        out = {"step": step, "cascade": {"mean": canonical}, "affine": {"mean": 0.5}}
        if fine is not None:
            out["fine"] = {"mean": fine}
        return out

    plain = validation_table({"history": [entry(10, 0.70), entry(20, 0.72), entry(30, 0.71)]})
    assert plain["ranked_by"] == "cascade" and plain["best"]["step"] == 20 and plain["last"]["step"] == 30
    fine = validation_table({"history": [entry(10, 0.70, 0.66), entry(20, 0.72, 0.65), entry(30, 0.71, 0.64)]})
    assert fine["ranked_by"] == "fine" and fine["best"]["step"] == 10 and "128^3" in fine["metric"]
