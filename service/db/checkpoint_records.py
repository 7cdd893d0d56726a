"""Checkpoint records: the kept epochs of a job, each with its metrics and weights' path."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from service.core.errors import ApiError
from service.db.tables import CheckpointRecord, utcnow


def add_checkpoint(
    session: Session, job_id: str, epoch: int, metrics: Mapping[str, float], path: str
) -> CheckpointRecord:
    """Add (or, for an epoch recorded before, e.g. by a resumed run, replace) the checkpoint
    of ``epoch``; flushes, the caller commits."""
    record = session.scalars(
        select(CheckpointRecord).where(
            CheckpointRecord.job_id == job_id, CheckpointRecord.epoch == epoch
        )
    ).first()
    if record is None:
        record = CheckpointRecord(job_id=job_id, epoch=epoch)
        session.add(record)
    record.metrics = dict(metrics)
    record.path = path
    record.created_at = utcnow()
    session.flush()
    return record


def list_checkpoints(session: Session, job_id: str) -> list[CheckpointRecord]:
    """Job ``job_id``'s checkpoints, by epoch."""
    return list(
        session.scalars(
            select(CheckpointRecord)
            .where(CheckpointRecord.job_id == job_id)
            .order_by(CheckpointRecord.epoch)
        )
    )


def require_checkpoint(session: Session, job_id: str, epoch: int) -> CheckpointRecord:
    """The checkpoint of ``epoch``.

    Raises:
        ApiError: 404 ``checkpoint_not_found`` (param ``epoch``).
    """
    record = session.scalars(
        select(CheckpointRecord).where(
            CheckpointRecord.job_id == job_id, CheckpointRecord.epoch == epoch
        )
    ).first()
    if record is None:
        raise ApiError(
            404,
            "checkpoint_not_found",
            f"Job {job_id} keeps no checkpoint of epoch {epoch}.",
            "epoch",
        )
    return record


def delete_checkpoints(session: Session, job_id: str, epochs: Iterable[int] | None = None) -> None:
    """Delete the records of ``epochs`` (all when None); the caller commits and removes
    the files."""
    stmt = delete(CheckpointRecord).where(CheckpointRecord.job_id == job_id)
    if epochs is not None:
        stmt = stmt.where(CheckpointRecord.epoch.in_(list(epochs)))
    session.execute(stmt)
