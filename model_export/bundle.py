"""Load an exported model directory for serving: its card, its atlas, its ONNX Runtime session (torch-free).

``load_model_dir`` is what ``oarmorph segment --bundle`` and the worker call. It refuses a directory whose parts
do not belong together: the atlas bundle's sha256 must be the one recorded in ``card.json`` and in the
metadata of ``model.onnx`` (``MODEL_ATLAS_MISMATCH``), and the card must state what the metadata states.
When the directory holds no ``atlas/`` (the OpenKBP model: its atlas may not be copied into the repository),
the bundle the card refers to is used, rebuilt by its recipe (``oarmorph atlas build``, same sha256).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.atlas import SegmentationAtlas, load_atlas

from .card import (
    ONNX_NAME,
    ModelAtlasMismatchError,
    ModelBundleError,
    compare_metadata,
    mask_thresholds,
    read_card,
    resolve_atlas_dir,
)
from .card import card_from_metadata as _card_from_metadata
from .runtime import OnnxRegister


@dataclass
class LoadedModel:
    path: Path
    card: dict
    atlas: SegmentationAtlas
    atlas_dir: Path
    register: OnnxRegister

    @property
    def align_windows(self) -> bool:
        return bool(self.card["align_windows"])

    @property
    def name(self) -> str:
        return f"{self.card['name']} {self.card['version']}"

    @property
    def mask_thresholds(self) -> dict[str, float] | None:
        return mask_thresholds(self.card)

    def summary(self) -> dict:
        """What a segmentation's summary.json records about the model."""
        return {
            "name": self.card["name"],
            "version": self.card["version"],
            "model_dir": str(self.path),
            "runtime": f"onnxruntime ({self.register.provider})",
            "git_commit": self.card.get("git_commit"),
            "checkpoint_step": self.card.get("checkpoint", {}).get("step"),
            "atlas_case": self.card["atlas"].get("case_id"),
            "align_windows": self.align_windows,
            "mask_thresholds": self.mask_thresholds,
        }


def has_onnx(model_dir: str | Path) -> bool:
    return (Path(model_dir) / ONNX_NAME).is_file()


def load_model_dir(
    path: str | Path,
    atlas: str | Path | None = None,
    threads: int | None = None,
    inter_threads: int | None = 1,
    device: str = "auto",
    warmup: bool = True,
) -> LoadedModel:
    """The model directory ``path`` ready for ``pipeline.segment_ct`` (``atlas``: use this bundle instead)."""
    folder = Path(path)
    if not (folder / ONNX_NAME).is_file():
        raise ModelBundleError(f"{folder} has no {ONNX_NAME} (export one with `oarmorph export`)")
    card = read_card(folder)
    atlas_dir = resolve_atlas_dir(folder, card, atlas)
    register = OnnxRegister(folder / ONNX_NAME, threads, inter_threads, device=device, warmup=False)
    compare_metadata(card, _card_from_metadata(register.metadata), str(folder / ONNX_NAME))
    seg_atlas = load_atlas(atlas_dir, expected_sha256=card["atlas"]["sha256"])  # every file against its sha256
    if list(seg_atlas.oars) != list(card["oars"]):
        raise ModelAtlasMismatchError(f"atlas {atlas_dir} holds {seg_atlas.oars}, the model card {card['oars']}")
    foreign = sorted(set(mask_thresholds(card) or {}) - set(seg_atlas.oars))
    if foreign:
        raise ModelBundleError(f"the card of {folder} holds mask thresholds for OARs its atlas lacks: {foreign}")
    if warmup:
        register.warm_up()
    return LoadedModel(folder, card, seg_atlas, atlas_dir, register)
