"""Read a training cohort: one folder per patient, a CT and whatever OAR masks that patient has.

Accepted per patient folder (names mapped onto the catalogue through its aliases; unknown names are skipped
and reported):
    ct/ (a DICOM series) or ct.nii.gz / ct.nrrd          the CT
    labels/<name>.nii.gz or <name>.nii.gz beside the CT  one binary mask per OAR, on the CT's grid
    rtstruct.dcm                                         or the OARs as an RT Structure Set
OpenKBP (``../shared/data/openkbp/{train,validation}/pt_N``) and the phantom cohorts are both in this format.
A cohort's ``split.json`` (train / validation / test lists of folder names), when present, names the splits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from anatomy.catalogue import UnknownStructureError, resolve
from imaging.io import VOLUME_FORMATS, read_ct, read_mask
from imaging.volume import Volume

CT_NAMES = ("ct", "CT", "image")


@dataclass
class CohortCase:
    case_id: str
    folder: Path
    ct_source: Path
    mask_files: dict[str, Path] = field(default_factory=dict)  # TG-263 name -> file
    rtstruct: Path | None = None
    skipped_names: list[str] = field(default_factory=list)

    def read_ct(self) -> Volume:
        return read_ct(self.ct_source)

    def read_masks(self, ct: Volume) -> dict[str, np.ndarray]:
        """The OAR masks on the CT's grid (uint8), by TG-263 name."""
        if self.mask_files:
            return {name: read_mask(path, reference=ct.geometry).array for name, path in self.mask_files.items()}
        if self.rtstruct is not None:
            from imaging.rtstruct import CtReference, read_rtstruct

            rois = read_rtstruct(self.rtstruct, CtReference.from_volume(ct)).rois
            out = {}
            for roi in rois.values():
                try:
                    out[resolve(roi.name).name] = roi.mask
                except UnknownStructureError:
                    self.skipped_names.append(roi.name)
            return out
        return {}


def _strip(name: str) -> str:
    for suffix in sorted(VOLUME_FORMATS, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _find_ct(folder: Path) -> Path | None:
    if (folder / "ct").is_dir():
        return folder / "ct"
    for stem in CT_NAMES:
        for suffix in VOLUME_FORMATS:
            if (folder / f"{stem}{suffix}").is_file():
                return folder / f"{stem}{suffix}"
    return None


def read_case(folder: str | Path) -> CohortCase:
    folder = Path(folder)
    ct = _find_ct(folder)
    if ct is None:
        raise FileNotFoundError(f"{folder}: no CT (expected ct/ with DICOM, or ct.nii.gz / ct.nrrd)")
    case = CohortCase(folder.name, folder, ct)
    mask_dir = folder / "labels" if (folder / "labels").is_dir() else folder
    for path in sorted(mask_dir.iterdir()):
        if path == ct or not any(path.name.lower().endswith(s) for s in VOLUME_FORMATS):
            continue
        name = _strip(path.name)
        if name in CT_NAMES:
            continue
        try:
            oar = resolve(name).name
        except UnknownStructureError:
            case.skipped_names.append(name)
            continue
        case.mask_files[oar] = path
    if not case.mask_files and (folder / "rtstruct.dcm").is_file():
        case.rtstruct = folder / "rtstruct.dcm"
    return case


def read_cohort(root: str | Path, split: str | None = None) -> list[CohortCase]:
    """Every patient folder under ``root`` (or those of ``split`` in ``root/split.json``), in name order."""
    root = Path(root)
    names = None
    if split is not None and (root / "split.json").is_file():
        names = set(json.loads((root / "split.json").read_text())[split])
    folders = [p for p in sorted(root.iterdir(), key=_natural_key) if p.is_dir() and _find_ct(p) is not None]
    return [read_case(p) for p in folders if names is None or p.name in names]


def _natural_key(path: Path) -> tuple:
    import re

    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name))
