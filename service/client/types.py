"""What the client's calls return: the API's JSON answers, typed (``TypedDict``: plain dicts
that ``json.dumps`` as they are).

Each mirrors a response schema of the service (its OpenAPI document at ``/openapi.json``);
times are ISO 8601 strings in UTC, accuracies fractions in [0, 1], losses mean
cross-entropy in nats. A field the service adds later is simply one more key.
"""

from __future__ import annotations

from typing import Any, Generic, TypedDict, TypeVar

from service.core.vocab import EventLevel, EventType, JobKind, JobStatus

T = TypeVar("T")


class Page(TypedDict, Generic[T]):
    """One page of a list (``GET /jobs``, ``/models``, ``/adapters``), newest first."""

    items: list[T]
    total: int
    limit: int
    offset: int


class Progress(TypedDict):
    """Finished epochs out of ``epochs``; ``eta_seconds`` while running (s)."""

    epoch: int
    epochs: int
    fraction: float
    eta_seconds: float | None


class JobResult(TypedDict, total=False):
    """What a succeeded job produced: ``model_id`` or ``adapter_id``, test accuracy."""

    model_id: str | None
    adapter_id: str | None
    test_accuracy: float | None
    selected_epoch: int | None
    stopped_early: str | None


class JobError(TypedDict):
    """Why a job failed: a stable ``code`` and a message for a person."""

    code: str
    message: str


class Job(TypedDict, total=False):
    """A training job (``GET /jobs/{id}``); ``config`` has every default filled in."""

    id: str
    kind: JobKind
    status: JobStatus
    base_model_id: str | None
    config: dict[str, Any]
    created_at: str
    started_at: str | None
    finished_at: str | None
    progress: Progress
    result: JobResult | None
    error: JobError | None
    attempt: int
    cancel_requested: bool
    webhook_url: str | None


class Epoch(TypedDict, total=False):
    """One finished epoch's metrics (``train_loss``, ``val_loss``, ``val_accuracy``, ...)."""

    epoch: int
    train_loss: float | None
    val_loss: float | None
    val_accuracy: float | None
    epoch_seconds: float | None
    samples_per_second: float | None


class Metrics(TypedDict):
    """``GET /jobs/{id}/metrics``: the per-epoch series and, once done, the test metrics."""

    job_id: str
    status: JobStatus
    epochs: list[Epoch]
    test: dict[str, Any] | None


class Event(TypedDict):
    """One fact of a job's life; ``id`` grows by one per event of the job.

    ``data`` by ``type``: ``status`` {status, attempt, worker, code...}; ``metrics`` the
    epoch's metrics row; ``checkpoint`` {epoch, metrics}; ``message`` free-form details.
    """

    id: int
    job_id: str
    created_at: str
    level: EventLevel
    type: EventType
    message: str
    data: dict[str, Any]


class EventPage(TypedDict):
    """``GET /jobs/{id}/events``: events after a cursor, oldest first."""

    items: list[Event]
    has_more: bool
    next_after: int | None


class Checkpoint(TypedDict, total=False):
    """A kept epoch of a job; ``selected``: its weights are the job's result."""

    epoch: int
    metrics: dict[str, float | None]
    selected: bool
    published_id: str | None
    created_at: str


class Model(TypedDict):
    """A registered network (pre-trained or fully fine-tuned)."""

    id: str
    kind: str
    classes: list[int]
    architecture: dict[str, Any]
    n_parameters: int
    test_accuracy: float | None
    job_id: str | None
    parent_id: str | None
    created_at: str


class Adapter(TypedDict):
    """A registered LoRA adapter of ``base_model_id`` (PEFT names: r, lora_alpha, ...)."""

    id: str
    base_model_id: str
    source: str
    r: int
    lora_alpha: float
    use_rslora: bool
    lora_dropout: float
    target_modules: list[str]
    trainable_parameters: int
    classes: list[int]
    test_accuracy: float | None
    job_id: str | None
    created_at: str


class Prediction(TypedDict):
    """One image's answer: the digit and each class's probability (keys are digits)."""

    digit: int
    probabilities: dict[str, float]
    model_id: str
    adapter_id: str | None


class Evaluation(TypedDict):
    """``POST /evaluate``: accuracy on ``n_samples`` test images, errors per digit."""

    model_id: str
    adapter_id: str | None
    test_digits: list[int]
    classes: list[int]
    n_samples: int
    accuracy: float
    per_digit_errors: dict[str, int]


class Health(TypedDict):
    """``GET /health``: every check passed (``"ok"``)."""

    status: str
    database: str
    broker: str
    artifact_store: str
