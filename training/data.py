"""Cached canonical cases as tensors at the training resolution, kept in memory (a few hundred MB at 64^3)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from imaging.canonical import shift_arrays, window_shift

from .cache import CachedCase, load_cached
from .fine_masks import FineMask, crop


@dataclass
class CaseTensors:
    case_id: str
    image: torch.Tensor  # [1, k, j, i] float16
    known: torch.Tensor  # [1, k, j, i] float16
    masks: torch.Tensor  # [n_oars, k, j, i] float16 (zeros where absent)
    present: torch.Tensor  # [n_oars] float32 0/1
    top_cut: bool
    window_shift: tuple[int, int] = (0, 0)  # (dk, dj) canonical voxels applied to match the atlas
    # the OARs at the canonical resolution (training.fine_masks), one per OAR (None where absent), when asked for
    fine: list[FineMask | None] | None = None
    fine_known: torch.Tensor | None = None  # uint8 [128, 128, 128]: the known mask there (validation only)

    def to(self, device: torch.device | str) -> CaseTensors:
        """The same case with its tensors on ``device`` (moved once, when training starts)."""
        return replace(
            self,
            image=self.image.to(device),
            known=self.known.to(device),
            masks=self.masks.to(device),
            present=self.present.to(device),
            fine=None if self.fine is None else [None if f is None else f.to(device) for f in self.fine],
            fine_known=None if self.fine_known is None else self.fine_known.to(device),
        )


def _resize(x: np.ndarray, shape: tuple[int, int, int]) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None]
    if tuple(t.shape[2:]) != tuple(shape):
        t = F.interpolate(t, size=shape, mode="area")  # average: keeps partial volumes of the soft masks
    return t[0]


def load_case(
    path: Path,
    oars: list[str],
    shape: tuple[int, int, int],
    align_to: CachedCase | None = None,
    fine_margin: int | None = None,
    fine_known: bool = False,
) -> CaseTensors:
    """A cached case at the training resolution; with ``align_to``, its window is first shifted onto the atlas's
    (``imaging.canonical.window_shift``: whole canonical voxels, so the field contract is untouched). With
    ``fine_margin``, also each OAR's canonical mask on its box grown by that many voxels (``training.fine_masks``)
    and, with ``fine_known``, the canonical known mask."""
    cached = load_cached(path)
    shift = (0, 0)
    if align_to is not None and cached.case_id != align_to.case_id:
        shift = window_shift(cached.image, cached.known, align_to.window_reference)

    def moved(a: np.ndarray) -> np.ndarray:
        return shift_arrays(a, *shift) if shift != (0, 0) else a

    known = moved(cached.known)
    masks = torch.zeros(len(oars), *shape)
    present = torch.zeros(len(oars))
    for n, name in enumerate(oars):
        if name in cached.masks:
            masks[n] = _resize(moved(cached.masks[name]), shape)[0]
            present[n] = 1.0
    fine, known_fine = None, None
    if fine_margin is not None:
        fine = [crop(moved(cached.masks[name]), known, fine_margin) if name in cached.masks else None for name in oars]
        if fine_known:
            known_fine = torch.from_numpy(np.rint(np.clip(known, 0.0, 1.0) * 255).astype(np.uint8))
    return CaseTensors(
        cached.case_id,
        _resize(moved(cached.image), shape).half(),
        _resize(known, shape).half(),
        masks.half(),
        present,
        cached.frame.top_cut,
        shift,
        fine,
        known_fine,
    )


def cache_paths(cache_dir: str | Path) -> list[Path]:
    return [p for p in sorted(Path(cache_dir).glob("*.npz")) if ".tmp" not in p.name]


def load_split(
    cache_dir: str | Path,
    oars: list[str],
    shape: tuple[int, int, int],
    align_to: CachedCase | None = None,
    fine_margin: int | None = None,
    fine_known: bool = False,
) -> list[CaseTensors]:
    return [load_case(p, oars, shape, align_to, fine_margin, fine_known) for p in cache_paths(cache_dir)]


def choose_atlas(cache_dir: str | Path, oars: list[str]) -> Path:
    """The atlas of a cohort: among the patients with every OAR, the one whose CT holds the most anatomy (largest
    'known' canonical volume: least truncated); ties to the first in name order. Documented in the README."""
    best: tuple[float, Path] | None = None
    for path in cache_paths(cache_dir):
        cached = load_cached(path)
        if all(name in cached.masks for name in oars):
            known = float(cached.known.sum())
            if best is None or known > best[0]:
                best = (known, path)
    if best is None:
        raise ValueError("no case of the cohort has every OAR: name the atlas case explicitly")
    return best[1]
