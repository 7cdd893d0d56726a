"""SQLAlchemy 2.0 tables: jobs, their per-epoch metrics, events, checkpoints and webhook
deliveries, registered models and adapters.

"Model" in this codebase means a neural network; rows are *records*. The classes here are
named ``*Record`` to keep that distinction.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def as_utc(moment: datetime | None) -> datetime | None:
    """``moment`` as an aware UTC datetime (SQLite hands back naive ones, stored as UTC)."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    """Declarative base; ``JSON`` maps to JSONB-compatible JSON on Postgres, TEXT on SQLite."""

    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class JobRecord(Base):
    """One training job (pretrain, full fine-tune or LoRA fine-tune) and its lease."""

    __tablename__ = "jobs"
    __table_args__ = (Index("uq_jobs_sweep_cell", "sweep_id", "sweep_cell", unique=True),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)  # vocab.JobKind
    status: Mapped[str] = mapped_column(String(16), index=True, default="queued")  # vocab.JobStatus
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    base_model_id: Mapped[str | None] = mapped_column(
        String(64), ForeignKey("models.id", ondelete="RESTRICT"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # progress
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    epochs: Mapped[int] = mapped_column(Integer, default=0)
    # lease (issue: jobs survive worker crashes)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # outcome
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    result_model_id: Mapped[str | None] = mapped_column(String(64))
    result_adapter_id: Mapped[str | None] = mapped_column(String(64))
    test_accuracy: Mapped[float | None] = mapped_column(Float)
    test_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # idempotent submission
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    request_hash: Mapped[str | None] = mapped_column(String(64))
    # issue 17: the id of the API key that submitted the job (a hash, never the key)
    api_key_id: Mapped[str | None] = mapped_column(String(32), index=True)
    # the event log: the id of the job's latest event (service.jobs.events)
    event_seq: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # where terminal statuses are POSTed (the request's, else the WEBHOOK_URL setting)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    # the sweep that created the job, and its place in it (SweepRecord's docstring)
    sweep_id: Mapped[str | None] = mapped_column(String(64), ForeignKey("sweeps.id"))
    sweep_cell: Mapped[str | None] = mapped_column(String(64))


class JobEventRecord(Base):
    """One fact of a job's life: ``seq`` counts 1, 2, 3... per job (the API's event id).

    ``fact`` names the fact (``status:running:2``, ``metrics:3``): unique per job, so a
    redelivered message or a resumed run never records one twice.
    """

    __tablename__ = "job_events"
    __table_args__ = (
        UniqueConstraint("job_id", "seq", name="uq_job_event_seq"),
        UniqueConstraint("job_id", "fact", name="uq_job_event_fact"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(64), ForeignKey("jobs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    fact: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    level: Mapped[str] = mapped_column(String(16))  # vocab.EventLevel
    type: Mapped[str] = mapped_column(String(16))  # vocab.EventType
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)


class CheckpointRecord(Base):
    """The weights of one kept epoch of a job, with that epoch's validation metrics."""

    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "epoch", name="uq_checkpoint_job_epoch"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(64), ForeignKey("jobs.id", ondelete="CASCADE"))
    epoch: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class WebhookDeliveryRecord(Base):
    """One webhook message to send (the outbox), written with the status event it reports.

    ``id`` is the Standard Webhooks ``webhook-id`` (the same on every retry, so receivers
    can de-duplicate). ``status``: ``pending`` -> ``delivered`` | ``failed`` (gave up).
    """

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(64), ForeignKey("jobs.id", ondelete="CASCADE"))
    event_seq: Mapped[int] = mapped_column(Integer)
    url: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), index=True, default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class MetricRecord(Base):
    """One number of one epoch of one job: unique per (job, epoch, name)."""

    __tablename__ = "metrics"
    __table_args__ = (UniqueConstraint("job_id", "epoch", "name", name="uq_metric_job_epoch"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("jobs.id", ondelete="CASCADE"), index=True
    )
    epoch: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(64))
    value: Mapped[float] = mapped_column(Float)


class ModelRecord(Base):
    """A registered network: pre-trained or fully fine-tuned, stored under ``path``."""

    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))  # vocab.ModelKind: the job kind that trained it
    job_id: Mapped[str | None] = mapped_column(String(64))
    parent_id: Mapped[str | None] = mapped_column(String(64))
    classes: Mapped[list[Any]] = mapped_column(JSON)
    architecture: Mapped[dict[str, Any]] = mapped_column(JSON)
    n_parameters: Mapped[int] = mapped_column(Integer)
    test_accuracy: Mapped[float | None] = mapped_column(Float)
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    precision: Mapped[str | None] = mapped_column(String(8))  # fp32 | bf16 (issue 16)


class AdapterRecord(Base):
    """A registered LoRA adapter (trained here or imported) for one base model."""

    __tablename__ = "adapters"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    base_model_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("models.id", ondelete="RESTRICT"), index=True
    )
    job_id: Mapped[str | None] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(16), default="trained")  # vocab.AdapterSource
    r: Mapped[int] = mapped_column(Integer)
    lora_alpha: Mapped[float] = mapped_column(Float)
    use_rslora: Mapped[bool] = mapped_column(Boolean, default=False)
    lora_dropout: Mapped[float] = mapped_column(Float, default=0.0)
    target_modules: Mapped[list[Any]] = mapped_column(JSON)
    trainable_parameters: Mapped[int] = mapped_column(Integer)
    classes: Mapped[list[Any]] = mapped_column(JSON)
    test_accuracy: Mapped[float | None] = mapped_column(Float)
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    precision: Mapped[str | None] = mapped_column(String(8))  # fp32 | bf16; None if imported


class RecordVersion(Base):
    """One row (``id`` 1) whose ``version`` the database bumps, by trigger, with every
    insert, update or delete on ``models`` or ``adapters`` (migration 0007): serving
    re-reads the records it caches only when it has moved (:mod:`service.serving.records`).
    Written only by those triggers."""

    __tablename__ = "record_version"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)


class SweepRecord(Base):
    """One sweep (``POST /sweeps``): a base and a grid of variants x seeds, run as jobs.

    ``request`` is the request as validated (defaults filled in); the child jobs point
    here with ``jobs.sweep_id`` and name their place in the grid with ``jobs.sweep_cell``
    (``base.b<j>``: the j-th pre-trained base; ``v<i>.s<seed>.b<j>``: variant i, seed,
    from base j; ``v<i>.s<seed>``: a ``pretrain`` variant, which needs no base), unique
    per sweep, so no cell is ever created twice. The sweep's status is derived from its
    jobs (:mod:`service.jobs.sweeps`); only the cancel request is stored.
    """

    __tablename__ = "sweeps"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    n_jobs: Mapped[int] = mapped_column(Integer)  # planned: bases + every cell
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    request_hash: Mapped[str | None] = mapped_column(String(64))
