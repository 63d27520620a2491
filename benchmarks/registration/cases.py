"""The cohorts of the benchmark: each a list of patients (a CT and its own masks), one atlas and one model.

* OpenKBP validation (``../shared/data/openkbp/validation``, real patients with clinical OAR masks), the atlas and
  model of ``models/openkbp_proposed_cpu`` (atlas pt_96 of the training split). Skipped, saying so, when absent.
* The phantom test patients: by default the held-out ``test`` split of the phantom training cohort (``oarmorph
  phantom cohort --n 60 --seed 1``), rendered in memory by ``phantom.cohort.generate_patient`` (same seed, same
  patients; the split depends only on the ids), or any cohort folder (``--phantom-cohort DIR``; its ``test``
  split when it has a split.json). The atlas: ``models/phantom_proposed_cpu`` when it exists, else
  ``bundles/phantom`` (the learned methods are then skipped, saying why).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imaging.volume import Volume

REPO = Path(__file__).resolve().parents[2]
OPENKBP_MODEL = REPO / "models" / "openkbp_proposed_cpu"
PHANTOM_MODEL = REPO / "models" / "phantom_proposed_cpu"
PHANTOM_BUNDLE = REPO / "bundles" / "phantom"
PHANTOM_COHORT = {"n": 60, "seed": 1}  # the phantom model's training cohort (configs/phantom_cpu_dice.yaml)


def shared_data() -> Path:
    return Path(os.environ.get("OARMORPH_SHARED_DATA") or REPO.parent / "shared" / "data")


@dataclass
class BenchCase:
    case_id: str
    read_ct: Callable[[], Volume]
    read_truth: Callable[[Volume], dict[str, np.ndarray]]  # TG-263 name -> mask on the CT's grid


@dataclass
class Cohort:
    key: str  # "openkbp", "phantom"
    title: str
    cases: list[BenchCase]
    model_dir: Path | None  # the oarmorph model of this cohort (None: the learned methods are skipped)
    atlas_dir: Path | None = None  # the atlas bundle when there is no model
    note: str = ""


def cohort_folder_cases(folder: Path, limit: int | None, split: str | None = None) -> list[BenchCase]:
    from training.cohort import read_cohort

    if split and not (folder / "split.json").is_file():
        split = None
    cases = read_cohort(folder, split)
    return [BenchCase(c.case_id, c.read_ct, c.read_masks) for c in cases[:limit]]


def phantom_test_cases(limit: int | None, size: str = "small") -> list[BenchCase]:
    """The test split of the phantom training cohort, each patient rendered when read."""
    from phantom.cohort import case_id, generate_patient, split_cases

    n, seed = PHANTOM_COHORT["n"], PHANTOM_COHORT["seed"]
    ids = [case_id(seed, i) for i in range(n)]
    test = split_cases(ids, seed)["test"][:limit]
    rendered: dict[str, object] = {}

    def patient(cid: str):
        if cid not in rendered:
            rendered.clear()  # one patient in memory at a time
            rendered[cid] = generate_patient(ids.index(cid), seed, size)
        return rendered[cid]

    def truth(cid: str) -> dict[str, np.ndarray]:
        case = patient(cid)
        return {name: case.full_mask(name) for name in case.masks}

    return [
        BenchCase(cid, lambda cid=cid: patient(cid).ct, lambda ct, cid=cid: truth(cid))  # type: ignore[misc]
        for cid in test
    ]


def openkbp_cohort(limit: int | None, folder: Path | None = None, model_dir: Path = OPENKBP_MODEL) -> Cohort | str:
    folder = folder or shared_data() / "openkbp" / "validation"
    if not folder.is_dir():
        return f"{folder} is absent (OpenKBP is read from ../shared/data; OARMORPH_SHARED_DATA points elsewhere)"
    cases = cohort_folder_cases(folder, limit)
    return Cohort(
        "openkbp",
        f"OpenKBP validation ({len(cases)} real patient{'s' if len(cases) != 1 else ''}, clinical OAR masks)",
        cases,
        model_dir if model_dir.is_dir() else None,
        note=f"patients: {folder}",
    )


def phantom_cohort(
    limit: int | None, folder: Path | None = None, size: str = "small", model_dir: Path = PHANTOM_MODEL
) -> Cohort:
    if folder is not None:
        cases = cohort_folder_cases(folder, limit, split="test")
        where = f"cohort folder {folder}"
    else:
        cases = phantom_test_cases(limit, size)
        where = (
            f"the test split of `oarmorph phantom cohort --n {PHANTOM_COHORT['n']} --seed {PHANTOM_COHORT['seed']} "
            f"--size {size}` (the phantom model's held-out patients), rendered in memory"
        )
    model = model_dir if (model_dir / "card.json").is_file() else None
    return Cohort(
        "phantom",
        f"Phantom test patient{'s' if len(cases) != 1 else ''} ({len(cases)}, known ground truth, 36 OARs)",
        cases,
        model,
        atlas_dir=None if model else PHANTOM_BUNDLE,
        note=where,
    )
