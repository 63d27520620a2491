"""Read a DICOM CT series into a ``Volume`` of Hounsfield units (float32).

Clinical exports are untidy: folders mix CT with RT objects, DICOMDIRs and desktop litter; slices arrive in
any order, compressed, with per-slice rescale values, and now and then with a missing slice or a tilted
gantry. This reader accepts the untidiness where the meaning is unambiguous and otherwise refuses with a
typed error (``imaging.errors``) a physicist can act on, because a silently wrong grid puts every contour
in the wrong place.

Geometry follows DICOM: slices are stacked along the normal ``n = row x col`` of ImageOrientationPatient and
sorted by ``dot(ImagePositionPatient, n)``; the volume's direction columns are (row, col, n), so ``k`` grows
along ``n`` and the origin is the position of the first slice in that order.

Patient identifiers are copied into ``meta["dicom"]`` for the RTSTRUCT writer and never logged. pydicom's own
value-validation warnings quote element values (a malformed PatientName, say), so they are caught and only
counted while this module reads.
"""

from __future__ import annotations

import io
import itertools
import logging
import os
import re
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder, pixel_array
from pydicom.uid import (
    UID,
    AllTransferSyntaxes,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from .errors import (
    DuplicateSlicePositionError,
    GantryTiltError,
    GeometryError,
    InconsistentMatrixError,
    InconsistentOrientationError,
    InconsistentPixelSpacingError,
    IrregularSliceSpacingError,
    MissingAttributeError,
    MultipleSeriesError,
    NoCtImagesError,
    SeriesNotFoundError,
    UndecodablePixelDataError,
    UnsupportedFormatError,
)
from .rtstruct import PATIENT_STUDY_KEYWORDS
from .volume import Geometry, Volume

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"

# One uploaded or stored file: a path, its bytes, or an open binary file (e.g. a web upload's ``.file``).
DicomInput = str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO
# A folder (searched recursively), a .zip file, a single file, or a list of inputs.
DicomSource = str | os.PathLike[str] | bytes | BinaryIO | Sequence[DicomInput]

# The patient and study attributes an RTSTRUCT must repeat from its CT (copied as strings into meta["dicom"]).
RTSTRUCT_COPIED_ATTRIBUTES = ("SpecificCharacterSet", *PATIENT_STUDY_KEYWORDS)

ORIENTATION_TOLERANCE = 1e-4  # per ImageOrientationPatient component
PIXEL_SPACING_TOLERANCE_MM = 1e-4
DUPLICATE_POSITION_TOLERANCE_MM = 0.01
MIN_SLICE_SPACING_TOLERANCE_MM = 0.01  # spacing tolerance is the larger of this and 1 % of the spacing
RELATIVE_SLICE_SPACING_TOLERANCE = 0.01
TILT_TOLERANCE_PIXELS = 0.1  # in-plane drift of the slice positions accepted over the whole series

_UID_SYNTAX = re.compile(r"[0-9]+(\.[0-9]+)*")

# Pixel data is read only for the chosen series: larger elements are left on disk until decoded.
_DEFER_LARGE_ELEMENTS = "64 KB"

_INSTALL_HINTS = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg with pylibjpeg-libjpeg (or pillow)",
    "1.2.840.10008.1.2.4.51": "pylibjpeg with pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.57": "pylibjpeg with pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.70": "pylibjpeg with pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.80": "pylibjpeg with pylibjpeg-libjpeg (or pyjpegls)",
    "1.2.840.10008.1.2.4.81": "pylibjpeg with pylibjpeg-libjpeg (or pyjpegls)",
    "1.2.840.10008.1.2.4.90": "pylibjpeg with pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.91": "pylibjpeg with pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.201": "pylibjpeg with pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.202": "pylibjpeg with pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "pylibjpeg with pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.5": "pylibjpeg with pylibjpeg-rle",
}


# --- public API ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesSummary:
    """One CT series found in a source: enough for a user to pick the planning CT."""

    series_instance_uid: str
    series_description: str
    series_number: int | None
    number_of_slices: int
    modality: str
    manufacturer: str
    study_instance_uid: str
    rows: int | None
    columns: int | None
    slice_thickness: float | None
    transfer_syntaxes: tuple[str, ...]

    def describe(self) -> str:
        uid = self.series_instance_uid or "(no SeriesInstanceUID)"
        description = self.series_description or "no description"
        slices = f"{self.number_of_slices} slice{'' if self.number_of_slices == 1 else 's'}"
        return f"{uid} '{description}' ({slices})"


def supported_transfer_syntaxes() -> dict[UID, bool]:
    """Every transfer syntax pydicom knows, mapped to whether its pixel data can be decoded here.

    Asked of pydicom's decoders, so it reflects the plugins actually installed (pylibjpeg, pyjpegls, ...).
    """
    support: dict[UID, bool] = {}
    for uid in AllTransferSyntaxes:
        try:
            support[uid] = bool(get_decoder(uid).is_available)
        except NotImplementedError:
            support[uid] = False
    return support


