"""The service under measurement: latency per stage for a 512 x 512 x 200 CT with 36 OARs, 50 concurrent
submissions, and status polling latency under that load (a benchmark, not a timed test).

    .venv/bin/python benchmarks/bench_service.py [--runs 3] [--concurrent 50] [--out out/bench/service.json]

Starts what ``make demo`` starts (Redis when none answers, one worker, the API under uvicorn) and stops it again.
The model is the default bundle (``models/phantom_proposed_cpu``) or, while it is absent, an untrained cascade of
the same shape of input and output (the registration's cost depends on the network, the rest does not).

1. End to end, from upload complete (the 202) to RTSTRUCT ready (status succeeded), for the full-size phantom
   patient (seed 2028, index 2: 512 x 512 x 200, 1.25 mm slices), ``--runs`` times (the job is purged between
   runs, so the same series makes a new job); the worker's seconds per stage; the upload's own time.
2. ``--concurrent`` submissions of distinct small phantom series at once (threads, one HTTP connection each):
   how many were accepted (202) and how many failed, and their answer times.
3. While those jobs are queued and running, ``--pollers`` client processes (each one HTTP connection, as separate
   PACS or planning systems would poll) poll ``GET /v1/jobs/{id}`` for ``--poll-seconds``: p50, p95, p99 and max.
   Processes, not threads of this one: 50 submitting threads encoding multipart bodies under one GIL delayed the
   pollers' own requests and put the client's queueing into the server's latency. Twice, each time with 50 new
   submissions (the jobs of the first round are cancelled before the second):
   * paced (``polling_under_load``): every accepted job polled every ``--poll-interval`` seconds (0.25 s, the
     demo's progress bar; 200 requests a second for 50 jobs), each poll timed from when it was due, so a poll
     that had to wait for the one before it on its connection counts its wait too. This is the latency a
     polling client sees while 50 submissions arrive and run.
   * saturating (``polling_saturating``): the same clients poll as fast as they can. Then the pollers are the
     load: with 8 of them always waiting on an API that answers a few hundred polls a second, each poll queues
     behind the others' (Little's law: 8 in flight over ~400 a second is ~20 ms before any upload), so this
     measures the API's capacity on 2 shared cores more than the submissions' effect on a poll.
   The queued jobs are cancelled afterwards.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import pydicom  # noqa: E402

from oarmorph.service_demo import _bundle, _Children, _redis, _wait, free_port, service_env  # noqa: E402
from service.security import new_key  # noqa: E402

BIG_SEED, BIG_INDEX = 2028, 2  # 512 x 512 x 200


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def _series_parts(folder: Path) -> list[tuple]:
    files = sorted(p for p in folder.iterdir() if p.is_file())
    return [("files", (f"{n:05d}.dcm", p.read_bytes(), "application/dicom")) for n, p in enumerate(files)]


def _renamed_series(folder: Path, tag: int) -> list[tuple]:
    parts = []
    for n, path in enumerate(sorted(folder.iterdir())):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.8.498.9{tag}"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{ds.SOPInstanceUID}.9{tag}"
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        parts.append(("files", (f"{n:05d}.dcm", buffer.getvalue(), "application/dicom")))
    return parts


def _phantom(out: Path, seed: int, index: int, size: str) -> Path:
    from phantom.cohort import case_id, generate_patient, write_patient

    folder = out / case_id(seed, index)
    if not (folder / "ct").is_dir():
        start = time.perf_counter()
        write_patient(generate_patient(index, seed, size), out, seed, index, size)
        print(f"generated phantom {folder.name} ({size}) in {time.perf_counter() - start:.0f} s", flush=True)
    return folder / "ct"


def _poller(base: str, key: str, ids, stop, ready, out, interval: float | None) -> None:
    """One polling client (its own process): ``GET /v1/jobs/{id}`` on the ids it is given until ``stop``, each
    job every ``interval`` seconds (timed from when the poll was due) or, with None, round them as fast as it
    can; (when it was due or sent, seconds) of each 200 answer go to ``out`` at the end (``time.perf_counter``:
    the system's monotonic clock, the same in every process)."""
    import heapq
    import queue as queue_module

    known: list[str] = []
    due: list[tuple[float, str]] = []  # (when the job's next poll is due, job id)
    seconds: list[tuple[float, float]] = []  # (due or sent, seconds to the answer)
    with httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=60) as c:
        c.get("/healthz")  # connected before the load starts
        ready.put(True)
        n = 0
        while not stop.is_set():
            try:
                while True:
                    job_id = ids.get_nowait()
                    known.append(job_id)
                    heapq.heappush(due, (time.perf_counter(), job_id))
            except queue_module.Empty:
                pass
            if not known:
                time.sleep(0.01)
                continue
            if interval is None:
                target = known[n % len(known)]
                n += 1
                t0 = time.perf_counter()
            else:
                t0, target = due[0]
                wait = t0 - time.perf_counter()
                if wait > 0:
                    time.sleep(min(wait, 0.01))  # short naps: new ids and ``stop`` are looked at meanwhile
                    continue
                heapq.heapreplace(due, (t0 + interval, target))
            r = c.get(f"/v1/jobs/{target}")
            elapsed = time.perf_counter() - t0
            if r.status_code == 200:
                seconds.append((t0, elapsed))
    out.put(seconds)


