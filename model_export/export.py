"""``oarmorph export``: a training checkpoint and its atlas bundle -> a model directory the worker serves.

What is exported is ``training.inference.InferenceCascade``, the very module the torch path runs (mean
velocities, no sampling): one input ``fixed`` [1, 1, 128, 128, 128] (the patient's canonical image in [0, 1],
``imaging.canonical.to_canonical``), two outputs ``field`` and ``affine_field`` [1, 3, 128, 128, 128] (the
composed pull field and the affine stage's alone, canonical voxels, ``FIELD_CONVENTION``), at the patient's
canonical grid; ``imaging.warp`` then carries the atlas masks to the patient's own grid at full resolution.

The atlas's canonical image is baked into the graph (a constant at the training resolution) rather than being a
second input: the model has one input, the caller cannot pair it with another atlas image by mistake, and
the atlas whose masks get warped is tied to it by the bundle sha256 recorded in the card and the metadata, which
loading checks. A different atlas is a different model (the network was trained against this one).

ONNX opset 20, the first where GridSample takes 5-D volumes: the TorchScript exporter (``dynamo=False``) refuses
5-D GridSample below 20, and the dynamo exporter would write a GridSample outside the specification, so the
result is checked against the specification here (default-domain opset >= 20, no custom domains, every
GridSample on rank-5 tensors by strict shape inference, ``onnx.checker`` full check) whatever wrote it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from imaging.canonical import DEFAULT_SPEC, FIELD_CONVENTION
from imaging.warp import check_levels
from oarmorph import __version__
from pipeline.atlas import load_atlas
from training.inference import CANONICAL_SHAPE, InferenceCascade, load_checkpoint, train_config_from_checkpoint
from training.networks import count_parameters
from training.train import build_model, stage_of_note

from .card import (
    ATLAS_DIR_NAME,
    CARD_FORMAT,
    CHECKPOINT_NAME,
    INPUT_NAME,
    ONNX_NAME,
    OUTPUT_NAMES,
    card_to_metadata,
    write_card,
)

OPSET = 20
BAKED_ATLAS_WHY = (
    "The atlas's canonical image is a constant of the graph (at the training resolution), not an input: one "
    "input, and the atlas image cannot be swapped without the model noticing; the atlas bundle whose masks are "
    "warped is tied to it by atlas.sha256, which loading checks."
)


class ExportError(Exception):
    code = "EXPORT_FAILED"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def git_commit(cwd: str | Path | None = None) -> tuple[str, bool | None]:
    """``git rev-parse HEAD`` of the source tree (``unknown`` outside git), and whether tracked files differ."""
    where = Path(cwd) if cwd else Path(__file__).resolve().parents[1]
    head = _git(["rev-parse", "HEAD"], where)
    if not head:
        return "unknown", None
    status = _git(["status", "--porcelain", "--untracked-files=no"], where)
    return head, (bool(status) if status is not None else None)


def weights_sha256(state_dict: dict) -> str:
    """A sha256 of the weights themselves (names, shapes, bytes in name order), independent of pickling."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        value = state_dict[key]
        if not isinstance(value, torch.Tensor):
            continue
        h.update(f"{key} {tuple(value.shape)} {value.dtype}\n".encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _count_cases(folder: str) -> int | None:
    path = Path(folder)
    return len(list(path.glob("*.npz"))) if path.is_dir() else None


def training_data_summary(config: dict, atlas_case: str | None) -> dict:
    return {
        "cache_train": config.get("cache_train"),
        "cache_validation": config.get("cache_validation"),
        "n_train_cases": _count_cases(config.get("cache_train", "")),
        "n_validation_cases": _count_cases(config.get("cache_validation", "")),
        "atlas_case": atlas_case,
        "oars_supervised": list(config.get("oars", [])),
        "note": "case counts are the cached cases found when exporting (null: the cache was not there)",
    }


def validation_table(state: dict) -> dict:
    """The checkpoint's validation history: its best entry (by the Dice the run ranked ``best.pt`` with: the
    128^3 one when it has it, ``training.train.stage_of_note``) and its last."""
    history = [h for h in state.get("history", []) if isinstance(h, dict) and "cascade" in h]
    if not history:
        return {"n_validations": 0, "best": None, "last": None}
    ranked_by = stage_of_note(history[-1])
    best = max(history, key=lambda h: h.get(ranked_by, {}).get("mean", -1.0))
    metric = "Dice on the validation split, canonical grid, per OAR and mean (training.train.evaluate)"
    if ranked_by == "fine":
        metric += "; best by the whole-grid 128^3 Dice (fine, training.fine_masks.fine_dice)"
    return {"n_validations": len(history), "metric": metric, "ranked_by": ranked_by, "best": best, "last": history[-1]}


def _atlas_card(atlas, source_dir: Path, out_dir: Path, copied: bool, baked_shape) -> dict:
    prov = atlas.provenance or {}
    source = prov.get("source") if isinstance(prov.get("source"), dict) else {}
    recipe_path = source_dir / "RECIPE.json"
    recipe = json.loads(recipe_path.read_text()) if recipe_path.is_file() else {}
    return {
        "name": atlas.name,
        "sha256": atlas.sha256,
        "case_id": prov.get("case_id") or source.get("case_id"),
        "cohort": source.get("cohort_in_shared_data") or source.get("cohort") or source.get("generator"),
        "choice_rule": (prov.get("choice") or {}).get("rule"),
        "licence": prov.get("licence"),
        "oars": list(atlas.oars),
        "copied_into_model_dir": copied,
        "path_from_model_dir": Path(_relpath(source_dir, out_dir)).as_posix(),
        "rebuild": recipe.get("command"),
        "baked_in": {"shape": [int(n) for n in baked_shape], "why": BAKED_ATLAS_WHY},
    }


def _relpath(target: Path, start: Path) -> str:
    return os.path.relpath(target.resolve(), start.resolve())


def build_card(
    name: str,
    version: str,
    ckpt: dict,
    checkpoint_source: str,
    atlas,
    atlas_source: Path,
    out_dir: Path,
    copied_atlas: bool,
    model: InferenceCascade,
) -> dict:
    cfg = train_config_from_checkpoint(ckpt)
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()}
    commit, dirty = git_commit()
    return {
        "format": CARD_FORMAT,
        "name": name,
        "version": version,
        "oarmorph_version": __version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "model": {
            "module": "training.inference.InferenceCascade (mean velocities, no sampling)",
            "parameters": count_parameters(model.cascade),
            "image_shape": list(cfg.image_shape),
            "net_shape": list(model.cascade.config.net_shape),
            "dense_block_shapes": [list(s) for s in model.cascade.block_shapes],
        },
        "onnx": {
            "file": ONNX_NAME,
            "opset": OPSET,
            "exporter": f"torch.onnx.export (TorchScript, dynamo=False), torch {torch.__version__}",
            "onnx_version": onnx.__version__,
            "input": {
                "name": INPUT_NAME,
                "shape": [1, 1, *CANONICAL_SHAPE],
                "dtype": "float32",
                "meaning": "the patient's canonical image in [0, 1] (imaging.canonical.to_canonical, window "
                "aligned onto the atlas first when align_windows)",
            },
            "outputs": {
                OUTPUT_NAMES[0]: {
                    "shape": [1, 3, *CANONICAL_SHAPE],
                    "dtype": "float32",
                    "meaning": "the composed pull field y = A(phi1(phi2(x))), canonical voxels",
                },
                OUTPUT_NAMES[1]: {
                    "shape": [1, 3, *CANONICAL_SHAPE],
                    "dtype": "float32",
                    "meaning": "the affine stage's pull field alone, canonical voxels",
                },
            },
        },
        "checkpoint": {
            "source": checkpoint_source,
            "file": CHECKPOINT_NAME,
            "step": ckpt.get("state", {}).get("step"),
            "weights_sha256": weights_sha256(ckpt["model"]),
        },
        "training": {"config": config, "data": training_data_summary(config, ckpt.get("atlas_case"))},
        "canonical_space": DEFAULT_SPEC.to_dict(),
        "field_convention": FIELD_CONVENTION,
        "align_windows": bool(cfg.align_windows),
        "oars": list(atlas.oars),
        "validation": validation_table(ckpt.get("state", {})),
        "atlas": _atlas_card(atlas, atlas_source, out_dir, copied_atlas, model.atlas.shape[2:]),
    }


