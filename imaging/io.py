"""Volumes in and out: NIfTI and NRRD files through SimpleITK, DICOM CT through ``imaging.dicom_ct``.

SimpleITK converts NIfTI's RAS header to and from the LPS patient space ``Volume`` uses, so a volume keeps
its place in the patient through a write and a read. Masks are checked against the grid they must share
with their CT rather than resampled onto it: a silent resampling would hide a mix-up of files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .dicom_ct import DicomInput, read_ct_series
from .errors import GeometryMismatchError, InvalidMaskError, UnsupportedFormatError
from .volume import Geometry, Volume

VOLUME_FORMATS = {".nii": "nifti", ".nii.gz": "nifti", ".nrrd": "nrrd", ".nhdr": "nrrd"}


def volume_format(path: str | os.PathLike[str]) -> str:
    """``"nifti"`` or ``"nrrd"`` from the file name; any other extension is refused."""
    name = Path(path).name.lower()
    for suffix, fmt in sorted(VOLUME_FORMATS.items(), key=lambda item: -len(item[0])):
        if name.endswith(suffix):
            return fmt
    raise UnsupportedFormatError(
        f"{Path(path).name}: unknown volume format; use NIfTI (.nii, .nii.gz) or NRRD (.nrrd, .nhdr)",
        path=str(path),
        supported=sorted(VOLUME_FORMATS),
    )


def read_volume(path: str | os.PathLike[str]) -> Volume:
    """A 3-D scalar NIfTI or NRRD image, with its stored pixel type and its LPS geometry."""
    fmt = volume_format(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"no such file: {path}")
    image = sitk.ReadImage(str(path))
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise UnsupportedFormatError(
            f"{Path(path).name} holds {image.GetNumberOfComponentsPerPixel()} values per voxel; expected a scalar "
            "image",
            path=str(path),
        )
    if image.GetDimension() != 3:
        raise UnsupportedFormatError(f"{Path(path).name} is {image.GetDimension()}-D; expected 3-D", path=str(path))
    return Volume.from_sitk(image, meta={"source_format": fmt, "source_path": str(path)})


def write_volume(volume: Volume, path: str | os.PathLike[str]) -> Path:
    """Write ``volume`` as NIfTI or NRRD (chosen by extension; .nii.gz and .nrrd are gzip-compressed)."""
    fmt = volume_format(path)
    out = Path(path)
    image = volume.to_sitk()
    if volume.array.dtype == np.float16:  # neither format's SimpleITK writer takes half floats
        image = volume.with_array(volume.array.astype(np.float32)).to_sitk()
    compress = fmt == "nrrd" or out.name.lower().endswith(".gz")
    sitk.WriteImage(image, str(out), useCompression=compress)
    return out


def read_ct(
    source: str | os.PathLike[str] | Sequence[DicomInput], series_uid: str | None = None, *, fill_gaps: bool = False
) -> Volume:
    """A CT in HU (float32) from DICOM (a folder, a zip, files or bytes) or from a NIfTI/NRRD file."""
    if isinstance(source, str | os.PathLike) and Path(source).is_file() and _is_volume_file(source):
        if series_uid is not None:
            raise ValueError(f"series_uid applies to DICOM input, not to {Path(source).name}")
        volume = read_volume(source)
        return volume.with_array(volume.array.astype(np.float32, copy=False))
    return read_ct_series(source, series_uid=series_uid, fill_gaps=fill_gaps)


def read_mask(path: str | os.PathLike[str], reference: Geometry | None = None) -> Volume:
    """A binary mask (uint8 0/1) from NIfTI/NRRD; with ``reference``, it must lie on exactly that grid.

    Any single non-zero value counts as inside (0/1, 0/255 and boolean files all work); a file with
    several non-zero values is refused, since merging labels or thresholding a soft mask is the caller's
    decision.
    """
    volume = read_volume(path)
    inside = volume.array != 0
    if inside.any():
        values = volume.array[inside]
        if values.min() != values.max():
            distinct = np.unique(values)
            shown = ", ".join(f"{v:g}" for v in distinct[:8]) + (", ..." if distinct.size > 8 else "")
            raise InvalidMaskError(
                f"{Path(path).name} holds {distinct.size} different non-zero values ({shown}): a label map or "
                "a soft mask, not a binary mask; split or threshold it first",
                path=str(path),
            )
    mask = volume.with_array(inside.astype(np.uint8))
    if reference is not None and not reference.same_grid(mask.geometry):
        difference = _describe_difference(mask.geometry, reference)
        raise GeometryMismatchError(
            f"the mask {Path(path).name} is not on the reference grid: {difference}",
            mask=mask.geometry.to_dict(),
            reference=reference.to_dict(),
        )
    return mask


def _is_volume_file(path: str | os.PathLike[str]) -> bool:
    try:
        volume_format(path)
    except UnsupportedFormatError:
        return False
    return True


def _describe_difference(found: Geometry, expected: Geometry) -> str:
    parts = []
    if found.shape != expected.shape:
        parts.append(f"shape {found.shape} instead of {expected.shape}")
    if not np.allclose(found.spacing, expected.spacing, atol=1e-3):
        parts.append(f"spacing {_mm(found.spacing)} instead of {_mm(expected.spacing)}")
    if not np.allclose(found.origin, expected.origin, atol=1e-3):
        parts.append(f"origin {_mm(found.origin)} instead of {_mm(expected.origin)}")
    if not np.allclose(found.direction, expected.direction, atol=1e-5):
        parts.append(f"direction {_mm(found.direction)} instead of {_mm(expected.direction)}")
    return "; ".join(parts) or "the grids differ"


def _mm(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
