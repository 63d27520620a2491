"""Write the phantom atlas and phantom cohorts to disk, in the cohort format training reads.

Per case ``DIR/<case_id>/``: ``ct/`` (a DICOM CT series), ``labels/<TG-263>.nii.gz`` (the true masks on the CT's
grid), ``rtstruct.dcm`` (the true contours, written by the imaging layer), ``deformation.nii.gz`` (patients only:
the true atlas-to-patient pull field, see below) and ``meta.json``. A cohort adds ``split.json``
(train/validation/test) and ``cohort.json``.

``deformation.nii.gz`` is an ITK displacement field (3-component float vector image, LPS millimetres, as
SimpleITK and ITK read it): a patient point p shows the atlas point ``p + d(p)``, ``d`` trilinear between grid
points and held at the border value outside. ``imaging.warp.physical_field_to_index_units`` turns it into the
form ``imaging.warp.warp_masks_to_patient`` applies.

Same seed, same bytes: UIDs derive from the seed, dates are fixed, noise comes from the seeded generator.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Iterator, Mapping
from functools import lru_cache
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from anatomy.catalogue import BY_NAME, OARS
from imaging.ct_writer import CtSeriesInfo, write_ct_series
from imaging.io import write_volume
from imaging.rtstruct import CtReference, RoiSpec, write_rtstruct
from imaging.volume import Volume
from oarmorph import __version__

from .atlas import AtlasPhantom, build_atlas
from .patient import PatientCase, anchors_of, draw_parameters, render_patient

CREATED = dt.datetime(2026, 1, 1, 12, 0, 0)
ATLAS_SPACING_MM = {"small": 2.0, "full": 1.0}
FIELD_SPACING_MM = {"small": 6.0, "full": 4.0}
SPLIT_FRACTIONS = (0.7, 0.15, 0.15)


@lru_cache(maxsize=2)
def atlas_for(size: str) -> AtlasPhantom:
    """The atlas at the resolution a cohort size needs (built once per process)."""
    return build_atlas(ATLAS_SPACING_MM[size])


class _FullMasks(Mapping):
    """Boxed masks seen as full-grid arrays, made one at a time (36 full 512^2 x 200 arrays would not fit)."""

    def __init__(self, boxes: dict[str, tuple[np.ndarray, tuple[int, int, int]]], shape: tuple[int, int, int]):
        self._boxes = boxes
        self._shape = shape

    def __getitem__(self, key: RoiSpec) -> np.ndarray:
        box, start = self._boxes[key.name]
        out = np.zeros(self._shape, np.uint8)
        out[tuple(slice(s, s + n) for s, n in zip(start, box.shape, strict=True))] = box
        return out

    def __iter__(self) -> Iterator[RoiSpec]:
        for oar in OARS:
            if oar.name in self._boxes:
                yield RoiSpec(oar.name, oar.color, oar.interpreted_type, oar.description)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _series_info(
    case_id: str, uid_seed: str, position: str, rng: np.random.Generator, description: str
) -> CtSeriesInfo:
    return CtSeriesInfo(
        patient_name=f"Phantom^{case_id}",
        patient_id=case_id,
        patient_sex=str(rng.choice(["M", "F"])),
        patient_birth_date=f"{int(rng.integers(1940, 1990))}0101",
        patient_position=position,
        study_date="20260101",
        study_time="120000",
        study_description="oarmorph phantom head and neck",
        series_description=description,
        manufacturer="oarmorph phantom",
        model_name=f"oarmorph {__version__} synthetic CT",
        uid_seed=uid_seed,
    )


def _write_case(
    out: Path,
    case_id: str,
    ct: Volume,
    boxes: dict[str, tuple[np.ndarray, tuple[int, int, int]]],
    info: CtSeriesInfo,
    meta: dict,
) -> None:
    shutil.rmtree(out, ignore_errors=True)
    (out / "labels").mkdir(parents=True)
    write_ct_series(ct, out / "ct", info)
    from imaging.dicom_ct import read_ct_series

    reference = CtReference.from_volume(read_ct_series(out / "ct"))  # the UIDs exactly as written
    masks = _FullMasks(boxes, ct.geometry.shape)
    for spec in masks:
        write_volume(Volume(masks[spec], ct.geometry), out / "labels" / f"{spec.name}.nii.gz")
    write_rtstruct(
        reference,
        masks,
        out / "rtstruct.dcm",
        label="TRUTH",
        series_description="oarmorph phantom: true contours",
        algorithm_name="oarmorph phantom",
        uid_seed=info.uid_seed,
        created=CREATED,
    )
    voxel_cc = ct.geometry.voxel_volume_mm3 / 1000.0
    meta["oar_volumes_cc"] = {name: round(float(b.sum()) * voxel_cc, 4) for name, (b, _) in boxes.items()}
    meta["ct_geometry"] = ct.geometry.to_dict()
    meta["oarmorph_version"] = __version__
    (out / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))


def write_atlas(out_dir: str | Path, spacing_mm: float = 1.0) -> Path:
    """The atlas as a case folder (CT series, 36 labels, RTSTRUCT, meta with landmarks)."""
    atlas = build_atlas(spacing_mm)
    out = Path(out_dir)
    boxes = {}
    g = atlas.ct.geometry
    for name, (mask, mg) in atlas.masks.items():
        start = np.rint(g.physical_to_index(np.asarray(mg.origin))[::-1]).astype(int)
        boxes[name] = (mask, tuple(int(v) for v in start))
    rng = np.random.default_rng(0)
    info = _series_info("ATLAS", "oarmorph-phantom-atlas", "HFS", rng, "oarmorph phantom atlas")
    meta = {
        "case_id": "ATLAS",
        "kind": "atlas",
        "spacing_mm": spacing_mm,
        "landmarks_lps_mm": {k: [round(float(v), 3) for v in p] for k, p in atlas.landmarks.items()},
    }
    _write_case(out, "ATLAS", atlas.ct.with_array(np.rint(atlas.ct.array)), boxes, info, meta)
    return out


def case_id(seed: int, index: int) -> str:
    return f"PH{seed:04d}-{index:03d}"


def generate_patient(index: int, seed: int, size: str) -> PatientCase:
    """Patient ``index`` of cohort ``seed``: independent of how many patients the cohort has."""
    atlas = atlas_for(size)
    rng = np.random.default_rng([seed, index])
    anatomy, scan = draw_parameters(rng, size)
    return render_patient(atlas, _anchors(size), anatomy, scan, rng, FIELD_SPACING_MM[size])


@lru_cache(maxsize=2)
def _anchors(size: str):
    return anchors_of(atlas_for(size))


def write_patient(case: PatientCase, out_dir: str | Path, seed: int, index: int, size: str) -> Path:
    cid = case_id(seed, index)
    out = Path(out_dir) / cid
    rng = np.random.default_rng([seed, index, 1])
    info = _series_info(cid, f"oarmorph-phantom-{seed}-{index}", case.scan.patient_position, rng, "CT head and neck")
    meta = {
        "case_id": cid,
        "kind": "patient",
        "seed": seed,
        "index": index,
        "size": size,
        "anatomy": case.anatomy.to_dict(),
        "scan": case.scan.to_dict(),
        "deformation": {
            "file": "deformation.nii.gz",
            "convention": "ITK displacement field, LPS mm, pull: patient point p shows atlas point p + d(p)",
            "grid": case.field.geometry.to_dict(),
        },
        **case.meta,
    }
    _write_case(out, cid, case.ct, case.masks, info, meta)
    sitk.WriteImage(case.field.to_sitk(), str(out / "deformation.nii.gz"), True)
    return out


def split_cases(ids: list[str], seed: int) -> dict[str, list[str]]:
    order = list(np.random.default_rng([seed, 999]).permutation(len(ids)))
    n = len(ids)
    n_val = max(1, round(n * SPLIT_FRACTIONS[1])) if n >= 3 else 0
    n_test = max(1, round(n * SPLIT_FRACTIONS[2])) if n >= 3 else 0
    n_train = n - n_val - n_test
    pick = lambda a, b: sorted(ids[i] for i in order[a:b])  # noqa: E731
    return {"train": pick(0, n_train), "validation": pick(n_train, n_train + n_val), "test": pick(n_train + n_val, n)}


def generate_cohort(n: int, seed: int, out_dir: str | Path, size: str = "small", progress=None) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids = []
    for index in range(n):
        case = generate_patient(index, seed, size)
        write_patient(case, out, seed, index, size)
        ids.append(case_id(seed, index))
        if progress:
            progress(index, ids[-1], case)
    split = split_cases(ids, seed)
    (out / "split.json").write_text(json.dumps(split, indent=2))
    manifest = {
        "kind": "oarmorph phantom cohort",
        "seed": seed,
        "size": size,
        "cases": ids,
        "atlas_spacing_mm": ATLAS_SPACING_MM[size],
        "oars": [o.name for o in OARS if o.name in BY_NAME],
        "oarmorph_version": __version__,
    }
    (out / "cohort.json").write_text(json.dumps(manifest, indent=2))
    return manifest
