"""DICOM RT Structure Sets: binary masks on a CT grid to an RTSTRUCT and back.

Why it is written on pydicom directly: the structure set is what a planning system imports, and the defects of
generic helpers reach patients' plans: outlines traced through boundary voxel centres (every organ half a voxel
too small), ContourData numbers longer than the 16 characters a DS allows (some planning systems refuse the
file), missing RT ROI Interpreted Type, default header values. Here outlines run along the mask boundary
(``imaging.contours``), every number is written with at most 3 decimals, and the header is complete.

The imaging layer knows no OAR catalogue: callers say what each mask is with a ``RoiSpec``. The CT is known
through a ``CtReference`` (geometry and UIDs) so that writing needs no pixel data.

Conventions:
* Written files use Implicit VR Little Endian, the DICOM default transfer syntax every system reads: in explicit
  VR a DS value is limited to 64 KiB, which the ContourData of a large outline can exceed.
* An empty mask gives an ROI that is listed (Structure Set ROI, RT ROI Observations, ROI Contour with its colour)
  but has no Contour Sequence: the planning system shows the organ as present and not contoured.
* Reading fills each slice's contours with the even-odd rule (holes are separate contours); a contour must lie in
  the plane of one CT slice, within a quarter of the slice spacing.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.charset import default_encoding, python_encoding
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ImplicitVRLittleEndian, RTStructureSetStorage

from .contours import even_odd_fill_window, mask_slice_to_polygons
from .errors import GeometryMismatchError, MissingAttributeError, RtStructError, RtStructReferenceError
from .uids import new_uid
from .volume import Geometry, Volume

#: Referenced SOP Class of the RT Referenced Study Sequence (Detached Study Management, as the standard requires).
DETACHED_STUDY_MANAGEMENT_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"

#: Patient and General Study attributes copied from the CT (all type 2: written, empty when unknown).
PATIENT_STUDY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
)

#: Colours of ROIs given by name only (distinct, readable on a grey CT).
DEFAULT_COLORS = (
    (255, 0, 0),
    (0, 200, 0),
    (0, 0, 255),
    (255, 200, 0),
    (255, 0, 255),
    (0, 220, 220),
    (255, 128, 0),
    (128, 0, 255),
    (0, 128, 255),
    (128, 255, 0),
    (255, 0, 128),
    (0, 255, 128),
)

_CODE_STRING = re.compile(r"^[A-Z0-9_ ]{1,16}$")
_CONTOUR_DATA = Tag(0x3006, 0x0050)
_CLOSED_TYPES = ("CLOSED_PLANAR", "CLOSEDPLANAR_XOR")  # the XOR variant states the even-odd rule explicitly


def _package_version() -> str:
    try:
        return metadata.version("oarmorph")
    except metadata.PackageNotFoundError:
        return "unknown"


# --- what a structure set refers to and holds -----------------------------------------------------------


@dataclass(frozen=True)
class CtReference:
    """The CT a structure set belongs to: its grid, its slices' SOP Instance UIDs and its patient and study."""

    geometry: Geometry
    sop_instance_uids: tuple[str, ...]  # one per slice k, in array order
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    dicom: Mapping[str, Any] = field(default_factory=dict)  # patient and study attributes by keyword

    def __post_init__(self) -> None:
        object.__setattr__(self, "sop_instance_uids", tuple(str(u) for u in self.sop_instance_uids))
        if len(self.sop_instance_uids) != self.geometry.shape[0]:
            raise GeometryMismatchError(
                f"the CT has {self.geometry.shape[0]} slices but {len(self.sop_instance_uids)} SOP Instance UIDs",
                slices=self.geometry.shape[0],
                uids=len(self.sop_instance_uids),
            )

    @classmethod
    def from_volume(cls, volume: Volume) -> CtReference:
        """From a CT ``Volume`` read from DICOM (its ``meta`` holds the UIDs); the voxels are not kept."""
        meta = volume.meta
        required = (
            "sop_instance_uids",
            "sop_class_uid",
            "study_instance_uid",
            "series_instance_uid",
            "frame_of_reference_uid",
        )
        missing = [key for key in required if not meta.get(key)]
        if missing:
            raise MissingAttributeError(
                f"the CT volume does not carry the DICOM references a structure set needs: {', '.join(missing)}",
                missing=missing,
            )
        return cls(
            geometry=volume.geometry,
            sop_instance_uids=tuple(meta["sop_instance_uids"]),
            sop_class_uid=str(meta["sop_class_uid"]),
            study_instance_uid=str(meta["study_instance_uid"]),
            series_instance_uid=str(meta["series_instance_uid"]),
            frame_of_reference_uid=str(meta["frame_of_reference_uid"]),
            dicom=dict(meta.get("dicom") or {}),
        )


