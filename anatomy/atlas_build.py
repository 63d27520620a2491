"""Build an atlas bundle from a cohort (one patient's CT and OARs, chosen by a documented rule), rebuild it from a
recipe, and verify it. Torch-free; the cohort's cases come from the caller (``training.cohort.read_cohort``).

A bundle built from third-party data that may not be redistributed (OpenKBP) ships as ``RECIPE.json`` only:
where the cohort lies (relative to the shared data folder), which case and rule, and the sha256 the rebuilt bundle
must have. ``write_bundle`` is deterministic (SimpleITK's gzip header carries no time stamp, the NIfTI header no
date), so the same cohort gives the same bytes, hence the same sha256, with the same SimpleITK/zlib. The recipe
also records a *content* digest (arrays, data types and geometries, not the compressed bytes), which tells a
changed compressor from changed data.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from imaging.io import read_volume

from .atlas_choice import DEFAULT_RULE, RULES, AtlasChoice, CaseLike, choose_atlas_case
from .bundle import AtlasBundle, BundleIntegrityError, load_bundle, write_bundle
from .catalogue import BY_NAME

RECIPE_NAME = "RECIPE.json"
RECIPE_FORMAT = 1


class RecipeMismatchError(BundleIntegrityError):
    code = "ATLAS_RECIPE_MISMATCH"


class BundleMissingError(BundleIntegrityError):
    code = "ATLAS_BUNDLE_MISSING"


def build_date() -> str:
    """UTC time of the build (``SOURCE_DATE_EPOCH`` fixes it, for reproducible provenance)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    now = dt.datetime.fromtimestamp(int(epoch), dt.UTC) if epoch else dt.datetime.now(dt.UTC)
    return now.replace(microsecond=0).isoformat()


def licence_note(cohort: Path) -> dict:
    """The licence files found in the cohort folder or the two folders above it (first line of each)."""
    found = []
    for folder in (cohort, cohort.parent, cohort.parent.parent):
        for path in sorted(folder.glob("LICEN[CS]E*")):
            if path.is_file():
                first = next((ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()), "")
                found.append({"file": os.path.relpath(path, cohort), "first_line": first})
    return {
        "note": "the atlas CT and masks are one patient's data from the source cohort: the source's licence and "
        "terms apply to this bundle",
        "licence_files": found,
    }


