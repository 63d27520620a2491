"""``/v1/jobs``: post a CT series, poll its job, fetch the RTSTRUCT, list, cancel or purge.

A job is answered only once it is safe: the upload is stored under the job's folder, the series checked (the
worker's own checks, on the headers), the job recorded in Redis and its message in the queue; then 202 with a
Location. Anything wrong before that is a 4xx with a stable code and nothing of the upload is kept.
"""

from __future__ import annotations

import logging
import uuid
from typing import Annotated
from urllib.parse import urlsplit

from anyio import to_thread
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from ..errors import ErrorBody, ServiceError
from ..intake import idempotency_key
from ..queue import RUN_JOB
from ..schemas import Job, JobPage, Status, job_view
from ..store import ACTIVE, now_iso
from ..upload import receive_upload
from .deps import Context, Owner

log = logging.getLogger("oarmorph.api")
router = APIRouter(prefix="/v1", tags=["jobs"])

_ERRORS = {
    400: {"model": ErrorBody, "description": "A malformed request, an empty upload, an unsafe or damaged zip."},
    401: {"model": ErrorBody, "description": "No API key, or one that is not configured."},
    413: {"model": ErrorBody, "description": "Too large: bytes, files, or a zip bomb."},
    415: {"model": ErrorBody, "description": "Not multipart/form-data or application/zip."},
    422: {"model": ErrorBody, "description": "Not one CT series that can be contoured (code says why)."},
    503: {"model": ErrorBody, "description": "Redis or the queue cannot be reached."},
}
_NOT_FOUND = {404: {"model": ErrorBody, "description": "No such job for this API key."}}

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "The slices of one CT series (DICOM files), or one zip of them.",
                        },
                        "bundle": {"type": "string", "description": "Model bundle (default: the configured one)."},
                        "callback_url": {
                            "type": "string",
                            "format": "uri",
                            "description": "POSTed the final job document when the job ends.",
                        },
                    },
                    "required": ["files"],
                }
            },
            "application/zip": {
                "schema": {"type": "string", "format": "binary"},
                "description": "One zip of the series' DICOM files (bundle and callback_url as query parameters).",
            },
        },
    },
    "parameters": [
        {"name": "bundle", "in": "query", "required": False, "schema": {"type": "string"}},
        {"name": "callback_url", "in": "query", "required": False, "schema": {"type": "string", "format": "uri"}},
    ],
}


def _owned(context, owner: str, job_id: str) -> dict:
    context.storage.job_dir(job_id)  # the id's pattern (404 otherwise)
    doc = context.store.get(job_id)
    if doc is None or doc.get("owner") != owner:
        raise ServiceError(404, "JOB_NOT_FOUND", f"no job {job_id} for this API key")
    return doc


def _callback(url: str | None) -> dict | None:
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or len(url) > 2048:
        raise ServiceError(400, "INVALID_CALLBACK_URL", "callback_url must be an absolute http or https URL")
    return {"url": url, "status": "pending", "attempts": 0, "last_error": None}


@router.post(
    "/jobs",
    status_code=202,
    response_model=Job,
    responses={200: {"model": Job, "description": "The same series was posted before: its job."}, **_ERRORS},
    openapi_extra=_UPLOAD_BODY,
    summary="Submit one CT series",
)
async def submit_job(request: Request, context: Context, owner: Owner) -> Response:
    """One CT series, as multipart DICOM files or one zip; 202 with the job and its Location, or a 4xx saying
    why the series cannot be contoured. The same series posted again with the same bundle is the same job."""
    settings = context.settings
    job_id = uuid.uuid4().hex
    await run_in_threadpool(context.storage.create, job_id)
    accepted = False
    try:
        upload = await receive_upload(
            request, context.storage.upload_dir(job_id), settings.max_upload_bytes, settings.max_files
        )
        bundle = upload.fields.get("bundle") or settings.default_bundle
        info = context.bundle(bundle)
        if info is None:
            known = ", ".join(sorted(settings.bundle_dirs())) or "none"
            raise ServiceError(400, "UNKNOWN_BUNDLE", f"no bundle {bundle[:64]!r} is configured (configured: {known})")
        callback = _callback(upload.fields.get("callback_url"))
        files = await to_thread.run_sync(
            context.storage.sort_upload,
            job_id,
            settings.max_upload_bytes,
            settings.max_files,
            settings.max_zip_ratio,
            limiter=context.intake_limiter,
        )
        if files == 0:
            raise ServiceError(400, "EMPTY_UPLOAD", "the upload holds no file (or only empty ones)")
        found = await context.intake_pool.check(context.storage.input_dir(job_id), settings)
        key = idempotency_key(found, bundle, owner)
        try:
            existing = await run_in_threadpool(context.store.claim_idempotency, key, job_id)
        except Exception as exc:
            raise ServiceError(503, "SERVICE_UNAVAILABLE", "the job store (Redis) cannot be reached") from exc
        if existing is not None:
            doc = await run_in_threadpool(context.store.get, existing)
            if doc is not None:
                log.info("job %s: the same series again from key %s, answered with it", existing, owner)
                return JSONResponse(
                    job_view(doc).model_dump(mode="json"), 200, headers={"Location": f"/v1/jobs/{existing}"}
                )
        now = now_iso()
        slices, rows, columns = found.shape
        doc = {
            "id": job_id,
            "owner": owner,
            "status": "queued",
            "worker": "",
            "idempotency_key": key,
            "stage": None,
            "percent": 0,
            "code": None,
            "detail": None,
            "created_at": now,
            "updated_at": now,
            "started_at": None,
            "finished_at": None,
            "bundle": bundle,
            "model": info.model,
            "atlas": info.atlas,
            "input": {
                "files": files,
                "slices": slices,
                "rows": rows,
                "columns": columns,
                "spacing_mm": [round(s, 4) for s in found.spacing],
            },
            "attempts": 0,
            "seconds": {},
            "qa": None,
            "callback": callback,
        }
        try:
            await run_in_threadpool(context.store.create, doc)
            await run_in_threadpool(
                context.celery.send_task, RUN_JOB, args=[job_id], queue=settings.queue, task_id=f"{job_id}-0"
            )
        except Exception as exc:
            log.error("job %s: could not be queued (%s)", job_id, type(exc).__name__)
            try:
                context.store.purge(job_id)
            except Exception:
                pass
            raise ServiceError(503, "SERVICE_UNAVAILABLE", "the job could not be queued (Redis unreachable)") from exc
        accepted = True
        log.info("job %s: queued by key %s (%d slices, bundle %s)", job_id, owner, slices, bundle)
        return JSONResponse(job_view(doc).model_dump(mode="json"), 202, headers={"Location": f"/v1/jobs/{job_id}"})
    finally:
        if not accepted:
            await run_in_threadpool(context.storage.remove, job_id)