@dataclass(frozen=True)
class RoiSpec:
    """What a mask is, as the planning system will show it."""

    name: str
    color: tuple[int, int, int]
    interpreted_type: str = "ORGAN"  # RT ROI Interpreted Type: ORGAN, AVOIDANCE, EXTERNAL, PTV, ...
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 64 or "\\" in self.name or self.name != self.name.strip():
            raise RtStructError(
                f"invalid ROI name {self.name!r}: 1 to 64 characters, no backslash, no surrounding spaces",
                name=self.name,
            )
        color = tuple(int(c) for c in self.color)
        if len(color) != 3 or not all(0 <= c <= 255 for c in color):
            raise RtStructError(f"ROI {self.name!r}: colour must be 3 integers in 0..255, got {self.color}")
        object.__setattr__(self, "color", color)
        if not _CODE_STRING.match(self.interpreted_type):
            raise RtStructError(
                f"ROI {self.name!r}: interpreted type {self.interpreted_type!r} is not a DICOM code string",
                name=self.name,
            )
        if len(self.description) > 1024:
            raise RtStructError(f"ROI {self.name!r}: description over 1024 characters")


@dataclass
class RoiMask:
    """One ROI of a structure set, filled on the CT grid (``uint8`` 0/1, array ``[k, j, i]``)."""

    name: str
    number: int
    color: tuple[int, int, int] | None
    interpreted_type: str
    mask: np.ndarray
    contour_count: int = 0


@dataclass
class StructureSet:
    """What ``read_rtstruct`` found: the ROIs by name and what it skipped, in sentences."""

    rois: dict[str, RoiMask]
    warnings: list[str]
    label: str = ""
    frame_of_reference_uid: str = ""
    series_instance_uid: str = ""


# --- writing -------------------------------------------------------------------------------------------


