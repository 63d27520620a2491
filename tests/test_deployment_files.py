"""Deployment files that cannot be run here (no Docker engine) are at least kept consistent with the code."""

from __future__ import annotations

from pathlib import Path

import yaml
from fastapi.testclient import TestClient

from service.app import create_app
from service.openapi import openapi_yaml

ROOT = Path(__file__).resolve().parents[1]


def test_openapi_yaml_is_generated_from_the_app():
    assert (ROOT / "openapi.yaml").read_text() == openapi_yaml(), "openapi.yaml drifted: run `make openapi`"


def test_health_probe_answers():
    response = TestClient(create_app()).get("/healthz")
    assert response.status_code == 200 and response.json()["status"] == "ok"


def test_compose_services_build_this_repository_and_wait_for_redis():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["api"]["build"]["context"] == "."
    assert (ROOT / services["api"]["build"]["dockerfile"]).is_file()
    assert services["api"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "healthcheck" in services["redis"]
    assert services["api"]["environment"]["OARMORPH_REDIS_URL"].startswith("redis://redis:")


def test_image_installs_no_torch_and_no_training_code():
    dockerfile = (ROOT / "Dockerfile").read_text()
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "training" in ignored
    assert "COPY training" not in dockerfile
    assert "find_spec('torch')" in dockerfile  # the build fails if torch slipped in through a dependency
    install = next(line for line in dockerfile.splitlines() if line.startswith("RUN pip install"))
    assert "train" not in install
    copied = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("COPY ") and "--from=" not in line]
    for path in copied:
        assert (ROOT / path).exists(), path
    for package in ("service", "pipeline", "model_export", "imaging", "anatomy"):  # what the service imports
        assert package in copied, package


def test_image_is_multi_stage_non_root_with_a_healthcheck_on_a_cuda_13_base():
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = [line for line in dockerfile.splitlines() if line.startswith("FROM ")]
    assert len(stages) >= 2 and "COPY --from=build /opt/venv /opt/venv" in dockerfile
    assert "nvidia/cuda:13." in dockerfile and "onnxruntime-gpu==1.31" in dockerfile
    assert "USER 10001" in dockerfile and "HEALTHCHECK" in dockerfile


def test_compose_runs_a_gpu_worker_beside_the_api_and_redis_persists():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    worker = services["worker"]
    assert worker["command"][:3] == ["celery", "-A", "service.worker"] and "--concurrency" in worker["command"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]
    for name in ("api", "worker"):
        volumes = services[name]["volumes"]
        assert any(v.startswith("jobs-data:") for v in volumes), name  # stored studies and results, shared
        assert services[name]["environment"]["OARMORPH_REDIS_URL"].startswith("redis://redis:")
