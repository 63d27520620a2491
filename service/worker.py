"""The Celery worker: runs contouring jobs with the ONNX model, one at a time per process (one process per GPU).

    celery -A service.worker worker --pool prefork --concurrency 1 --loglevel INFO

Each worker process loads its model bundles once (``model_export.bundle.load_model_dir``: ONNX Runtime with CUDA
when the build and a GPU are there, else the CPU) when it starts, and keeps a heartbeat in Redis saying what it
has loaded and which job it runs. A job goes through the stages reading, preprocessing, registration, warping and
writing, each reported on the job with its percent; it ends succeeded (RTSTRUCT and QA summary), failed (a
code and a sentence) or cancelled (the client's DELETE, noticed at the next stage).

Never lost, never done twice, never stuck in running:
* Delivery is at least once (``service.queue``: late acknowledgement, requeue when the worker process dies).
  The task is idempotent: a job already finished is left alone; a job another live process is running is left
  to it; a job whose process died is taken over (the claim is one atomic step in Redis, guarded by the holder).
* Each process sweeps every ``sweep_interval_s`` (and once at start): a running job whose holder's heartbeat has
  expired is queued again (or failed with ``WORKER_LOST`` after ``max_attempts``), and a job queued for longer
  than ``requeue_after_s`` (a message lost with a Redis that had no persistence) is sent again.
* Time limits: past the soft limit the job fails with ``TIME_LIMIT_EXCEEDED``; at the hard limit Celery kills
  the process and the job is failed the same way by the parent.
* Errors the input causes fail the job with their stable code (the API's codes: ``check_series`` is run again
  before reading); anything else fails it with ``INTERNAL_ERROR`` and the traceback goes to the log (no message
  text: it could quote file content).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from typing import Any

import httpx
from celery import Task, signals
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from anatomy.bundle import BundleIntegrityError
from anatomy.catalogue import UnknownStructureError
from imaging.dicom_ct import read_ct_series
from imaging.errors import ImagingError
from model_export.card import ModelBundleError, RuntimeUnavailableError
from oarmorph import __version__
from pipeline.structure_set import contour_to_rtstruct

from .errors import ServiceError
from .intake import check_series
from .logs import configure_logging
from .queue import RUN_JOB, SEND_CALLBACK, make_celery
from .schemas import job_view
from .settings import get_settings
from .storage import JobStorage
from .store import FINAL, JobStore, now_iso

settings = get_settings()
configure_logging(settings.log_level)
app = make_celery(settings)
log = logging.getLogger("oarmorph.worker")

STAGE_PERCENT = {"reading": 5, "preprocessing": 20, "registration": 35, "warping": 55, "checks": 75, "writing": 85}
REPORTED_STAGE = {"checks": "warping"}  # the field's checks are part of warping for the client
TYPED_ERRORS = (
    ImagingError,
    ModelBundleError,
    RuntimeUnavailableError,
    BundleIntegrityError,
    UnknownStructureError,
)


class JobCancelled(Exception):
    """The job was cancelled (DELETE) while it ran: stop, write nothing."""


class WorkerRuntime:
    """One worker process: its models, its heartbeat and sweeper thread, and the job it runs."""

    def __init__(self, hostname: str) -> None:
        self.settings = settings
        self.store = JobStore.from_url(settings.redis_url, settings.key_prefix)
        self.storage = JobStorage(settings.jobs_dir)
        self.worker_id = f"{hostname}:{os.getpid()}"
        self.models: dict[str, Any] = {}
        self.load_errors: dict[str, str] = {}
        self.current_job: str | None = None
        self.started = now_iso()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._load_lock = threading.Lock()

    # --- models ------------------------------------------------------------------------------------------------

    def model(self, bundle: str):
        with self._load_lock:
            if bundle not in self.models:
                path = self.settings.bundle_dirs().get(bundle)
                if path is None:
                    raise ServiceError(400, "UNKNOWN_BUNDLE", f"no bundle {bundle!r} is configured on this worker")
                from model_export.bundle import load_model_dir

                start = time.perf_counter()
                loaded = load_model_dir(path, threads=self.settings.worker_threads, device=self.settings.device)
                self.models[bundle] = loaded
                log.info(
                    "bundle %s loaded: %s on %s in %.1f s",
                    bundle,
                    loaded.name,
                    loaded.register.provider,
                    time.perf_counter() - start,
                )
            return self.models[bundle]

    # --- heartbeat and sweeper ---------------------------------------------------------------------------------

    def start(self) -> None:
        log.info("worker %s starting (oarmorph %s)", self.worker_id, __version__)
        try:
            self.model(self.settings.default_bundle)
        except Exception as exc:  # the worker still runs: jobs of this bundle fail with the reason
            self.load_errors[self.settings.default_bundle] = getattr(exc, "code", type(exc).__name__)
            log.error("default bundle %s could not be loaded: %s", self.settings.default_bundle, self.load_errors)
        self.beat()
        self.sweep()
        self._thread = threading.Thread(target=self._loop, name="oarmorph-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        try:
            self.store.forget_worker(self.worker_id)
        except Exception:
            pass

    def info(self) -> dict:
        return {
            "worker": self.worker_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "models": sorted(self.models),
            "providers": {name: m.register.provider for name, m in self.models.items()},
            "load_errors": self.load_errors,
            "current_job": self.current_job,
            "started_at": self.started,
            "beat_at": now_iso(),
        }

    def beat(self) -> None:
        self.store.heartbeat(self.worker_id, self.info(), self.settings.heartbeat_ttl_s)

    def _loop(self) -> None:
        period = max(self.settings.heartbeat_ttl_s / 3.0, 0.5)
        next_sweep = time.monotonic() + self.settings.sweep_interval_s
        while not self._stop.wait(period):
            try:
                self.beat()
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self.settings.sweep_interval_s
                    self.sweep()
            except Exception as exc:  # Redis away: try again next period
                log.warning("heartbeat: job store unreachable (%s)", type(exc).__name__)

    def sweep(self) -> None:
        """Requeue (or fail) running jobs whose worker died; resend jobs queued for too long."""
        for job_id in self.store.ids_with_status("running"):
            doc = self.store.get(job_id)
            if doc is None or doc["status"] != "running":
                continue
            holder = doc.get("worker") or ""
            if holder == self.worker_id or (holder and self.store.worker(holder) is not None):
                continue
            attempts = int(doc.get("attempts") or 0)
            if attempts >= self.settings.max_attempts:
                self.fail(
                    job_id,
                    "WORKER_LOST",
                    f"the worker running the job died {attempts} times; the job is not tried again",
                    guard=("worker", holder),
                )
                continue
            done, _ = self.store.update(
                job_id,
                {"worker": "", "stage": None, "percent": 0},
                allowed=("running",),
                guard=("worker", holder),
                status="queued",
            )
            if done:
                log.warning("job %s: its worker %s is gone; queued again (attempt %d)", job_id, holder, attempts + 1)
                app.send_task(RUN_JOB, args=[job_id], queue=self.settings.queue, task_id=f"{job_id}-{attempts}")
        stale = time.time() - self.settings.requeue_after_s
        for job_id in self.store.ids_with_status("queued", older_than=stale):
            log.warning(
                "job %s: queued for over %d s; its message is sent again", job_id, self.settings.requeue_after_s
            )
            self.store.touch_status(job_id, "queued")
            app.send_task(RUN_JOB, args=[job_id], queue=self.settings.queue)

    # --- a job -------------------------------------------------------------------------------------------------

    def claim(self, job_id: str) -> dict | None:
        """Take the job (queued, or running on a dead process); None when there is nothing to do here."""
        doc = self.store.get(job_id)
        if doc is None:
            log.info("job %s: no record (purged); nothing to do", job_id)
            return None
        status, holder = doc["status"], doc.get("worker") or ""
        if status in FINAL:
            log.info("job %s: already %s; nothing to do", job_id, status)
            return None
        if status == "running":
            beat = self.store.worker(holder) if holder and holder != self.worker_id else None
            if beat is not None and beat.get("current_job") == job_id:
                log.info("job %s: running on live worker %s; this delivery does nothing", job_id, holder)
                return None
            allowed, guard = ("running",), ("worker", holder)
        else:
            allowed, guard = ("queued",), None
        attempts = int(doc.get("attempts") or 0) + 1
        if attempts > self.settings.max_attempts:
            self.fail(job_id, "WORKER_LOST", f"the job was started {attempts - 1} times without finishing", guard=guard)
            return None
        fields = {
            "worker": self.worker_id,
            "attempts": attempts,
            "started_at": now_iso(),
            "stage": "reading",
            "percent": STAGE_PERCENT["reading"],
            "code": None,
            "detail": None,
        }
        done, now = self.store.update(job_id, fields, allowed=allowed, guard=guard, status="running")
        if not done:
            log.info("job %s: taken by another worker or cancelled meanwhile (%s)", job_id, now)
            return None
        if attempts > 1:
            log.warning("job %s: restarted from the beginning (attempt %d)", job_id, attempts)
        return {**doc, **fields, "status": "running"}

    def progress(self, job_id: str, stage: str) -> None:
        if self.settings.debug_stage_delay_s:
            time.sleep(self.settings.debug_stage_delay_s)
        status = self.store.field(job_id, "status")
        if status != "running" or self.store.field(job_id, "worker") != self.worker_id:
            raise JobCancelled(status)
        self.store.update(
            job_id,
            {"stage": REPORTED_STAGE.get(stage, stage), "percent": STAGE_PERCENT[stage]},
            allowed=("running",),
            guard=("worker", self.worker_id),
        )

    def run(self, job_id: str) -> None:
        doc = self.claim(job_id)
        if doc is None:
            return
        self.current_job = job_id
        self.beat()
        self.storage.remove_result(job_id)
        stage = "reading"

        def report(name: str) -> None:
            nonlocal stage
            stage = name
            self.progress(job_id, name)

        start = time.perf_counter()
        try:
            if self.settings.debug_stage_delay_s:
                time.sleep(self.settings.debug_stage_delay_s)
            input_dir = self.storage.input_dir(job_id)
            check_series(input_dir, self.settings)
            volume = read_ct_series(input_dir, fill_gaps=self.settings.fill_gaps)
            reading = time.perf_counter() - start
            model = self.model(doc["bundle"])
            result = contour_to_rtstruct(volume, model, self.storage.rtstruct_path(job_id), progress=report)
            s = result.segmentation.seconds
            seconds = {
                "reading": round(reading, 3),
                "preprocessing": round(s["preprocessing"], 3),
                "registration": round(s["registration"], 3),
                "warping": round(s["warping"] + s["checks"], 3),
                "writing": round(s["writing"], 3),
            }
            qa = {**result.qa, "seconds": seconds}
            done, now = self.store.update(
                job_id,
                {"stage": None, "percent": 100, "qa": qa, "seconds": seconds, "finished_at": now_iso()},
                allowed=("running",),
                guard=("worker", self.worker_id),
                status="succeeded",
            )
            if not done:
                raise JobCancelled(now)
            self.store.observe_stages(seconds)
            self.store.count_finished("succeeded")
            log.info(
                "job %s: succeeded in %.1f s (%d OARs, %d contoured, %d warnings)",
                job_id,
                time.perf_counter() - start,
                qa["oar_count"],
                qa["contoured"],
                len(qa["warnings"]),
            )
            if self.settings.purge_input_on_success:
                self.storage.remove_input(job_id)
            self.after_final(job_id)
        except JobCancelled as exc:
            log.info("job %s: stopped in stage %s (%s)", job_id, stage, exc.args[0] if exc.args else "cancelled")
            self.storage.remove_result(job_id)
        except SoftTimeLimitExceeded:
            self.fail(
                job_id,
                "TIME_LIMIT_EXCEEDED",
                f"the job ran past {self.settings.task_soft_time_limit_s} s (in stage {stage})",
                guard=("worker", self.worker_id),
            )
        except ServiceError as exc:
            self.fail(job_id, exc.code, exc.detail, guard=("worker", self.worker_id))
        except TYPED_ERRORS as exc:
            message = getattr(exc, "message", None) or type(exc).__name__
            self.fail(job_id, exc.code, message, guard=("worker", self.worker_id))
        except MemoryError:
            self.fail(
                job_id, "OUT_OF_MEMORY", f"the worker ran out of memory in stage {stage}", ("worker", self.worker_id)
            )
        except Exception as exc:
            frames = "".join(traceback.format_tb(exc.__traceback__))
            log.error("job %s: unexpected %s in stage %s\n%s", job_id, type(exc).__name__, stage, frames)
            self.fail(
                job_id,
                "INTERNAL_ERROR",
                f"an unexpected {type(exc).__name__} in stage {stage}; the worker log has the traceback",
                guard=("worker", self.worker_id),
            )
        finally:
            self.current_job = None
            try:
                self.beat()
            except Exception:
                pass

    def fail(self, job_id: str, code: str, detail: str, guard: tuple[str, str] | None = None) -> bool:
        done, _ = self.store.update(
            job_id,
            {"stage": None, "code": code, "detail": detail, "finished_at": now_iso()},
            allowed=("queued", "running"),
            guard=guard,
            status="failed",
        )
        if done:
            self.storage.remove_result(job_id)
            self.store.count_finished("failed")
            log.info("job %s: failed with %s", job_id, code)
            self.after_final(job_id)
        return done

    def after_final(self, job_id: str) -> None:
        if self.store.field(job_id, "callback"):
            app.send_task(SEND_CALLBACK, args=[job_id], queue=self.settings.callback_queue)


_runtime: WorkerRuntime | None = None


def runtime() -> WorkerRuntime:
    global _runtime
    if _runtime is None:
        _runtime = WorkerRuntime(socket.gethostname())
        _runtime.start()
    return _runtime


@signals.worker_process_init.connect
def _start_process(sender=None, **_: Any) -> None:
    """Each process that runs tasks (a prefork child, or the solo pool's own) loads its models at start."""
    global _runtime
    if _runtime is None:
        if settings.worker_nice:
            # contouring is batch work: where it shares cores with the API, the API's short answers go first
            os.nice(settings.worker_nice)
        log.info("settings: %s", settings.describe())
        _runtime = WorkerRuntime(str(sender or socket.gethostname()))
        _runtime.start()


@signals.worker_process_shutdown.connect
@signals.worker_shutdown.connect
def _stop_process(**_: Any) -> None:
    if _runtime is not None:
        _runtime.stop()


class JobTask(Task):
    """Fails the job when Celery kills its process at the hard time limit (this runs in the parent then)."""

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        if isinstance(exc, TimeLimitExceeded) and args:
            store = JobStore.from_url(settings.redis_url, settings.key_prefix, retry_s=10)
            job_id = str(args[0])
            holder = store.field(job_id, "worker") or ""
            done, _ = store.update(
                job_id,
                {
                    "stage": None,
                    "code": "TIME_LIMIT_EXCEEDED",
                    "detail": f"the job ran past the hard limit of {settings.task_time_limit_s} s",
                    "finished_at": now_iso(),
                },
                allowed=("running",),
                guard=("worker", holder),
                status="failed",
            )
            if done:
                store.count_finished("failed")
                log.info("job %s: failed with TIME_LIMIT_EXCEEDED (hard limit)", job_id)
                if store.field(job_id, "callback"):
                    app.send_task(SEND_CALLBACK, args=[job_id], queue=settings.callback_queue)


@app.task(name=RUN_JOB, base=JobTask, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_job(self: Task, job_id: str) -> None:
    runtime().run(job_id)


@app.task(name=SEND_CALLBACK, bind=True, acks_late=True, ignore_result=True, max_retries=None)
def send_callback(self: Task, job_id: str) -> None:
    """POST the final job document to its callback_url; retried with exponential backoff."""
    store = runtime().store
    doc = store.get(job_id)
    if doc is None or not doc.get("callback"):
        return
    callback = dict(doc["callback"])
    attempt = int(self.request.retries) + 1
    error = None
    try:
        response = httpx.post(
            callback["url"],
            json=job_view(doc).model_dump(mode="json"),
            timeout=settings.callback_timeout_s,
            headers={"User-Agent": f"oarmorph/{__version__}", "X-Oarmorph-Job": job_id},
        )
        if not 200 <= response.status_code < 300:
            error = f"HTTP {response.status_code}"
    except httpx.HTTPError as exc:
        error = type(exc).__name__
    callback.update(attempts=attempt, last_error=error)
    if error is None:
        store.update(job_id, {"callback": {**callback, "status": "delivered"}})
        log.info("job %s: callback delivered (attempt %d)", job_id, attempt)
        return
    if self.request.retries >= settings.callback_retries:
        store.update(job_id, {"callback": {**callback, "status": "failed"}})
        log.warning("job %s: callback failed %d times (%s); given up", job_id, attempt, error)
        return
    store.update(job_id, {"callback": {**callback, "status": "pending"}})
    delay = min(settings.callback_backoff_s * 2**self.request.retries, settings.callback_backoff_max_s)
    log.info("job %s: callback attempt %d failed (%s); retried in %d s", job_id, attempt, error, delay)
    raise self.retry(countdown=delay, max_retries=settings.callback_retries)