def list_ct_series(source: DicomSource) -> list[SeriesSummary]:
    """The CT Image Storage series in ``source``, ordered by series number then description."""
    with _pydicom_messages_withheld():
        scan = _scan(source)
    summaries = [_summarise(uid, files) for uid, files in scan.ct_series.items()]
    return sorted(
        summaries,
        key=lambda s: (s.series_number is None, s.series_number or 0, s.series_description, s.series_instance_uid),
    )


def read_ct_series(source: DicomSource, series_uid: str | None = None, *, fill_gaps: bool = False) -> Volume:
    """Read one CT series from ``source`` into a float32 HU ``Volume`` on its DICOM grid.

    ``source`` is a folder (searched recursively), a .zip file, a single file, bytes, or a list of paths,
    bytes and binary file objects. Files that are not CT Image Storage are skipped and counted in
    ``meta["ignored_files"]``. With several CT series, ``series_uid`` picks one.

    Missing slices (gaps that are whole multiples of the usual spacing) are refused with the gap reported,
    unless ``fill_gaps``: then the missing slices are interpolated linearly from their neighbours, listed in
    ``meta["interpolated_slices"]`` and ``meta["warnings"]``, and have an empty SOP Instance UID (a structure
    set refers to no image on them). Spacing that is no whole multiple cannot be reconstructed either way.
    """
    with _pydicom_messages_withheld() as withheld:
        scan = _scan(source)
        chosen = _choose_series(scan, series_uid)
        files, repeated_instances = _drop_repeated_instances(chosen)
        volume = _assemble_volume(files, fill_gaps)
    ignored = scan.ignored_counts()
    ignored["other_ct_series"] = sum(len(f) for uid, f in scan.ct_series.items() if uid != files[0].series_uid)
    ignored["repeated_instances"] = repeated_instances
    volume.meta["ignored_files"] = ignored
    volume.meta["reader_warnings"] = withheld.count
    return volume


@dataclass(frozen=True)
class SeriesInspection:
    """What ``inspect_ct_series`` found: the series ``read_ct_series`` would read, known from its headers alone."""

    series_instance_uid: str
    study_instance_uid: str
    frame_of_reference_uid: str
    sop_instance_uids: tuple[str, ...]  # in slice order ("" for slices ``fill_gaps`` would interpolate)
    shape: tuple[int, int, int]  # (slices, rows, columns) of the volume read_ct_series would return
    spacing: tuple[float, float, float]  # (i, j, k) mm
    transfer_syntaxes: tuple[str, ...]
    ignored_files: dict
    warnings: tuple[str, ...]

    @property
    def voxels(self) -> int:
        return int(np.prod(self.shape))


def inspect_ct_series(
    source: DicomSource,
    series_uid: str | None = None,
    *,
    fill_gaps: bool = False,
    limits: Callable[[SeriesInspection], None] | None = None,
) -> SeriesInspection:
    """Every check ``read_ct_series`` makes, on the headers only: the same typed errors, no pixel decoded.

    One series, CT Image Storage, one orientation, matrix and pixel spacing, regular slices, no gantry tilt, a
    decoder for every slice's transfer syntax, and (for uncompressed slices) pixel data as long as the matrix
    needs. Files on disk are read with their pixel data left there (a cheap check before queueing a job); what
    this accepts, ``read_ct_series`` reads unless a compressed slice turns out damaged when decoded.
    ``limits(inspection)``, when given, is called once the grid is known and before any pixel data is looked at
    (a caller's size limits: a matrix declared enormous is refused as such, not as a truncated file).
    """
    with _pydicom_messages_withheld():
        scan = _scan(source)
        chosen = _choose_series(scan, series_uid)
        files, repeated_instances = _drop_repeated_instances(chosen)
        layout = _series_layout(files, fill_gaps)
        found = _inspection(scan, files, repeated_instances, layout)
        if limits is not None:
            limits(found)
        for header in layout.headers:
            _check_pixel_data(header)
    return found


def _inspection(scan: _Scan, files: list[_CtFile], repeated_instances: int, layout: _SeriesLayout) -> SeriesInspection:
    ignored = scan.ignored_counts()
    ignored["other_ct_series"] = sum(len(f) for uid, f in scan.ct_series.items() if uid != files[0].series_uid)
    ignored["repeated_instances"] = repeated_instances
    first = layout.headers[0]
    uids = [""] * layout.slices
    for k, header in zip(layout.grid_index, layout.headers, strict=True):
        uids[k] = header.file.sop_instance_uid
    return SeriesInspection(
        series_instance_uid=first.file.series_uid,
        study_instance_uid=str(first.file.dataset.get("StudyInstanceUID", "") or ""),
        frame_of_reference_uid=str(first.file.dataset.get("FrameOfReferenceUID", "") or ""),
        sop_instance_uids=tuple(uids),
        shape=(layout.slices, first.rows, first.columns),
        spacing=(float(layout.pixel_spacing[1]), float(layout.pixel_spacing[0]), layout.slice_spacing),
        transfer_syntaxes=tuple(sorted({str(h.file.transfer_syntax) for h in layout.headers})),
        ignored_files=ignored,
        warnings=tuple(layout.warnings),
    )


