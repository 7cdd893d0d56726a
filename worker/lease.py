"""The worker's side of a job's lease: keep it alive, and stop training once it is gone.

* :class:`LeaseKeeper`: a daemon thread that renews ``heartbeat_at`` every
  ``HEARTBEAT_SECONDS``. It also *fences* its own worker: once no renewal has succeeded for
  ``fence_seconds`` (by default ``LEASE_SECONDS - 2 * HEARTBEAT_SECONDS``), the lease
  counts as lost locally, before any reaper may consider it stale (after
  ``LEASE_SECONDS``). A worker cut off from the database, or frozen, thus stops training
  before another attempt can start, and two runs of one job never overlap.
* :class:`StopCheck`: the ``should_stop`` callable of the training loop. True once the job
  is cancelled, the lease is lost or the worker shuts down; asks the database at most
  every ``interval`` seconds (a clock read otherwise), checks the fence on every call.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy.orm import Session, sessionmaker

from service.jobs import state as job_state

log = logging.getLogger(__name__)


def fence_after(lease_seconds: float, heartbeat_seconds: float) -> float:
    """Seconds without a successful renewal after which a worker gives its lease up.

    ``lease_seconds - 2 * heartbeat_seconds`` (at least one heartbeat interval): the gap
    to ``lease_seconds`` is the time the worker has to notice and stop at a step boundary.
    """
    return max(lease_seconds - 2 * heartbeat_seconds, heartbeat_seconds)


class LeaseKeeper:
    """Context manager: a daemon thread renewing the job's heartbeat every ``interval`` s.

    A failed renewal (database briefly unreachable) is logged and retried at the next tick;
    a renewal that finds the lease gone stops the thread and sets :attr:`lost`.

    Args:
        interval: seconds between renewals (``HEARTBEAT_SECONDS``).
        fence_seconds: :attr:`expired` becomes true after this long without a successful
            renewal (None: never).
        started: ``time.monotonic()`` taken *before* the claim that wrote the first
            heartbeat (default: now).
    """

    def __init__(
        self,
        factory: sessionmaker[Session],
        job_id: str,
        worker_id: str,
        interval: float,
        fence_seconds: float | None = None,
        started: float | None = None,
    ) -> None:
        self.factory, self.job_id, self.worker_id = factory, job_id, worker_id
        self.interval, self.fence_seconds = interval, fence_seconds
        self.renewed_at = time.monotonic() if started is None else started
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    @property
    def expired(self) -> bool:
        """True when the lease is gone: taken away, or not renewed for ``fence_seconds``."""
        if self.lost:
            return True
        if self.fence_seconds is None:
            return False
        return time.monotonic() - self.renewed_at > self.fence_seconds

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            before = time.monotonic()  # the heartbeat written is at least this recent
            try:
                with self.factory() as session:
                    if not job_state.renew_lease(session, self.job_id, self.worker_id):
                        log.info("lease of %s no longer held (ended or taken over)", self.job_id)
                        self.lost = True
                        return
                self.renewed_at = before
            except Exception:  # keep training through a transient database error
                log.warning("heartbeat of %s failed; retrying", self.job_id, exc_info=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=max(self.interval, 5.0))


class StopCheck:
    """``should_stop`` for the training loop: True once the job is cancelled or the lease is
    gone. Asks the database at most every ``interval`` seconds, so polling it before every
    step costs a clock read; the local fence of ``lease`` is checked on every call.

    Args:
        shutdown: set when the worker process stops (:data:`worker.shutdown.SHUTTING_DOWN`):
            the next call is True with reason ``"shutdown"``.
        deadline: ``time.monotonic()`` value after which the job has run too long
            (``JOB_MAX_RUNTIME_SECONDS``): reason ``"timeout"``.
    Attributes:
        reason: ``"cancel_requested"``, ``"lease_lost"``, ``"shutdown"``, ``"timeout"`` or
            None (carry on).
    """

    def __init__(
        self,
        factory: sessionmaker[Session],
        job_id: str,
        worker_id: str,
        interval: float,
        lease: LeaseKeeper | None = None,
        shutdown: threading.Event | None = None,
        deadline: float | None = None,
    ) -> None:
        self.factory, self.job_id, self.worker_id = factory, job_id, worker_id
        self.interval, self.lease, self.shutdown = interval, lease, shutdown
        self.deadline = deadline
        self.reason: str | None = None
        self._next_poll = 0.0

    def _fenced(self) -> bool:
        if self.reason is None and self.lease is not None and self.lease.expired:
            log.warning("job %s: lease expired locally; stopping", self.job_id)
            self.reason = "lease_lost"
        return self.reason is not None

    def lease_expired(self) -> bool:
        """True once the lease is gone locally (fenced or taken away): write nothing more."""
        return self.lease is not None and self.lease.expired

    def poll(self) -> str | None:
        """Ask the database now; returns and remembers the reason to stop, if any.

        Raises:
            sqlalchemy errors when the database is unreachable.
        """
        if self._fenced():
            return self.reason
        with self.factory() as session:
            self.reason = self.reason or job_state.stop_reason(session, self.job_id, self.worker_id)
        self._next_poll = time.monotonic() + self.interval
        return self.reason

    def __call__(self) -> bool:
        if self._fenced():
            return True
        if self.shutdown is not None and self.shutdown.is_set():
            log.warning("job %s: worker shutting down; stopping at this step", self.job_id)
            self.reason = "shutdown"
            return True
        if self.deadline is not None and time.monotonic() > self.deadline:
            log.warning("job %s: ran past its maximum runtime; stopping", self.job_id)
            self.reason = "timeout"
            return True
        if time.monotonic() >= self._next_poll:
            try:
                self.poll()
            except Exception:  # a database hiccup: the fence decides if it lasts
                log.warning("stop check of %s failed", self.job_id, exc_info=True)
                self._next_poll = time.monotonic() + self.interval
        return self.reason is not None
