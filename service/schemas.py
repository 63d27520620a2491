"""The job document as the API shows it (the OpenAPI schema), made from the stored one by ``job_view``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
Stage = Literal["reading", "preprocessing", "registration", "warping", "writing"]


class ModelInfo(BaseModel):
    name: str
    version: str


class AtlasInfo(BaseModel):
    name: str
    sha256: str
    oars: int = Field(description="Number of OARs of the atlas: every one is in the RTSTRUCT.")


class InputInfo(BaseModel):
    files: int
    slices: int
    rows: int
    columns: int
    spacing_mm: list[float] = Field(description="(column, row, slice) spacing in mm.")


class OarQa(BaseModel):
    volume_cc: float
    empty: bool = Field(description="Lands outside the scanned volume: listed in the RTSTRUCT without contours.")
    reaches_window_border: bool
    cut_by_scan: bool


class Qa(BaseModel):
    model: ModelInfo
    oar_count: int
    contoured: int = Field(description="OARs with at least one contour.")
    oars: dict[str, OarQa]
    folded_fraction: float = Field(description="Fraction of field voxels with a non-positive Jacobian determinant.")
    warnings: list[str]
    seconds: dict[str, float]
    window_shift: list[int]


class CallbackState(BaseModel):
    url: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int = 0
    last_error: str | None = None


class Links(BaseModel):
    self: str
    rtstruct: str | None = None


class Job(BaseModel):
    id: str
    status: Status
    stage: Stage | None = Field(None, description="The running stage (running jobs only).")
    percent: int = Field(0, ge=0, le=100)
    code: str | None = Field(None, description="Why the job failed: a stable machine-readable code.")
    detail: str | None = Field(None, description="Why the job failed, in a sentence.")
    created_at: str
    updated_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    bundle: str
    model: ModelInfo
    atlas: AtlasInfo
    input: InputInfo
    attempts: int = Field(0, description="Times a worker started the job (more than 1: a worker died).")
    seconds: dict[str, float] = Field(default_factory=dict, description="Seconds per stage, once finished.")
    qa: Qa | None = None
    callback: CallbackState | None = None
    links: Links


class JobPage(BaseModel):
    items: list[Job]
    total: int
    page: int
    page_size: int


class Ready(BaseModel):
    status: Literal["ready", "not ready"]
    checks: dict[str, Any]


def job_view(doc: dict[str, Any], base: str = "/v1/jobs") -> Job:
    job_id = doc["id"]
    links = Links(
        self=f"{base}/{job_id}", rtstruct=f"{base}/{job_id}/rtstruct" if doc["status"] == "succeeded" else None
    )
    fields = {k: doc.get(k) for k in Job.model_fields if k not in ("links",) and doc.get(k) is not None}
    return Job(**fields, links=links)
