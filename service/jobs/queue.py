"""The Celery client side: the app's configuration and :func:`enqueue_job`, used by the API
(submission, health), the reaper and the worker (:mod:`worker.celery_app` runs this app with
its task module loaded).

Long training tasks want ``task_acks_late`` (the message is acknowledged only when the task
returns, so a worker that dies mid-job leaves it to be redelivered),
``task_reject_on_worker_lost`` and a prefetch of one (a worker holds at most the job it
runs). Workers use the *solo* pool (``lora-service worker``): the task runs in the worker's
main process, so nothing forks after PyTorch has started threads.

Task state lives in the database (``jobs`` table), not in a Celery result backend: none is
configured, so ``broker_transport_options`` is the one place Celery reads
``visibility_timeout`` from (a Redis result backend would read
``result_backend_transport_options``).

Brokers:
    * ``redis://...`` (production): ``visibility_timeout`` (``VISIBILITY_TIMEOUT``, seconds)
      is how long Redis waits for an acknowledgement before redelivering a message, to any
      worker, even while the first one still runs the job (celery/celery#5935). With
      ``acks_late`` a job longer than that is delivered again; the job's lease makes that
      delivery a no-op (:mod:`worker.runner`), and a dead worker's job is requeued by the
      reaper (:mod:`worker.reaper`) after ``LEASE_SECONDS``, not after the visibility
      timeout. The API (producer) and the workers build the same options from one
      ``Settings``.
    * ``sqla+sqlite:///...`` (embedded): kombu's SQLAlchemy transport through
      :mod:`service.jobs.broker`, polled every ``BROKER_POLL_SECONDS``.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from kombu import Queue

from service.core.settings import Settings, get_settings
from service.jobs.broker import TRANSPORT_PATH

RUN_JOB_TASK = "worker.tasks.run_job"
"""The task's name on the wire (kept from round one: messages already queued still run)."""
log = logging.getLogger(__name__)


def broker_params(broker_url: str) -> tuple[str, str | None]:
    """Split a broker URL into (URL for kombu, transport class path or None).

    ``sqla+<url>`` maps to our SQLite-safe transport (:mod:`service.jobs.broker`); every other
    URL (``redis://``, ``amqp://``) is returned unchanged for kombu to resolve.
    """
    if broker_url.startswith("sqla+"):
        return broker_url.removeprefix("sqla+"), TRANSPORT_PATH
    return broker_url, None


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration dict for ``settings`` (pure; used by tests too)."""
    url, transport = broker_params(settings.broker_url)
    embedded = transport is not None
    return {
        "broker_url": url,
        "broker_transport": transport,
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout,
            "polling_interval": settings.broker_poll_seconds,
        },
        "broker_connection_retry_on_startup": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": settings.training_queue,
        "task_queues": (Queue(settings.training_queue),),
        "task_routes": {RUN_JOB_TASK: {"queue": settings.training_queue}},
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_hijack_root_logger": True,
        # The SQL transport cannot broadcast: remote control (celery inspect) needs Redis.
        "worker_enable_remote_control": not embedded,
        "worker_send_task_events": False,
    }


def make_celery(settings: Settings) -> Celery:
    """A new Celery app configured by :func:`celery_config`. It sends tasks by name; the
    worker process registers the task itself (:func:`worker.celery_app.worker_app`)."""
    app = Celery("lora_service")
    app.conf.update(celery_config(settings))
    return app


_APPS: dict[tuple[Any, ...], Celery] = {}


def get_celery(settings: Settings | None = None) -> Celery:
    """The Celery app for ``settings`` (default: the process settings), cached per broker setup."""
    settings = settings or get_settings()
    key = (
        settings.broker_url,
        settings.training_queue,
        settings.visibility_timeout,
        settings.broker_poll_seconds,
    )
    if key not in _APPS:
        _APPS[key] = make_celery(settings)
    return _APPS[key]


def queue_for_device(device: str, settings: Settings) -> str:
    """The queue a job with ``device`` (``auto`` | ``cpu`` | ``cuda``) goes to:
    ``GPU_TRAINING_QUEUE`` for ``cuda``, else ``TRAINING_QUEUE`` (GPU workers consume both)."""
    return settings.gpu_training_queue if device == "cuda" else settings.training_queue


def worker_queues(settings: Settings) -> list[str]:
    """The queues a worker consumes: a ``cuda`` worker (``WORKER_DEVICE``) the GPU queue
    first, then the ordinary one; a CPU worker the ordinary one."""
    if settings.worker_device == "cuda" and settings.gpu_training_queue != settings.training_queue:
        return [settings.gpu_training_queue, settings.training_queue]
    return [settings.training_queue]


def enqueue_job(job_id: str, settings: Settings | None = None, device: str | None = None) -> None:
    """Send ``run_job(job_id)`` to its queue (:func:`queue_for_device` of the job's
    ``device``, read from its row when not given). Call only after the job row is committed.

    Raises:
        kombu / redis errors when the broker is unreachable (after kombu's short retry).
    """
    settings = settings or get_settings()
    if device is None:
        from service.db.job_devices import device_of_job

        device = device_of_job(settings.database_url, job_id)
    get_celery(settings).send_task(
        RUN_JOB_TASK,
        args=[job_id],
        queue=queue_for_device(device, settings),
        retry=True,
        retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
    )
