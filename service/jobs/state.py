"""Job state transitions: each one a conditional UPDATE whose row count says if it happened.

    queued --claim_job--> running --mark_succeeded--> succeeded
      |                      |----mark_failed------> failed
      |                      '----finish_cancelled--> cancelled  (after request_cancel)
      '--request_cancel (at once)---------------------> cancelled

The worker that claims a job holds its *lease*: ``worker_id`` plus ``heartbeat_at``, renewed
by :func:`renew_lease` every ``HEARTBEAT_SECONDS``. Worker-side transitions require the
lease, so a worker that lost it (a stale lease handed to another attempt) changes nothing.
Stale leases (dead workers) are requeued, taken over or ended by :mod:`service.jobs.leases`.

Every transition that happens also records its event (:mod:`service.jobs.events`) in the
same transaction: a status change and its event commit together or not at all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from service.core.vocab import UNFINISHED_STATUSES
from service.db.metric_records import upsert_metrics
from service.db.tables import JobRecord, utcnow
from service.jobs import events

MAX_ERROR_MESSAGE = 4000


def _update_count(session: Session, stmt: Any) -> int:
    return session.execute(stmt.execution_options(synchronize_session=False)).rowcount


def claim_job(session: Session, job_id: str, worker_id: str) -> JobRecord | None:
    """Move a ``queued`` job to ``running`` under ``worker_id``'s lease; commits.

    Sets ``attempt += 1``, ``heartbeat_at`` = now, and ``started_at`` if not set yet.

    Returns:
        The job as now stored, or None when it was not ``queued`` (already claimed by
        another delivery, cancelled, finished, or unknown).
    """
    now = utcnow()
    claimed = _update_count(
        session,
        update(JobRecord)
        .where(
            JobRecord.id == job_id,
            JobRecord.status == "queued",
            JobRecord.cancel_requested.is_(False),
        )
        .values(
            status="running",
            worker_id=worker_id,
            heartbeat_at=now,
            started_at=func.coalesce(JobRecord.started_at, now),
            attempt=JobRecord.attempt + 1,
        ),
    )
    if claimed != 1:
        session.commit()
        return None
    job = _reread(session, job_id)
    events.record_running(session, job_id, attempt=job.attempt, worker_id=worker_id)
    session.commit()
    return job


def _reread(session: Session, job_id: str) -> JobRecord:
    return session.scalars(
        select(JobRecord).where(JobRecord.id == job_id).execution_options(populate_existing=True)
    ).one()


def _holds_lease(job_id: str, worker_id: str) -> tuple[Any, ...]:
    return (JobRecord.id == job_id, JobRecord.status == "running", JobRecord.worker_id == worker_id)


def renew_lease(session: Session, job_id: str, worker_id: str) -> bool:
    """Set ``heartbeat_at`` = now if ``worker_id`` still runs the job; commits.

    Returns:
        False when the lease is gone (job finished, cancelled, or taken over).
    """
    renewed = _update_count(
        session,
        update(JobRecord).where(*_holds_lease(job_id, worker_id)).values(heartbeat_at=utcnow()),
    )
    session.commit()
    return renewed == 1


def stop_reason(session: Session, job_id: str, worker_id: str) -> str | None:
    """Why the worker running ``job_id`` should stop now, if it should.

    Returns:
        ``"cancel_requested"``, ``"lease_lost"`` (the job is no longer ``running`` under
        ``worker_id``, or is gone), or None to carry on.
    """
    row = session.execute(
        select(JobRecord.status, JobRecord.worker_id, JobRecord.cancel_requested).where(
            JobRecord.id == job_id
        )
    ).first()
    session.rollback()  # end the read transaction: no snapshot held while training
    if row is None:
        return "lease_lost"
    status, owner, cancel_requested = row
    if cancel_requested:
        return "cancel_requested"
    if status != "running" or owner != worker_id:
        return "lease_lost"
    return None


def record_epoch(
    session: Session,
    job_id: str,
    worker_id: str,
    epoch: int,
    values: Mapping[str, float],
    *,
    also: Callable[[], None] | None = None,
) -> bool:
    """Write one finished epoch: its metrics (upserts, one row per job/epoch/name), its
    ``metrics`` event, the job's progress (``epoch``) and a heartbeat, in one transaction;
    commits.

    Writing the same epoch twice (a resumed or redelivered run) overwrites the values and
    adds no second event.

    Args:
        epoch: 1-based number of the finished epoch.
        values: metric name -> value, e.g. ``train_loss`` (nats), ``epoch_seconds`` (s).
        also: more writes for the same transaction (e.g. the epoch's checkpoint record).
    Returns:
        False (and nothing written) when ``worker_id`` no longer holds the job's lease.
    """
    progressed = _update_count(
        session,
        update(JobRecord)
        .where(*_holds_lease(job_id, worker_id))
        .values(epoch=epoch, heartbeat_at=utcnow()),
    )
    if progressed != 1:
        session.rollback()
        return False
    rows = [
        {"job_id": job_id, "epoch": epoch, "name": name, "value": float(value)}
        for name, value in values.items()
    ]
    if rows:
        upsert_metrics(session, rows)
    epochs = session.scalar(select(JobRecord.epochs).where(JobRecord.id == job_id)) or epoch
    events.record_metrics(session, job_id, epoch, epochs, values)
    if also is not None:
        also()
    session.commit()
    return True


def mark_succeeded(
    session: Session,
    job_id: str,
    worker_id: str,
    *,
    test_accuracy: float | None,
    test_metrics: dict[str, Any] | None,
    result_model_id: str | None = None,
    result_adapter_id: str | None = None,
    epochs_completed: int | None = None,
) -> bool:
    """Move the job to ``succeeded`` if ``worker_id`` holds it and no cancel was requested.

    Does **not** commit: the caller registers the model/adapter in the same transaction
    and commits both, so a job is never ``succeeded`` without its record (or vice versa).
    The ``succeeded`` event (and webhook message) is added to that transaction.

    Args:
        epochs_completed: the job's final progress (fewer than ``epochs`` when it stopped
            early); default ``epochs``.
    Returns:
        False when the job was cancelled meanwhile or the lease is gone (then roll back).
    """
    done = (
        _update_count(
            session,
            update(JobRecord)
            .where(*_holds_lease(job_id, worker_id), JobRecord.cancel_requested.is_(False))
            .values(
                status="succeeded",
                finished_at=utcnow(),
                epoch=JobRecord.epochs if epochs_completed is None else epochs_completed,
                test_accuracy=test_accuracy,
                test_metrics=test_metrics,
                result_model_id=result_model_id,
                result_adapter_id=result_adapter_id,
            ),
        )
        == 1
    )
    if done:
        events.record_terminal(session, job_id)
    return done


def _end_unfinished(session: Session, job_id: str, worker_id: str | None, **values: object) -> bool:
    """Set ``values`` on a ``queued``/``running`` job (held by ``worker_id`` when given);
    commits; True when the row changed."""
    conditions = [JobRecord.id == job_id, JobRecord.status.in_(UNFINISHED_STATUSES)]
    if worker_id is not None:
        conditions.append(JobRecord.worker_id == worker_id)
    changed = _update_count(
        session, update(JobRecord).where(*conditions).values(finished_at=utcnow(), **values)
    )
    if changed == 1:
        events.record_terminal(session, job_id)
    session.commit()
    return changed == 1


def mark_failed(
    session: Session, job_id: str, *, code: str, message: str, worker_id: str | None = None
) -> bool:
    """Move a ``queued``/``running`` job to ``failed`` with ``{code, message}``; commits.

    Args:
        worker_id: when given, only if that worker holds the lease.
    Returns:
        False when the job was already terminal (or held by another worker).
    """
    return _end_unfinished(
        session,
        job_id,
        worker_id,
        status="failed",
        error_code=code[:64],
        error_message=message[:MAX_ERROR_MESSAGE],
    )


def finish_cancelled(session: Session, job_id: str, worker_id: str | None = None) -> bool:
    """Move a ``queued``/``running`` job to ``cancelled``; commits.

    Args:
        worker_id: when given, only if that worker holds the lease.
    Returns:
        False when the job was already terminal (or held by another worker).
    """
    return _end_unfinished(session, job_id, worker_id, status="cancelled", cancel_requested=True)


def request_cancel(session: Session, job_id: str) -> JobRecord | None:
    """Cancel a job: a ``queued`` one ends ``cancelled`` at once; a ``running`` one gets
    ``cancel_requested`` and its worker stops at the next step boundary; a finished job is
    left as it is. Commits.

    Returns:
        The job as now stored, or None when there is no such job.
    """
    now = utcnow()
    cancelled = _update_count(
        session,
        update(JobRecord)
        .where(JobRecord.id == job_id, JobRecord.status == "queued")
        .values(status="cancelled", cancel_requested=True, finished_at=now),
    )
    if cancelled == 1:
        events.record_terminal(session, job_id)
    elif _update_count(
        session,
        update(JobRecord)
        .where(JobRecord.id == job_id, JobRecord.status == "running")
        .values(cancel_requested=True),
    ):
        events.record_cancel_requested(session, job_id)
    session.commit()
    return session.scalars(
        select(JobRecord).where(JobRecord.id == job_id).execution_options(populate_existing=True)
    ).first()
