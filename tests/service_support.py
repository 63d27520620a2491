"""Fixtures and helpers of the service tests: a REAL Redis and REAL Celery worker processes (no fake Redis, no eager
Celery), a tiny exported model against the 36-OAR phantom atlas, and a small phantom patient as DICOM.

Redis: the server at 127.0.0.1:6379 when it answers (database 15, flushed before and after), else a
``redis-server`` this module starts on a free port without persistence (the tests skip, saying how to install it,
when there is none). Every session uses its own key prefix and queue names, so it never sees another's jobs.
Workers: ``celery -A service.worker worker --pool prefork -c 1`` subprocesses in their own process group (the
fault tests SIGKILL the group), configured through ``OARMORPH_*`` variables, logging to a file the tests read.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from oarmorph.service_demo import free_port, redis_answers

REPO = Path(__file__).resolve().parents[1]
CELERY = Path(sys.executable).with_name("celery")
PATIENT_SEED, PATIENT_INDEX = 12, 1  # a small HFS patient whose scan holds the whole head
PATIENT_NAME, PATIENT_ID, PATIENT_BIRTH_DATE = "Quixotic^Zebulon", "MRN-90210-QZX", "19511107"
PHANTOM_MODEL = REPO / "models" / "phantom_proposed_cpu"


def wait_for(check: Callable[[], object], timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class RedisServer:
    """A redis-server of our own on a free port (``appendonly``: persisted, for the restart test)."""

    def __init__(self, folder: Path, appendonly: bool = False) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server is not installed (Debian/Ubuntu: apt-get install redis-server)")
        self.exe = exe
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.appendonly = appendonly
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder), "--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly else ["--appendonly", "no"]
        log = (self.folder / "redis.log").open("ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: redis_answers(self.url), 20, what=f"redis-server on port {self.port}")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final save (what is persisted is what the append-only file already holds)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def settings_env(values: dict) -> dict[str, str]:
    env = {}
    for key, value in values.items():
        text = json.dumps({k: str(v) for k, v in value.items()}) if isinstance(value, dict) else str(value)
        env[f"OARMORPH_{key.upper()}"] = text
    return env


class WorkerProcess:
    """``celery -A service.worker worker`` in its own process group, logging to ``log_path``."""

    def __init__(self, settings: dict, log_path: Path, name: str) -> None:
        self.settings = settings
        self.log_path = log_path
        self.name = name
        self.proc: subprocess.Popen | None = None

    def start(self) -> WorkerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OARMORPH_")}
        env.update(settings_env(self.settings))
        env["PYTHONUNBUFFERED"] = "1"
        args = [str(CELERY), "-A", "service.worker", "worker", "--pool", "prefork", "--concurrency", "1"]
        args += ["--hostname", f"{self.name}@%h", "--loglevel", "INFO", "--without-mingle", "--without-gossip"]
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self

    def wait_ready(self, store, bundle: str, timeout: float = 180) -> dict:
        def ready():
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"worker {self.name} exited ({self.proc.returncode}):\n{self.log()[-3000:]}")
            return next(
                (w for w in store.workers() if w["worker"].startswith(self.name) and bundle in w["models"]), None
            )

        return wait_for(ready, timeout, 0.5, what=f"worker {self.name} with bundle {bundle} loaded")

    def kill(self) -> None:
        """SIGKILL the whole group (the Celery parent and its pool process): a worker machine dying."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM to the Celery parent: a warm shutdown (the running job finishes), as ``docker stop`` does."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


# --- the phantom patient as DICOM ----------------------------------------------------------------------------


@dataclass
class PhantomCase:
    folder: Path  # the case folder (ct/, labels/, rtstruct.dcm, meta.json)

    @property
    def ct_dir(self) -> Path:
        return self.folder / "ct"

    def ct_files(self) -> list[Path]:
        return sorted(self.ct_dir.iterdir())

    def datasets(self) -> list:
        import pydicom

        return [pydicom.dcmread(f) for f in self.ct_files()]


def make_phantom_case(root: Path) -> PhantomCase:
    """The small phantom patient, its DICOM identity replaced by distinctive strings (the log test looks for them)."""
    import pydicom

    from phantom.cohort import generate_patient, write_patient

    case = generate_patient(PATIENT_INDEX, PATIENT_SEED, "small")
    folder = write_patient(case, root, PATIENT_SEED, PATIENT_INDEX, "small")
    for path in sorted((folder / "ct").iterdir()):
        ds = pydicom.dcmread(path)
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = PATIENT_NAME, PATIENT_ID, PATIENT_BIRTH_DATE
        ds.save_as(path, enforce_file_format=True)
    return PhantomCase(folder)


