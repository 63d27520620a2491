"""The atlas as the inference path needs it: the bundle's masks, and its canonical image made by THE preprocessing.

The atlas canonical frame and image are never stored or computed apart: they are ``to_canonical`` of the
bundle's CT, the very function every patient goes through, so the atlas indices of a field mean the same
here as in training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from anatomy.bundle import AtlasBundle, load_bundle
from imaging.canonical import DEFAULT_SPEC, CanonicalFrame, CanonicalSpec, WindowReference, known_mask, to_canonical
from imaging.volume import Geometry


@dataclass
class SegmentationAtlas:
    name: str
    frame: CanonicalFrame  # the atlas canonical grid: where a field's y = x + u(x) points
    image: np.ndarray  # float32 [128, 128, 128] in [0, 1]: the registration's moving image
    known: np.ndarray  # float32 [128, 128, 128]: voxels its CT really holds (window matching)
    masks: dict[str, tuple[np.ndarray, Geometry]]  # TG-263 name -> (mask, its geometry), at full resolution
    sha256: str = ""
    provenance: dict = field(default_factory=dict)

    @property
    def oars(self) -> list[str]:
        return list(self.masks)

    @cached_property
    def window_reference(self) -> WindowReference:
        """Its side of every patient's window matching, made once (``imaging.canonical.window_shift``)."""
        return WindowReference.of(self.image, self.known)


def atlas_from_bundle(bundle: AtlasBundle, spec: CanonicalSpec = DEFAULT_SPEC) -> SegmentationAtlas:
    can = to_canonical(bundle.ct, spec)
    return SegmentationAtlas(
        bundle.name, can.frame, can.image, known_mask(bundle.ct, can), bundle.masks, bundle.sha256, bundle.provenance
    )


def load_atlas(path: str | Path, expected_sha256: str | None = None) -> SegmentationAtlas:
    """An atlas bundle folder (verified, ``anatomy.bundle.load_bundle``) ready for ``segment_ct``."""
    return atlas_from_bundle(load_bundle(path, expected_sha256))
