"""A segmentation on disk: one NIfTI mask per OAR on the input CT's own grid, and ``summary.json``.

Each mask is written on the full grid of the CT it was contoured on (the pipeline keeps only each OAR's
bounding box in memory), so any viewer overlays it on the input as it is.
"""

from __future__ import annotations

import json
from pathlib import Path

from imaging.io import write_volume
from imaging.volume import Geometry, Volume

from .segment import Segmentation


def write_segmentation(result: Segmentation, patient: Geometry, out_dir: str | Path, extra: dict | None = None) -> dict:
    """Write ``<OAR>.nii.gz`` per atlas OAR and ``summary.json`` (volumes, warnings, seconds, folding)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, mask in result.masks.items():
        write_volume(Volume(mask.full(), patient), out / f"{name}.nii.gz")
    summary = {**(extra or {}), **result.summary()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