# --- finding the files -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _RawInput:
    """One candidate file before parsing: a path on disk or bytes in memory, named for messages."""

    label: str
    path: Path | None = None
    data: bytes | None = None
    head: bytes = b""


@dataclass
class _CtFile:
    label: str
    dataset: Dataset
    path: Path | None = None  # on disk: pixel data larger than _DEFER_LARGE_ELEMENTS is still there

    @property
    def series_uid(self) -> str:
        return str(self.dataset.get("SeriesInstanceUID", "") or "")

    @property
    def sop_instance_uid(self) -> str:
        return str(self.dataset.get("SOPInstanceUID", "") or "")

    @property
    def transfer_syntax(self) -> UID:
        return UID(self.dataset.file_meta.TransferSyntaxUID)


@dataclass
class _Scan:
    ct_series: dict[str, list[_CtFile]] = field(default_factory=dict)
    not_dicom: int = 0
    other_dicom: Counter[str] = field(default_factory=Counter)  # SOP class name -> file count
    localizers: int = 0

    def ignored_counts(self) -> dict:
        return {
            "not_dicom": self.not_dicom,
            "other_sop_classes": dict(sorted(self.other_dicom.items())),
            "localizers": self.localizers,
        }


def _scan(source: DicomSource) -> _Scan:
    scan = _Scan()
    for raw in _expand_source(source):
        dataset = _read_dataset(raw)
        if dataset is None:
            scan.not_dicom += 1
            continue
        sop_class = _sop_class_uid(dataset)
        if sop_class != CT_IMAGE_STORAGE:
            scan.other_dicom[UID(sop_class).name] += 1
            continue
        image_type = [str(v).upper() for v in (dataset.get("ImageType") or [])]
        if len(image_type) > 2 and image_type[2] == "LOCALIZER":
            scan.localizers += 1  # scout views are projections, never slices of the volume
            continue
        ct_file = _CtFile(raw.label, dataset, raw.path)
        scan.ct_series.setdefault(ct_file.series_uid, []).append(ct_file)
    return scan


def _expand_source(source: DicomSource) -> Iterator[_RawInput]:
    if isinstance(source, str | os.PathLike):
        yield from _expand_path(Path(source))
    elif isinstance(source, bytes | bytearray | memoryview) or hasattr(source, "read"):
        yield from _expand_item(source, 0)
    elif isinstance(source, Iterable):
        for index, item in enumerate(source):
            yield from _expand_item(item, index)
    else:
        raise TypeError(f"cannot read DICOM from a {type(source).__name__}")


def _expand_item(item: DicomInput, index: int) -> Iterator[_RawInput]:
    if isinstance(item, str | os.PathLike):
        yield from _expand_path(Path(item))
    elif isinstance(item, bytes | bytearray | memoryview):
        yield from _expand_bytes(f"item {index + 1}", bytes(item))
    elif hasattr(item, "read"):
        name = getattr(item, "name", None)
        label = Path(name).name if isinstance(name, str) else f"item {index + 1}"
        yield from _expand_bytes(label, item.read())
    else:
        raise TypeError(f"cannot read DICOM from a {type(item).__name__} (item {index + 1})")


def _expand_path(path: Path) -> Iterator[_RawInput]:
    if path.is_dir():
        for folder, subfolders, names in os.walk(path):  # does not follow links into other folders
            subfolders.sort()
            for name in sorted(names):
                child = Path(folder) / name
                if child.is_file():
                    yield from _expand_file(child)
    elif path.is_file():
        yield from _expand_file(path)
    else:
        raise FileNotFoundError(f"no such file or folder: {path}")


def _expand_file(path: Path) -> Iterator[_RawInput]:
    with path.open("rb") as f:
        head = f.read(132)
    if head[128:132] != b"DICM" and head[:4] == b"PK\x03\x04":
        yield from _expand_zip(str(path), path)
    else:
        yield _RawInput(str(path), path=path, head=head)


def _expand_bytes(label: str, data: bytes) -> Iterator[_RawInput]:
    if data[128:132] != b"DICM" and data[:4] == b"PK\x03\x04":
        yield from _expand_zip(label, io.BytesIO(data))
    else:
        yield _RawInput(label, data=data, head=data[:132])


def _expand_zip(label: str, archive: Path | BinaryIO) -> Iterator[_RawInput]:
    """Members of a zip archive, read in memory (nothing is extracted to disk)."""
    with zipfile.ZipFile(archive) as zf:
        for member in sorted(zf.infolist(), key=lambda m: m.filename):
            if not member.is_dir():
                yield from _expand_bytes(f"{label}:{member.filename}", zf.read(member))


