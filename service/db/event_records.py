"""Job event records: append one fact of a job's life, read them back in order.

Numbering: each job's events are numbered 1, 2, 3... by ``jobs.event_seq``. Appending first
locks the job's row (an UPDATE of it), so two writers of the same job's events (the API
cancelling, the worker recording an epoch, a reaper requeueing) take turns, and each
job's events **commit in the order of their numbers**: a reader that has seen event *n*
never later finds an *m* < *n* it missed. That is what lets a stream resume from an id
without gaps or repeats.

Uniqueness: every event names its ``fact`` (``status:running:2``, ``metrics:3``); a fact
already recorded for the job is not recorded again, so a redelivered message, a resumed run
re-recording its epochs, or a retried transaction adds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.core.vocab import EventLevel, EventType
from service.db.tables import JobEventRecord, JobRecord, utcnow


@dataclass(frozen=True)
class NewEvent:
    """An event to append. ``fact``: unique per job (see the module docstring)."""

    type: EventType
    fact: str
    message: str
    data: dict[str, Any]
    level: EventLevel = "info"


def append_event(session: Session, job_id: str, event: NewEvent) -> JobEventRecord | None:
    """Add ``event`` to job ``job_id``'s log in the caller's transaction (flushes; the
    caller commits, together with the change the event reports).

    Returns:
        The new record, or None when the job already has this ``fact`` or does not exist.
    """
    # Lock the job row first (serialises this job's event writers; see module docstring).
    current = session.execute(
        update(JobRecord)
        .where(JobRecord.id == job_id)
        .values(event_seq=JobRecord.event_seq)
        .returning(JobRecord.event_seq)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    if current is None:
        return None
    seen = session.scalar(
        select(JobEventRecord.id).where(
            JobEventRecord.job_id == job_id, JobEventRecord.fact == event.fact
        )
    )
    if seen is not None:
        return None
    seq = current + 1
    session.execute(
        update(JobRecord)
        .where(JobRecord.id == job_id)
        .values(event_seq=seq)
        .execution_options(synchronize_session=False)
    )
    record = JobEventRecord(
        job_id=job_id,
        seq=seq,
        fact=event.fact,
        created_at=utcnow(),
        level=event.level,
        type=event.type,
        message=event.message,
        data=event.data,
    )
    session.add(record)
    session.flush()
    return record


def list_events(
    session: Session, job_id: str, *, after: int = 0, limit: int = 100
) -> list[JobEventRecord]:
    """Job ``job_id``'s events numbered above ``after``, oldest first, at most ``limit``."""
    return list(
        session.scalars(
            select(JobEventRecord)
            .where(JobEventRecord.job_id == job_id, JobEventRecord.seq > after)
            .order_by(JobEventRecord.seq)
            .limit(limit)
        )
    )
