"""The DICOM checks of uploads (``service.intake.check_series``) in processes of their own, beside the API.

Those checks read every header with pydicom: pure Python that holds the GIL for tens of milliseconds an upload.
On a thread of the API process, each time the event loop let the GIL go (a socket read, a file opened) it waited
for the checking thread's switch interval (5 ms) to get it back, so under a burst of 50 submissions a status
poll, which gives the GIL up a few times, took 100-200 ms. In another process the checks share only the CPUs.

The pool is started with the API (``start``, from the app's lifespan: spawning and importing pydicom takes a
second) or on first use, and stopped with it. A check process that dies (killed, out of memory) breaks the pool:
the upload in flight is answered 503 and the next one gets a new pool.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from imaging.dicom_ct import SeriesInspection

from .errors import ServiceError
from .intake import check_series
from .settings import Settings

log = logging.getLogger("oarmorph.api")


def _check(input_dir: Path, settings: Settings) -> SeriesInspection:
    """``check_series`` in a pool process. What is not a ``ServiceError`` comes back as a RuntimeError naming its
    type only (its message could quote file content, and not every exception class survives pickling)."""
    try:
        return check_series(input_dir, settings)
    except ServiceError:
        raise
    except Exception as exc:
        raise RuntimeError(f"the series check failed ({type(exc).__name__})") from None


def _ready() -> bool:  # imports done when the process unpickles this call: the pool is warm
    return True


class IntakePool:
    """``await pool.check(input_dir, settings)``: ``check_series`` on one of ``processes`` spawned processes."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def _pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                # spawn, not fork: the API process runs threads (the event loop's pool, Redis clients)
                context = multiprocessing.get_context("spawn")
                self._executor = ProcessPoolExecutor(self.processes, mp_context=context)
            return self._executor

    def start(self) -> None:
        """Spawn the processes now and wait until they have imported what a check needs."""
        pool = self._pool()
        for future in [pool.submit(_ready) for _ in range(self.processes)]:
            future.result()

    async def check(self, input_dir: Path, settings: Settings) -> SeriesInspection:
        pool = self._pool()
        try:
            return await asyncio.wrap_future(pool.submit(_check, Path(input_dir), settings))
        except BrokenProcessPool:
            log.error("an upload check process died: the pool is started again")
            with self._lock:
                if self._executor is pool:
                    self._executor = None
            pool.shutdown(wait=False, cancel_futures=True)
            raise ServiceError(
                503, "SERVICE_UNAVAILABLE", "the upload could not be checked (a check process stopped): try again"
            ) from None

    def stop(self) -> None:
        with self._lock:
            pool, self._executor = self._executor, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
