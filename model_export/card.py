"""The model card and the model directory's layout, torch-free (the worker reads them without torch or onnx).

A model directory is one versioned bundle:

    model.onnx      the inference cascade (opset 20), the atlas's canonical image baked in; the card's facts in
                    its metadata_props (one JSON string per card key)
    card.json       what the model is, how and on what it was trained, its canonical space and field convention,
                    its OARs, its validation Dice, the atlas bundle's sha256
    atlas/          a copy of the atlas bundle the model registers (or none: the card then names the bundle by
                    a path relative to the model directory and its sha256, e.g. OpenKBP's, which may not be copied)
    checkpoint.pt   the training weights (model, config, atlas case, validation history), for the torch path

A card may carry ``mask_thresholds`` (OAR -> level) and their ``calibration`` (``training.calibration``): the levels
at which this model's warped soft masks become contours; ``mask_thresholds(card)`` reads them, None without.

Loading checks that the three belong together: the atlas bundle's sha256 must be the one the card and the ONNX
metadata record, or the model is refused (``ModelAtlasMismatchError``, ``MODEL_ATLAS_MISMATCH``): a model whose
baked atlas image is not the atlas whose masks get warped would contour the wrong anatomy without any error.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from imaging.warp import check_levels

CARD_FORMAT = 1
CARD_NAME = "card.json"
ONNX_NAME = "model.onnx"
ATLAS_DIR_NAME = "atlas"
CHECKPOINT_NAME = "checkpoint.pt"
INPUT_NAME = "fixed"
OUTPUT_NAMES = ("field", "affine_field")


class ModelBundleError(Exception):
    """A model directory that cannot be used as it is (missing files, card and model.onnx disagreeing)."""

    code = "MODEL_BUNDLE_INVALID"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ModelAtlasMismatchError(ModelBundleError):
    """The atlas bundle found is not the one the model was exported with (its sha256 differs)."""

    code = "MODEL_ATLAS_MISMATCH"


class ModelAtlasMissingError(ModelBundleError):
    """Neither ``atlas/`` nor the bundle the card refers to is there (e.g. the OpenKBP bundle not rebuilt yet)."""

    code = "MODEL_ATLAS_MISSING"


class RuntimeUnavailableError(Exception):
    """The execution provider asked for is not there (``--device cuda`` without onnxruntime-gpu or a GPU)."""

    code = "RUNTIME_UNAVAILABLE"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def card_to_metadata(card: Mapping) -> dict[str, str]:
    """The card as ONNX metadata_props: one entry per top-level key, its value as a JSON string."""
    return {key: json.dumps(value, sort_keys=True) for key, value in card.items()}


def card_from_metadata(metadata: Mapping[str, str]) -> dict:
    """The card back from metadata_props (entries that are no JSON, e.g. added by other tools, are skipped)."""
    card = {}
    for key, text in metadata.items():
        try:
            card[key] = json.loads(text)
        except (TypeError, ValueError):
            continue
    return card


def mask_thresholds(card: Mapping) -> dict[str, float] | None:
    """The card's calibrated mask level per OAR (None for a model without: 0.5 for every OAR)."""
    levels = card.get("mask_thresholds")
    if levels is None:
        return None
    try:
        return check_levels(levels)
    except (TypeError, ValueError) as exc:
        raise ModelBundleError(f"the card's mask_thresholds: {exc}") from exc


def read_card(model_dir: str | Path) -> dict:
    path = Path(model_dir) / CARD_NAME
    if not path.is_file():
        raise ModelBundleError(f"{model_dir} has no {CARD_NAME}: not an exported model directory")
    try:
        card = json.loads(path.read_text())
    except ValueError as exc:
        raise ModelBundleError(f"{path} is not valid JSON: {exc}") from exc
    if card.get("format") != CARD_FORMAT or "atlas" not in card or "sha256" not in card["atlas"]:
        raise ModelBundleError(f"{path}: not a model card of format {CARD_FORMAT} with an atlas sha256")
    return card


def write_card(model_dir: str | Path, card: Mapping) -> Path:
    path = Path(model_dir) / CARD_NAME
    path.write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
    return path


def bundle_sha256(atlas_dir: str | Path) -> str:
    """The sha256 an atlas bundle declares (``bundle.json``); the files are checked when it is loaded."""
    path = Path(atlas_dir) / "bundle.json"
    try:
        return str(json.loads(path.read_text())["sha256"])
    except (OSError, ValueError, KeyError) as exc:
        raise ModelBundleError(f"{path}: no atlas bundle description with a sha256 ({exc})") from exc


def compare_metadata(card: Mapping, metadata_card: Mapping, source: str = ONNX_NAME) -> None:
    """card.json and the model's metadata_props must state the same facts (they are written together)."""
    atlas_card = card.get("atlas", {}).get("sha256")
    atlas_meta = metadata_card.get("atlas", {}).get("sha256") if isinstance(metadata_card.get("atlas"), dict) else None
    if atlas_card != atlas_meta:
        raise ModelAtlasMismatchError(
            f"{source} was exported with atlas sha256 {str(atlas_meta)[:12]}..., {CARD_NAME} records "
            f"{str(atlas_card)[:12]}...: they do not belong together"
        )
    differ = sorted(k for k in set(card) | set(metadata_card) if card.get(k) != metadata_card.get(k))
    if differ:
        raise ModelBundleError(f"{CARD_NAME} and the metadata of {source} differ in: {', '.join(differ)}")


def resolve_atlas_dir(model_dir: str | Path, card: Mapping, atlas: str | Path | None = None) -> Path:
    """The atlas bundle of a model: ``atlas`` when given, else ``atlas/`` in the model directory, else the bundle
    the card refers to (``atlas.path_from_model_dir``); its sha256 must be the card's.

    Only the declared sha256 is compared here (cheap); loading the bundle then checks every file against it.
    """
    folder = Path(model_dir)
    info = card["atlas"]
    expected = info["sha256"]
    if atlas is not None:
        candidates = [Path(atlas)]
    else:
        candidates = [folder / ATLAS_DIR_NAME]
        if info.get("path_from_model_dir"):
            candidates.append(folder / info["path_from_model_dir"])
    for path in candidates:
        if not (path / "bundle.json").is_file():
            continue
        found = bundle_sha256(path)
        if found != expected:
            raise ModelAtlasMismatchError(
                f"atlas bundle {path} has sha256 {found[:12]}..., the model {card.get('name', folder.name)} was "
                f"exported with {expected[:12]}...: they do not belong together"
            )
        return path
    hint = info.get("rebuild")
    tried = ", ".join(str(p) for p in candidates)
    raise ModelAtlasMissingError(
        f"no atlas bundle for model {card.get('name', folder.name)} (looked in {tried})"
        + (f"; rebuild it with `{hint}`" if hint else "")
    )