def calibration_card(calibration: Mapping, card: Mapping) -> dict:
    """The card's ``mask_thresholds`` and ``calibration`` entries from a calibration document, refused when it was
    fitted to other weights or names OARs the model does not have."""
    weights = card["checkpoint"]["weights_sha256"]
    if calibration.get("weights_sha256") != weights:
        raise ExportError(
            f"the mask thresholds were calibrated for weights {str(calibration.get('weights_sha256'))[:12]}..., "
            f"not these ({weights[:12]}...): calibrate this checkpoint (`oarmorph calibrate`)"
        )
    try:
        levels = check_levels(calibration["thresholds"])
    except (TypeError, ValueError) as exc:
        raise ExportError(str(exc)) from exc
    foreign = sorted(set(levels) - set(card["oars"]))
    if foreign:
        raise ExportError(f"the mask thresholds name OARs the model does not have: {foreign}")
    keep = ("cohort", "cases", "grid", "mean_dice", "patients_per_oar", "dice_per_level")
    return {
        "mask_thresholds": levels,
        "calibration": {k: calibration[k] for k in keep if k in calibration},
    }


def export_onnx(model: InferenceCascade, path: str | Path, opset: int = OPSET) -> None:
    """The TorchScript exporter at a fixed 128^3 shape (the tracer's warnings are about constants it keeps)."""
    example = torch.full((1, 1, *CANONICAL_SHAPE), 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            do_constant_folding=True,
        )


