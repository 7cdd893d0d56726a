"""Sweep records: add, read and lock sweeps, and list the jobs a sweep created.

A sweep's status and figures are derived from its jobs (:mod:`service.jobs.sweeps`);
the row holds the request as validated, the planned number of jobs and the cancel request.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.core.errors import not_found
from service.core.vocab import SWEEP_PREFIX, new_id
from service.db.paging import page
from service.db.tables import JobRecord, SweepRecord, utcnow


def create_sweep(
    session: Session,
    *,
    request: dict[str, Any],
    n_jobs: int,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
) -> SweepRecord:
    """Add a sweep (flush; the caller adds its first jobs and commits)."""
    sweep = SweepRecord(
        id=new_id(SWEEP_PREFIX),
        created_at=utcnow(),
        request=request,
        n_jobs=n_jobs,
        cancel_requested=False,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
    )
    session.add(sweep)
    session.flush()
    return sweep


def get_sweep(session: Session, sweep_id: str, *, lock: bool = False) -> SweepRecord | None:
    """The sweep as stored now, or None; ``lock``: ``SELECT ... FOR UPDATE`` (Postgres;
    SQLite serialises writers anyway), so a cancel and a base's success never interleave."""
    stmt = select(SweepRecord).where(SweepRecord.id == sweep_id)
    if lock:
        stmt = stmt.with_for_update()
    return session.scalars(stmt.execution_options(populate_existing=True)).first()


def require_sweep(session: Session, sweep_id: str) -> SweepRecord:
    """The sweep as stored now. Raises ApiError 404 ``sweep_not_found``."""
    sweep = get_sweep(session, sweep_id)
    if sweep is None:
        raise not_found("sweep", sweep_id)
    return sweep


def sweep_by_key(session: Session, key: str) -> SweepRecord | None:
    """The sweep created under Idempotency-Key ``key``, read afresh, or None."""
    session.rollback()  # the row may have been committed by another request meanwhile
    return session.scalars(
        select(SweepRecord)
        .where(SweepRecord.idempotency_key == key)
        .execution_options(populate_existing=True)
    ).first()


def list_sweeps(session: Session, *, limit: int, offset: int) -> tuple[list[SweepRecord], int]:
    """Sweeps, newest first, and how many there are."""
    stmt = select(SweepRecord).order_by(SweepRecord.created_at.desc(), SweepRecord.id)
    return page(session, stmt, limit, offset)


def sweep_jobs(session: Session, sweep_id: str) -> list[JobRecord]:
    """Every job of the sweep as stored now, in creation order."""
    return list(
        session.scalars(
            select(JobRecord)
            .where(JobRecord.sweep_id == sweep_id)
            .order_by(JobRecord.created_at, JobRecord.id)
            .execution_options(populate_existing=True)
        )
    )


def request_cancel(session: Session, sweep_id: str) -> bool:
    """Set the sweep's ``cancel_requested`` (no commit); True when the sweep exists."""
    changed = session.execute(
        update(SweepRecord)
        .where(SweepRecord.id == sweep_id)
        .values(cancel_requested=True)
        .execution_options(synchronize_session=False)
    ).rowcount
    return changed == 1
