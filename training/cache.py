"""Preprocess a cohort once into a cache of canonical arrays (the data pipeline reads only these).

Each case becomes ``<cache>/<case_id>.npz``: the canonical image (float16, [0, 1]), the field-of-view mask,
the "known" mask (voxels the CT really holds: OpenKBP blanks everything outside a region around the treatment
to exactly -1024 HU, which must not count as air in the similarity loss), one soft mask per OAR the case has
(uint8, 0-255 for 0-1), and the canonical frame. The preprocessing is ``imaging.canonical.to_canonical``, the
same function the service runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from imaging.canonical import (
    DEFAULT_SPEC,
    CanonicalFrame,
    CanonicalSpec,
    WindowReference,
    known_mask,
    mask_to_canonical,
    to_canonical,
)
from imaging.volume import Volume

from .cohort import CohortCase

MISSING_HU = -1024.0  # OpenKBP's value for "not in the kept region"
CACHE_VERSION = 1


@dataclass
class CachedCase:
    case_id: str
    image: np.ndarray  # float32 [k, j, i] in [0, 1]
    known: np.ndarray  # float32 [k, j, i]: 1 where the CT holds data (inside the scan and not blanked)
    masks: dict[str, np.ndarray]  # TG-263 name -> float32 soft mask in [0, 1]
    frame: CanonicalFrame

    @cached_property
    def window_reference(self) -> WindowReference:
        """Its side of window matching when it is the atlas, made once (``imaging.canonical.window_shift``)."""
        return WindowReference.of(self.image, self.known)


def preprocess_case(case: CohortCase, spec: CanonicalSpec = DEFAULT_SPEC) -> CachedCase:
    ct = case.read_ct()
    can = to_canonical(ct, spec)
    known = known_mask(ct, can, MISSING_HU)  # the same "known" the inference path matches windows on
    masks = {name: mask_to_canonical(Volume(m, ct.geometry), can.frame) for name, m in case.read_masks(ct).items()}
    return CachedCase(case.case_id, can.image, known.astype(np.float32), masks, can.frame)


def save_cached(case: CachedCase, path: Path, extra_meta: dict | None = None) -> None:
    """Write a case; ``extra_meta`` adds keys to the stored meta (e.g. ``pseudo_labels``), which ``load_cached``
    does not read."""
    arrays = {
        "image": case.image.astype(np.float16),
        "known": np.rint(case.known * 255).astype(np.uint8),
        **{f"mask_{name}": np.rint(m * 255).astype(np.uint8) for name, m in case.masks.items()},
    }
    meta = {
        "case_id": case.case_id,
        "frame": case.frame.to_dict(),
        "oars": sorted(case.masks),
        "version": CACHE_VERSION,
        **(extra_meta or {}),
    }
    np.savez_compressed(path, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)


def load_cached(path: Path) -> CachedCase:
    with np.load(path) as data:
        meta = json.loads(bytes(data["meta"]).decode())
        masks = {name: data[f"mask_{name}"].astype(np.float32) / 255.0 for name in meta["oars"]}
        return CachedCase(
            meta["case_id"],
            data["image"].astype(np.float32),
            data["known"].astype(np.float32) / 255.0,
            masks,
            CanonicalFrame.from_dict(meta["frame"]),
        )


def build_cache(
    cases: list[CohortCase], cache_dir: str | Path, progress: Callable[[int, str], None] | None = None
) -> list[Path]:
    """Preprocess every case not yet cached (so an interrupted run resumes); the paths in case order."""
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, case in enumerate(cases):
        path = cache / f"{case.case_id}.npz"
        if not path.is_file():
            tmp = path.with_suffix(".tmp.npz")
            save_cached(preprocess_case(case), tmp)
            tmp.replace(path)
        paths.append(path)
        if progress:
            progress(n, case.case_id)
    return paths
