"""Response schemas of the jobs, models and adapters endpoints, shaped from database records.

Non-finite floats (a NaN loss) are answered as ``null``: JSON has no NaN.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, Field

from service.core.job_spec import parse_stored
from service.core.vocab import AdapterSource, EventLevel, EventType, JobKind, JobStatus, ModelKind
from service.db.tables import (
    AdapterRecord,
    CheckpointRecord,
    JobEventRecord,
    JobRecord,
    ModelRecord,
    as_utc,
    utcnow,
)

T = TypeVar("T")

EPOCH_METRICS = (
    "train_loss",
    "val_loss",
    "val_accuracy",
    "base_val_accuracy",
    "epoch_seconds",
    "samples_per_second",
)


def finite(value: float | None) -> float | None:
    """``value`` unless it is None, NaN or infinite (then None)."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


class Page(BaseModel, Generic[T]):
    """One page of a list, newest first; ``total`` counts every match."""

    items: list[T]
    total: int
    limit: int
    offset: int


class Progress(BaseModel):
    """How far a job is: finished epochs out of ``epochs``."""

    epoch: int = Field(description="Epochs finished.")
    epochs: int = Field(description="Epochs the job runs.")
    fraction: float = Field(description="epoch / epochs, in [0, 1].")
    eta_seconds: float | None = Field(
        description="Estimated seconds left while running: elapsed / epoch * epochs left."
    )


class JobResult(BaseModel):
    """What a succeeded job produced."""

    model_id: str | None = Field(description="Registered model (pretrain, finetune_full).")
    adapter_id: str | None = Field(description="Registered adapter (finetune_lora).")
    test_accuracy: float | None = Field(description="Accuracy on the test split, in [0, 1].")
    selected_epoch: int | None = Field(
        None, description="The epoch whose weights became the result (config.select)."
    )
    stopped_early: str | None = Field(
        None, description="Why training ended before config.epochs (early stopping), if it did."
    )
    device: str | None = Field(None, description="What it trained on: `cpu` or `cuda`.")
    device_name: str | None = Field(None, description="The GPU model (`cpu` on a CPU).")
    precision: str | None = Field(
        None, description="Matmul precision config.precision resolved to (fp32 or bf16)."
    )


class JobErrorOut(BaseModel):
    """Why a job failed."""

    code: str
    message: str


class JobOut(BaseModel):
    """A training job."""

    id: str
    kind: JobKind
    status: JobStatus
    base_model_id: str | None
    config: dict[str, Any] = Field(
        description="The job's spec with every default filled in: the values it runs with."
    )
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    progress: Progress
    result: JobResult | None
    error: JobErrorOut | None
    attempt: int = Field(description="Times a worker has started this job.")
    cancel_requested: bool
    webhook_url: str | None = Field(None, description="Where terminal statuses are POSTed.")
    sweep_id: str | None = Field(None, description="The sweep that created the job, if any.")


class EventOut(BaseModel):
    """One fact of a job's life, in the order it happened."""

    id: int = Field(description="1, 2, 3... per job: resume a stream after it (Last-Event-ID).")
    job_id: str
    created_at: datetime
    level: EventLevel
    type: EventType = Field(description="status, metrics, checkpoint or message.")
    message: str
    data: dict[str, Any] = Field(
        description="status: {status, attempt, worker, code...}; metrics: the epoch's metrics "
        "row; checkpoint: {epoch, metrics}; message: free-form details."
    )


class EventPage(BaseModel):
    """Events after a cursor, oldest first."""

    items: list[EventOut]
    has_more: bool = Field(description="More events follow: ask again with after=next_after.")
    next_after: int | None = Field(description="The last item's id (the cursor to continue).")


class CheckpointOut(BaseModel):
    """A kept epoch of a job: its weights can become a model or adapter (publish)."""

    epoch: int
    metrics: dict[str, float | None] = Field(description="The epoch's metrics row.")
    selected: bool = Field(description="This epoch's weights are the job's result.")
    published_id: str | None = Field(
        None, description="The model or adapter registered from this checkpoint, if any."
    )
    created_at: datetime


