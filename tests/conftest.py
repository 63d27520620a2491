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
