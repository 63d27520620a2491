"""The Celery application both sides build from the same settings: the API sends by task name, the worker runs.

Delivery is at least once: a job's message is acknowledged only when its task has returned (``acks_late``), a
worker process that dies mid-job gives it back (``reject_on_worker_lost``), Redis redelivers a message nobody
acknowledged within ``visibility_timeout_s`` (longer than the hard time limit, so a running job is not handed
out twice), and one message at a time per worker process (prefetch 1). The task is idempotent (see
``service.worker``), so a message delivered twice does the job once.
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from .settings import Settings

RUN_JOB = "oarmorph.run_job"
SEND_CALLBACK = "oarmorph.send_callback"


def make_celery(settings: Settings) -> Celery:
    app = Celery("oarmorph", broker=settings.redis_url, set_as_current=False)
    app.conf.update(
        task_default_queue=settings.queue,
        task_queues=(Queue(settings.queue), Queue(settings.callback_queue)),
        task_routes={RUN_JOB: {"queue": settings.queue}, SEND_CALLBACK: {"queue": settings.callback_queue}},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        task_soft_time_limit=settings.task_soft_time_limit_s,
        task_time_limit=settings.task_time_limit_s,
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_max_tasks_per_child=None,
        worker_proc_alive_timeout=600,  # a worker process loads its models before it takes a job
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            "socket_timeout": 10,
            "socket_connect_timeout": 5,
            "health_check_interval": 15,
            "retry_on_timeout": True,
        },
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_heartbeat=0,
        task_publish_retry=True,
        task_publish_retry_policy={"max_retries": 10, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2},
        result_backend=None,
        enable_utc=True,
    )
    return app