class CheckpointList(BaseModel):
    """A job's kept checkpoints, by epoch."""

    items: list[CheckpointOut]


class EpochOut(BaseModel):
    """Metrics of one finished epoch (losses: mean cross-entropy in nats)."""

    epoch: int
    train_loss: float | None = None
    val_loss: float | None = None
    val_accuracy: float | None = Field(None, description="In [0, 1].")
    base_val_accuracy: float | None = Field(
        None,
        description="Fine-tunes: accuracy on the base model's digits (validation split) as "
        "served: the network read through the base's classes (finetune_full), the base alone "
        "(finetune_lora). How much of the base it forgot.",
    )
    epoch_seconds: float | None = Field(None, description="Wall time incl. validation (s).")
    samples_per_second: float | None = None


class TestMetricsOut(BaseModel):
    """Final evaluation on the test split of the job's digits."""

    accuracy: float | None = Field(description="In [0, 1].")
    loss: float | None = Field(description="Mean cross-entropy (nats).")
    per_digit_errors: dict[str, int] = Field(description="Digit -> misclassified test samples.")
    train_seconds: float | None = Field(None, description="Wall time of the training call (s).")


class MetricsOut(BaseModel):
    """A job's per-epoch series (readable while it runs) and, once done, its test metrics."""

    job_id: str
    status: JobStatus
    epochs: list[EpochOut]
    test: TestMetricsOut | None


class ModelOut(BaseModel):
    """A registered network (pre-trained or fully fine-tuned)."""

    id: str
    kind: ModelKind = Field(description="The kind of job that trained it.")
    classes: list[int] = Field(description="Digit of each head output, in order.")
    architecture: dict[str, Any]
    n_parameters: int
    test_accuracy: float | None
    job_id: str | None
    parent_id: str | None = Field(description="Model this one was fine-tuned from.")
    created_at: datetime
    precision: str | None = Field(
        None, description="Matmul precision it was trained in (fp32, bf16); null: not recorded."
    )


class AdapterOut(BaseModel):
    """A registered LoRA adapter for ``base_model_id``."""

    id: str
    base_model_id: str
    source: AdapterSource
    r: int
    lora_alpha: float
    use_rslora: bool
    lora_dropout: float
    target_modules: list[str]
    trainable_parameters: int
    classes: list[int]
    test_accuracy: float | None
    job_id: str | None
    created_at: datetime
    precision: str | None = Field(
        None,
        description="Matmul precision it was trained in (fp32, bf16); null: imported or "
        "not recorded.",
    )


def _config_out(job: JobRecord) -> dict[str, Any]:
    """The stored spec as the worker reads it (round-one rows with the values they ran
    with); the raw JSON when it no longer parses (the job then fails ``invalid_config``)."""
    try:
        return parse_stored(job.kind, job.config).model_dump(mode="json")
    except ValueError:
        return dict(job.config)


def job_out(job: JobRecord, now: datetime | None = None) -> JobOut:
    """Shape a job record (progress and ETA computed at ``now``, default: now)."""
    started = as_utc(job.started_at)
    epochs = max(job.epochs, 0)
    fraction = min(job.epoch / epochs, 1.0) if epochs else 0.0
    eta = None
    if job.status == "running" and started is not None and 0 < job.epoch < epochs:
        elapsed = ((now or utcnow()) - started).total_seconds()
        eta = max(elapsed / job.epoch * (epochs - job.epoch), 0.0)
    result = None
    if job.status == "succeeded":
        result = JobResult(
            model_id=job.result_model_id,
            adapter_id=job.result_adapter_id,
            test_accuracy=finite(job.test_accuracy),
            selected_epoch=(job.test_metrics or {}).get("selected_epoch"),
            stopped_early=(job.test_metrics or {}).get("stopped_early"),
            device=(job.test_metrics or {}).get("device"),
            device_name=(job.test_metrics or {}).get("device_name"),
            precision=(job.test_metrics or {}).get("precision"),
        )
    error = None
    if job.error_code is not None:
        error = JobErrorOut(code=job.error_code, message=job.error_message or "")
    return JobOut(
        id=job.id,
        kind=job.kind,  # type: ignore[arg-type]
        status=job.status,  # type: ignore[arg-type]
        base_model_id=job.base_model_id,
        config=_config_out(job),
        created_at=as_utc(job.created_at),  # type: ignore[arg-type]
        started_at=started,
        finished_at=as_utc(job.finished_at),
        progress=Progress(epoch=job.epoch, epochs=epochs, fraction=fraction, eta_seconds=eta),
        result=result,
        error=error,
        attempt=job.attempt,
        cancel_requested=job.cancel_requested,
        webhook_url=job.webhook_url,
        sweep_id=job.sweep_id,
    )


