"""Plain database functions shared by the API and the worker (no FastAPI here).

Records: :func:`register_model`, :func:`register_adapter`, look-ups and lists.
Jobs: :func:`create_job`, reads, and the state machine from :mod:`service.db.job_state`
(re-exported here)

    queued -> running -> succeeded | failed | cancelled        queued -> cancelled

Every transition is one conditional ``UPDATE ... WHERE status = ...`` whose row count says
whether it happened, so two processes racing on one job (the API cancelling while a worker
claims it, a redelivered message) never both win, on SQLite and on Postgres alike. The
worker's transitions also require that it still holds the job's lease (``worker_id``).

Functions that change jobs commit, except ``mark_succeeded``; it and ``register_*``,
``create_job`` and ``delete_adapter`` only add/flush, so the caller commits them together
(a job is ``succeeded`` in the same transaction that registers its model or adapter).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from service.db.job_state import (
    claim_job,
    finish_cancelled,
    mark_failed,
    mark_succeeded,
    record_epoch,
    renew_lease,
    request_cancel,
    stop_reason,
)
from service.db.tables import (
    AdapterRecord,
    JobRecord,
    MetricRecord,
    ModelRecord,
    new_id,
    utcnow,
)


def as_utc(moment: datetime | None) -> datetime | None:
    """``moment`` as an aware UTC datetime (SQLite hands back naive ones, stored as UTC)."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _page(session: Session, stmt: Select, limit: int, offset: int) -> tuple[list[Any], int]:
    total = session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery()))
    items = list(session.scalars(stmt.limit(limit).offset(offset)))
    return items, int(total or 0)


# ---------------------------------------------------------------- models and adapters


def register_model(
    session: Session,
    *,
    model_id: str,
    kind: str,
    job_id: str | None,
    parent_id: str | None,
    classes: list[int],
    architecture: dict[str, Any],
    n_parameters: int,
    test_accuracy: float | None,
    path: str,
) -> ModelRecord:
    """Add a model record (``kind`` "pretrained" or "finetuned_full"); flushes, caller commits.

    Args:
        classes: digit of each head output, in order.
        architecture: ``MLPConfig.to_dict()`` of the stored network.
        path: absolute directory holding ``model.safetensors`` + ``config.json``.
    Raises:
        sqlalchemy.exc.IntegrityError: ``model_id`` already exists (on flush).
    """
    record = ModelRecord(
        id=model_id,
        kind=kind,
        job_id=job_id,
        parent_id=parent_id,
        classes=list(classes),
        architecture=dict(architecture),
        n_parameters=int(n_parameters),
        test_accuracy=test_accuracy,
        path=str(path),
    )
    session.add(record)
    session.flush()
    return record


def register_adapter(
    session: Session,
    *,
    adapter_id: str,
    base_model_id: str,
    job_id: str | None,
    source: str,
    lora_config: Mapping[str, Any],
    trainable_parameters: int,
    classes: list[int],
    test_accuracy: float | None,
    path: str,
) -> AdapterRecord:
    """Add an adapter record (``source`` "trained" or "imported"); flushes, caller commits.

    Args:
        lora_config: ``r``, ``lora_alpha``, ``target_modules`` and optionally
            ``lora_dropout`` (default 0) and ``use_rslora`` (default False), e.g. the
            content of ``adapter_config.json`` or ``dataclasses.asdict(LoraConfig)``.
        path: absolute PEFT directory (``adapter_config.json``, ``adapter_model.safetensors``).
    Raises:
        KeyError: ``lora_config`` lacks ``r``, ``lora_alpha`` or ``target_modules``.
        sqlalchemy.exc.IntegrityError: duplicate id or unknown base model (on flush).
    """
    record = AdapterRecord(
        id=adapter_id,
        base_model_id=base_model_id,
        job_id=job_id,
        source=source,
        r=int(lora_config["r"]),
        lora_alpha=float(lora_config["lora_alpha"]),
        use_rslora=bool(lora_config.get("use_rslora", False)),
        lora_dropout=float(lora_config.get("lora_dropout", 0.0)),
        target_modules=list(lora_config["target_modules"]),
        trainable_parameters=int(trainable_parameters),
        classes=list(classes),
        test_accuracy=test_accuracy,
        path=str(path),
    )
    session.add(record)
    session.flush()
    return record


def get_model(session: Session, model_id: str) -> ModelRecord | None:
    """The model record, or None."""
    return session.get(ModelRecord, model_id)


def get_adapter(session: Session, adapter_id: str) -> AdapterRecord | None:
    """The adapter record, or None."""
    return session.get(AdapterRecord, adapter_id)


def list_models(
    session: Session, *, kind: str | None = None, limit: int = 50, offset: int = 0
) -> tuple[list[ModelRecord], int]:
    """Models, newest first, and the total matching ``kind`` (all kinds when None)."""
    stmt = select(ModelRecord).order_by(ModelRecord.created_at.desc(), ModelRecord.id)
    if kind is not None:
        stmt = stmt.where(ModelRecord.kind == kind)
    return _page(session, stmt, limit, offset)


def list_adapters(
    session: Session, *, base_model_id: str | None = None, limit: int = 50, offset: int = 0
) -> tuple[list[AdapterRecord], int]:
    """Adapters, newest first, and the total (only those of ``base_model_id`` when given)."""
    stmt = select(AdapterRecord).order_by(AdapterRecord.created_at.desc(), AdapterRecord.id)
    if base_model_id is not None:
        stmt = stmt.where(AdapterRecord.base_model_id == base_model_id)
    return _page(session, stmt, limit, offset)


def delete_adapter(session: Session, adapter_id: str) -> AdapterRecord | None:
    """Delete the adapter record (flush; caller commits, then removes its files).

    Returns:
        The deleted record (its ``path`` still readable), or None when there was none.
    """
    record = session.get(AdapterRecord, adapter_id)
    if record is not None:
        session.delete(record)
        session.flush()
    return record


# ---------------------------------------------------------------- jobs: create and read


def create_job(
    session: Session,
    *,
    kind: str,
    config: dict[str, Any],
    base_model_id: str | None,
    epochs: int,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
) -> JobRecord:
    """Add a ``queued`` job (flush; the caller commits *before* enqueueing its task)."""
    job = JobRecord(
        id=new_id("job"),
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
    status: str | None = None,
    kind: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[JobRecord], int]:
    """Jobs, newest first, filtered by ``status`` and ``kind``, and the total matching."""
    stmt = select(JobRecord).order_by(JobRecord.created_at.desc(), JobRecord.id)
    if status is not None:
        stmt = stmt.where(JobRecord.status == status)
    if kind is not None:
        stmt = stmt.where(JobRecord.kind == kind)
    return _page(session, stmt, limit, offset)


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


__all__ = [
    "as_utc",
    "claim_job",
    "create_job",
    "delete_adapter",
    "finish_cancelled",
    "get_adapter",
    "get_job",
    "get_model",
    "job_metrics",
    "list_adapters",
    "list_jobs",
    "list_models",
    "mark_failed",
    "mark_succeeded",
    "record_epoch",
    "register_adapter",
    "register_model",
    "renew_lease",
    "request_cancel",
    "stop_reason",
]
