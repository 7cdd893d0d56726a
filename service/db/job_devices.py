"""Which device a job asked for (``config.device``: ``auto`` | ``cpu`` | ``cuda``), read
from its row: the queue it is sent to depends on it (:mod:`service.jobs.queue`)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.job_spec import parse_stored
from service.db.engine import session_factory
from service.db.tables import JobRecord

DEFAULT_DEVICE = "auto"
"""What rows from before the ``device`` field ran as (whatever the worker had)."""


def device_of(kind: str, config: dict | None) -> str:
    """The ``device`` of the stored spec (:func:`~service.core.job_spec.parse_stored`);
    :data:`DEFAULT_DEVICE` when the row does not parse (it then fails at its worker)."""
    try:
        return parse_stored(kind, config or {}).device
    except ValueError:
        return DEFAULT_DEVICE


def device_of_job(database_url: str, job_id: str) -> str:
    """The device job ``job_id`` asked for (:data:`DEFAULT_DEVICE` for an unknown id).

    Raises:
        SQLAlchemy errors when the database is unreachable.
    """
    with session_factory(database_url)() as session:
        row = session.execute(
            select(JobRecord.kind, JobRecord.config).where(JobRecord.id == job_id)
        ).first()
    return DEFAULT_DEVICE if row is None else device_of(row[0], row[1])


def queued_cuda_jobs_before(session: Session, cutoff: datetime, limit: int = 100) -> list[str]:
    """Ids of ``queued`` jobs created before ``cutoff`` whose config asks for ``cuda``."""
    rows = session.execute(
        select(JobRecord.id, JobRecord.kind, JobRecord.config)
        .where(JobRecord.status == "queued", JobRecord.created_at < cutoff)
        .order_by(JobRecord.created_at)
        .limit(limit * 10)
    ).all()
    return [job_id for job_id, kind, config in rows if device_of(kind, config) == "cuda"][:limit]
