"""Typed errors of the imaging layer.

Every rejection a user can reach carries a stable machine-readable ``code`` (the service returns it in
its 4xx bodies, the CLI prints it) and a sentence a physicist understands. Codes never change meaning;
new situations get new codes.
"""

from __future__ import annotations

from typing import Any


class ImagingError(Exception):
    """Base of every error the imaging layer raises on purpose."""

    code: str = "IMAGING_ERROR"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


# --- reading files -------------------------------------------------------------------------------


class NotDicomError(ImagingError):
    code = "NOT_DICOM"


class NoCtImagesError(ImagingError):
    code = "NO_CT_IMAGES"


class MultipleSeriesError(ImagingError):
    code = "MULTIPLE_SERIES"


class SeriesNotFoundError(ImagingError):
    code = "SERIES_NOT_FOUND"


class UndecodablePixelDataError(ImagingError):
    code = "UNDECODABLE_PIXEL_DATA"


class MissingAttributeError(ImagingError):
    code = "MISSING_ATTRIBUTE"


class UnsupportedFormatError(ImagingError):
    code = "UNSUPPORTED_FORMAT"


class InvalidMaskError(ImagingError):
    """A file read as a binary mask holds several non-zero values (a label map or a soft mask)."""

    code = "INVALID_MASK"


# --- geometry of a series --------------------------------------------------------------------------


class GeometryError(ImagingError):
    code = "INCONSISTENT_GEOMETRY"


class InconsistentOrientationError(GeometryError):
    code = "INCONSISTENT_ORIENTATION"


class InconsistentPixelSpacingError(GeometryError):
    code = "INCONSISTENT_PIXEL_SPACING"


class InconsistentMatrixError(GeometryError):
    code = "INCONSISTENT_MATRIX_SIZE"


class DuplicateSlicePositionError(GeometryError):
    code = "DUPLICATE_SLICE_POSITION"


class IrregularSliceSpacingError(GeometryError):
    code = "IRREGULAR_SLICE_SPACING"


class GantryTiltError(GeometryError):
    code = "GANTRY_TILT"


class GeometryMismatchError(GeometryError):
    """Two volumes that must share a grid (a CT and its masks) do not."""

    code = "GEOMETRY_MISMATCH"


# --- canonical space ------------------------------------------------------------------------------


class NoBodyFoundError(ImagingError):
    code = "NO_BODY_FOUND"


# --- structure sets --------------------------------------------------------------------------------


class RtStructError(ImagingError):
    code = "INVALID_RTSTRUCT"


class RtStructReferenceError(RtStructError):
    """The structure set does not belong to the CT it is read against."""

    code = "RTSTRUCT_REFERENCE_MISMATCH"
