"""Which patient of a cohort becomes the atlas: two documented rules, torch-free.

The atlas is one real patient: its CT is the moving image of every registration and its OAR masks are what
oarmorph carries into new patients, so it must hold every OAR the cohort knows. Among the patients that do
("complete" patients: every OAR found anywhere in the cohort, names mapped by the catalogue aliases):

``least-truncated`` (the default; the rule of ``training.data.choose_atlas``, so bundle and training agree)
    the patient whose CT holds the most anatomy: the largest *known* canonical volume, i.e. the canonical
    128^3 voxels that lie inside the scan and are not blanked to exactly -1024 HU (OpenKBP keeps CT values
    only around the treatment). The score is computed exactly as the training cache stores it
    (``training.cache.preprocess_case``, the known mask quantised to 1/255), so both pick the same patient;
    ties go to the first case id in sort order. For OpenKBP's training split: pt_96.

``typical``
    the patient whose canonical image is closest on average to the others: the mean normalised cross
    correlation (NCC) between its canonical image and every other patient's, on a coarse 32^3 grid (4^3 block
    means of the 128^3 image) and only on the voxels both CTs hold. It reads every CT of the cohort, so it costs
    about twice as much as ``least-truncated`` on OpenKBP.

Cases are anything with ``case_id``, ``mask_files`` (TG-263 name -> file), ``read_ct()`` and
``read_masks(ct)``, e.g. ``training.cohort.CohortCase`` (this module does not import ``training``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from imaging.canonical import DEFAULT_SPEC, CanonicalSpec, known_mask, to_canonical
from imaging.volume import Volume

from .catalogue import BY_NAME

MISSING_HU = -1024.0  # OpenKBP's value for "not in the kept region" (as training.cache)
COARSE_FACTOR = 4  # 128^3 -> 32^3 for the typical rule
MIN_OVERLAP_VOXELS = 512  # coarse voxels two CTs must share for their NCC to count

RULES: dict[str, str] = {
    "least-truncated": (
        "among the patients with every OAR of the cohort, the one whose CT holds the most anatomy (largest known "
        "canonical volume: canonical voxels inside the scan and not blanked to -1024 HU); ties to the first case id"
    ),
    "typical": (
        "among the patients with every OAR of the cohort, the one whose canonical image has the highest mean NCC "
        "with every other patient's (32^3 grid, voxels both CTs hold); ties to the first case id"
    ),
}
DEFAULT_RULE = "least-truncated"


class CaseLike(Protocol):
    case_id: str
    mask_files: dict

    def read_ct(self) -> Volume: ...

    def read_masks(self, ct: Volume) -> dict[str, np.ndarray]: ...


@dataclass
class AtlasChoice:
    case_id: str
    rule: str
    required_oars: list[str]  # catalogue order
    scores: dict[str, float]  # complete candidates -> the rule's score (higher is better), in case order
    n_cases: int
    incomplete: dict[str, list[str]] = field(default_factory=dict)  # case -> OARs it lacks
    unit: str = ""

    def summary(self, top: int | None = None) -> dict:
        """For provenance: the rule, the candidates and their scores (best first), the margin to the runner-up."""
        ranked = sorted(self.scores.items(), key=lambda kv: (-kv[1], kv[0]))
        shown = ranked if top is None else ranked[:top]
        out = {
            "rule": self.rule,
            "rule_description": RULES[self.rule],
            "score_unit": self.unit,
            "required_oars": self.required_oars,
            "n_cases": self.n_cases,
            "n_complete": len(self.scores),
            "chosen": self.case_id,
            "chosen_score": round(self.scores[self.case_id], 6),
            "scores": {cid: round(s, 6) for cid, s in shown},
        }
        if len(ranked) > 1:
            out["runner_up"] = ranked[1][0]
            out["margin_to_runner_up"] = round(ranked[0][1] - ranked[1][1], 6)
        return out


def oar_names(case: CaseLike) -> set[str]:
    """The catalogue OARs a case has (from its file names; a structure-set-only case is read)."""
    if case.mask_files:
        return set(case.mask_files)
    return set(case.read_masks(case.read_ct()))


def required_oars(cases: Sequence[CaseLike]) -> list[str]:
    """Every OAR found anywhere in the cohort, in catalogue order."""
    found: set[str] = set()
    for case in cases:
        found |= oar_names(case)
    return [name for name in BY_NAME if name in found]


def known_score(ct: Volume, spec: CanonicalSpec = DEFAULT_SPEC) -> float:
    """The known canonical volume of a CT in canonical voxels, bit for bit as ``training.data.choose_atlas``
    reads it from the cache (``imaging.canonical.known_mask``, stored as uint8 /255, summed in float32)."""
    known = known_mask(ct, to_canonical(ct, spec), MISSING_HU)
    stored = np.rint(known * 255).astype(np.uint8)
    return float((stored.astype(np.float32) / 255.0).sum())


def _coarse(a: np.ndarray, f: int = COARSE_FACTOR) -> np.ndarray:
    k, j, i = (n // f for n in a.shape)
    return a[: k * f, : j * f, : i * f].reshape(k, f, j, f, i, f).mean(axis=(1, 3, 5))


def coarse_canonical(ct: Volume, spec: CanonicalSpec = DEFAULT_SPEC) -> tuple[np.ndarray, np.ndarray]:
    """The canonical image and its known mask on the coarse grid of the typical rule."""
    can = to_canonical(ct, spec)
    known = known_mask(ct, can, MISSING_HU)
    return _coarse(can.image).astype(np.float32), _coarse(known).astype(np.float32)


def ncc(a: np.ndarray, b: np.ndarray, weight: np.ndarray) -> float | None:
    """Normalised cross correlation of two images on the voxels of ``weight`` (None with too few of them)."""
    w = weight.astype(bool)
    if w.sum() < MIN_OVERLAP_VOXELS:
        return None
    x = a[w].astype(np.float64)
    y = b[w].astype(np.float64)
    x -= x.mean()
    y -= y.mean()
    den = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / den) if den > 0 else None


def choose_atlas_case(
    cases: Sequence[CaseLike],
    rule: str = DEFAULT_RULE,
    required: Sequence[str] | None = None,
    progress: Callable[[str, float], None] | None = None,
) -> AtlasChoice:
    """The atlas case of a cohort by ``rule`` (see the module docstring); ``required`` overrides the OAR set."""
    if rule not in RULES:
        raise ValueError(f"unknown atlas rule {rule!r}: choose one of {', '.join(RULES)}")
    if not cases:
        raise ValueError("the cohort has no patient (no folder with a CT)")
    names = {case.case_id: oar_names(case) for case in cases}
    need = list(required) if required is not None else [n for n in BY_NAME if n in set().union(*names.values())]
    incomplete = {cid: [n for n in need if n not in have] for cid, have in names.items() if not set(need) <= have}
    complete = [case for case in cases if case.case_id not in incomplete]
    if not complete:
        raise ValueError(f"no patient of the cohort has every OAR ({', '.join(need)}): name the atlas case (--case)")
    scores: dict[str, float] = {}
    if rule == "least-truncated":
        for case in complete:
            scores[case.case_id] = known_score(case.read_ct())
            if progress:
                progress(case.case_id, scores[case.case_id])
        unit = "canonical voxels known (2.5 x 2.5 x 2.7 mm each)"
    else:
        coarse = {case.case_id: coarse_canonical(case.read_ct()) for case in cases}
        for case in complete:
            image, known = coarse[case.case_id]
            values = []
            for other, (image_o, known_o) in coarse.items():
                if other != case.case_id:
                    value = ncc(image, image_o, (known > 0.5) & (known_o > 0.5))
                    if value is not None:
                        values.append(value)
            scores[case.case_id] = float(np.mean(values)) if values else -1.0
            if progress:
                progress(case.case_id, scores[case.case_id])
        unit = "mean NCC with the other patients"
    chosen = min(scores, key=lambda cid: (-scores[cid], cid))  # the best score; ties to the first case id
    return AtlasChoice(chosen, rule, need, scores, len(cases), incomplete, unit)
