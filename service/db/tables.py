"""SQLAlchemy 2.0 tables: jobs, per-epoch metrics, registered models and adapters.

"Model" in this codebase means a neural network; rows are *records*. The classes here are
named ``*Record`` to keep that distinction.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
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
