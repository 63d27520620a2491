"""Operations: liveness, readiness (Redis, a live worker with the default model loaded) and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from oarmorph import __version__

from ..schemas import Ready
from .deps import Context

router = APIRouter(tags=["operations"])


class Health(BaseModel):
    status: str
    version: str


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """Liveness: the API process answers."""
    return Health(status="ok", version=__version__)


@router.get("/readyz", response_model=Ready, responses={503: {"model": Ready, "description": "Not ready."}})
def readyz(context: Context) -> Response:
    """Ready when Redis answers, the default bundle is configured, and a worker with it loaded is alive."""
    settings = context.settings
    checks: dict = {}
    ready = True
    try:
        context.probe.redis.ping()
        checks["redis"] = "ok"
        workers = context.probe.workers()
    except Exception as exc:
        checks["redis"] = f"unreachable ({type(exc).__name__})"
        workers = []
        ready = False
    bundle = context.bundle(settings.default_bundle)
    checks["default_bundle"] = (
        f"{settings.default_bundle}: {bundle.model['name']} {bundle.model['version']}"
        if bundle
        else f"{settings.default_bundle}: not configured"
    )
    ready = ready and bundle is not None
    loaded = [w for w in workers if settings.default_bundle in (w.get("models") or [])]
    checks["workers"] = len(workers)
    checks["workers_with_default_model"] = len(loaded)
    checks["models_loaded"] = sorted({m for w in workers for m in (w.get("models") or [])})
    ready = ready and bool(loaded)
    body = Ready(status="ready" if ready else "not ready", checks=checks)
    return JSONResponse(body.model_dump(), 200 if ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text exposition."}},
)
def metrics(context: Context) -> Response:
    """Jobs by status, finished jobs, queue length, live workers, stage durations, API request durations."""
    registry, _ = context.metrics
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