def event_out(record: JobEventRecord) -> EventOut:
    """Shape an event record (its per-job ``seq`` is the event id)."""
    return EventOut(
        id=record.seq,
        job_id=record.job_id,
        created_at=as_utc(record.created_at),  # type: ignore[arg-type]
        level=record.level,  # type: ignore[arg-type]
        type=record.type,  # type: ignore[arg-type]
        message=record.message,
        data=dict(record.data),
    )


def checkpoint_out(
    record: CheckpointRecord, job: JobRecord, published_id: str | None
) -> CheckpointOut:
    """Shape a checkpoint record of ``job``; ``published_id``: the model or adapter
    registered from it, if any."""
    selected_epoch = (job.test_metrics or {}).get("selected_epoch")
    return CheckpointOut(
        epoch=record.epoch,
        metrics={k: finite(v) for k, v in record.metrics.items()},
        selected=job.status == "succeeded" and selected_epoch == record.epoch,
        published_id=published_id,
        created_at=as_utc(record.created_at),  # type: ignore[arg-type]
    )


def metrics_out(job: JobRecord, series: dict[int, dict[str, float]]) -> MetricsOut:
    """Shape a job's metrics (``series`` from :func:`service.db.metric_records.job_metrics`)."""
    rows = [
        EpochOut(epoch=epoch, **{k: finite(v) for k, v in values.items() if k in EPOCH_METRICS})
        for epoch, values in sorted(series.items())
    ]
    test = None
    if job.test_metrics:
        t = job.test_metrics
        test = TestMetricsOut(
            accuracy=finite(t.get("accuracy")),
            loss=finite(t.get("loss")),
            per_digit_errors={str(k): int(v) for k, v in (t.get("per_digit_errors") or {}).items()},
            train_seconds=finite(t.get("train_seconds")),
        )
    return MetricsOut(job_id=job.id, status=job.status, epochs=rows, test=test)  # type: ignore[arg-type]


def metrics_csv(metrics: MetricsOut) -> str:
    """The per-epoch series as CSV: a header ``epoch,train_loss,...``, one line per epoch."""
    lines = [",".join(("epoch", *EPOCH_METRICS))]
    for row in metrics.epochs:
        cells = [str(row.epoch)]
        for name in EPOCH_METRICS:
            value = getattr(row, name)
            cells.append("" if value is None else repr(value))
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"


def model_out(record: ModelRecord) -> ModelOut:
    """Shape a model record."""
    return ModelOut(
        id=record.id,
        kind=record.kind,
        classes=list(record.classes),
        architecture=dict(record.architecture),
        n_parameters=record.n_parameters,
        test_accuracy=finite(record.test_accuracy),
        job_id=record.job_id,
        parent_id=record.parent_id,
        created_at=as_utc(record.created_at),  # type: ignore[arg-type]
        precision=record.precision,
    )


def adapter_out(record: AdapterRecord) -> AdapterOut:
    """Shape an adapter record."""
    return AdapterOut(
        id=record.id,
        base_model_id=record.base_model_id,
        source=record.source,
        r=record.r,
        lora_alpha=record.lora_alpha,
        use_rslora=record.use_rslora,
        lora_dropout=record.lora_dropout,
        target_modules=list(record.target_modules),
        trainable_parameters=record.trainable_parameters,
        classes=list(record.classes),
        test_accuracy=finite(record.test_accuracy),
        job_id=record.job_id,
        created_at=as_utc(record.created_at),  # type: ignore[arg-type]
        precision=record.precision,
    )