def _latency_summary(polls: list[tuple[float, float]], args, interval: float | None, burst_end: float) -> dict:
    """Percentiles of all polls, and of those sent while the submissions were still being answered."""
    seconds = [e for _, e in polls]
    during = [e for t, e in polls if t < burst_end]

    def ms(values: list[float], q: float) -> float:
        return round(_percentile(values, q) * 1000, 2)

    return {
        "requests": len(seconds),
        "pollers": args.pollers,
        "seconds": args.poll_seconds,
        "interval_s": interval,
        "p50_ms": ms(seconds, 50),
        "p95_ms": ms(seconds, 95),
        "p99_ms": ms(seconds, 99),
        "max_ms": round(max(seconds) * 1000, 2) if seconds else None,
        "while_submitting": {"requests": len(during), "p50_ms": ms(during, 50), "p99_ms": ms(during, 99)},
    }


def _submit_while_polling(base: str, key: str, bodies: list, args, spawn, interval: float | None) -> dict:
    """``len(bodies)`` submissions at once (threads, one connection each) while ``args.pollers`` client processes
    poll every accepted job for ``args.poll_seconds``: the submissions' answers, the ids and the poll seconds."""
    statuses: list[int] = []
    answer_s: list[float] = []
    ids: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(bodies))
    stop, ready, results_queue = spawn.Event(), spawn.Queue(), spawn.Queue()
    id_queues = [spawn.Queue() for _ in range(args.pollers)]

    def submit(body):
        with httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=600) as c:
            barrier.wait()
            t0 = time.perf_counter()
            r = c.post("/v1/jobs", files=body)
            with lock:
                statuses.append(r.status_code)
                answer_s.append(time.perf_counter() - t0)
                if r.status_code == 202:
                    ids.append(r.json()["id"])
                    if interval is None:  # every client rounds all jobs
                        for q in id_queues:
                            q.put(ids[-1])
                    else:  # each job polled by one client, as its submitter would
                        id_queues[(len(ids) - 1) % len(id_queues)].put(ids[-1])

    pollers = [
        spawn.Process(target=_poller, args=(base, key, q, stop, ready, results_queue, interval)) for q in id_queues
    ]
    for proc in pollers:
        proc.start()
    for _ in pollers:
        ready.get(timeout=120)
    start = time.perf_counter()
    print(f"{len(bodies)} submissions, {args.pollers} polling clients", flush=True)
    with ThreadPoolExecutor(len(bodies)) as pool:
        list(pool.map(submit, bodies))
    answered = time.perf_counter() - start
    time.sleep(max(args.poll_seconds - answered, 0.0))
    stop.set()
    polls: list[tuple[float, float]] = []
    for _ in pollers:
        polls += results_queue.get(timeout=60)
    for proc in pollers:
        proc.join(10)
    errors = [s for s in statuses if s != 202]
    return {
        "ids": list(ids),
        "polls": polls,
        "burst_end": start + answered,
        "submissions": {
            "submitted": len(bodies),
            "accepted_202": len(ids),
            "errors": len(errors),
            "error_statuses": sorted(set(errors)),
            "all_answered_in_s": round(answered, 3),
            "answer_p50_s": round(_percentile(answer_s, 50), 3),
            "answer_max_s": round(max(answer_s), 3),
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrent", type=int, default=50)
    parser.add_argument("--pollers", type=int, default=8)
    parser.add_argument("--poll-seconds", type=float, default=20.0)
    parser.add_argument("--poll-interval", type=float, default=0.25, help="Seconds between two polls of a job (paced).")
    parser.add_argument("--work", type=Path, default=REPO / "out" / "bench" / "service")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "bench" / "service.json")
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    children = _Children()
    results: dict = {"machine": {"cpus": os.cpu_count()}}
    try:
        redis_url = _redis(work, children)
        bundle, bundles, trained = _bundle(work)
        key, entry = new_key("bench")
        port = free_port()
        env = service_env(
            "oarmorph-bench", work, redis_url, bundle, bundles, entry.line(), OARMORPH_MAX_UPLOAD_BYTES=str(4 * 1024**3)
        )
        bin_dir = Path(sys.executable).parent
        celery = [str(bin_dir / "celery"), "-A", "service.worker", "worker", "--pool", "prefork", "--concurrency", "1"]
        celery += ["--loglevel", "INFO", "--without-mingle", "--without-gossip", "--hostname", "bench@%h"]
        children.start("the worker", celery, env, work / "worker.log")
        uvicorn = [str(bin_dir / "uvicorn"), "service.app:app", "--host", "127.0.0.1", "--port", str(port)]
        uvicorn += ["--log-level", "warning"]
        children.start("the API", uvicorn, env, work / "api.log")
        base = f"http://127.0.0.1:{port}"
        auth = {"X-API-Key": key}
        client = httpx.Client(base_url=base, headers=auth, timeout=600)
        _wait(lambda: _ready(client), 300, "the worker", 0.5)
        results["model"] = {"bundle": bundle, "trained": trained}

        # 1. a 512 x 512 x 200 CT, end to end
        big = _phantom(work / "patients", BIG_SEED, BIG_INDEX, "full")
        parts = _series_parts(big)
        runs = []
        for run in range(args.runs):
            start = time.perf_counter()
            posted = client.post("/v1/jobs", files=parts)
            accepted = time.perf_counter()
            assert posted.status_code == 202, posted.text
            job = posted.json()
            while job["status"] in ("queued", "running"):
                time.sleep(0.05)
                job = client.get(f"/v1/jobs/{job['id']}").json()
            ready = time.perf_counter()
            assert job["status"] == "succeeded", job
            rt = client.get(f"/v1/jobs/{job['id']}/rtstruct")
            runs.append(
                {
                    "upload_s": round(accepted - start, 3),
                    "end_to_end_s": round(ready - accepted, 3),
                    "stages_s": job["seconds"],
                    "oars": job["qa"]["oar_count"],
                    "contoured": job["qa"]["contoured"],
                    "rtstruct_bytes": len(rt.content),
                    "shape": [job["input"]["slices"], job["input"]["rows"], job["input"]["columns"]],
                }
            )
            print(f"run {run + 1}: {json.dumps(runs[-1])}", flush=True)
            client.delete(f"/v1/jobs/{job['id']}")  # purge: the same series makes a new job next run
        results["latency_512x512x200"] = {
            "runs": runs,
            "median_end_to_end_s": statistics.median(r["end_to_end_s"] for r in runs),
            "median_stages_s": {
                stage: statistics.median(r["stages_s"][stage] for r in runs) for stage in runs[0]["stages_s"]
            },
        }

        # 2. and 3. concurrent submissions of distinct small series, with polling clients (separate processes)
        small = _phantom(work / "patients", 12, 1, "small")
        spawn = multiprocessing.get_context("spawn")
        rounds = (("polling_under_load", args.poll_interval), ("polling_saturating", None))
        for number, (name, interval) in enumerate(rounds):
            tags = range(number * args.concurrent, (number + 1) * args.concurrent)  # new series: new jobs
            bodies = [_renamed_series(small, t) for t in tags]
            submitted = _submit_while_polling(base, key, bodies, args, spawn, interval)
            if number == 0:
                results["concurrent_submissions"] = submitted["submissions"]
            ids = submitted["ids"]
            results[name] = _latency_summary(submitted["polls"], args, interval, submitted["burst_end"])
            done = sum(1 for i in ids if client.get(f"/v1/jobs/{i}").json()["status"] == "succeeded")
            results[name]["jobs_succeeded_meanwhile"] = done
            print(f"{name}: {json.dumps(results[name])}", flush=True)
            for job_id in ids:  # cancel the queued, purge the finished
                client.delete(f"/v1/jobs/{job_id}")
                client.delete(f"/v1/jobs/{job_id}")
    finally:
        children.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


def _ready(client: httpx.Client) -> bool:
    try:
        return client.get("/readyz").status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
