"""A CT series to a DICOM RTSTRUCT holding every atlas OAR: the one function the worker and ``oarmorph segment -o``
share, so a structure set from the queue and one from the command line are the same file.

The structure set references the input series (Study, Frame of Reference, Series, every slice's SOP Instance
UID: ``imaging.rtstruct.CtReference``), holds every OAR of the model's atlas under its TG-263 name with the
catalogue's colour and RTROIInterpretedType, is UNAPPROVED, and names oarmorph and the model (Manufacturer,
ManufacturerModelName, SoftwareVersions, SeriesDescription). The QA summary beside it is what a physicist checks
first: each OAR's volume in cc, the folded fraction of the field, and the warnings of the segmentation.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from pydicom.dataset import Dataset

from anatomy.catalogue import BY_NAME, try_resolve
from imaging.rtstruct import DEFAULT_COLORS, CtReference, RoiSpec, write_rtstruct
from imaging.volume import Volume
from imaging.warp import WarpedMask
from model_export.card import mask_thresholds
from oarmorph import __version__

from .atlas import SegmentationAtlas
from .segment import Register, Segmentation, segment_ct

STRUCTURE_SET_LABEL = "OARMORPH"
MANUFACTURER = "oarmorph"


class ServingModel(Protocol):
    """What contouring needs of a loaded model (``model_export.bundle.LoadedModel`` is one)."""

    atlas: SegmentationAtlas
    register: Register
    card: dict

    @property
    def align_windows(self) -> bool: ...


def roi_spec(name: str, index: int = 0) -> RoiSpec:
    """The catalogue's TG-263 name, colour, interpreted type and description of an atlas OAR."""
    oar = BY_NAME.get(name) or try_resolve(name)
    if oar is None:  # an atlas structure outside the catalogue keeps its own name
        return RoiSpec(name, DEFAULT_COLORS[index % len(DEFAULT_COLORS)], "ORGAN")
    return RoiSpec(oar.name, oar.color, oar.interpreted_type, oar.description)


class _FullMask:
    """A boxed OAR seen as a full-grid array only when the writer reads it (36 full grids would not fit at once)."""

    def __init__(self, mask: WarpedMask) -> None:
        self._mask = mask
        self.shape = tuple(mask.grid_shape)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        full = self._mask.full()
        return full if dtype is None else full.astype(dtype)


class _LazyMasks(Mapping):
    def __init__(self, masks: dict[str, WarpedMask]) -> None:
        self._specs = {roi_spec(name, n): name for n, name in enumerate(masks)}
        self._masks = masks

    def __getitem__(self, spec: RoiSpec) -> _FullMask:
        return _FullMask(self._masks[self._specs[spec]])

    def __iter__(self) -> Iterator[RoiSpec]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)


def model_identity(card: Mapping) -> tuple[str, str]:
    return str(card.get("name", "model")), str(card.get("version", "unknown"))


def series_description(card: Mapping) -> str:
    name, version = model_identity(card)
    return f"oarmorph {name} {version} auto-contours UNAPPROVED"[:64]


def write_structure_set(segmentation: Segmentation, ct: Volume, card: Mapping, path: str | Path) -> Dataset:
    """The RTSTRUCT of a segmentation, written atomically to ``path`` (a reader never sees half a file)."""
    name, version = model_identity(card)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    dataset = write_rtstruct(
        CtReference.from_volume(ct),
        _LazyMasks(segmentation.masks),
        partial,
        label=STRUCTURE_SET_LABEL,
        series_description=series_description(card),
        manufacturer=MANUFACTURER,
        model_name=f"oarmorph {name}"[:64],
        software_versions=[f"oarmorph {__version__}", f"{name} {version}"],
        algorithm_name=f"oarmorph {name}",
        algorithm_version=version,
    )
    os.replace(partial, target)
    return dataset


def qa_summary(segmentation: Segmentation, card: Mapping) -> dict:
    """Per-OAR volume (cc) and flags, the folded fraction of the field, the warnings, seconds per stage."""
    summary = segmentation.summary()
    summary.pop("canonical_frame", None)
    name, version = model_identity(card)
    oars = summary["oars"]
    return {
        "model": {"name": name, "version": version},
        "oar_count": len(oars),
        "contoured": sum(1 for o in oars.values() if not o["empty"]),
        **summary,
    }


@dataclass
class ContourResult:
    segmentation: Segmentation
    dataset: Dataset
    qa: dict


def contour_to_rtstruct(
    ct: Volume,
    model: ServingModel,
    path: str | Path,
    progress: Callable[[str], None] | None = None,
) -> ContourResult:
    """Segment ``ct`` with ``model`` (``pipeline.segment_ct``) and write every atlas OAR as an RTSTRUCT to ``path``.

    ``progress(stage)``: ``preprocessing``, ``registration``, ``warping``, ``checks`` (from ``segment_ct``), then
    ``writing``."""
    report = progress or (lambda stage: None)
    segmentation = segment_ct(
        ct, model.atlas, model.register, model.align_windows, progress=report, thresholds=mask_thresholds(model.card)
    )
    report("writing")
    start = time.perf_counter()
    dataset = write_structure_set(segmentation, ct, model.card, path)
    segmentation.seconds["writing"] = time.perf_counter() - start
    return ContourResult(segmentation, dataset, qa_summary(segmentation, model.card))
