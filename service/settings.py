"""Service settings, read from the environment (prefix ``OARMORPH_``) in one place; the README lists every one.

The API and the worker read the same settings: the Redis URL is both the Celery broker and the job store, the
data folder holds every job's stored upload and result (``<data_dir>/jobs/<job id>/``), and a bundle name means
the same model directory to both.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OARMORPH_", env_file=".env", extra="ignore")

    # --- where things are ------------------------------------------------------------------------------------
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis: the Celery broker and the job store.")
    key_prefix: str = Field("oarmorph", description="Prefix of every Redis key the job store writes.")
    queue: str = Field("oarmorph", description="Celery queue of the contouring jobs.")
    callback_queue: str = Field("oarmorph.callbacks", description="Celery queue of the callback POSTs.")
    data_dir: Path = Field(Path("/var/lib/oarmorph"), description="Stored uploads and results (jobs/<id>/).")
    bundles_dir: Path = Field(
        REPO_ROOT / "models", description="Folder of model directories; each sub-folder with model.onnx is a bundle."
    )
    bundles: dict[str, Path] = Field(
        default_factory=dict, description='Extra bundles by name, JSON: {"name": "/path/to/model_dir"}.'
    )
    default_bundle: str = Field("phantom_proposed_cpu", description="Bundle used when a job names none.")

    # --- authentication -----------------------------------------------------------------------------------------
    api_keys: str = Field(
        "",
        description="API keys, hashed: comma-separated KEY_ID:SALT_HEX:SHA256_HEX entries (`oarmorph apikey`).",
    )
    api_keys_file: Path | None = Field(None, description="A file of the same entries, one a line (# comments).")

    # --- upload limits (checked before a job is queued) ---------------------------------------------------------
    max_upload_bytes: int = Field(2 * 1024**3, description="Largest upload (request body and unpacked zip), bytes.")
    max_files: int = Field(5000, description="Most files in one upload (multipart parts or zip members).")
    max_zip_ratio: float = Field(200.0, description="Largest unpacked/packed size ratio of a zip (zip bombs).")
    max_matrix: int = Field(2048, description="Largest Rows or Columns of a slice.")
    max_slices: int = Field(2000, description="Most slices in a series.")
    max_voxels: int = Field(1024 * 1024 * 1000, description="Most voxels in a series (slices x rows x columns).")
    min_slices: int = Field(16, description="Fewest slices of a series that can hold a head and neck.")
    fill_gaps: bool = Field(False, description="Interpolate missing slices (warned) instead of refusing the series.")

    # --- the worker --------------------------------------------------------------------------------------------
    task_soft_time_limit_s: int = Field(600, description="A job running longer fails with TIME_LIMIT_EXCEEDED.")
    task_time_limit_s: int = Field(660, description="Hard limit: the worker process running the job is killed.")
    visibility_timeout_s: int = Field(
        900, description="Seconds before Redis hands an unacknowledged job to another worker (> the hard limit)."
    )
    worker_threads: int = Field(2, description="ONNX Runtime intra-op threads of a worker process.")
    device: str = Field(
        "auto", description="ONNX Runtime provider: auto (CUDA when present), cpu or cuda (GPU: CUDA_VISIBLE_DEVICES)."
    )
    worker_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="Niceness a worker process adds to itself: on a host shared with the API, status polls are "
        "answered before the next voxel is warped (0: the worker's as started).",
    )
    heartbeat_ttl_s: int = Field(30, description="A worker not heard of for this long is dead; its job is redone.")
    sweep_interval_s: int = Field(15, description="How often each worker looks for jobs of dead workers.")
    max_attempts: int = Field(3, description="Attempts of a job whose worker died before it fails (WORKER_LOST).")
    requeue_after_s: int = Field(
        1800, description="A job queued this long without a worker taking it is queued again (a lost message)."
    )
    purge_input_on_success: bool = Field(False, description="Delete the stored images once the RTSTRUCT is written.")
    debug_stage_delay_s: float = Field(
        0.0, description="Testing only: pause this long as each stage starts (the fault tests kill a worker mid-job)."
    )

    # --- callbacks ---------------------------------------------------------------------------------------------
    callback_retries: int = Field(8, description="Retries of a callback POST that fails (exponential backoff).")
    callback_backoff_s: int = Field(2, description="First retry delay of a callback; doubles each retry.")
    callback_backoff_max_s: int = Field(600, description="Longest delay between two callback attempts.")
    callback_timeout_s: float = Field(10.0, description="Timeout of one callback POST.")

    # --- API ---------------------------------------------------------------------------------------------------
    max_page_size: int = Field(100, description="Largest page of GET /v1/jobs.")
    intake_threads: int = Field(
        1,
        ge=1,
        description="Uploads an API process unpacks at once (the rest wait their turn, so a burst of uploads never "
        "takes the threads that answer status polls).",
    )
    intake_processes: int = Field(
        1,
        ge=1,
        description="Processes beside each API process that check uploads' DICOM headers (pydicom holds the GIL: "
        "on the API's own threads it held up every status poll).",
    )
    log_level: str = Field("INFO", description="Log level of the API and the worker.")

    @model_validator(mode="after")
    def _limits_agree(self) -> Settings:
        if self.task_time_limit_s <= self.task_soft_time_limit_s:
            raise ValueError("task_time_limit_s must exceed task_soft_time_limit_s")
        if self.visibility_timeout_s <= self.task_time_limit_s:
            raise ValueError("visibility_timeout_s must exceed task_time_limit_s (else a running job is redelivered)")
        if self.min_slices < 2:
            raise ValueError("min_slices must be at least 2")
        return self

    @property
    def jobs_dir(self) -> Path:
        return Path(self.data_dir) / "jobs"

    def bundle_dirs(self) -> dict[str, Path]:
        """Every bundle by name: the model directories in ``bundles_dir``, then ``bundles`` (which win)."""
        found: dict[str, Path] = {}
        root = Path(self.bundles_dir)
        if root.is_dir():
            for child in sorted(root.iterdir()):
                if (child / "model.onnx").is_file() and (child / "card.json").is_file():
                    found[child.name] = child
        found.update({name: Path(path) for name, path in self.bundles.items()})
        return found

    def describe(self) -> dict:
        """The settings as the worker logs them at start (no key material)."""
        out = json.loads(self.model_dump_json())
        out.pop("api_keys", None)
        out["redis_url"] = redact_url(self.redis_url)
        return out


def redact_url(url: str) -> str:
    """A URL with its password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


@lru_cache
def get_settings() -> Settings:
    return Settings()
