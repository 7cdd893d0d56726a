"""The service's words, each declared once: job kinds and statuses, model kinds, adapter
sources, the id prefix of every record kind, and what a digit list is.

Request and answer schemas take their types from here (so an unknown status or kind is
refused in one place), and the SQL of the job state machine compares against these values.
Old spellings that requests may still use are mapped here too (:data:`LEGACY_MODEL_KINDS`).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal, get_args

from pydantic import AfterValidator, Field

JobKind = Literal["pretrain", "finetune_full", "finetune_lora"]
"""What a job trains: a fresh MLP, a full fine-tune of a base, or a LoRA adapter on a base."""

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
"""A job's place in its life: queued -> running -> succeeded | failed | cancelled."""

ModelKind = Literal["pretrain", "finetune_full"]
"""A registered network is named after the kind of job that trained it."""

AdapterSource = Literal["trained", "imported"]
"""Where a registered adapter came from: a ``finetune_lora`` job, or ``POST /adapters``."""

EventType = Literal["status", "metrics", "checkpoint", "message"]
"""What a job event reports: a status change, an epoch's metrics, a kept checkpoint, or a
free-text message (e.g. why training stopped early)."""

EventLevel = Literal["info", "warning", "error"]
"""How much a job event matters: ``warning`` (requeued after a lost worker), ``error``
(failed), ``info`` otherwise."""

EventStatus = Literal["queued", "running", "requeued", "succeeded", "failed", "cancelled"]
"""The ``status`` of a status event: a job status, or ``requeued`` (back to ``queued``
after its worker was lost)."""

WEBHOOK_EVENT_PREFIX = "job."
"""Webhook event types are ``job.succeeded``, ``job.failed``, ``job.cancelled``."""

JOB_KINDS: tuple[JobKind, ...] = get_args(JobKind)
UNFINISHED_STATUSES: tuple[JobStatus, ...] = ("queued", "running")
TERMINAL_STATUSES: tuple[JobStatus, ...] = ("succeeded", "failed", "cancelled")
MODEL_KINDS: tuple[ModelKind, ...] = get_args(ModelKind)

LEGACY_MODEL_KINDS: dict[str, ModelKind] = {
    "pretrained": "pretrain",
    "finetuned_full": "finetune_full",
}
"""Round one's model kinds -> today's (rows were renamed by migration 0002; requests that
still say ``?kind=pretrained`` are answered as ``pretrain``)."""


def refuse_both_names(data: object, renamed: dict[str, str]) -> None:
    """For a request body that may use round one's names: refuse one giving a field under
    both its name and its old name (``renamed`` maps name -> old name).

    Raises:
        ValueError: with a message naming both (pydantic reports it for the object).
    """
    if not isinstance(data, dict):
        return
    for name, old in renamed.items():
        if name in data and old in data:
            raise ValueError(f"give {name} or its old name {old}, not both")


JOB_PREFIX = "job"
MODEL_PREFIX = "mdl"
ADAPTER_PREFIX = "adp"
WEBHOOK_MESSAGE_PREFIX = "msg"
SWEEP_PREFIX = "swp"
"""Id prefixes, one per record kind. Round one gave imported adapters ``adapter_<hex>``
ids; those stay valid (ids are opaque keys), new ones all start ``adp_``."""


MAX_ID_LENGTH = 64
"""Longest id a request may name (the id columns are ``String(64)``)."""


def _distinct(digits: list[int]) -> list[int]:
    if len(set(digits)) != len(digits):
        raise ValueError("digits must be distinct")
    return digits


Digit = Annotated[int, Field(ge=0, le=9)]
DigitList = Annotated[list[Digit], AfterValidator(_distinct)]
"""Distinct digits 0-9 (a head's ``classes``, ``/evaluate``'s ``test_digits``)."""


def new_id(prefix: str) -> str:
    """A fresh opaque id such as ``job_3f2a...`` (prefix + 24 hex digits)."""
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def derived_id(prefix: str, job_id: str) -> str:
    """The id of the record a job produces: ``job_<hex>`` -> ``<prefix>_<hex>``.

    Deterministic, so a job that runs twice (a requeued attempt) rewrites the same
    artifact instead of adding another.
    """
    return f"{prefix}_{job_id.removeprefix(JOB_PREFIX + '_')}"


def model_kind_of(job_kind: str) -> ModelKind:
    """The kind of model a job registers (``pretrain`` / ``finetune_full``).

    Raises:
        ValueError: ``finetune_lora`` (it registers an adapter) or an unknown kind.
    """
    if job_kind not in MODEL_KINDS:
        raise ValueError(f"job kind {job_kind!r} does not register a model")
    return job_kind  # type: ignore[return-value]