def _read_dataset(raw: _RawInput) -> Dataset | None:
    """The parsed file, or None when it is not DICOM (a README, .DS_Store, a damaged file)."""
    has_preamble = raw.head[128:132] == b"DICM"
    # Files written without the 128-byte preamble start directly with a group 0002 or 0008 element.
    bare_dataset = raw.head[:2] in (b"\x02\x00", b"\x08\x00")
    if not (has_preamble or bare_dataset):
        return None
    try:
        if raw.path is not None:
            dataset = pydicom.dcmread(raw.path, defer_size=_DEFER_LARGE_ELEMENTS, force=not has_preamble)
        else:
            dataset = pydicom.dcmread(io.BytesIO(raw.data or b""), force=not has_preamble)
    except Exception:  # pydicom raises many exception types on damaged or foreign files
        return None
    sop_class = _sop_class_uid(dataset)
    if not sop_class or (not has_preamble and not _UID_SYNTAX.fullmatch(sop_class)):
        return None  # forced parsing of a foreign file yields no UID, or nonsense where a UID should be
    if "TransferSyntaxUID" not in dataset.file_meta:
        # A bare dataset: record the encoding pydicom detected so the pixel decoder knows it.
        implicit, little = dataset.original_encoding
        dataset.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
    return dataset


def _sop_class_uid(dataset: Dataset) -> str:
    return str(dataset.get("SOPClassUID", "") or dataset.file_meta.get("MediaStorageSOPClassUID", "") or "")


def _choose_series(scan: _Scan, series_uid: str | None) -> list[_CtFile]:
    if not scan.ct_series:
        found = [f"{scan.not_dicom} non-DICOM file(s)"] if scan.not_dicom else []
        found += [f"{n} {name}" for name, n in sorted(scan.other_dicom.items())]
        found += [f"{scan.localizers} CT localizer(s)"] if scan.localizers else []
        hint = ""
        if UID(ENHANCED_CT_IMAGE_STORAGE).name in scan.other_dicom:
            hint = " Enhanced (multi-frame) CT is not supported: export the CT as one file per slice."
        raise NoCtImagesError(
            f"no CT Image Storage files found (found: {', '.join(found) or 'nothing'}).{hint}",
            ignored=scan.ignored_counts(),
        )
    if series_uid is not None:
        if series_uid not in scan.ct_series:
            available = ", ".join(_summarise(uid, f).describe() for uid, f in scan.ct_series.items())
            raise SeriesNotFoundError(
                f"CT series {series_uid} is not in the input; CT series found: {available}",
                series_uid=series_uid,
                available=list(scan.ct_series),
            )
        return scan.ct_series[series_uid]
    if len(scan.ct_series) > 1:
        summaries = [_summarise(uid, f) for uid, f in scan.ct_series.items()]
        raise MultipleSeriesError(
            f"{len(summaries)} CT series found; choose one by its series UID: "
            + "; ".join(s.describe() for s in summaries),
            series=[
                {
                    "series_instance_uid": s.series_instance_uid,
                    "series_description": s.series_description,
                    "number_of_slices": s.number_of_slices,
                }
                for s in summaries
            ],
        )
    return next(iter(scan.ct_series.values()))


def _summarise(series_uid: str, files: list[_CtFile]) -> SeriesSummary:
    first = files[0].dataset
    number = first.get("SeriesNumber")
    thickness = _optional_float(first, "SliceThickness")
    return SeriesSummary(
        series_instance_uid=series_uid,
        series_description=str(first.get("SeriesDescription", "") or ""),
        series_number=int(number) if number not in (None, "") else None,
        number_of_slices=len({f.sop_instance_uid for f in files}),
        modality=str(first.get("Modality", "") or ""),
        manufacturer=str(first.get("Manufacturer", "") or ""),
        study_instance_uid=str(first.get("StudyInstanceUID", "") or ""),
        rows=_optional_int(first, "Rows"),
        columns=_optional_int(first, "Columns"),
        slice_thickness=thickness,
        transfer_syntaxes=tuple(sorted({str(f.transfer_syntax) for f in files})),
    )


# --- geometry and pixels ---------------------------------------------------------------------------


@dataclass
class _SliceHeader:
    """The geometry-bearing attributes of one slice, parsed and checked for presence."""

    file: _CtFile
    position: np.ndarray  # ImagePositionPatient, LPS mm
    orientation: np.ndarray  # ImageOrientationPatient, 6 values
    pixel_spacing: np.ndarray  # [row spacing (j), column spacing (i)]
    rows: int
    columns: int


@dataclass
class _SeriesLayout:
    """The grid of a series from its headers: slices in order, where each sits on the grid, spacing, axes."""

    headers: list[_SliceHeader]
    positions: np.ndarray  # along the slice normal, sorted
    grid_index: np.ndarray  # each header's slice index on the regular grid (gaps when fill_gaps)
    slice_spacing: float
    row: np.ndarray
    col: np.ndarray
    normal: np.ndarray
    pixel_spacing: np.ndarray
    warnings: list[str]

    @property
    def slices(self) -> int:
        return int(self.grid_index[-1]) + 1


