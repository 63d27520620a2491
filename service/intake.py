"""The checks a stored upload passes before it becomes a job, and again when the worker starts reading it.

The API and the worker call the same ``check_series``, so what the API accepts the worker does not refuse for a
reason the API could have seen: it is ``imaging.dicom_ct.inspect_ct_series`` (every check ``read_ct_series``
makes, on the headers, no pixel decoded) plus the service's size limits. Errors are ``ServiceError`` with the
imaging layer's stable codes (``NO_CT_IMAGES``, ``MULTIPLE_SERIES``, ``GANTRY_TILT``, ...) or the service's own
(``NOT_DICOM``, ``EMPTY_UPLOAD``, ``MATRIX_TOO_LARGE``, ``TOO_FEW_SLICES``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from imaging.dicom_ct import SeriesInspection, inspect_ct_series
from imaging.errors import ImagingError, NoCtImagesError

from .errors import IMAGING_STATUS, ServiceError
from .settings import Settings


def _limits(settings: Settings):
    def check(found: SeriesInspection) -> None:
        slices, rows, columns = found.shape
        if max(rows, columns) > settings.max_matrix:
            raise ServiceError(
                422,
                "MATRIX_TOO_LARGE",
                f"the slices are {rows}x{columns} pixels; at most {settings.max_matrix} rows and columns are accepted",
            )
        if slices > settings.max_slices:
            raise ServiceError(
                422, "MATRIX_TOO_LARGE", f"the series has {slices} slices; at most {settings.max_slices} are accepted"
            )
        if found.voxels > settings.max_voxels:
            raise ServiceError(
                422,
                "MATRIX_TOO_LARGE",
                f"the series has {found.voxels} voxels ({slices}x{rows}x{columns}); at most {settings.max_voxels}",
            )
        if slices < settings.min_slices:
            raise ServiceError(
                422,
                "TOO_FEW_SLICES",
                f"the series has {slices} slice{'s' if slices != 1 else ''}; a head-and-neck CT needs at least "
                f"{settings.min_slices}",
            )

    return check


def check_series(input_dir: Path, settings: Settings) -> SeriesInspection:
    """The one CT series stored in ``input_dir``, checked; or ``ServiceError`` saying why it cannot be contoured."""
    files = [p for p in Path(input_dir).iterdir() if p.is_file()] if Path(input_dir).is_dir() else []
    if not files:
        raise ServiceError(400, "EMPTY_UPLOAD", "the upload holds no file (or only empty ones)")
    try:
        return inspect_ct_series(input_dir, fill_gaps=settings.fill_gaps, limits=_limits(settings))
    except NoCtImagesError as exc:
        ignored = exc.details.get("ignored") or {}
        if ignored.get("not_dicom") == len(files):
            raise ServiceError(
                422,
                "NOT_DICOM",
                f"none of the {len(files)} file{'s' if len(files) != 1 else ''} uploaded is DICOM "
                "(a damaged or truncated file reads as not DICOM too)",
            ) from None
        raise ServiceError(IMAGING_STATUS, exc.code, exc.message) from None
    except ImagingError as exc:
        raise ServiceError(IMAGING_STATUS, exc.code, exc.message) from None


def idempotency_key(found: SeriesInspection, bundle: str, owner: str) -> str:
    """The same series (its slices' SOP Instance UIDs), the same bundle, the same key: the same job."""
    h = hashlib.sha256()
    for part in (owner, bundle, found.series_instance_uid, *sorted(u for u in found.sop_instance_uids if u)):
        h.update(part.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()
