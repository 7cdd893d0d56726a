"""Leases on running jobs: take over a stale one, requeue or end jobs whose worker died.

A ``running`` job's lease is its ``worker_id`` plus ``heartbeat_at``, renewed every
``HEARTBEAT_SECONDS`` by the worker (:func:`service.jobs.state.renew_lease`). The lease
is *stale* once ``heartbeat_at`` is older than ``LEASE_SECONDS``: its worker died (SIGKILL,
OOM, preemption) or lost the database. Transitions here, each one conditional ``UPDATE``
whose row count says whether it happened, so that of several reapers (one per worker) or
redelivered messages exactly one wins:

    running, stale, cancel_requested         --reap--> cancelled
    running, stale, attempt >= max_attempts  --reap--> failed (code ``worker_lost``)
    running, stale                           --reap--> queued (new message sent)
    running, stale                           --take_over_stale--> running (attempt + 1)
    queued, no message for resend_after s    --reap--> queued (message sent again)
    running, held by a worker shutting down  --hand_back--> queued (new message sent)

``attempt`` counts the runs started (each claim or take-over adds one), so a requeued job
runs next as ``attempt + 1``. A cancelled or finished job is never reclaimed.

For ``queued`` jobs ``heartbeat_at`` records when the job's latest message was sent by a
reaper (NULL: by the API at ``created_at``).

Timestamps come from the clocks of the processes (UTC); hosts sharing a database must keep
their clocks in sync to well under ``LEASE_SECONDS`` (NTP).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from service.db.tables import JobRecord, utcnow
from service.jobs import events

log = logging.getLogger(__name__)

WORKER_LOST = "worker_lost"
REAP_BATCH = 100
LONG_AGO = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class ReapResult:
    """What one :func:`reap` pass did, as lists of job ids."""

    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)
    send_errors: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any((self.requeued, self.failed, self.cancelled, self.resent, self.send_errors))


def stale_before(lease_seconds: float, now: datetime | None = None) -> datetime:
    """The cutoff: a heartbeat older than this is stale (``now - lease_seconds``)."""
    return (now or utcnow()) - timedelta(seconds=lease_seconds)


def _is_stale(cutoff: datetime) -> Any:
    return or_(JobRecord.heartbeat_at.is_(None), JobRecord.heartbeat_at < cutoff)


def _count(session: Session, stmt: Any) -> int:
    return session.execute(stmt.execution_options(synchronize_session=False)).rowcount


def take_over_stale(
    session: Session, job_id: str, worker_id: str, *, lease_seconds: float, max_attempts: int
) -> JobRecord | None:
    """Claim a ``running`` job whose lease is stale for ``worker_id``; commits.

    Used when a message is (re)delivered for a job that a dead worker still holds. Sets
    ``worker_id``, ``heartbeat_at`` = now and ``attempt += 1``.

    Args:
        lease_seconds: heartbeat age (s) beyond which the lease is stale.
        max_attempts: a job that already ran this many times is not taken (the reaper
            ends it ``failed``).
    Returns:
        The job as now stored, or None: lease alive, cancel requested, at the attempt
        limit, not running, or unknown.
    """
    taken = _count(
        session,
        update(JobRecord)
        .where(
            JobRecord.id == job_id,
            JobRecord.status == "running",
            JobRecord.cancel_requested.is_(False),
            JobRecord.attempt < max_attempts,
            _is_stale(stale_before(lease_seconds)),
        )
        .values(worker_id=worker_id, heartbeat_at=utcnow(), attempt=JobRecord.attempt + 1),
    )
    if taken != 1:
        session.commit()
        return None
    job = session.scalars(
        select(JobRecord).where(JobRecord.id == job_id).execution_options(populate_existing=True)
    ).one()
    events.record_running(session, job_id, attempt=job.attempt, worker_id=worker_id, took_over=True)
    session.commit()
    return job


def worker_lost_message(attempts: int, max_attempts: int, lease_seconds: float) -> str:
    """The error message of a job given up after its workers died ``attempts`` times."""
    times = "once" if attempts == 1 else f"{attempts} times"
    return (
        f"The worker running this job died {times} (no heartbeat for {lease_seconds:g} s); "
        f"giving up after {max_attempts} attempt(s) (MAX_ATTEMPTS)."
    )


def _reap_one(
    session: Session,
    row: Any,
    cutoff: datetime,
    *,
    lease_seconds: float,
    max_attempts: int,
    result: ReapResult,
) -> bool:
    """End or requeue one stale job; commits. True when it was requeued (send a message)."""
    job_id, attempt, cancel_requested = row
    still_stale = (
        JobRecord.id == job_id,
        JobRecord.status == "running",
        JobRecord.attempt == attempt,
        _is_stale(cutoff),
    )
    now = utcnow()
    if cancel_requested:
        values: dict[str, Any] = {"status": "cancelled", "finished_at": now}
        bucket = result.cancelled
    elif attempt >= max_attempts:
        values = {
            "status": "failed",
            "finished_at": now,
            "error_code": WORKER_LOST,
            "error_message": worker_lost_message(attempt, max_attempts, lease_seconds),
        }
        bucket = result.failed
    else:
        values = {"status": "queued", "worker_id": None, "heartbeat_at": now}
        bucket = result.requeued
    won = _count(session, update(JobRecord).where(*still_stale).values(**values)) == 1
    if won and bucket is result.requeued:
        events.record_requeued(
            session,
            job_id,
            attempt=attempt,
            reason=f"its worker was lost (no heartbeat for {lease_seconds:g} s)",
        )
    elif won:
        events.record_terminal(session, job_id)
    session.commit()
    if won:
        bucket.append(job_id)
    return won and bucket is result.requeued


def hand_back(session: Session, job_id: str, worker_id: str, *, attempt: int) -> bool:
    """``running -> queued`` for a job that ``worker_id`` still holds and gives up on purpose
    (graceful shutdown): lease released, a ``requeued`` event; commits. The caller sends
    the new message.

    Returns:
        False when the worker no longer held the job (nothing changed).
    """
    won = _count(
        session,
        update(JobRecord)
        .where(
            JobRecord.id == job_id,
            JobRecord.status == "running",
            JobRecord.worker_id == worker_id,
        )
        .values(status="queued", worker_id=None, heartbeat_at=utcnow()),
    )
    if won:
        events.record_requeued(
            session, job_id, attempt=attempt, reason="its worker shut down (SIGTERM)"
        )
    session.commit()
    return won == 1


def flag_unsent(session: Session, job_id: str) -> None:
    """Date a queued job's latest message long ago (its send failed), so that the next
    reaper pass sends it; commits. A database error while doing so is logged: the job is
    then sent ``QUEUED_RESEND_SECONDS`` after it was created instead."""
    try:
        _count(
            session,
            update(JobRecord)
            .where(JobRecord.id == job_id, JobRecord.status == "queued")
            .values(heartbeat_at=LONG_AGO),
        )
        session.commit()
    except Exception:  # the database went too: the resend period covers it
        session.rollback()
        log.warning("could not flag job %s as unsent", job_id, exc_info=True)


def _send_or_flag(session: Session, job_id: str, send: Callable[[str], None], result: ReapResult):
    """Send ``job_id``'s message; on failure date its last send long ago so that the next
    pass retries at once."""
    try:
        send(job_id)
    except Exception:  # the broker's errors are transport-specific
        log.warning("could not send job %s; retrying next pass", job_id, exc_info=True)
        result.send_errors.append(job_id)
        flag_unsent(session, job_id)


def reap(
    session: Session,
    *,
    lease_seconds: float,
    max_attempts: int,
    resend_after: float,
    send: Callable[[str], None],
) -> ReapResult:
    """One reaper pass: end or requeue every stale running job; re-send lost messages.

    Each stale ``running`` job ends ``cancelled`` (cancel was requested), ends ``failed``
    with code ``worker_lost`` (it already ran ``max_attempts`` times), or goes back to
    ``queued`` and gets a new message (committed first, then sent). A ``queued`` job whose
    latest message was sent more than ``resend_after`` seconds ago (lost with a dead
    worker on a broker that never redelivers, or never sent because the sender died) gets
    another one; a duplicate message is harmless, since only one delivery can claim a job.

    Args:
        lease_seconds: heartbeat age (s) beyond which a running job's worker is presumed dead.
        max_attempts: runs a job may start before a dead worker ends it ``failed``.
        resend_after: seconds after which a queued job's message is presumed lost.
        send: sends ``run_job(job_id)`` (``service.jobs.queue.enqueue_job``).
    Returns:
        The job ids acted on. Database errors propagate (the caller retries next pass).
    """
    result = ReapResult()
    now = utcnow()
    cutoff = stale_before(lease_seconds, now)
    rows = session.execute(
        select(JobRecord.id, JobRecord.attempt, JobRecord.cancel_requested)
        .where(JobRecord.status == "running", _is_stale(cutoff))
        .limit(REAP_BATCH)
    ).all()
    session.rollback()
    for row in rows:
        if _reap_one(
            session, row, cutoff, lease_seconds=lease_seconds, max_attempts=max_attempts,
            result=result,
        ):  # fmt: skip
            _send_or_flag(session, row[0], send, result)

    sent_before = now - timedelta(seconds=resend_after)
    last_sent = func.coalesce(JobRecord.heartbeat_at, JobRecord.created_at)
    waiting = (
        JobRecord.status == "queued",
        JobRecord.cancel_requested.is_(False),
        last_sent < sent_before,
    )
    lost = session.scalars(select(JobRecord.id).where(*waiting).limit(REAP_BATCH)).all()
    session.rollback()
    for job_id in lost:
        if job_id in result.send_errors:
            continue  # its send just failed: next pass
        won = _count(
            session,
            update(JobRecord).where(JobRecord.id == job_id, *waiting).values(heartbeat_at=now),
        )
        session.commit()
        if won == 1:
            result.resent.append(job_id)
            _send_or_flag(session, job_id, send, result)
    return result