def _series_layout(files: list[_CtFile], fill_gaps: bool = False) -> _SeriesLayout:
    """Every geometric check of a series, on its headers (shared by reading and inspection)."""
    headers = [_slice_header(f) for f in files]
    _check_same_matrix(headers)
    row, col, normal = _common_orientation(headers)
    pixel_spacing = _common_pixel_spacing(headers)

    positions = np.array([h.position @ normal for h in headers])
    order = np.argsort(positions, kind="stable")
    headers = [headers[i] for i in order]
    positions = positions[order]
    along_z = abs(abs(normal[2]) - 1.0) < 1e-6
    _check_no_duplicate_positions(headers, positions, along_z)
    warnings: list[str] = []
    grid_index = np.arange(len(headers))
    if len(headers) > 1:
        _check_no_gantry_tilt(headers, normal, pixel_spacing)
        try:
            slice_spacing = _regular_slice_spacing(headers, positions, along_z)
        except IrregularSliceSpacingError as gap:
            grid_index = _grid_index_of_slices(positions, gap) if fill_gaps else None
            if grid_index is None:
                raise
            slice_spacing = float(gap.details["usual_spacing_mm"])
            warnings.append(
                gap.message.replace(" missing?", " missing") + "; interpolated from the neighbouring slices"
            )
    else:
        slice_spacing = _single_slice_thickness(headers[0].file)
    return _SeriesLayout(headers, positions, grid_index, slice_spacing, row, col, normal, pixel_spacing, warnings)


def _assemble_volume(files: list[_CtFile], fill_gaps: bool = False) -> Volume:
    layout = _series_layout(files, fill_gaps)
    headers, positions, grid_index, slice_spacing = (
        layout.headers,
        layout.positions,
        layout.grid_index,
        layout.slice_spacing,
    )
    row, col, normal, pixel_spacing, warnings = (
        layout.row,
        layout.col,
        layout.normal,
        layout.pixel_spacing,
        layout.warnings,
    )

    hu = np.empty((int(grid_index[-1]) + 1, headers[0].rows, headers[0].columns), dtype=np.float32)
    for k, header in zip(grid_index, headers, strict=True):
        hu[k] = _slice_hu(header)
    interpolated = _interpolate_missing_slices(hu, grid_index)

    geometry = Geometry(
        shape=hu.shape,
        spacing=(float(pixel_spacing[1]), float(pixel_spacing[0]), slice_spacing),
        origin=tuple(float(v) + 0.0 for v in headers[0].position),  # + 0.0 turns DICOM's "-0" into 0
        direction=tuple(float(v) + 0.0 for v in np.column_stack([row, col, normal]).ravel()),
    )
    meta = _series_meta(headers, positions)
    if interpolated:
        uids = [""] * hu.shape[0]
        for k, uid in zip(grid_index, meta["sop_instance_uids"], strict=True):
            uids[k] = uid
        meta["sop_instance_uids"] = uids
        meta["slice_positions"] = [float(positions[0] + k * slice_spacing) + 0.0 for k in range(hu.shape[0])]
    meta["interpolated_slices"] = interpolated
    meta["warnings"] = warnings
    return Volume(hu, geometry, meta)


def _grid_index_of_slices(positions: np.ndarray, gap: IrregularSliceSpacingError) -> np.ndarray | None:
    """Each slice's index on the regular grid of the usual spacing, or None if some slice falls off it."""
    usual = float(gap.details["usual_spacing_mm"])
    steps = (positions - positions[0]) / usual
    index = np.rint(steps).astype(int)
    tolerance = max(MIN_SLICE_SPACING_TOLERANCE_MM, RELATIVE_SLICE_SPACING_TOLERANCE * usual) / usual
    if np.abs(steps - index).max() > tolerance or len(np.unique(index)) != len(index):
        return None
    return index


def _interpolate_missing_slices(hu: np.ndarray, grid_index: np.ndarray) -> list[int]:
    """Fill the grid slices no file provided, linearly between the nearest real slices; their indices."""
    missing: list[int] = []
    for a, b in itertools.pairwise(grid_index):
        for k in range(a + 1, b):
            t = (k - a) / (b - a)
            hu[k] = (1.0 - t) * hu[a] + t * hu[b]
            missing.append(int(k))
    return missing


def _drop_repeated_instances(files: list[_CtFile]) -> tuple[list[_CtFile], int]:
    """Keep one file per SOPInstanceUID (the same instance copied twice is one slice, not a duplicate)."""
    kept: dict[str, _CtFile] = {}
    for f in files:
        uid = f.sop_instance_uid
        if not uid:
            raise MissingAttributeError(f"{f.label} has no SOPInstanceUID", attribute="SOPInstanceUID", file=f.label)
        if uid in kept:
            first = kept[uid]
            same_place = first.dataset.get("ImagePositionPatient") == f.dataset.get("ImagePositionPatient")
            if not same_place:
                raise GeometryError(
                    f"{first.label} and {f.label} carry the same SOPInstanceUID but different "
                    "ImagePositionPatient: the series is corrupt",
                    files=[first.label, f.label],
                )
            continue
        kept[uid] = f
    return list(kept.values()), len(files) - len(kept)