@router.get("/jobs", response_model=JobPage, responses={401: _ERRORS[401]}, summary="List this key's jobs")
def list_jobs(
    context: Context,
    owner: Owner,
    status: Annotated[Status | None, Query(description="Only jobs in this status.")] = None,
    page: Annotated[int, Query(ge=1)] = 1,
    page_size: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> JobPage:
    """Newest first."""
    size = min(page_size, context.settings.max_page_size)
    total, docs = context.store.list(owner, status, (page - 1) * size, size)
    return JobPage(items=[job_view(d) for d in docs], total=total, page=page, page_size=size)


@router.get("/jobs/{job_id}", response_model=Job, responses={401: _ERRORS[401], **_NOT_FOUND}, summary="A job")
def get_job(job_id: str, context: Context, owner: Owner) -> Response:
    """Status; the running stage and percent; code and reason of a failure; timestamps; model and atlas; on
    success the QA summary (per-OAR volume in cc, folded fraction, warnings)."""
    # The route polled most: the view is validated once and written by pydantic-core, not dumped to a dict,
    # validated again against response_model and encoded by json.dumps (what returning the model costs).
    body = job_view(_owned(context, owner, job_id)).model_dump_json()
    return Response(body, media_type="application/json")


@router.get(
    "/jobs/{job_id}/rtstruct",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/dicom": {}}, "description": "The RTSTRUCT (DICOM Part 10 file)."},
        401: _ERRORS[401],
        **_NOT_FOUND,
        409: {"model": ErrorBody, "description": "The job has not succeeded."},
    },
    summary="The RTSTRUCT of a job",
)
def get_rtstruct(job_id: str, context: Context, owner: Owner) -> FileResponse:
    doc = _owned(context, owner, job_id)
    if doc["status"] != "succeeded":
        raise ServiceError(409, "RTSTRUCT_NOT_READY", f"job {job_id} is {doc['status']}: no RTSTRUCT")
    path = context.storage.rtstruct_path(job_id)
    if not path.is_file():
        raise ServiceError(404, "JOB_NOT_FOUND", f"the RTSTRUCT of job {job_id} is no longer stored")
    return FileResponse(path, media_type="application/dicom", filename=f"rtstruct-{job_id}.dcm")


@router.delete(
    "/jobs/{job_id}",
    response_model=Job,
    responses={204: {"description": "A finished job purged."}, 401: _ERRORS[401], **_NOT_FOUND},
    summary="Cancel or purge a job",
)
def delete_job(job_id: str, context: Context, owner: Owner) -> Response:
    """A queued or running job is cancelled (200, the job); a finished one is purged with its files (204). Either
    way the stored images are removed."""
    doc = _owned(context, owner, job_id)
    if doc["status"] in ACTIVE:
        done, _ = context.store.update(
            job_id,
            {"stage": None, "finished_at": now_iso(), "code": "CANCELLED", "detail": "cancelled by the client"},
            allowed=ACTIVE,
            status="cancelled",
        )
        if done:
            context.storage.remove_input(job_id)
            context.storage.remove_result(job_id)
            context.store.count_finished("cancelled")
            log.info("job %s: cancelled by key %s", job_id, owner)
            return JSONResponse(job_view(context.store.get(job_id) or doc).model_dump(mode="json"), 200)
    context.store.purge(job_id)
    context.storage.remove(job_id)
    log.info("job %s: purged by key %s", job_id, owner)
    return Response(status_code=204)