def dicom_bytes(ds) -> bytes:
    import pydicom

    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def multipart(files: list[bytes | Path], content_type: str = "application/dicom") -> list[tuple]:
    out = []
    for n, item in enumerate(files):
        data = item.read_bytes() if isinstance(item, Path) else item
        out.append(("files", (f"slice{n:04d}.dcm", data, content_type)))
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    total = float(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / total


# --- the tiny model ------------------------------------------------------------------------------------------


def export_tiny_model(out: Path) -> Path:
    """A freshly initialised cascade (about the identity registration) exported against bundles/phantom."""
    pytest.importorskip("torch", reason="exporting the tiny test model needs the train extra (torch)")
    pytest.importorskip("onnx", reason="exporting the tiny test model needs the train extra (onnx)")
    import dataclasses

    import torch

    from model_export.export import export_model
    from training.train import TrainConfig, build_model

    oars = json.loads((REPO / "bundles" / "phantom" / "bundle.json").read_text())["oars"]
    cfg = TrainConfig(
        name="tiny", oars=oars, image_shape=(32, 32, 32), model={"net_shape": [16, 16, 16], "affine_widths": [8, 8, 8]}
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "best.pt"
    torch.save(
        {
            "model": model.state_dict(),
            "config": dataclasses.asdict(cfg),
            "atlas_case": None,
            "state": {"step": 0, "best": 0.0, "history": []},
        },
        ckpt,
    )
    target = out / "tiny"
    export_model(ckpt, REPO / "bundles" / "phantom", target, name="tiny-test", version="0.0.1", log=lambda m: None)
    return target


# --- session fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """Real Redis: database 15 of the server at 127.0.0.1:6379 when it answers, else our own redis-server."""
    import redis

    shared = os.environ.get("OARMORPH_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    if redis_answers(shared):
        client = redis.Redis.from_url(shared)
        client.flushdb()
        yield shared
        client.flushdb()
        return
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return export_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def phantom_case(tmp_path_factory) -> PhantomCase:
    return make_phantom_case(tmp_path_factory.mktemp("phantom"))


@pytest.fixture(scope="session")
def api_keys() -> dict[str, tuple[str, str]]:
    """key id -> (key, hashed entry)"""
    from service.security import new_key

    return {name: new_key(name) for name in ("alice", "bob")}


def base_settings(redis_url: str, data_dir: Path, bundles: dict[str, Path], entries: str, **extra) -> dict:
    tag = uuid.uuid4().hex[:8]
    values = {
        "redis_url": redis_url,
        "key_prefix": f"oarmorph-test-{tag}",
        "queue": f"oarmorph-test-{tag}",
        "callback_queue": f"oarmorph-test-{tag}.callbacks",
        "data_dir": data_dir,
        "bundles_dir": data_dir / "no-bundles-here",
        "bundles": bundles,
        "default_bundle": "tiny",
        "api_keys": entries,
        "max_upload_bytes": 8 * 1024 * 1024,
        "max_zip_ratio": 200,
        "heartbeat_ttl_s": 6,
        "sweep_interval_s": 2,
        "task_soft_time_limit_s": 90,
        "task_time_limit_s": 100,
        "visibility_timeout_s": 120,
        "worker_threads": 2,
        "callback_backoff_s": 1,
        "callback_retries": 3,
        "log_level": "INFO",
    }
    values.update(extra)
    return values


@pytest.fixture(scope="session")
def service_settings(redis_url, tiny_model_dir, api_keys, tmp_path_factory) -> dict:
    bundles = {"tiny": tiny_model_dir, "tiny-again": tiny_model_dir}
    if (PHANTOM_MODEL / "model.onnx").is_file():
        bundles["phantom"] = PHANTOM_MODEL
    entries = ",".join(entry.line() for _, entry in api_keys.values())
    return base_settings(redis_url, tmp_path_factory.mktemp("data"), bundles, entries)


@pytest.fixture(scope="session")
def service_store(service_settings):
    from service.store import JobStore

    return JobStore.from_url(service_settings["redis_url"], service_settings["key_prefix"])


@pytest.fixture(scope="session")
def service_worker(service_settings, service_store, tmp_path_factory):
    worker = WorkerProcess(service_settings, tmp_path_factory.mktemp("logs") / "worker.log", "main").start()
    try:
        worker.wait_ready(service_store, "tiny")
        yield worker
    finally:
        worker.stop()


@pytest.fixture(scope="session")
def service_client(service_settings):
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    with TestClient(create_app(Settings(**service_settings))) as client:
        yield client


def headers(api_keys, who: str = "alice") -> dict[str, str]:
    return {"X-API-Key": api_keys[who][0]}


def wait_job(client, job_id: str, hdrs: dict, timeout: float = 120, until=("succeeded", "failed", "cancelled")):
    def done():
        doc = client.get(f"/v1/jobs/{job_id}", headers=hdrs).json()
        return doc if doc.get("status") in until else None

    return wait_for(done, timeout, 0.25, what=f"job {job_id} to reach {until}")