def write_rtstruct(
    ct: CtReference,
    masks: Mapping[RoiSpec | str, np.ndarray],
    path: str | Path | None = None,
    *,
    label: str = "OARMORPH",
    series_description: str = "oarmorph auto-contours (unapproved)",
    series_number: int = 901,
    manufacturer: str = "oarmorph",
    model_name: str = "oarmorph",
    software_versions: Sequence[str] | None = None,
    algorithm_name: str = "oarmorph",
    algorithm_version: str | None = None,
    uid_seed: str | None = None,
    created: _dt.datetime | None = None,
) -> Dataset:
    """The RT Structure Set of ``masks`` (each on the CT grid ``[k, j, i]``), also written to ``path`` if given.

    Keys are ``RoiSpec`` or plain names (colour from ``DEFAULT_COLORS``, type ORGAN); ROI numbers follow the
    mapping's order from 1. ``uid_seed`` derives the new UIDs from seed material (reproducible files; pass
    ``created`` too for identical bytes). A mask of another shape than the CT raises ``GeometryMismatchError``.
    """
    specs = _roi_specs(masks)
    geometry = ct.geometry
    for spec, mask in zip(specs, masks.values(), strict=True):
        if tuple(np.shape(mask)) != geometry.shape:
            raise GeometryMismatchError(
                f"mask of ROI {spec.name!r} has shape {tuple(np.shape(mask))}, the CT grid is {geometry.shape}",
                roi=spec.name,
                mask_shape=list(np.shape(mask)),
                ct_shape=list(geometry.shape),
            )
    if not label or len(label) > 16 or "\\" in label:
        raise RtStructError(f"structure set label {label!r}: 1 to 16 characters, no backslash")

    version = _package_version()
    algorithm_version = algorithm_version or version
    if software_versions is None:
        software_versions = [f"oarmorph {version}"]
        if algorithm_name != "oarmorph":
            software_versions.append(f"{algorithm_name} {algorithm_version}")
    now = created or _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    uid = (lambda *parts: new_uid(uid_seed, *parts)) if uid_seed is not None else (lambda *parts: new_uid())
    sop_instance_uid = uid("rtstruct", "sop")
    series_instance_uid = uid("rtstruct", "series")

    file_meta = FileMetaDataset()
    file_meta.MediaStorageSOPClassUID = RTStructureSetStorage
    file_meta.MediaStorageSOPInstanceUID = sop_instance_uid
    file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    file_meta.ImplementationVersionName = f"OARMORPH_{version}"[:16]

    ds = Dataset()
    ds.file_meta = file_meta
    # SOP Common
    ds.SpecificCharacterSet = _character_set(ct.dicom, specs)
    ds.InstanceCreationDate = date
    ds.InstanceCreationTime = time
    ds.SOPClassUID = RTStructureSetStorage
    ds.SOPInstanceUID = sop_instance_uid
    # Patient and General Study, from the CT
    for keyword in PATIENT_STUDY_KEYWORDS:
        value = ct.dicom.get(keyword)
        setattr(ds, keyword, "" if value is None else value)
    ds.StudyInstanceUID = ct.study_instance_uid
    # Frame of Reference, the CT's (dicom3tools' IOD tables require the module)
    ds.FrameOfReferenceUID = ct.frame_of_reference_uid
    ds.PositionReferenceIndicator = ct.dicom.get("PositionReferenceIndicator") or ""
    # RT Series
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = series_instance_uid
    ds.SeriesNumber = series_number
    ds.SeriesDate = date
    ds.SeriesTime = time
    ds.SeriesDescription = series_description
    ds.OperatorsName = ""
    # General Equipment
    ds.Manufacturer = manufacturer
    ds.ManufacturerModelName = model_name
    ds.SoftwareVersions = list(software_versions)
    # Structure Set
    ds.StructureSetLabel = label
    ds.StructureSetName = label
    ds.StructureSetDescription = f"Automatic contours by {algorithm_name} {algorithm_version}; review before use"
    ds.InstanceNumber = 1
    ds.StructureSetDate = date
    ds.StructureSetTime = time
    ds.ReferencedFrameOfReferenceSequence = [_referenced_frame_of_reference(ct)]
    ds.StructureSetROISequence = [
        _structure_set_roi(number, spec, ct.frame_of_reference_uid, f"{algorithm_name} {algorithm_version}")
        for number, spec in enumerate(specs, start=1)
    ]
    # ROI Contour
    ds.ROIContourSequence = [
        _roi_contour(number, spec, mask, ct)
        for number, (spec, mask) in enumerate(zip(specs, masks.values(), strict=True), start=1)
    ]
    # RT ROI Observations
    ds.RTROIObservationsSequence = [_roi_observation(number, spec) for number, spec in enumerate(specs, start=1)]
    # Approval: automatic contours are never approved by the software that made them
    ds.ApprovalStatus = "UNAPPROVED"

    if path is not None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        pydicom.dcmwrite(target, ds, enforce_file_format=True)
    return ds


def _roi_specs(masks: Mapping[RoiSpec | str, np.ndarray]) -> list[RoiSpec]:
    specs = []
    for n, key in enumerate(masks):
        spec = key if isinstance(key, RoiSpec) else RoiSpec(str(key), DEFAULT_COLORS[n % len(DEFAULT_COLORS)])
        specs.append(spec)
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RtStructError(f"ROI names must be unique, repeated: {', '.join(duplicates)}", names=duplicates)
    return specs


