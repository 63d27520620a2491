"""Fixtures shared by the test modules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """``../shared/data`` (or ``$OARMORPH_SHARED_DATA``): real third-party data, read in place, never copied."""
    path = Path(os.environ.get("OARMORPH_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    if not path.is_dir():
        pytest.skip(f"shared data folder {path} is absent (set OARMORPH_SHARED_DATA to use another)")
    return path


# The service tests' real Redis, worker processes, tiny model and phantom patient (tests/service_support.py).
from service_support import (  # noqa: E402, F401
    api_keys,
    phantom_case,
    redis_url,
    service_client,
    service_settings,
    service_store,
    service_worker,
    tiny_model_dir,
)
