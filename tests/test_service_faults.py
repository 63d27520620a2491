"""Faults, with real processes: a worker SIGKILLed mid-job (the job still completes, on the restarted worker), and
Redis killed and restarted while jobs are queued (no job lost once its 202 was sent). Each test has its own queue
and key prefix (and the second its own persisted redis-server), so the session's worker never touches its jobs."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient
from service_support import (
    RedisServer,
    WorkerProcess,
    base_settings,
    dicom_bytes,
    headers,
    multipart,
    wait_for,
    wait_job,
)

from service.app import create_app
from service.settings import Settings
from service.store import JobStore


def _entries(api_keys) -> str:
    return ",".join(entry.line() for _, entry in api_keys.values())


def test_a_worker_killed_mid_job_loses_nothing_the_job_completes_on_the_restarted_worker(
    redis_url, tiny_model_dir, api_keys, phantom_case, tmp_path
):
    settings = base_settings(
        redis_url, tmp_path / "data", {"tiny": tiny_model_dir}, _entries(api_keys), debug_stage_delay_s=1.5
    )
    store = JobStore.from_url(redis_url, settings["key_prefix"])
    first = WorkerProcess(settings, tmp_path / "worker1.log", "doomed").start()
    second = None
    try:
        first.wait_ready(store, "tiny")
        with TestClient(create_app(Settings(**settings))) as client:
            response = client.post("/v1/jobs", files=multipart(phantom_case.ct_files()), headers=headers(api_keys))
            assert response.status_code == 202, response.text
            job_id = response.json()["id"]
            running = wait_job(client, job_id, headers(api_keys), 60, until=("running",))
            wait_for(lambda: store.get(job_id)["stage"] in ("preprocessing", "registration"), 30, what="mid-job")
            first.kill()  # SIGKILL: parent and pool process, mid-job
            killed_at = store.get(job_id)["stage"]
            assert store.get(job_id)["status"] == "running"  # as the dead worker left it
            second = WorkerProcess(settings, tmp_path / "worker2.log", "phoenix").start()
            job = wait_job(client, job_id, headers(api_keys), 150)
            assert job["status"] == "succeeded", job
            assert job["attempts"] == 2 and running["attempts"] == 1
            assert job["qa"]["oar_count"] == 36
            assert client.get(f"/v1/jobs/{job_id}/rtstruct", headers=headers(api_keys)).status_code == 200
        assert "queued again" in second.log() or "restarted from the beginning" in second.log()
        print(f"\nkilled mid-job in stage {killed_at}; completed by the restarted worker (attempt 2)")
    finally:
        first.kill()
        if second is not None:
            second.stop()


def test_redis_killed_and_restarted_while_jobs_are_queued_loses_no_job(
    api_keys, tiny_model_dir, phantom_case, tmp_path
):
    server = RedisServer(tmp_path / "redis", appendonly=True)  # append-only, fsync always, as deployed
    server.start()
    settings = base_settings(
        server.url, tmp_path / "data", {"tiny": tiny_model_dir}, _entries(api_keys), debug_stage_delay_s=0.4
    )
    store = JobStore.from_url(server.url, settings["key_prefix"])
    worker = WorkerProcess(settings, tmp_path / "worker.log", "steady").start()
    try:
        worker.wait_ready(store, "tiny")
        accepted = []
        with TestClient(create_app(Settings(**settings))) as client:
            for tag in range(3):  # three different series: three jobs, queued behind each other
                datasets = phantom_case.datasets()
                for ds in datasets:
                    ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.8.498.5{tag}"
                    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{ds.SOPInstanceUID}.5{tag}"
                response = client.post(
                    "/v1/jobs", files=multipart([dicom_bytes(ds) for ds in datasets]), headers=headers(api_keys)
                )
                assert response.status_code == 202, response.text
                accepted.append(response.json()["id"])
            queued = [store.get(j)["status"] for j in accepted]
            assert "queued" in queued, queued
            server.kill()  # SIGKILL: nothing saved at exit, only what the append-only file holds
            time.sleep(1.0)
            server.start()
            jobs = [wait_job(client, job_id, headers(api_keys), 180) for job_id in accepted]
        assert [j["status"] for j in jobs] == ["succeeded"] * 3, jobs
        print(f"\njob statuses when Redis was killed: {queued}; all 3 succeeded after its restart")
    finally:
        worker.stop()
        server.stop()