def _character_set(dicom: Mapping[str, Any], specs: list[RoiSpec]) -> str:
    """The CT's character set when every text of the structure set fits in it; else Latin-1 or UTF-8.

    Texts are held decoded, so changing the character set loses nothing: an ROI name in Greek under a Latin-1
    CT gets a UTF-8 structure set rather than question marks.
    """
    given = dicom.get("SpecificCharacterSet")
    given = "\\".join(given) if isinstance(given, list | tuple) else str(given or "")
    texts = "".join([str(dicom.get(k) or "") for k in PATIENT_STUDY_KEYWORDS] + [s.name + s.description for s in specs])
    terms = [t.strip() for t in given.split("\\")] if given else []
    if len(terms) > 1:  # ISO 2022 code extensions: pydicom re-encodes decoded text with them
        return given
    candidates = ([terms[0]] if terms else []) + ["ISO_IR 100"]
    for term in candidates:
        codec = "ascii" if term in ("", "ISO_IR 6") else python_encoding.get(term)
        if codec is None:
            continue
        try:
            texts.encode(codec)
        except UnicodeEncodeError:
            continue
        return term or "ISO_IR 100"
    return "ISO_IR 192"


def _referenced_frame_of_reference(ct: CtReference) -> Dataset:
    images = []
    for sop_uid in ct.sop_instance_uids:
        if not sop_uid:  # a slice the reader interpolated into a gap: no image to refer to
            continue
        image = Dataset()
        image.ReferencedSOPClassUID = ct.sop_class_uid
        image.ReferencedSOPInstanceUID = sop_uid
        images.append(image)
    series = Dataset()
    series.SeriesInstanceUID = ct.series_instance_uid
    series.ContourImageSequence = images
    study = Dataset()
    study.ReferencedSOPClassUID = DETACHED_STUDY_MANAGEMENT_SOP_CLASS
    study.ReferencedSOPInstanceUID = ct.study_instance_uid
    study.RTReferencedSeriesSequence = [series]
    frame = Dataset()
    frame.FrameOfReferenceUID = ct.frame_of_reference_uid
    frame.RTReferencedStudySequence = [study]
    return frame


def _structure_set_roi(number: int, spec: RoiSpec, frame_of_reference_uid: str, generator: str) -> Dataset:
    roi = Dataset()
    roi.ROINumber = number
    roi.ReferencedFrameOfReferenceUID = frame_of_reference_uid
    roi.ROIName = spec.name
    if spec.description:
        roi.ROIDescription = spec.description
    roi.ROIGenerationAlgorithm = "AUTOMATIC"
    roi.ROIGenerationDescription = generator[:64]
    return roi


def _roi_observation(number: int, spec: RoiSpec) -> Dataset:
    observation = Dataset()
    observation.ObservationNumber = number
    observation.ReferencedROINumber = number
    observation.ROIObservationLabel = spec.name[:16].strip()
    observation.RTROIInterpretedType = spec.interpreted_type
    observation.ROIInterpreter = ""
    return observation


def _roi_contour(number: int, spec: RoiSpec, mask: np.ndarray, ct: CtReference) -> Dataset:
    roi_contour = Dataset()
    roi_contour.ROIDisplayColor = list(spec.color)
    items = []
    for k, polygons in _outlines_by_slice(mask):
        physical = ct.geometry.index_to_physical(
            np.concatenate([np.column_stack([p, np.full(len(p), float(k))]) for p in polygons])
        )
        texts = _format_decimal_strings(physical.ravel())
        start = 0
        for polygon in polygons:
            n = len(polygon)
            item = Dataset()
            if ct.sop_instance_uids[k]:  # (type 3: a contour on an interpolated slice refers to no image)
                image = Dataset()
                image.ReferencedSOPClassUID = ct.sop_class_uid
                image.ReferencedSOPInstanceUID = ct.sop_instance_uids[k]
                item.ContourImageSequence = [image]
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = n
            item.ContourNumber = len(items) + 1
            item[_CONTOUR_DATA] = _raw_decimal_strings(texts[start : start + 3 * n])
            # pydicom writes raw elements as they are only when the item says it is already in the file's encoding
            item.set_original_encoding(True, True, default_encoding)
            start += 3 * n
            items.append(item)
    if items:  # ContourSequence is type 3: an empty mask has none
        roi_contour.ContourSequence = items
    roi_contour.ReferencedROINumber = number
    return roi_contour


