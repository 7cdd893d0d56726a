"""Figures about jobs, models and adapters that ``GET /metrics`` reads at scrape time.

One grouped query per figure, so a scrape costs four small queries whatever the table
sizes (``jobs.status`` and ``jobs.kind`` are indexed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.db.tables import AdapterRecord, JobRecord, ModelRecord


@dataclass
class JobStats:
    """Counts by (kind, status); per kind, the oldest queued job's age and the oldest
    running job's heartbeat age (seconds, None when there is no such job)."""

    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    oldest_queued_s: dict[str, float] = field(default_factory=dict)
    oldest_heartbeat_s: dict[str, float] = field(default_factory=dict)


def _age(now: datetime, then: datetime | None) -> float | None:
    if then is None:
        return None
    if then.tzinfo is None:  # SQLite returns naive UTC datetimes
        then = then.replace(tzinfo=UTC)
    return max((now - then).total_seconds(), 0.0)


def job_stats(session: Session, now: datetime | None = None) -> JobStats:
    """The job figures as the database says now."""
    now = now or datetime.now(UTC)
    stats = JobStats()
    rows = session.execute(
        select(JobRecord.kind, JobRecord.status, func.count()).group_by(
            JobRecord.kind, JobRecord.status
        )
    )
    stats.counts = {(kind, status): n for kind, status, n in rows}
    queued = session.execute(
        select(JobRecord.kind, func.min(JobRecord.created_at))
        .where(JobRecord.status == "queued")
        .group_by(JobRecord.kind)
    )
    stats.oldest_queued_s = {k: a for k, t in queued if (a := _age(now, t)) is not None}
    running = session.execute(
        select(JobRecord.kind, func.min(JobRecord.heartbeat_at))
        .where(JobRecord.status == "running")
        .group_by(JobRecord.kind)
    )
    stats.oldest_heartbeat_s = {k: a for k, t in running if (a := _age(now, t)) is not None}
    return stats


def record_ids(session: Session) -> tuple[set[str], set[str]]:
    """The ids of every registered (model, adapter) record."""
    models = set(session.scalars(select(ModelRecord.id)))
    adapters = set(session.scalars(select(AdapterRecord.id)))
    return models, adapters
