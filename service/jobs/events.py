"""The job event log's vocabulary: one function per kind of fact a job records.

Each adds its event in the caller's transaction (:func:`service.db.event_records.
append_event`), so an event commits with the change it reports and never without it. A
terminal status (``succeeded``, ``failed``, ``cancelled``) of a job with a ``webhook_url``
also adds the webhook message to the outbox (``webhook_deliveries``) in that same
transaction: once the status is committed the message cannot be lost, whatever happens to
the process that wrote it; the API processes send it (:mod:`service.jobs.webhooks`).

Facts (unique per job): ``status:queued``, ``status:running:<attempt>``,
``status:requeued:<attempt>``, ``status:<terminal>``, ``metrics:<epoch>``,
``checkpoint:<epoch>``, and ``message:<name>`` for messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.vocab import WEBHOOK_EVENT_PREFIX, WEBHOOK_MESSAGE_PREFIX, JobStatus, new_id
from service.db.event_records import NewEvent, append_event
from service.db.tables import JobEventRecord, JobRecord, WebhookDeliveryRecord, utcnow

METRIC_SUMMARY = ("train_loss", "val_loss", "val_accuracy", "base_val_accuracy")
"""The metrics a metrics event's message names (all of them are in its ``data``)."""


def record_queued(session: Session, job: JobRecord) -> None:
    """``status`` event ``queued``: the job was accepted (with its kind and base)."""
    append_event(
        session,
        job.id,
        NewEvent(
            "status",
            "status:queued",
            f"queued: {job.kind}" + (f" of {job.base_model_id}" if job.base_model_id else ""),
            {"status": "queued", "kind": job.kind, "base_model_id": job.base_model_id},
        ),
    )


def record_running(
    session: Session, job_id: str, *, attempt: int, worker_id: str, took_over: bool = False
) -> None:
    """``status`` event ``running``: attempt ``attempt`` started on ``worker_id``."""
    how = ", taking over from a lost worker" if took_over else ""
    append_event(
        session,
        job_id,
        NewEvent(
            "status",
            f"status:running:{attempt}",
            f"running: attempt {attempt} on {worker_id}{how}",
            {"status": "running", "attempt": attempt, "worker": worker_id, "took_over": took_over},
        ),
    )


def record_requeued(session: Session, job_id: str, *, attempt: int, reason: str) -> None:
    """``status`` event ``requeued`` (level warning): attempt ``attempt`` was lost."""
    append_event(
        session,
        job_id,
        NewEvent(
            "status",
            f"status:requeued:{attempt}",
            f"requeued after attempt {attempt}: {reason}",
            {"status": "requeued", "attempt": attempt, "reason": reason},
            level="warning",
        ),
    )


def record_cancel_requested(session: Session, job_id: str) -> None:
    """``message`` event: a cancel was asked for while the job ran."""
    record_message(
        session,
        job_id,
        "cancel_requested",
        "cancel requested: the worker stops at its next training step",
    )


def record_message(
    session: Session,
    job_id: str,
    name: str,
    text: str,
    data: Mapping[str, Any] | None = None,
    *,
    level: str = "info",
) -> None:
    """A free-text ``message`` event; ``name`` makes it a fact (recorded once per job)."""
    append_event(
        session,
        job_id,
        NewEvent("message", f"message:{name}", text, dict(data or {}), level=level),  # type: ignore[arg-type]
    )


def _summary(values: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {values[k]:.4f}" for k in METRIC_SUMMARY if k in values)


def record_metrics(
    session: Session, job_id: str, epoch: int, epochs: int, values: Mapping[str, float]
) -> None:
    """``metrics`` event of a finished epoch: ``data`` is the epoch's metrics row."""
    append_event(
        session,
        job_id,
        NewEvent(
            "metrics",
            f"metrics:{epoch}",
            f"epoch {epoch}/{epochs}: {_summary(values)}",
            {"epoch": epoch, "epochs": epochs, **{k: float(v) for k, v in values.items()}},
        ),
    )


def record_checkpoint(
    session: Session, job_id: str, epoch: int, metrics: Mapping[str, float]
) -> None:
    """``checkpoint`` event: the weights of ``epoch`` were kept, with its metrics."""
    append_event(
        session,
        job_id,
        NewEvent(
            "checkpoint",
            f"checkpoint:{epoch}",
            f"checkpoint saved: epoch {epoch} ({_summary(metrics)})",
            {"epoch": epoch, "metrics": dict(metrics)},
        ),
    )


def _job_now(session: Session, job_id: str) -> JobRecord | None:
    session.flush()
    return session.scalars(
        select(JobRecord).where(JobRecord.id == job_id).execution_options(populate_existing=True)
    ).first()


def _terminal_text(job: JobRecord) -> tuple[str, str, dict[str, Any]]:
    """(level, message, data) of the event that reports ``job``'s terminal status."""
    data: dict[str, Any] = {"status": job.status, "attempt": job.attempt}
    if job.status == "failed":
        data["code"] = job.error_code
        return "error", f"failed ({job.error_code}): {job.error_message}", data
    if job.status == "cancelled":
        return "info", "cancelled", data
    result = job.result_adapter_id or job.result_model_id
    data.update(
        test_accuracy=job.test_accuracy,
        result_model_id=job.result_model_id,
        result_adapter_id=job.result_adapter_id,
    )
    extra = job.test_metrics or {}
    for key in ("selected_epoch", "stopped_early"):
        if key in extra:
            data[key] = extra[key]
    accuracy = f", test accuracy {job.test_accuracy:.4f}" if job.test_accuracy is not None else ""
    return "info", f"succeeded: {result}{accuracy}", data


def webhook_payload(job: JobRecord, event: JobEventRecord) -> dict[str, Any]:
    """The JSON body of a job's terminal-status webhook (Standard Webhooks' recommended
    ``{type, timestamp, data}`` shape); ``data.event_id`` is the status event's id."""
    return {
        "type": f"{WEBHOOK_EVENT_PREFIX}{job.status}",
        "timestamp": event.created_at.isoformat(),
        "data": {
            "job_id": job.id,
            "kind": job.kind,
            "status": job.status,
            "event_id": event.seq,
            "base_model_id": job.base_model_id,
            "result_model_id": job.result_model_id,
            "result_adapter_id": job.result_adapter_id,
            "test_accuracy": job.test_accuracy,
            "error": (
                {"code": job.error_code, "message": job.error_message}
                if job.status == "failed"
                else None
            ),
        },
    }


def record_terminal(session: Session, job_id: str) -> None:
    """``status`` event of the job's terminal status as now stored in this transaction,
    plus its webhook message when the job has a ``webhook_url``. Call right after the
    UPDATE that ended the job, before committing."""
    job = _job_now(session, job_id)
    status: JobStatus | None = job.status if job is not None else None  # type: ignore[assignment]
    if job is None or status not in ("succeeded", "failed", "cancelled"):
        return
    level, text, data = _terminal_text(job)
    event = append_event(
        session,
        job_id,
        NewEvent("status", f"status:{status}", text, data, level=level),  # type: ignore[arg-type]
    )
    if event is None or not job.webhook_url:
        return
    session.add(
        WebhookDeliveryRecord(
            id=new_id(WEBHOOK_MESSAGE_PREFIX),
            job_id=job_id,
            event_seq=event.seq,
            url=job.webhook_url,
            payload=webhook_payload(job, event),
            status="pending",
            attempts=0,
            next_attempt_at=utcnow(),
            created_at=utcnow(),
        )
    )
    session.flush()
