"""``GET /metrics``: Prometheus text. What the workers measure lives in Redis (they are other processes), so the
job and stage metrics are read from the job store at scrape time; only the API's own request timings are kept in
this process.

    oarmorph_jobs{status}                      jobs by status now (gauge)
    oarmorph_jobs_finished_total{status}       jobs that ended, by final status (counter)
    oarmorph_queue_length                      job messages waiting in the broker queue (gauge)
    oarmorph_workers_alive                     worker processes with a live heartbeat (gauge)
    oarmorph_stage_duration_seconds{stage}     seconds per job stage (histogram)
    oarmorph_http_request_duration_seconds{method,route,status}   API requests (histogram)
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from .store import STAGE_BUCKETS, JobStore

log = logging.getLogger("oarmorph.api")


class StoreCollector:
    def __init__(self, store: JobStore, queue: str) -> None:
        self.store = store
        self.queue = queue

    def collect(self):
        try:
            counts = self.store.counts()
            finished = self.store.finished_counts()
            queue_length = int(self.store.redis.llen(self.queue))
            workers = len(self.store.workers())
            stages = self.store.stage_histograms()
        except Exception as exc:  # Redis down: the scrape still answers, with what this process knows
            log.warning("metrics: job store unreachable (%s)", type(exc).__name__)
            return
        jobs = GaugeMetricFamily("oarmorph_jobs", "Jobs by status.", labels=["status"])
        for status, n in counts.items():
            jobs.add_metric([status], n)
        yield jobs
        done = CounterMetricFamily("oarmorph_jobs_finished", "Jobs that ended, by final status.", labels=["status"])
        for status, n in sorted(finished.items()):
            done.add_metric([status], n)
        yield done
        yield GaugeMetricFamily("oarmorph_queue_length", "Job messages waiting in the queue.", value=queue_length)
        yield GaugeMetricFamily("oarmorph_workers_alive", "Worker processes with a live heartbeat.", value=workers)
        hist = HistogramMetricFamily("oarmorph_stage_duration_seconds", "Seconds per job stage.", labels=["stage"])
        for stage, raw in stages.items():
            cumulative, buckets = 0.0, []
            for bound in STAGE_BUCKETS:
                cumulative += raw.get(str(bound), 0.0)
                buckets.append((str(bound), cumulative))
            buckets.append(("+Inf", raw.get("count", cumulative + raw.get("+Inf", 0.0))))
            hist.add_metric([stage], buckets, sum_value=raw.get("sum", 0.0))
        yield hist


def make_registry(store: JobStore, queue: str) -> tuple[CollectorRegistry, Histogram]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store, queue))
    requests = Histogram(
        "oarmorph_http_request_duration_seconds",
        "API requests.",
        ["method", "route", "status"],
        registry=registry,
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    )
    return registry, requests