def _outlines_by_slice(mask: np.ndarray) -> list[tuple[int, list[np.ndarray]]]:
    """``(k, polygons in (i, j) of the full slice)`` for every non-empty slice, looking only inside the mask's box."""
    mask = np.asarray(mask)
    box = _bounding_box(mask)
    if box is None:
        return []
    (k0, j0, i0), (k1, j1, i1) = box
    region = np.asarray(mask[k0:k1, j0:j1, i0:i1])
    offset = np.array([i0, j0], dtype=np.float64)
    outlines = []
    for dk in range(region.shape[0]):
        plane = region[dk]
        if not plane.any():
            continue
        outlines.append((k0 + dk, [p + offset for p in mask_slice_to_polygons(plane)]))
    return outlines


def _bounding_box(mask: np.ndarray) -> tuple[tuple[int, int, int], tuple[int, int, int]] | None:
    """``((k0, j0, i0), (k1, j1, i1))`` of the non-zero voxels, or ``None``; cheap on a mostly empty grid.

    Masks are mostly empty grids (a lens on a 512x512x200 CT): read the whole grid once, 8 bytes at a time,
    for the slice range, then project only that slab.
    """
    nk, nj, ni = mask.shape
    if mask.dtype.itemsize == 1 and mask.flags.c_contiguous and ni % 8 == 0:
        words = mask.reshape(-1).view(np.uint64).reshape(nk, nj, ni // 8)
        ks = np.flatnonzero(words.reshape(nk, -1).any(axis=1))
        if ks.size == 0:
            return None
        k0, k1 = int(ks[0]), int(ks[-1]) + 1
        plane = np.bitwise_or.reduce(words[k0:k1], axis=0).view(np.uint8)  # (nj, ni): any voxel along k
    else:
        nonzero = np.asarray(mask) != 0
        ks = np.flatnonzero(nonzero.reshape(nk, -1).any(axis=1))
        if ks.size == 0:
            return None
        k0, k1 = int(ks[0]), int(ks[-1]) + 1
        plane = nonzero[k0:k1].any(axis=0)
    js = np.flatnonzero(plane.any(axis=1))
    is_ = np.flatnonzero(plane.any(axis=0))
    return (k0, int(js[0]), int(is_[0])), (k1, int(js[-1]) + 1, int(is_[-1]) + 1)


def _format_decimal_strings(values: np.ndarray) -> list[str]:
    """DS texts of at most 16 characters: 3 decimals (a micrometre), trailing zeros stripped, never ``-0``."""
    rounded = np.round(values, 3) + 0.0  # + 0.0 turns the -0.0 of small negatives into 0.0
    texts = [f"{v:.3f}".rstrip("0").rstrip(".") for v in rounded.tolist()]
    if max(map(len, texts), default=0) > 16:  # only coordinates beyond 10^11 mm: 10 significant digits
        texts = [t if len(t) <= 16 else f"{v:.10g}" for t, v in zip(texts, rounded.tolist(), strict=True)]
    return texts


def _raw_decimal_strings(texts: list[str]) -> RawDataElement:
    """ContourData as its encoded bytes: pydicom would build and validate one object per number, seconds in all."""
    value = "\\".join(texts).encode("ascii")
    if len(value) % 2:
        value += b" "
    return RawDataElement(_CONTOUR_DATA, "DS", len(value), value, 0, True, True, True, False)


# --- reading -------------------------------------------------------------------------------------------


def read_rtstruct(
    source: str | Path | Dataset,
    ct: CtReference,
    *,
    check_references: bool = True,
    slice_tolerance: float = 0.25,
) -> StructureSet:
    """Every ROI of a structure set as a ``uint8`` mask on the CT grid.

    Contours of one ROI on one slice are filled together with the even-odd rule (holes and several islands).
    ``check_references``: a Frame of Reference other than the CT's raises ``RtStructReferenceError``; contour
    images that are not slices of this CT are reported in ``warnings``. A closed contour off every CT slice plane
    (beyond ``slice_tolerance`` of the slice spacing) raises ``RtStructError`` naming the ROI. Point and open
    contours are skipped with a warning.
    """
    ds = source if isinstance(source, Dataset) else _read_dataset(source)
    if str(ds.get("SOPClassUID", "")) != RTStructureSetStorage and ds.get("Modality") != "RTSTRUCT":
        raise RtStructError("the file is not an RT Structure Set", sop_class_uid=str(ds.get("SOPClassUID", "")))
    if "StructureSetROISequence" not in ds:
        raise RtStructError("the structure set has no Structure Set ROI Sequence")
    found: list[str] = []
    geometry = ct.geometry
    ct_uids = set(ct.sop_instance_uids)

    frames = [str(f.get("FrameOfReferenceUID", "")) for f in ds.get("ReferencedFrameOfReferenceSequence", [])]
    if check_references:
        foreign = [f for f in frames if f and f != ct.frame_of_reference_uid]
        if foreign and ct.frame_of_reference_uid not in frames:
            raise RtStructReferenceError(
                "the structure set refers to another Frame of Reference than the CT",
                structure_set=foreign,
                ct=ct.frame_of_reference_uid,
            )

    contours_by_number = {
        int(rc.ReferencedROINumber): rc for rc in ds.get("ROIContourSequence", []) if "ReferencedROINumber" in rc
    }
    types_by_number = {
        int(o.ReferencedROINumber): str(o.get("RTROIInterpretedType", "") or "")
        for o in ds.get("RTROIObservationsSequence", [])
        if "ReferencedROINumber" in o
    }
    rois: dict[str, RoiMask] = {}
    for roi in ds.StructureSetROISequence:
        if roi.get("ROINumber") is None:
            raise RtStructError("an ROI of the structure set has no ROI Number", roi=str(roi.get("ROIName", "")))
        number = int(roi.ROINumber)
        name = str(roi.get("ROIName", "") or f"ROI {number}")
        roi_frame = str(roi.get("ReferencedFrameOfReferenceUID", "") or "")
        if check_references and roi_frame and roi_frame != ct.frame_of_reference_uid:
            raise RtStructReferenceError(
                f"ROI {name!r} is defined in another Frame of Reference than the CT",
                roi=name,
                structure_set=roi_frame,
                ct=ct.frame_of_reference_uid,
            )
        roi_contour = contours_by_number.get(number)
        color = None
        mask = np.zeros(geometry.shape, dtype=np.uint8)
        count = 0
        if roi_contour is not None:
            shown = roi_contour.get("ROIDisplayColor")
            if shown is not None and len(shown) == 3:
                color = tuple(int(c) for c in shown)
            count = _fill_roi(mask, name, roi_contour, geometry, ct_uids, check_references, slice_tolerance, found)
        key = name
        if key in rois:
            key = f"{name} [{number}]"
            found.append(f"ROI name {name!r} is used twice; ROI number {number} is kept as {key!r}")
        rois[key] = RoiMask(name, number, color, types_by_number.get(number, ""), mask, count)
    return StructureSet(
        rois=rois,
        warnings=found,
        label=str(ds.get("StructureSetLabel", "") or ""),
        frame_of_reference_uid=frames[0] if frames else "",
        series_instance_uid=str(ds.get("SeriesInstanceUID", "") or ""),
    )


def _read_dataset(path: str | Path) -> Dataset:
    try:
        return pydicom.dcmread(path)
    except pydicom.errors.InvalidDicomError as exc:
        raise RtStructError(f"{Path(path).name} is not a DICOM file", path=str(path)) from exc


def _fill_roi(
    mask: np.ndarray,
    name: str,
    roi_contour: Dataset,
    geometry: Geometry,
    ct_uids: set[str],
    check_references: bool,
    slice_tolerance: float,
    found: list[str],
) -> int:
    """Fill ``mask`` from the ROI's closed contours; returns how many were used."""
    nk, nj, ni = geometry.shape
    polygons_by_slice: dict[int, list[np.ndarray]] = {}
    skipped: dict[str, int] = {}
    foreign_images = 0
    for contour in roi_contour.get("ContourSequence", []):
        kind = str(contour.get("ContourGeometricType", "") or "")
        if kind not in _CLOSED_TYPES:
            skipped[kind or "untyped"] = skipped.get(kind or "untyped", 0) + 1
            continue
        points = _contour_points(contour, name)
        if len(points) < 3:
            skipped["CLOSED_PLANAR (under 3 points)"] = skipped.get("CLOSED_PLANAR (under 3 points)", 0) + 1
            continue
        ijk = geometry.physical_to_index(points)
        k = int(np.rint(np.median(ijk[:, 2])))
        off_plane = float(np.abs(ijk[:, 2] - k).max())
        if off_plane > slice_tolerance or not 0 <= k < nk:
            z = float(points[:, 2].mean())
            where = "outside the CT" if not 0 <= k < nk else f"{off_plane:.2f} slice spacings off the nearest slice"
            raise RtStructError(
                f"ROI {name!r}: a contour near z = {z:.2f} mm does not lie on a CT slice ({where})",
                roi=name,
                z_mm=z,
            )
        if check_references:
            for image in contour.get("ContourImageSequence", []):
                uid = str(image.get("ReferencedSOPInstanceUID", ""))
                if uid and uid not in ct_uids:
                    foreign_images += 1
        polygons_by_slice.setdefault(k, []).append(ijk[:, :2])
    for kind, n in skipped.items():
        found.append(f"ROI {name!r}: {n} {kind} contour(s) skipped (only closed planar contours are filled)")
    if foreign_images:
        found.append(f"ROI {name!r}: {foreign_images} contour(s) refer to images that are not slices of this CT")
    for k, polygons in polygons_by_slice.items():
        window = even_odd_fill_window(polygons, (nj, ni))
        if window is None:
            continue
        (j0, i0), filled = window
        mask[k, j0 : j0 + filled.shape[0], i0 : i0 + filled.shape[1]] = filled
    return sum(len(p) for p in polygons_by_slice.values())


def _contour_points(contour: Dataset, roi_name: str) -> np.ndarray:
    """ContourData as ``(N, 3)`` floats, parsed from the raw bytes when pydicom has not converted them yet."""
    if _CONTOUR_DATA not in contour:
        return np.empty((0, 3))
    element = contour.get_item(_CONTOUR_DATA)
    if isinstance(element, RawDataElement) and not element.is_buffered:
        raw = bytes(element.value or b"").strip(b" \x00")
        if not raw:
            return np.empty((0, 3))
        try:
            values = np.array(raw.split(b"\\"), dtype=np.float64)
        except ValueError as exc:
            raise RtStructError(
                f"ROI {roi_name!r}: ContourData holds a value that is not a decimal number", roi=roi_name
            ) from exc
    else:
        value = element.value if isinstance(element, DataElement) else contour.ContourData
        values = np.asarray([] if value is None else value, dtype=np.float64).ravel()
    if values.size % 3:
        raise RtStructError(
            f"ROI {roi_name!r}: ContourData has {values.size} values, not a multiple of 3", roi=roi_name
        )
    return values.reshape(-1, 3)
