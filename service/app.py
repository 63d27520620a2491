"""The oarmorph REST API (FastAPI). The jobs API (POST a CT series, poll, fetch the RTSTRUCT) lands with
the service issue; this module is its application object and the health probe every deployment needs."""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel

from oarmorph import __version__


class Health(BaseModel):
    status: str
    version: str


def create_app() -> FastAPI:
    app = FastAPI(
        title="oarmorph",
        version=__version__,
        description="Atlas-based head-and-neck OAR contouring: a DICOM CT series in, a DICOM RTSTRUCT out.",
    )

    @app.get("/healthz", response_model=Health, tags=["operations"])
    def healthz() -> Health:
        """Liveness: the API process answers."""
        return Health(status="ok", version=__version__)

    return app


app = create_app()