def _slice_header(f: _CtFile) -> _SliceHeader:
    ds = f.dataset
    if not f.series_uid:
        raise MissingAttributeError(f"{f.label} has no SeriesInstanceUID", attribute="SeriesInstanceUID", file=f.label)
    frames = _optional_int(ds, "NumberOfFrames") or 1
    if frames > 1:
        raise UnsupportedFormatError(f"{f.label} holds {frames} frames; expected one CT slice per file")
    samples = _optional_int(ds, "SamplesPerPixel") or 1
    if samples != 1:
        raise UnsupportedFormatError(f"{f.label} has {samples} samples per pixel; a CT slice has 1")
    return _SliceHeader(
        file=f,
        position=_required_floats(f, "ImagePositionPatient", 3),
        orientation=_required_floats(f, "ImageOrientationPatient", 6),
        pixel_spacing=_required_floats(f, "PixelSpacing", 2),
        rows=int(_required_floats(f, "Rows", 1)[0]),
        columns=int(_required_floats(f, "Columns", 1)[0]),
    )


def _required_floats(f: _CtFile, keyword: str, count: int) -> np.ndarray:
    value = f.dataset.get(keyword)
    values = list(value) if isinstance(value, list | tuple | pydicom.multival.MultiValue) else [value]
    try:
        numbers = np.array([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        numbers = np.array([])
    if value in (None, "") or numbers.size != count or not np.all(np.isfinite(numbers)):
        what = "no" if value in (None, "") else f"an unusable ({len(values)}-valued or non-numeric)"
        raise MissingAttributeError(f"{f.label} has {what} {keyword}", attribute=keyword, file=f.label)
    return numbers


def _check_same_matrix(headers: list[_SliceHeader]) -> None:
    sizes = Counter((h.rows, h.columns) for h in headers)
    if len(sizes) > 1:
        common = sizes.most_common(1)[0][0]
        odd = next(h for h in headers if (h.rows, h.columns) != common)
        listed = ", ".join(f"{n} slice(s) of {r}x{c}" for (r, c), n in sizes.most_common())
        raise InconsistentMatrixError(
            f"the slices differ in matrix size (rows x columns): {listed}; e.g. {odd.file.label} is "
            f"{odd.rows}x{odd.columns}",
            sizes={f"{r}x{c}": n for (r, c), n in sizes.items()},
        )


def _common_orientation(headers: list[_SliceHeader]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit row, column and normal directions shared by every slice."""
    reference = headers[0].orientation
    for h in headers[1:]:
        if np.max(np.abs(h.orientation - reference)) > ORIENTATION_TOLERANCE:
            raise InconsistentOrientationError(
                f"the slices differ in ImageOrientationPatient: {headers[0].file.label} has "
                f"{_format_vector(reference)}, {h.file.label} has {_format_vector(h.orientation)}",
                orientations=[reference.tolist(), h.orientation.tolist()],
            )
    row, col = reference[:3], reference[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-2 or abs(np.linalg.norm(col) - 1) > 1e-2 or abs(row @ col) > 1e-2:
        raise InconsistentOrientationError(
            f"ImageOrientationPatient {_format_vector(reference)} of {headers[0].file.label} is not two "
            "orthogonal unit vectors",
            orientation=reference.tolist(),
        )
    # Re-orthonormalise what was written with a few digits, so the direction matrix is a rotation.
    row = row / np.linalg.norm(row)
    col = col - (col @ row) * row
    col = col / np.linalg.norm(col)
    normal = np.cross(row, col)
    return row, col, normal


def _common_pixel_spacing(headers: list[_SliceHeader]) -> np.ndarray:
    reference = headers[0].pixel_spacing
    for h in headers[1:]:
        if np.max(np.abs(h.pixel_spacing - reference)) > PIXEL_SPACING_TOLERANCE_MM:
            raise InconsistentPixelSpacingError(
                f"the slices differ in PixelSpacing: {headers[0].file.label} has {_format_vector(reference)} mm, "
                f"{h.file.label} has {_format_vector(h.pixel_spacing)} mm",
            )
    if np.any(reference <= 0):
        raise MissingAttributeError(
            f"{headers[0].file.label} has a non-positive PixelSpacing {_format_vector(reference)}",
            attribute="PixelSpacing",
            file=headers[0].file.label,
        )
    return reference


def _check_no_duplicate_positions(headers: list[_SliceHeader], positions: np.ndarray, along_z: bool) -> None:
    gaps = np.diff(positions)
    duplicates = np.flatnonzero(gaps < DUPLICATE_POSITION_TOLERANCE_MM)
    if duplicates.size:
        i = int(duplicates[0])
        a, b = headers[i], headers[i + 1]
        raise DuplicateSlicePositionError(
            f"{duplicates.size} pair(s) of slices share a position, e.g. {a.file.label} and {b.file.label} both "
            f"at {_format_position(a, positions[i], along_z)}: the series holds more than one image per "
            "position (several acquisitions, phases or reconstructions?); export a single one",
            count=int(duplicates.size),
            files=[a.file.label, b.file.label],
        )


def _check_no_gantry_tilt(headers: list[_SliceHeader], normal: np.ndarray, pixel_spacing: np.ndarray) -> None:
    """Slices must be stacked along their normal; a tilted gantry shears the stack."""
    offsets = np.array([h.position for h in headers]) - headers[0].position
    along = offsets @ normal
    in_plane = offsets - np.outer(along, normal)
    drift = np.linalg.norm(in_plane, axis=1)
    tolerance = max(MIN_SLICE_SPACING_TOLERANCE_MM, TILT_TOLERANCE_PIXELS * float(np.min(pixel_spacing)))
    if drift.max() > tolerance:
        angle = float(np.degrees(np.arctan2(drift[-1], abs(along[-1]))))
        raise GantryTiltError(
            f"the slice positions drift {drift[-1]:.2f} mm within the image plane over {abs(along[-1]):.1f} mm "
            f"along the slice normal: a gantry tilt of {angle:.2f} degrees. Resample the series to an "
            "untilted grid (e.g. on the scanner console) before contouring",
            tilt_degrees=angle,
        )


def _regular_slice_spacing(headers: list[_SliceHeader], positions: np.ndarray, along_z: bool) -> float:
    """The spacing between consecutive slices, which must be the same everywhere (a grid, not a stack)."""
    gaps = np.diff(positions)
    usual = _usual_gap(gaps)
    tolerance = max(MIN_SLICE_SPACING_TOLERANCE_MM, RELATIVE_SLICE_SPACING_TOLERANCE * usual)
    irregular = np.flatnonzero(np.abs(gaps - usual) > tolerance)
    if irregular.size:
        problems = []
        for i in irregular[:5]:
            gap = float(gaps[i])
            where = (
                f"between {_format_position(headers[i], positions[i], along_z)} and "
                f"{_format_position(headers[i + 1], positions[i + 1], along_z)}"
            )
            missing = round(gap / usual) - 1
            if missing >= 1 and abs(gap / usual - round(gap / usual)) < 0.1:
                problems.append(
                    f"slice gap of {_format_mm(gap)} mm {where} where the spacing is {_format_mm(usual)} mm "
                    f"elsewhere: {missing} slice{'s' if missing > 1 else ''} missing?"
                )
            else:
                problems.append(
                    f"slice spacing of {_format_mm(gap)} mm {where} where it is {_format_mm(usual)} mm elsewhere"
                )
        more = f" (and {irregular.size - 5} more)" if irregular.size > 5 else ""
        raise IrregularSliceSpacingError(
            "; ".join(problems) + more,
            usual_spacing_mm=usual,
            irregular_gaps_mm=[float(gaps[i]) for i in irregular],
        )
    return float((positions[-1] - positions[0]) / (len(positions) - 1))


def _usual_gap(gaps: np.ndarray) -> float:
    """The most common gap (ties go to the smaller one, since missing slices make gaps larger)."""
    tolerance = np.maximum(MIN_SLICE_SPACING_TOLERANCE_MM, RELATIVE_SLICE_SPACING_TOLERANCE * gaps)
    agreeing = np.abs(gaps[:, None] - gaps[None, :]) <= tolerance[:, None]
    counts = agreeing.sum(axis=1)
    best = max(range(len(gaps)), key=lambda i: (counts[i], -gaps[i]))
    return float(np.median(gaps[agreeing[best]]))


def _single_slice_thickness(f: _CtFile) -> float:
    for keyword in ("SliceThickness", "SpacingBetweenSlices"):
        value = _optional_float(f.dataset, keyword)
        if value is not None and value > 0:
            return value
    raise MissingAttributeError(
        f"{f.label} is a single slice without SliceThickness or SpacingBetweenSlices, so its voxel depth is unknown",
        attribute="SliceThickness",
        file=f.label,
    )


def _slice_hu(header: _SliceHeader) -> np.ndarray:
    """Decode one slice and apply its own rescale slope and intercept."""
    f = header.file
    stored = _decode_pixels(f)
    del f.dataset.PixelData  # the encoded bytes are no longer needed: keep peak memory to about the volume
    if stored.shape != (header.rows, header.columns):
        raise UndecodablePixelDataError(
            f"{f.label} decoded to shape {stored.shape}, expected {header.rows}x{header.columns}",
            file=f.label,
            transfer_syntax=str(f.transfer_syntax),
        )
    slope = _optional_float(f.dataset, "RescaleSlope")
    intercept = _optional_float(f.dataset, "RescaleIntercept")
    hu = stored.astype(np.float64) * (1.0 if slope is None else slope) + (0.0 if intercept is None else intercept)
    return hu.astype(np.float32)


def _syntax_details(f: _CtFile) -> tuple[str, dict]:
    syntax = f.transfer_syntax
    named = f"transfer syntax {syntax.name}, {syntax}" if syntax.name != str(syntax) else f"transfer syntax {syntax}"
    return named, {"file": f.label, "transfer_syntax": str(syntax)}


def _pixel_decoder(f: _CtFile):
    """The decoder of the slice's transfer syntax, or ``UndecodablePixelDataError`` saying what to install."""
    syntax = f.transfer_syntax
    named, details = _syntax_details(f)
    if "PixelData" not in f.dataset:
        raise UndecodablePixelDataError(f"{f.label} has no pixel data", **details)
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise UndecodablePixelDataError(
            f"{f.label} ({named}) cannot be decoded: pydicom has no pixel decoder for this transfer syntax; "
            "export the series uncompressed (e.g. with gdcmconv --raw or dcmdjpeg)",
            **details,
        ) from None
    if not decoder.is_available:
        hint = _INSTALL_HINTS.get(str(syntax)) or "; ".join(decoder.missing_dependencies) or "a decoder plugin"
        raise UndecodablePixelDataError(
            f"{f.label} ({named}) cannot be decoded by this installation: install {hint}",
            install=hint,
            **details,
        )
    return decoder


def _check_pixel_data(header: _SliceHeader) -> None:
    """Without decoding: a decoder is there, and uncompressed pixel data is as long as the matrix needs."""
    f = header.file
    _pixel_decoder(f)
    if f.transfer_syntax.is_compressed:
        return  # only decoding tells whether an encapsulated frame is whole
    named, details = _syntax_details(f)
    bits = _optional_int(f.dataset, "BitsAllocated") or 16
    expected = header.rows * header.columns * max(bits // 8, 1)
    element = f.dataset.get_item("PixelData")
    if isinstance(element, RawDataElement) and element.value is None and f.path is not None:  # deferred: on disk
        available = min(int(element.length), max(os.path.getsize(f.path) - int(element.value_tell), 0))
    else:
        value = f.dataset.PixelData
        available = len(value) if value is not None else 0
    if available < expected:
        raise UndecodablePixelDataError(
            f"{f.label} ({named}) holds {available} bytes of pixel data where its {header.rows}x{header.columns} "
            f"matrix needs {expected}: the file is truncated or damaged",
            **details,
        )


def _decode_pixels(f: _CtFile) -> np.ndarray:
    syntax = f.transfer_syntax
    named, details = _syntax_details(f)
    _pixel_decoder(f)
    try:
        return pixel_array(f.dataset)
    except Exception as exc:  # decoder plugins raise assorted types on damaged data
        reason = " ".join(str(exc).split())  # pydicom lists each plugin's failure on its own line
        hint = _INSTALL_HINTS.get(str(syntax))
        advice = f"; if the file is intact, another decoder may help (install {hint})" if hint else ""
        raise UndecodablePixelDataError(
            f"the pixel data of {f.label} ({named}) could not be decoded, the file may be damaged or "
            f"truncated{advice}. Decoder said: {reason}",
            **details,
        ) from exc


def _series_meta(headers: list[_SliceHeader], positions: np.ndarray) -> dict:
    first = headers[0].file.dataset
    padding = _optional_float(first, "PixelPaddingValue")
    return {
        "source_format": "dicom",
        "modality": "CT",
        "sop_class_uid": CT_IMAGE_STORAGE,
        "sop_instance_uids": [h.file.sop_instance_uid for h in headers],
        "study_instance_uid": str(first.get("StudyInstanceUID", "") or ""),
        "series_instance_uid": headers[0].file.series_uid,
        "frame_of_reference_uid": str(first.get("FrameOfReferenceUID", "") or ""),
        "patient_position": str(first.get("PatientPosition", "") or ""),
        "series_description": str(first.get("SeriesDescription", "") or ""),
        "series_number": _optional_int(first, "SeriesNumber"),
        "manufacturer": str(first.get("Manufacturer", "") or ""),
        "slice_thickness": _optional_float(first, "SliceThickness"),
        "slice_positions": [float(p) + 0.0 for p in positions],
        "transfer_syntaxes": sorted({str(h.file.transfer_syntax) for h in headers}),
        "pixel_padding_value": padding,  # stored value (before rescale), None when absent
        "dicom": {keyword: _as_text(first.get(keyword)) for keyword in RTSTRUCT_COPIED_ATTRIBUTES},
    }


# --- small helpers ---------------------------------------------------------------------------------


class _WithheldMessages(logging.Filter):
    """A log filter that drops every record; ``count`` is the number of warnings caught alongside."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        return False


@contextmanager
def _pydicom_messages_withheld() -> Iterator[_WithheldMessages]:
    """Silence pydicom's warnings and log records while reading: they quote element values verbatim."""
    logger = logging.getLogger("pydicom")
    withheld = _WithheldMessages()  # one per call, so concurrent reads do not remove each other's filter
    logger.addFilter(withheld)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield withheld
            finally:
                withheld.count = len(caught)
    finally:
        logger.removeFilter(withheld)


def _optional_float(ds: Dataset, keyword: str) -> float | None:
    value = ds.get(keyword)
    if value in (None, ""):
        return None
    try:
        number = float(value[0] if isinstance(value, pydicom.multival.MultiValue) else value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _optional_int(ds: Dataset, keyword: str) -> int | None:
    number = _optional_float(ds, keyword)
    return None if number is None else int(number)


def _as_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, pydicom.multival.MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value)


def _format_mm(value: float) -> str:
    """Millimetres to at most 3 decimals, at least one: 6.0, 1.25, -99.48."""
    text = f"{value + 0.0:.3f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _format_vector(values: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def _format_position(header: _SliceHeader, position_along_normal: float, along_z: bool) -> str:
    """A slice's place as a reader recognises it: its z for axial slices, else its position on the normal."""
    if along_z:
        return f"z={_format_mm(float(header.position[2]))}"
    return f"{_format_mm(float(position_along_normal))} mm along the slice normal"
