"""Graceful shutdown: SIGTERM (what compose and Kubernetes send) hands the running job back.

Celery's warm shutdown waits for the running task to return. The ``worker_shutting_down``
signal (sent by Celery's SIGTERM/SIGINT handler in the worker's main process) sets
:data:`SHUTTING_DOWN`; the training loop's ``should_stop``
(:class:`worker.lease.StopCheck`) sees it before the next step and stops there. The job's
last finished epoch is already in its training checkpoint (written after every epoch), so
:func:`hand_back` only has to move the job back to ``queued`` (lease released, a
``requeued`` event), and send it a new message: another worker resumes it from that
checkpoint at once, instead of after ``LEASE_SECONDS``. At most the epoch in progress is
trained again.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery.signals import worker_shutting_down
from sqlalchemy.orm import Session, sessionmaker

from service.core.settings import Settings
from service.jobs import leases

log = logging.getLogger(__name__)

SHUTTING_DOWN = threading.Event()
"""Set once this worker process was asked to stop (SIGTERM / SIGINT)."""


@worker_shutting_down.connect
def _on_shutting_down(sig: str = "", how: str = "", **_: Any) -> None:
    """Celery's handler: remember that the worker stops (runs inside a signal handler)."""
    SHUTTING_DOWN.set()


def hand_back(
    factory: sessionmaker[Session], job_id: str, worker_id: str, attempt: int, settings: Settings
) -> bool:
    """Move ``job_id`` (held by ``worker_id``) back to ``queued`` and send it a new message.

    A failed send leaves the job flagged unsent (the next reaper pass sends it).

    Returns:
        False when this worker no longer held the job (nothing done).
    """
    from service.jobs.queue import enqueue_job

    with factory() as session:
        if not leases.hand_back(session, job_id, worker_id, attempt=attempt):
            return False
        log.warning("job %s: worker shutting down; handed back after attempt %d", job_id, attempt)
        try:
            enqueue_job(job_id, settings)
        except Exception:  # the broker's errors are transport-specific
            log.warning("could not send handed-back job %s", job_id, exc_info=True)
            leases.flag_unsent(session, job_id)
    return True
