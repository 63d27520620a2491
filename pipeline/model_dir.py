"""Where a model's weights and its atlas live: a model directory, or a checkpoint and an atlas bundle given apart.

A model directory holds ``checkpoint.pt`` (a training checkpoint, ``runs/<name>/best.pt``) and ``atlas/`` (the
atlas bundle the model registers); the ONNX export adds ``model.onnx`` and ``card.json`` beside them. Keeping
the atlas inside the directory means a model cannot be run against an atlas it was not trained with by mistake.
An exported directory without ``atlas/`` (its atlas may not be copied, e.g. OpenKBP's) uses the bundle its card
names, checked against the card's sha256 (``model_export.card.resolve_atlas_dir``); ``model_export.bundle``
loads the ONNX side.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from model_export.card import CARD_NAME, read_card, resolve_atlas_dir

CHECKPOINT_NAME = "checkpoint.pt"
ATLAS_DIR_NAME = "atlas"


class ModelNotFoundError(Exception):
    code = "MODEL_NOT_FOUND"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class ModelSource:
    checkpoint: Path
    atlas: Path  # an atlas bundle folder (or, for the CLI, a cohort case folder to build one from)


def resolve_model(
    model_dir: Path | None = None, checkpoint: Path | None = None, atlas: Path | None = None
) -> ModelSource:
    """``model_dir`` alone, or ``checkpoint`` with ``atlas``; anything else is refused with the reason."""
    if model_dir is not None:
        if checkpoint is not None or atlas is not None:
            raise ModelNotFoundError("give either a model directory or a checkpoint with an atlas bundle, not both")
        atlas_dir = Path(model_dir) / ATLAS_DIR_NAME
        if (Path(model_dir) / CARD_NAME).is_file():  # an exported directory: the card's atlas, sha256 checked
            atlas_dir = resolve_atlas_dir(model_dir, read_card(model_dir))
        source = ModelSource(Path(model_dir) / CHECKPOINT_NAME, atlas_dir)
    elif checkpoint is not None and atlas is not None:
        source = ModelSource(Path(checkpoint), Path(atlas))
    else:
        raise ModelNotFoundError("no model: give a model directory, or a checkpoint together with an atlas bundle")
    if not source.checkpoint.is_file():
        raise ModelNotFoundError(f"no checkpoint at {source.checkpoint}")
    if not source.atlas.is_dir():
        raise ModelNotFoundError(f"no atlas bundle folder at {source.atlas}")
    return source
