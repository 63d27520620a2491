"""Write a ``Volume`` of Hounsfield units as a DICOM CT Image Storage series.

Used by the phantom generator and by tests that need real DICOM files of a chosen geometry. One file per
slice, uncompressed explicit VR little endian, int16 with rescale intercept 0 and slope 1 (so every HU
value in [-32768, 32767] is stored exactly; values are rounded to integers).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian

from .uids import new_uid
from .volume import Volume


@dataclass
class CtSeriesInfo:
    """Patient, study and series attributes of a written series (no real person's data)."""

    patient_name: str = "Phantom^Oarmorph"
    patient_id: str = "OARMORPH-0001"
    patient_sex: str = "O"
    patient_birth_date: str = ""
    patient_position: str = "HFS"
    study_date: str = "20260101"
    study_time: str = "120000"
    study_description: str = "Head and neck planning CT"
    series_description: str = "CT head and neck"
    series_number: int = 1
    manufacturer: str = "oarmorph"
    model_name: str = "synthetic CT"
    kvp: float = 120.0
    slice_thickness: float | None = None  # defaults to the slice spacing
    study_uid: str | None = None
    series_uid: str | None = None
    frame_of_reference_uid: str | None = None
    uid_seed: str | None = None  # derive every UID from this (reproducible files)
    extra: dict = field(default_factory=dict)  # additional top-level keyword: value pairs


def write_ct_series(volume: Volume, out_dir: str | Path, info: CtSeriesInfo | None = None) -> list[Path]:
    """Write ``volume`` (HU, array ``[k, j, i]``) as one CT file per slice; returns the paths in slice order.

    The slice ``k`` lies at ``origin + direction[:, 2] * spacing[2] * k``; rows run along direction column 1
    (j) and columns along column 0 (i), as DICOM's ImageOrientationPatient requires.
    """
    info = info or CtSeriesInfo()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    geom = volume.geometry
    seed = info.uid_seed
    uid = (lambda *parts: new_uid(seed, *parts)) if seed is not None else (lambda *parts: new_uid())
    study_uid = info.study_uid or uid("study")
    series_uid = info.series_uid or uid("series", info.series_number)
    for_uid = info.frame_of_reference_uid or uid("for")
    d = geom.direction_matrix
    iop = [*d[:, 0], *d[:, 1]]
    hu = np.clip(np.rint(volume.array), -32768, 32767).astype(np.int16)
    now = _dt.datetime(2026, 1, 1, 12, 0, 0) if seed is not None else _dt.datetime.now()
    paths = []
    for k in range(geom.shape[0]):
        sop_uid = uid("sop", info.series_number, k)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.InstanceCreationDate = now.strftime("%Y%m%d")
        ds.InstanceCreationTime = now.strftime("%H%M%S")
        ds.StudyDate = info.study_date
        ds.SeriesDate = info.study_date
        ds.ContentDate = info.study_date
        ds.StudyTime = info.study_time
        ds.SeriesTime = info.study_time
        ds.ContentTime = info.study_time
        ds.AccessionNumber = ""
        ds.Modality = "CT"
        ds.Laterality = ""  # type 2C: empty, the head and neck is a paired region scanned whole
        ds.Manufacturer = info.manufacturer
        ds.ManufacturerModelName = info.model_name
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = info.study_description
        ds.SeriesDescription = info.series_description
        ds.PatientName = info.patient_name
        ds.PatientID = info.patient_id
        ds.PatientBirthDate = info.patient_birth_date
        ds.PatientSex = info.patient_sex
        ds.KVP = f"{info.kvp:g}"
        ds.SliceThickness = f"{(info.slice_thickness or geom.spacing[2]):.6g}"
        ds.PatientPosition = info.patient_position
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = info.series_number
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = k + 1
        ipp = geom.index_to_physical(np.array([0.0, 0.0, float(k)]))
        ds.ImagePositionPatient = [f"{v:.6g}" for v in ipp]
        ds.ImageOrientationPatient = [f"{v:.6g}" for v in iop]
        ds.FrameOfReferenceUID = for_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = f"{ipp[2]:.6g}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = geom.shape[1]
        ds.Columns = geom.shape[2]
        ds.PixelSpacing = [f"{geom.spacing[1]:.6g}", f"{geom.spacing[0]:.6g}"]  # row spacing (j), column spacing (i)
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        for key, value in info.extra.items():
            setattr(ds, key, value)
        ds.PixelData = hu[k].tobytes()
        path = out / f"CT_{k + 1:04d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths
