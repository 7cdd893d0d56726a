"""Metric records: one number of one epoch of one job, unique per (job, epoch, name)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.tables import MetricRecord


def upsert_metrics(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert ``rows`` (``job_id``, ``epoch``, ``name``, ``value``), overwriting the value of a
    (job, epoch, name) already stored; flushes, the caller commits."""
    dialect = session.get_bind().dialect.name
    if dialect in ("sqlite", "postgresql"):
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert
        stmt = insert(MetricRecord).values(rows)
        stmt = stmt.on_conflict_do_update(
            index_elements=["job_id", "epoch", "name"], set_={"value": stmt.excluded.value}
        )
        session.execute(stmt)
        return
    for row in rows:  # other databases: read, then update or insert
        existing = session.scalars(
            select(MetricRecord).where(
                MetricRecord.job_id == row["job_id"],
                MetricRecord.epoch == row["epoch"],
                MetricRecord.name == row["name"],
            )
        ).first()
        if existing is None:
            session.add(MetricRecord(**row))
        else:
            existing.value = row["value"]
    session.flush()


def job_metrics(session: Session, job_id: str) -> dict[int, dict[str, float]]:
    """The per-epoch series of a job: ``{epoch: {name: value}}``, epochs ascending."""
    rows = session.execute(
        select(MetricRecord.epoch, MetricRecord.name, MetricRecord.value)
        .where(MetricRecord.job_id == job_id)
        .order_by(MetricRecord.epoch, MetricRecord.name)
    )
    series: dict[int, dict[str, float]] = {}
    for epoch, name, value in rows:
        series.setdefault(epoch, {})[name] = value
    return series
