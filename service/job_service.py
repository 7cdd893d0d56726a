"""Job submission and cancellation: the logic behind ``POST /jobs`` and ``/jobs/{id}/cancel``.

Submission validates what needs the database (the base model exists, its head has one
output per requested digit, LoRA's ``r`` fits the targeted layers), inserts the ``queued``
row, **commits**, and only then enqueues ``run_job(job_id)``: a worker can never receive
an id whose row it cannot read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy.orm import Session

from service.config import Settings
from service.db import registry
from service.db.tables import JobRecord, ModelRecord
from service.errors import ApiError, not_found
from service.schemas import FinetuneLoraConfig, JobConfig

log = logging.getLogger(__name__)

Enqueue = Callable[[str, Settings], None]


def linear_input_widths(architecture: dict) -> dict[str, int]:
    """Input width of each linear of an MLP from its ``MLPConfig`` dict."""
    return {
        "linear1": int(architecture["in_features"]),
        "linear2": int(architecture["hidden1"]),
        "linear3": int(architecture["hidden2"]),
    }


def check_against_base(config: JobConfig, base: ModelRecord) -> None:
    """Validate a fine-tune config against its base model.

    Rules: ``len(digits)`` equals the base head's size (the head is reused); LoRA's ``r``
    is at most the input width of every targeted layer (784, hidden1, hidden2 for
    linear1..3). The head's 5 outputs do not bound ``r``: the default r = 8 on all three
    linears is the seed's setting, and peft allows it too.

    Raises:
        ApiError: 422 ``validation_error`` naming ``config.digits`` or ``config.r``.
    """
    n_head = len(base.classes)
    if len(config.digits) != n_head:
        raise ApiError(
            422,
            "validation_error",
            f"config.digits: base model {base.id} has a {n_head}-way head (digits "
            f"{list(base.classes)}); give exactly {n_head} distinct digits, got {config.digits}.",
            "config.digits",
        )
    if isinstance(config, FinetuneLoraConfig):
        widths = linear_input_widths(base.architecture)
        limit = min(widths[name] for name in config.target_modules)
        if config.r > limit:
            raise ApiError(
                422,
                "validation_error",
                f"config.r: r={config.r} exceeds {limit}, the smallest input width of the "
                f"targeted layers {config.target_modules} of base model {base.id}.",
                "config.r",
            )


def submit_job(
    session: Session,
    settings: Settings,
    *,
    kind: str,
    config: JobConfig,
    base_model_id: str | None,
    enqueue: Enqueue,
) -> JobRecord:
    """Validate, insert and commit a ``queued`` job, then enqueue its task.

    Args:
        enqueue: sends ``run_job(job_id)`` (``worker.celery_app.enqueue_job``).
    Returns:
        The committed job (``queued``).
    Raises:
        ApiError: 404 ``model_not_found`` (param ``base_model_id``); 422
            ``validation_error`` (see :func:`check_against_base`); 503
            ``broker_unavailable`` when the task could not be sent (the job is then
            ``failed`` with code ``enqueue_failed``).
    """
    if base_model_id is not None:
        base = registry.get_model(session, base_model_id)
        if base is None:
            raise not_found("model", base_model_id, "base_model_id")
        check_against_base(config, base)
    job = registry.create_job(
        session,
        kind=kind,
        config=config.model_dump(mode="json"),
        base_model_id=base_model_id,
        epochs=config.epochs,
    )
    session.commit()
    try:
        enqueue(job.id, settings)
    except Exception as exc:  # the broker's errors are transport-specific
        log.exception("could not enqueue job %s", job.id)
        registry.mark_failed(
            session, job.id, code="enqueue_failed", message=f"Could not reach the broker: {exc}"
        )
        raise ApiError(
            503, "broker_unavailable", f"Job {job.id} could not be queued: broker unreachable."
        ) from exc
    return job


def cancel_job(session: Session, job_id: str) -> JobRecord:
    """Cancel a job (see :func:`service.db.registry.request_cancel`).

    A queued job is ``cancelled`` on return; a running one has ``cancel_requested`` and
    ends ``cancelled`` at its next training step. Cancelling a cancelled job is a no-op.

    Raises:
        ApiError: 404 ``job_not_found``; 409 ``job_finished`` for a succeeded/failed job.
    """
    job = registry.request_cancel(session, job_id)
    if job is None:
        raise not_found("job", job_id)
    if job.status in ("succeeded", "failed"):
        raise ApiError(409, "job_finished", f"Job {job_id} already {job.status}.")
    return job
