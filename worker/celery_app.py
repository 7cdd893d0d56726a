"""The worker's Celery app: :mod:`service.jobs.queue`'s app with the task module loaded.

PyTorch and the training code are imported when the worker process starts
(``worker_init``), never by the API, which only sends tasks by name.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_init

from service.core.settings import Settings, get_settings
from service.jobs.queue import get_celery


def worker_app(settings: Settings | None = None) -> Celery:
    """The app a ``lora-service worker`` runs: :func:`service.jobs.queue.get_celery`'s, with
    :mod:`worker.tasks` (the task and the reaper's start-up hook) registered."""
    import worker.tasks  # noqa: F401  (registers run_job and the reaper's worker_ready hook)

    return get_celery(settings or get_settings())


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