def _constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor a ``Constant`` node holds as its ``value`` (None for any other node or attribute)."""
    if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
        return node.attribute[0].t
    return None


def dedupe_constants(proto: onnx.ModelProto) -> int:
    """Merge Constant nodes holding the same tensor (the tracer writes one identity grid per GridSample site,
    20 copies of a 3 x 32^3 grid); returns how many were dropped. Node order stays topological: a duplicate's
    users come after it, and so after the first copy."""
    first: dict[tuple, str] = {}
    rename: dict[str, str] = {}
    keep = []
    for node in proto.graph.node:
        if (t := _constant_tensor(node)) is not None:
            key = (t.data_type, tuple(t.dims), t.SerializeToString(deterministic=True).replace(t.name.encode(), b""))
            if key in first:
                rename[node.output[0]] = first[key]
                continue
            first[key] = node.output[0]
        keep.append(node)
    graph_outputs = {o.name for o in proto.graph.output}
    if graph_outputs & set(rename):
        return 0  # never rename a graph output
    for node in keep:
        for index, name in enumerate(node.input):
            if name in rename:
                node.input[index] = rename[name]
    del proto.graph.node[:]
    proto.graph.node.extend(keep)
    return len(rename)


def _constant_values(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    for node in proto.graph.node:
        if (t := _constant_tensor(node)) is not None:
            values[node.output[0]] = numpy_helper.to_array(t)
    return values


def merge_slices(proto: onnx.ModelProto) -> int:
    """Fuse chains of constant Slices on distinct axes into one Slice; returns how many Slices were dropped.

    The tracer writes a crop ``x[:, :, a:b, c:d, e:f]`` as three Slices, each copying the whole 128^3 field
    (about a tenth of a CPU inference for the two fields); one Slice over the three axes copies it once and
    selects the very same elements. Only a Slice whose output feeds nothing but the next Slice is fused."""
    graph = proto.graph
    values = _constant_values(proto)
    outputs = {o.name for o in graph.output}
    users: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)

    def spec(node) -> list[np.ndarray] | None:
        names = list(node.input[1:]) + [""] * (5 - len(node.input))
        if not names[2] or any(n and n not in values for n in names):
            return None
        starts, ends, axes = (np.atleast_1d(values[n]).astype(np.int64) for n in names[:3])
        steps = np.atleast_1d(values[names[3]]).astype(np.int64) if names[3] else np.ones_like(axes)
        return [starts, ends, axes, steps]

    dropped = 0
    changed = True
    while changed:
        changed = False
        for first in list(graph.node):
            if first.op_type != "Slice" or first.output[0] in outputs or len(users.get(first.output[0], [])) != 1:
                continue
            second = users[first.output[0]][0]
            a, b = spec(first), (spec(second) if second.op_type == "Slice" else None)
            if (
                a is None
                or b is None
                or set(a[2].tolist()) & set(b[2].tolist())
                or (a[2] < 0).any()
                or (b[2] < 0).any()
            ):
                continue
            merged = [np.concatenate([x, y]) for x, y in zip(a, b, strict=True)]
            names = []
            for label, arr in zip(("starts", "ends", "axes", "steps"), merged, strict=True):
                name = f"{second.output[0]}_merged_{label}"
                graph.initializer.append(numpy_helper.from_array(arr, name))
                values[name] = arr
                names.append(name)
            del second.input[:]
            second.input.extend([first.input[0], *names])
            users.setdefault(first.input[0], []).append(second)
            users[first.input[0]].remove(first)
            graph.node.remove(first)
            dropped += 1
            changed = True
    _drop_unused_constants(proto)
    return dropped


def _drop_unused_constants(proto: onnx.ModelProto) -> None:
    """Remove the initializers and Constant nodes no node reads any more (ONNX Runtime warns about each)."""
    graph = proto.graph
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    dead = [n for n in graph.node if n.op_type == "Constant" and not set(n.output) & used]
    for node in dead:
        graph.node.remove(node)
    unused = [i for i in graph.initializer if i.name not in used]
    for init in unused:
        graph.initializer.remove(init)


def fix_output_shapes(proto: onnx.ModelProto) -> None:
    """State the outputs' static shapes in the graph (the tracer leaves some dimensions symbolic); strict shape
    inference in ``verify_onnx`` then checks that the graph agrees."""
    for output in proto.graph.output:
        dims = output.type.tensor_type.shape.dim
        del dims[:]
        for n in (1, 3, *CANONICAL_SHAPE):
            dims.add().dim_value = n


def verify_onnx(proto: onnx.ModelProto, opset: int = OPSET) -> dict:
    """Check a model against the ONNX specification as the serving side needs it; returns its op counts."""
    opsets = {o.domain or "": o.version for o in proto.opset_import}
    if opsets.get("", 0) < opset:
        raise ExportError(f"default-domain opset {opsets.get('', 0)} < {opset}: 5-D GridSample needs opset 20")
    foreign = sorted(d for d in opsets if d not in ("", "ai.onnx"))
    if foreign:
        raise ExportError(f"operators from non-standard domains {foreign}: ONNX Runtime alone must run the model")
    onnx.checker.check_model(proto, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    graph = inferred.graph
    ranks = {
        v.name: len(v.type.tensor_type.shape.dim)
        for v in [*graph.value_info, *graph.input, *graph.output]
        if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")
    }
    for init in graph.initializer:
        ranks[init.name] = len(init.dims)
    ops = Counter(n.op_type for n in graph.node)
    for node in graph.node:
        if node.op_type == "GridSample":
            got = [ranks.get(name) for name in node.input[:2]]
            if got != [5, 5]:
                raise ExportError(f"GridSample {node.name} on tensors of rank {got}, expected 5-D volumes")
    inputs = [(i.name, [d.dim_value for d in i.type.tensor_type.shape.dim]) for i in graph.input]
    outputs = [(o.name, [d.dim_value for d in o.type.tensor_type.shape.dim]) for o in graph.output]
    if inputs != [(INPUT_NAME, [1, 1, *CANONICAL_SHAPE])]:
        raise ExportError(f"unexpected inputs {inputs}")
    if outputs != [(name, [1, 3, *CANONICAL_SHAPE]) for name in OUTPUT_NAMES]:
        raise ExportError(f"unexpected outputs {outputs}")
    return dict(ops)


def _slim_checkpoint(ckpt: dict) -> dict:
    """What inference needs (weights, config, atlas case, validation history): no optimizer or RNG state."""
    return {k: ckpt[k] for k in ("model", "config", "atlas_case", "state") if k in ckpt}


def export_model(
    checkpoint: str | Path,
    atlas_bundle: str | Path,
    out_dir: str | Path,
    name: str | None = None,
    version: str = "1.0.0",
    copy_atlas: bool = True,
    log: Callable[[str], None] = print,
    source_label: str | None = None,
    calibration: Mapping | None = None,
) -> dict:
    """Write ``out_dir`` (model.onnx, card.json, checkpoint.pt and, with ``copy_atlas``, atlas/); returns the card.

    ``source_label``: what the card records as the checkpoint's origin (default: its path), e.g. the run's
    ``best.pt`` when a copy of it was exported because the run keeps rewriting it. ``calibration``: a mask-threshold
    calibration of these very weights (``training.calibration``; its ``weights_sha256`` must be theirs), written
    into the card as ``mask_thresholds`` and ``calibration``."""
    out = Path(out_dir)
    atlas_source = Path(atlas_bundle)
    atlas = load_atlas(atlas_source)  # verified; its canonical image is THE preprocessing of its CT
    ckpt = load_checkpoint(checkpoint)
    cfg = train_config_from_checkpoint(ckpt)
    cascade = build_model(cfg)
    cascade.load_state_dict(ckpt["model"])
    model = InferenceCascade(cascade, atlas.image).eval()
    atlas_case = (atlas.provenance or {}).get("case_id") or ((atlas.provenance or {}).get("source") or {}).get(
        "case_id"
    )
    if ckpt.get("atlas_case") and atlas_case and ckpt["atlas_case"] != atlas_case:
        log(f"warning: {checkpoint} was trained against atlas {ckpt['atlas_case']}, the bundle is {atlas_case}")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="oarmorph-export-") as tmp:
        raw = Path(tmp) / ONNX_NAME
        export_onnx(model, raw)
        proto = onnx.load(str(raw))
    fix_output_shapes(proto)
    dropped = dedupe_constants(proto)
    fused = merge_slices(proto)
    ops = verify_onnx(proto)
    card = build_card(
        name or out.name, version, ckpt, source_label or str(checkpoint), atlas, atlas_source, out, copy_atlas, model
    )
    card["onnx"]["operators"] = dict(sorted(ops.items()))
    if calibration is not None:
        card.update(calibration_card(calibration, card))
    proto.producer_name = "oarmorph"
    proto.producer_version = __version__
    proto.doc_string = f"{card['name']} {card['version']}: {FIELD_CONVENTION}"
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, card_to_metadata(card))
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(out / ONNX_NAME))
    torch.save(_slim_checkpoint(ckpt), out / CHECKPOINT_NAME)
    target = out / ATLAS_DIR_NAME
    if target.exists() and target.resolve() != atlas_source.resolve():
        shutil.rmtree(target)
    if copy_atlas and target.resolve() != atlas_source.resolve():
        shutil.copytree(atlas_source, target)
    write_card(out, card)
    size = (out / ONNX_NAME).stat().st_size
    log(
        f"wrote {out / ONNX_NAME} ({size / 1e6:.2f} MB, opset {OPSET}, {sum(ops.values())} nodes, "
        f"{ops.get('GridSample', 0)} GridSample, {dropped} duplicate constants merged, {fused} Slices fused), "
        f"{out / 'card.json'}, "
        f"{out / CHECKPOINT_NAME}"
        + (f", {target}" if copy_atlas else f" (atlas by reference: {card['atlas']['path_from_model_dir']})")
    )
    return card
