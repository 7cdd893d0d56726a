"""The worker's Celery app: :mod:`service.jobs.queue`'s app with the task module loaded.

PyTorch and the training code are imported when the worker process starts
(``worker_init``), never by the API, which only sends tasks by name.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import setup_logging, worker_init

from service.core.logs import configure_logging
from service.core.settings import Settings, get_settings
from service.jobs.queue import get_celery


def worker_app(settings: Settings | None = None) -> Celery:
    """The app a ``lora-service worker`` runs: :func:`service.jobs.queue.get_celery`'s, with
    :mod:`worker.tasks` (the task and the reaper's start-up hook) registered."""
    import worker.tasks  # noqa: F401  (registers run_job and the reaper's worker_ready hook)

    return get_celery(settings or get_settings())


@setup_logging.connect
def _logging(**_: Any) -> None:
    """Celery leaves the root logger to us: the service's format (``LOG_FORMAT``)."""
    configure_logging(get_settings())


@worker_init.connect
def _observe(sender: Any = None, **_: Any) -> None:
    """Metrics port, heartbeat file and the ``worker`` log field (:mod:`worker.observe`)."""
    from worker import observe

    hostname = getattr(sender, "hostname", None) or "worker"
    observe.start(get_settings(), f"{hostname}:{os.getpid()}")


@worker_init.connect
def _import_torch_early(**_: Any) -> None:
    """Import PyTorch and the training code when a worker starts, not in its first job.

    Safe with the solo pool (no fork follows). Saves the first job ~5 s (torch, torchvision).
    """
    import torchvision.datasets  # noqa: F401  (models.data imports it lazily)

    import models.training  # noqa: F401


def __getattr__(name: str) -> Celery:
    """``worker.celery_app.app``: the app for the process settings (for ``celery -A``)."""
    if name in ("app", "celery"):
        return worker_app()
    raise AttributeError(name)
