"""Cached canonical cases as tensors at the training resolution, kept in memory (a few hundred MB at 64^3)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .cache import load_cached


@dataclass
class CaseTensors:
    case_id: str
    image: torch.Tensor  # [1, k, j, i] float16
    known: torch.Tensor  # [1, k, j, i] float16
    masks: torch.Tensor  # [n_oars, k, j, i] float16 (zeros where absent)
    present: torch.Tensor  # [n_oars] float32 0/1
    top_cut: bool


def _resize(x: np.ndarray, shape: tuple[int, int, int]) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None]
    if tuple(t.shape[2:]) != tuple(shape):
        t = F.interpolate(t, size=shape, mode="area")  # average: keeps partial volumes of the soft masks
    return t[0]


def load_case(path: Path, oars: list[str], shape: tuple[int, int, int]) -> CaseTensors:
    cached = load_cached(path)
    masks = torch.zeros(len(oars), *shape)
    present = torch.zeros(len(oars))
    for n, name in enumerate(oars):
        if name in cached.masks:
            masks[n] = _resize(cached.masks[name], shape)[0]
            present[n] = 1.0
    return CaseTensors(
        cached.case_id,
        _resize(cached.image, shape).half(),
        _resize(cached.known, shape).half(),
        masks.half(),
        present,
        cached.frame.top_cut,
    )


def load_split(cache_dir: str | Path, oars: list[str], shape: tuple[int, int, int]) -> list[CaseTensors]:
    return [load_case(p, oars, shape) for p in sorted(Path(cache_dir).glob("*.npz")) if ".tmp" not in p.name]


def choose_atlas(cases: list[CaseTensors]) -> CaseTensors:
    """The atlas for a cohort: among the patients with every OAR, the one whose CT holds the most anatomy
    (largest 'known' volume: least truncated), ties to the first. Documented in the README."""
    complete = [c for c in cases if bool(c.present.all())]
    if not complete:
        raise ValueError("no case of the cohort has every OAR: name the atlas case explicitly")
    return max(complete, key=lambda c: float(c.known.float().sum()))
