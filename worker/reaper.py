"""The reaper: every worker looks for jobs whose worker died, and requeues or ends them.

Started by the ``worker_ready`` signal in every ``lora-service worker`` process: a daemon
thread runs one pass at once (start-up) and then one every ``REAPER_SECONDS``. A pass
(:func:`service.jobs.leases.reap`) requeues each ``running`` job whose heartbeat is older
than ``LEASE_SECONDS`` and sends it a new message (the embedded SQLite broker never
redelivers a message taken by a killed worker; Redis would only after
``VISIBILITY_TIMEOUT``), ends it ``failed`` (``worker_lost``) once it has started
``MAX_ATTEMPTS`` times, or ``cancelled`` if a cancel was requested; and it re-sends the
message of a ``queued`` job whose last message is older than ``QUEUED_RESEND_SECONDS``.
Several workers reaping at once is safe: every transition is a conditional ``UPDATE``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from celery.signals import worker_ready

from service.core import store
from service.core.artifacts import checkpoint_dir
from service.core.settings import Settings, get_settings
from service.db.engine import session_factory
from service.jobs.device_wait import fail_unclaimed_cuda_jobs
from service.jobs.leases import ReapResult, reap

log = logging.getLogger(__name__)


def reap_once(settings: Settings, send: Callable[[str], None] | None = None) -> ReapResult:
    """Run one reaper pass against ``settings.database_url``.

    Args:
        send: sends ``run_job(job_id)``; default :func:`service.jobs.queue.enqueue_job`.
    Removes the checkpoints of the jobs it ended (cancelled or failed: never resumed).

    Returns:
        What the pass did. Raises database errors (the thread logs them and goes on).
    """
    if send is None:
        from service.jobs.queue import enqueue_job

        def send(job_id: str) -> None:
            enqueue_job(job_id, settings)

    with session_factory(settings.database_url)() as session:
        result = reap(
            session,
            lease_seconds=settings.lease_seconds,
            max_attempts=settings.max_attempts,
            resend_after=settings.queued_resend_seconds,
            send=send,
        )
        result.failed.extend(fail_unclaimed_cuda_jobs(session, settings.gpu_wait_seconds))
    for job_id in (*result.cancelled, *result.failed):
        store.delete(settings, checkpoint_dir(settings, job_id))  # these jobs never resume
    if result:
        log.warning(
            "reaper: requeued %s, failed %s, cancelled %s, re-sent %s, send errors %s",
            result.requeued,
            result.failed,
            result.cancelled,
            result.resent,
            result.send_errors,
        )
    return result


class Reaper:
    """A daemon thread calling :func:`reap_once` at start and every ``REAPER_SECONDS``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.passes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reaper", daemon=True)

    def _run(self) -> None:
        while True:
            try:
                reap_once(self.settings)
            except Exception:  # database or broker briefly unreachable: try next pass
                log.warning("reaper pass failed", exc_info=True)
            self.passes += 1
            if self._stop.wait(self.settings.reaper_seconds):
                return

    def start(self) -> Reaper:
        """Start the thread (first pass at once); returns self."""
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to end after its current pass and wait up to ``timeout`` s."""
        self._stop.set()
        self._thread.join(timeout)


_REAPER: Reaper | None = None


@worker_ready.connect
def start_reaper(**_: Any) -> None:
    """``worker_ready`` handler: start this process's reaper (once)."""
    global _REAPER
    if _REAPER is None:
        settings = get_settings()
        _REAPER = Reaper(settings).start()
        log.info(
            "reaper started: every %g s, lease %g s, heartbeat %g s, max attempts %d",
            settings.reaper_seconds,
            settings.lease_seconds,
            settings.heartbeat_seconds,
            settings.max_attempts,
        )
