"""Atlas bundles: the atlas CT, one mask per OAR (catalogue names), provenance, and a sha256 of it all.

Layout of a bundle folder:
    bundle.json            name, version, OAR list, provenance, per-file sha256 and the bundle sha256
    ct.nii.gz              the atlas CT (HU)
    masks/<TG-263>.nii.gz  each OAR cropped to its bounding box (its own geometry: the imaging layer samples it
                           at its own resolution, so a crop loses nothing and keeps the bundle small)

The bundle sha256 is the sha256 of the sorted "name sha256" lines of its data files: a model bundle records it,
and loading refuses an atlas whose content changed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imaging.io import read_volume, write_volume
from imaging.volume import Geometry, Volume
from imaging.warp import crop_to_content

from .catalogue import BY_NAME

BUNDLE_FORMAT = 1


class BundleIntegrityError(Exception):
    code = "ATLAS_BUNDLE_CORRUPT"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class AtlasBundle:
    name: str
    ct: Volume
    masks: dict[str, tuple[np.ndarray, Geometry]]  # TG-263 name -> (cropped uint8 mask, its geometry)
    sha256: str
    provenance: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def oars(self) -> list[str]:
        return list(self.masks)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _digest(files: dict[str, str]) -> str:
    lines = "".join(f"{name} {sha}\n" for name, sha in sorted(files.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def write_bundle(
    out_dir: str | Path, name: str, ct: Volume, masks: dict[str, np.ndarray], provenance: dict | None = None
) -> AtlasBundle:
    """Write a bundle from a CT and full-grid masks keyed by TG-263 names (in catalogue order)."""
    unknown = [n for n in masks if n not in BY_NAME]
    if unknown:
        raise ValueError(f"not catalogue names: {unknown}")
    out = Path(out_dir)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    for stale in (out / "masks").glob("*.nii.gz"):  # a rebuild must not hash the masks of an earlier build
        stale.unlink()
    write_volume(ct.with_array(ct.array.astype(np.int16)), out / "ct.nii.gz")
    cropped: dict[str, tuple[np.ndarray, Geometry]] = {}
    order = [n for n in BY_NAME if n in masks]
    for oar in order:
        crop = crop_to_content(np.asarray(masks[oar], np.uint8), ct.geometry, pad=2)
        if crop is None:
            raise ValueError(f"the mask of {oar} is empty")
        cropped[oar] = crop
        write_volume(Volume(*crop), out / "masks" / f"{oar}.nii.gz")
    files = {str(p.relative_to(out)): _sha256(p) for p in sorted(out.rglob("*.nii.gz"))}
    sha = _digest(files)
    meta = {
        "format": BUNDLE_FORMAT,
        "name": name,
        "oars": order,
        "provenance": provenance or {},
        "files": files,
        "sha256": sha,
    }
    (out / "bundle.json").write_text(json.dumps(meta, indent=2))
    return AtlasBundle(name, ct, cropped, sha, provenance or {}, out)


def load_bundle(path: str | Path, expected_sha256: str | None = None) -> AtlasBundle:
    """Load and verify a bundle: every file's sha256 and, if given, the bundle's expected sha256."""
    folder = Path(path)
    meta = json.loads((folder / "bundle.json").read_text())
    for rel, sha in meta["files"].items():
        if _sha256(folder / rel) != sha:
            raise BundleIntegrityError(f"atlas bundle {folder}: {rel} does not match its recorded sha256")
    if _digest(meta["files"]) != meta["sha256"]:
        raise BundleIntegrityError(f"atlas bundle {folder}: the file list does not match the bundle sha256")
    if expected_sha256 is not None and meta["sha256"] != expected_sha256:
        raise BundleIntegrityError(
            f"atlas bundle {folder} has sha256 {meta['sha256'][:12]}..., the model was trained with "
            f"{expected_sha256[:12]}...: they do not belong together"
        )
    ct = read_volume(folder / "ct.nii.gz")
    ct = ct.with_array(ct.array.astype(np.float32))
    masks = {}
    for oar in meta["oars"]:
        vol = read_volume(folder / "masks" / f"{oar}.nii.gz")
        masks[oar] = (vol.array.astype(np.uint8), vol.geometry)
    return AtlasBundle(meta["name"], ct, masks, meta["sha256"], meta.get("provenance", {}), folder)
