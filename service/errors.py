"""Errors the API answers with: a stable machine-readable ``code`` and a sentence, as ``{"code", "detail"}``.

Codes never change meaning; the imaging layer's codes (``imaging/errors.py``) pass through unchanged, so a
series the API refuses and a series the worker refuses carry the same code. The README lists every code.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("oarmorph.api")


class ErrorBody(BaseModel):
    code: str
    detail: str


class ServiceError(Exception):
    """An answer other than success, with its HTTP status."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers

    def __reduce__(self):  # pickled whole: the upload checks raise it in another process (service.intake_pool)
        return type(self), (self.status, self.code, self.detail, self.headers)

    def response(self) -> JSONResponse:
        return JSONResponse({"code": self.code, "detail": self.detail}, self.status, headers=self.headers)


# HTTP status of each imaging-layer code the upload checks can raise (all: the series cannot be contoured).
IMAGING_STATUS = 422

# Codes of the service itself (the imaging layer's and the model's come on top), for the README and the tests.
SERVICE_CODES = {
    "UNAUTHORIZED": (401, "no API key, or an API key that is not configured"),
    "JOB_NOT_FOUND": (404, "no such job for this API key"),
    "RTSTRUCT_NOT_READY": (409, "the job has not succeeded (yet): no RTSTRUCT"),
    "UNSUPPORTED_MEDIA_TYPE": (415, "the request is not multipart/form-data or application/zip, or a part is not"),
    "EMPTY_UPLOAD": (400, "no file, or only empty files"),
    "INVALID_REQUEST": (400, "a malformed request (multipart syntax, parameters)"),
    "INVALID_CALLBACK_URL": (400, "callback_url is not an http(s) URL"),
    "UNKNOWN_BUNDLE": (400, "the bundle named is not configured"),
    "UPLOAD_TOO_LARGE": (413, "the upload (or its unpacked zip) exceeds max_upload_bytes"),
    "TOO_MANY_FILES": (413, "more files than max_files"),
    "ZIP_INVALID": (400, "a zip that cannot be read (damaged, encrypted)"),
    "ZIP_UNSAFE_PATH": (400, "a zip member named outside the archive (absolute, .., drive, link)"),
    "ZIP_BOMB": (413, "a zip whose unpacked size exceeds the limits or its packed size by more than max_zip_ratio"),
    "NESTED_ARCHIVE": (400, "a zip inside the zip"),
    "NOT_DICOM": (422, "no file of the upload is DICOM"),
    "MATRIX_TOO_LARGE": (422, "Rows/Columns, slices or voxels beyond max_matrix, max_slices, max_voxels"),
    "TOO_FEW_SLICES": (422, "fewer slices than min_slices: no head and neck fits"),
    "SERVICE_UNAVAILABLE": (503, "Redis or the queue cannot be reached"),
    "NOT_FOUND": (404, "no such route"),
    "METHOD_NOT_ALLOWED": (405, "the route does not take this method"),
    "INTERNAL_ERROR": (500, "a bug: the time and route are logged"),
}

# Codes of the imaging layer the upload checks pass through unchanged (422).
IMAGING_CODES = (
    "NO_CT_IMAGES",
    "MULTIPLE_SERIES",
    "MISSING_ATTRIBUTE",
    "UNSUPPORTED_FORMAT",
    "INCONSISTENT_GEOMETRY",
    "INCONSISTENT_ORIENTATION",
    "INCONSISTENT_PIXEL_SPACING",
    "INCONSISTENT_MATRIX_SIZE",
    "DUPLICATE_SLICE_POSITION",
    "IRREGULAR_SLICE_SPACING",
    "GANTRY_TILT",
    "UNDECODABLE_PIXEL_DATA",
)

# Codes a failed (or cancelled) job carries besides those: what only running it shows.
JOB_CODES = {
    "NO_BODY_FOUND": "no patient body in the CT (the canonical window cannot be placed)",
    "UNDECODABLE_PIXEL_DATA": "a compressed slice that its decoder could not decode (damaged)",
    "UNKNOWN_BUNDLE": "the job's bundle is not configured on the worker",
    "MODEL_BUNDLE_INVALID": "the model directory is incomplete or inconsistent",
    "MODEL_ATLAS_MISMATCH": "the atlas found is not the one the model was exported with",
    "MODEL_ATLAS_MISSING": "the model's atlas bundle is missing",
    "ATLAS_BUNDLE_CORRUPT": "an atlas file does not match its sha256",
    "RUNTIME_UNAVAILABLE": "OARMORPH_DEVICE=cuda without a usable GPU",
    "TIME_LIMIT_EXCEEDED": "the job ran past the soft (or hard) time limit",
    "WORKER_LOST": "the worker died during the job max_attempts times",
    "OUT_OF_MEMORY": "the worker ran out of memory",
    "INTERNAL_ERROR": "a bug: the worker log has the traceback",
    "CANCELLED": "cancelled by the client (status cancelled)",
}


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors()[:5]
        )
        return JSONResponse({"code": "INVALID_REQUEST", "detail": f"invalid request ({problems})"}, 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, f"HTTP_{exc.status_code}")
        return JSONResponse({"code": code, "detail": str(exc.detail)}, exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # the exception's text may quote request content: only its type is logged
        log.error("unexpected %s on %s %s", type(exc).__name__, request.method, request.url.path, exc_info=False)
        return JSONResponse({"code": "INTERNAL_ERROR", "detail": "an unexpected error; it has been logged"}, 500)
