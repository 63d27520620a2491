"""The oarmorph REST API (FastAPI): ``create_app(settings)`` builds it; ``app`` is what uvicorn serves.

    uvicorn service.app:app --host 0.0.0.0 --port 8000

Routes live in ``service.api`` (``jobs``: /v1/jobs; ``ops``: /healthz, /readyz, /metrics), what they share in
``service.context``; errors are ``{"code", "detail"}`` bodies (``service.errors``).
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request

from oarmorph import __version__

from .api import jobs, ops
from .context import ServiceContext
from .errors import install_handlers
from .logs import configure_logging
from .settings import Settings, get_settings

DESCRIPTION = (
    "Atlas-based head-and-neck OAR contouring: a DICOM CT series in, a DICOM RTSTRUCT with every atlas OAR out. "
    "Post a series (`POST /v1/jobs`), poll the job (`GET /v1/jobs/{id}`), fetch the RTSTRUCT "
    '(`GET /v1/jobs/{id}/rtstruct`). Every error is a JSON body `{"code": ..., "detail": ...}` with a stable '
    "code. Authenticate with an API key in the `X-API-Key` header (or `Authorization: Bearer`)."
)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        configure_logging(settings.log_level)
        yield

    app = FastAPI(title="oarmorph", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.context = ServiceContext(settings)
    install_handlers(app)
    app.include_router(ops.router)
    app.include_router(jobs.router)

    @app.middleware("http")
    async def _timing(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        if path != "/metrics":
            _, requests = app.state.context.metrics
            requests.labels(request.method, path, str(response.status_code)).observe(time.perf_counter() - start)
        return response

    return app


def __getattr__(name: str):  # ``service.app:app`` for uvicorn, built on first access (not at import)
    if name == "app":
        globals()["app"] = built = create_app()
        return built
    raise AttributeError(name)
