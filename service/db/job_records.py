"""Job records: create, read and list training jobs (no FastAPI here).

A job's life after creation (claim, heartbeat, epochs, success, failure, cancellation) is
a set of conditional UPDATEs in :mod:`service.jobs.state`; this module only adds and reads
rows. ``create_job`` adds and flushes: the caller commits *before* enqueueing the task.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.errors import not_found
from service.core.vocab import JOB_PREFIX, JobKind, JobStatus, new_id
from service.db.paging import page
from service.db.tables import JobRecord, utcnow


def create_job(
    session: Session,
    *,
    kind: JobKind,
    config: dict[str, Any],
    base_model_id: str | None,
    epochs: int,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    webhook_url: str | None = None,
) -> JobRecord:
    """Add a ``queued`` job (flush; the caller commits *before* enqueueing its task)."""
    job = JobRecord(
        id=new_id(JOB_PREFIX),
        kind=kind,
        status="queued",
        config=config,
        base_model_id=base_model_id,
        epoch=0,
        epochs=epochs,
        attempt=0,
        cancel_requested=False,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        webhook_url=webhook_url,
        event_seq=0,
        created_at=utcnow(),
    )
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, job_id: str) -> JobRecord | None:
    """The job as stored now (bypasses the session's identity map), or None."""
    return session.scalars(
        select(JobRecord).where(JobRecord.id == job_id).execution_options(populate_existing=True)
    ).first()


def list_jobs(
    session: Session,
    *,
    status: JobStatus | None = None,
    kind: JobKind | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[JobRecord], int]:
    """Jobs, newest first, filtered by ``status`` and ``kind``, and the total matching."""
    stmt = select(JobRecord).order_by(JobRecord.created_at.desc(), JobRecord.id)
    if status is not None:
        stmt = stmt.where(JobRecord.status == status)
    if kind is not None:
        stmt = stmt.where(JobRecord.kind == kind)
    return page(session, stmt, limit, offset)


def require_job(session: Session, job_id: str) -> JobRecord:
    """The job as stored now. Raises ApiError 404 ``job_not_found``."""
    job = get_job(session, job_id)
    if job is None:
        raise not_found("job", job_id)
    return job