def shared_relative(cohort: Path) -> str | None:
    """The cohort's path relative to the shared data folder (``$OARMORPH_SHARED_DATA`` or ``../shared/data``)."""
    root = os.environ.get("OARMORPH_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
    try:
        return Path(cohort).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return None


def build_from_cohort(
    cases: Sequence[CaseLike],
    cohort: str | Path,
    out_dir: str | Path,
    *,
    rule: str | None = None,
    case_id: str | None = None,
    name: str | None = None,
    licence: str | None = None,
    progress: Callable[[str, float], None] | None = None,
) -> tuple[AtlasBundle, AtlasChoice | None]:
    """Choose the atlas case (``rule``, default least-truncated) or take ``case_id``, and write its bundle."""
    cohort = Path(cohort)
    if case_id is not None and rule is not None:
        raise ValueError("give either a case (--case) or a rule (--rule), not both")
    choice = None
    if case_id is None:
        choice = choose_atlas_case(cases, rule or DEFAULT_RULE, progress=progress)
        case_id = choice.case_id
    by_id = {case.case_id: case for case in cases}
    if case_id not in by_id:
        raise ValueError(f"the cohort {cohort} has no case {case_id!r}")
    case = by_id[case_id]
    ct = case.read_ct()
    masks = case.read_masks(ct)
    aliases = {Path(p).name: oar for oar, p in sorted(case.mask_files.items())}
    recipe = read_recipe(out_dir)
    if licence:
        licence_block = {"note": licence}
    elif recipe is not None and "licence" in recipe:
        licence_block = recipe["licence"]  # a rebuild keeps the recipe's note
    else:
        licence_block = licence_note(cohort)
    provenance = {
        "source": {
            "cohort": str(cohort),
            "cohort_in_shared_data": shared_relative(cohort),
            "case_id": case_id,
            "ct_file": Path(case.ct_source).name if hasattr(case, "ct_source") else None,
            "mask_files_to_catalogue": aliases,
            "skipped_names": list(getattr(case, "skipped_names", [])),
        },
        "choice": choice.summary()
        if choice
        else {"rule": "named", "rule_description": "the atlas case was named by the user (--case)"},
        "catalogue_names": [n for n in BY_NAME if n in masks],
        "ct_geometry": ct.geometry.to_dict(),
        "date": build_date(),
        "licence": licence_block,
        "built_by": "oarmorph atlas build",
    }
    if recipe is not None and recipe.get("case_id") not in (None, case_id):
        raise RecipeMismatchError(
            f"{Path(out_dir) / RECIPE_NAME} names case {recipe['case_id']}, this build chose {case_id}: "
            "is it the same cohort?"
        )
    label = name or f"atlas {case_id} of {cohort.parent.name}/{cohort.name}"
    bundle = write_bundle(out_dir, label, ct, masks, provenance)
    return bundle, choice


def content_digest(bundle_dir: str | Path) -> str:
    """sha256 of what the bundle holds (every file's array bytes, data type and geometry), not of its bytes."""
    folder = Path(bundle_dir)
    meta = json.loads((folder / "bundle.json").read_text())
    h = hashlib.sha256()
    for rel in sorted(meta["files"]):
        vol = read_volume(folder / rel)
        arr = np.ascontiguousarray(vol.array)
        h.update(rel.encode())
        h.update(str(arr.dtype).encode() + str(arr.shape).encode())
        h.update(json.dumps(vol.geometry.to_dict(), sort_keys=True).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def read_recipe(bundle_dir: str | Path) -> dict | None:
    path = Path(bundle_dir) / RECIPE_NAME
    return json.loads(path.read_text()) if path.is_file() else None


def make_recipe(bundle: AtlasBundle, command: str) -> dict:
    """The recipe of a bundle built from a cohort (written beside it with ``--write-recipe``)."""
    import SimpleITK as sitk

    source = bundle.provenance["source"]
    choice = bundle.provenance["choice"]
    return {
        "format": RECIPE_FORMAT,
        "what": "how to rebuild an atlas bundle from data that may not be copied into the repository: run "
        "`command` from the repository root with the shared data folder beside it; `oarmorph atlas verify` then "
        "checks the result against `sha256` (file bytes) and, on a mismatch, `content_sha256` (arrays and "
        "geometries) tells a changed compressor from changed data",
        "cohort_in_shared_data": source["cohort_in_shared_data"],
        "case_id": source["case_id"],
        "rule": choice["rule"],
        "rule_description": choice.get("rule_description"),
        "oars": bundle.oars,
        "sha256": bundle.sha256,
        "content_sha256": content_digest(bundle.path),
        "command": command,
        "licence": bundle.provenance["licence"],
        "built_with": {"SimpleITK": sitk.Version.VersionString()},
    }


def verify_bundle(bundle_dir: str | Path, expected_sha256: str | None = None) -> tuple[AtlasBundle, dict | None]:
    """Load a bundle, check every file's sha256, and the bundle sha256 against ``expected_sha256`` and against
    the folder's RECIPE.json when there is one. Returns the bundle and the recipe."""
    folder = Path(bundle_dir)
    recipe = read_recipe(folder)
    if not (folder / "bundle.json").is_file():
        hint = f": rebuild it with `{recipe['command']}`" if recipe else ""
        raise BundleMissingError(f"{folder} holds no atlas bundle (no bundle.json){hint}")
    bundle = load_bundle(folder, expected_sha256)
    if recipe is not None and recipe["sha256"] != bundle.sha256:
        same = recipe.get("content_sha256") == content_digest(folder)
        why = (
            "the content is the same, the compressed bytes differ (another SimpleITK/zlib than "
            f"{recipe.get('built_with', {}).get('SimpleITK', '?')}?)"
            if same
            else "the content differs (another cohort or case?)"
        )
        raise RecipeMismatchError(
            f"atlas bundle {folder} has sha256 {bundle.sha256[:12]}..., its RECIPE.json expects "
            f"{recipe['sha256'][:12]}...: {why}"
        )
    return bundle, recipe


def oar_volumes_cc(bundle: AtlasBundle) -> dict[str, float]:
    return {
        oar: round(float(mask.sum()) * geometry.voxel_volume_mm3 / 1000.0, 4)
        for oar, (mask, geometry) in bundle.masks.items()
    }


__all__ = [
    "RULES",
    "BundleMissingError",
    "RecipeMismatchError",
    "build_from_cohort",
    "content_digest",
    "make_recipe",
    "oar_volumes_cc",
    "read_recipe",
    "verify_bundle",
]
