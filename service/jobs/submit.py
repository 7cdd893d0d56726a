"""Job submission and cancellation: the logic behind ``POST /jobs`` and ``/jobs/{id}/cancel``.

Submission checks what needs the database (the base model exists, and the spec fits it:
:meth:`service.core.job_spec.JobSpec.check_against_base`), inserts the ``queued``
row, **commits**, and only then enqueues ``run_job(job_id)``: a worker can never receive
an id whose row it cannot read. If the broker is down the job stays ``queued`` and is sent
later by a reaper (the client still gets its 202).

Idempotent submission: with an ``Idempotency-Key``, the job row stores the key (unique) and
a hash of the request as validated (kind, base model, config with defaults filled in). The
same key with the same request returns the job created first (nothing new is queued); with
a different request it is a 409 ``idempotency_key_reused``. Two identical requests racing
each other both insert; the unique constraint refuses the second, which reads the first.

Writes that SQLite refuses with "database is locked" are retried
(:func:`service.db.retry.retry_locked`); if the lock outlasts the retries the client gets a
503 ``database_busy``, never a 500.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from models.classifier import MLPConfig
from service.core.api_keys import scoped_idempotency_key
from service.core.errors import ApiError, database_busy, not_found
from service.core.job_spec import JobSpec, SpecMismatch, parse_stored
from service.core.settings import Settings
from service.db import job_records, model_records
from service.db.retry import is_locked, retry_locked
from service.db.tables import JobRecord
from service.jobs import events, leases, webhooks
from service.jobs import state as job_state
from service.jobs.idempotency import key_reused, request_digest

log = logging.getLogger(__name__)

Enqueue = Callable[[str, Settings], None]
CAP_RETRY_AFTER_SECONDS = 30  # a capped key waits for one of its jobs to finish


def check_spec_against_base(spec: JobSpec, architecture: dict) -> None:
    """:meth:`JobSpec.check_against_base` for a base model record's ``architecture``.

    Raises:
        ApiError: 422 ``validation_error`` naming ``config.classes`` or ``config.r``.
    """
    try:
        spec.check_against_base(MLPConfig.from_dict(dict(architecture)))
    except SpecMismatch as exc:
        raise ApiError(422, "validation_error", exc.message, exc.param) from exc


def check_active_cap(session: Session, settings: Settings, api_key_id: str | None) -> None:
    """Refuse a new job when the key already has ``MAX_ACTIVE_JOBS_PER_KEY`` queued or
    running (checked before the insert: requests racing each other may pass it together).

    Raises:
        ApiError: 429 ``too_many_active_jobs`` with ``Retry-After``.
    """
    cap = settings.max_active_jobs_per_key
    if cap is None or api_key_id is None:
        return
    active = session.scalar(
        select(func.count())
        .select_from(JobRecord)
        .where(JobRecord.api_key_id == api_key_id, JobRecord.status.in_(("queued", "running")))
    )
    if (active or 0) >= cap:
        raise ApiError(
            429,
            "too_many_active_jobs",
            f"This API key has {active} queued or running jobs, the most allowed "
            f"(MAX_ACTIVE_JOBS_PER_KEY={cap}); retry once one has finished.",
            headers={"Retry-After": str(CAP_RETRY_AFTER_SECONDS)},
        )


class Submission(NamedTuple):
    """The job a ``POST /jobs`` answers with; ``replayed`` when an Idempotency-Key found it."""

    job: JobRecord
    replayed: bool


def request_hash(base_model_id: str | None, spec: JobSpec, webhook_url: str | None = None) -> str:
    """SHA-256 (hex) of the request as validated: kind, base model, spec with defaults,
    and the webhook URL when one is given.

    Key order, whitespace and spelled-out defaults do not change it.
    """
    request: dict = {
        "kind": spec.kind,
        "base_model_id": base_model_id,
        "config": spec.model_dump(mode="json"),
    }
    if webhook_url is not None:  # absent from round one's hashes: they stay equal
        request["webhook_url"] = webhook_url
    return request_digest(request)


def _by_key(session: Session, key: str) -> JobRecord | None:
    session.rollback()  # a fresh read: the row may have been committed by another request
    return session.scalars(
        select(JobRecord)
        .where(JobRecord.idempotency_key == key)
        .execution_options(populate_existing=True)
    ).first()


def _same_request(job: JobRecord, spec: JobSpec, base_model_id: str | None) -> bool:
    """Whether a stored job is this request, compared as parsed specs on the fields the
    stored row has: for rows whose ``request_hash`` was taken under round one's field names
    (``digits``) or before later fields existed (a request could not have set those, so a
    request that sets one to other than its default, e.g. ``max_runtime_seconds``, is
    another request)."""
    if (job.kind, job.base_model_id) != (spec.kind, base_model_id):
        return False
    try:
        stored = parse_stored(job.kind, job.config).model_dump(mode="json")
    except ValueError:
        return False
    requested = spec.model_dump(mode="json")
    known = {"classes" if k == "digits" else k for k in job.config}
    without_later = type(spec).model_validate({k: requested[k] for k in known if k in requested})
    return without_later.model_dump(mode="json") == requested and all(
        stored.get(k) == requested.get(k) for k in known
    )


def _replay(
    job: JobRecord, key: str, digest: str, spec: JobSpec, base_model_id: str | None
) -> Submission:
    if job.request_hash != digest and not _same_request(job, spec, base_model_id):
        raise key_reused(key, "job", job.id)
    return Submission(job, True)


def submit_job(
    session: Session,
    settings: Settings,
    *,
    spec: JobSpec,
    base_model_id: str | None,
    enqueue: Enqueue,
    idempotency_key: str | None = None,
    webhook_url: str | None = None,
    api_key_id: str | None = None,
) -> Submission:
    """Validate, insert and commit a ``queued`` job, then enqueue its task.

    Args:
        enqueue: sends ``run_job(job_id)`` (:func:`service.jobs.queue.enqueue_job`).
        idempotency_key: the client's ``Idempotency-Key``: a job already stored under it
            is returned (``replayed``) instead of creating another.
        webhook_url: where the job's terminal status is POSTed (default: the
            ``WEBHOOK_URL`` setting); checked by :func:`service.jobs.webhooks.check_url`.
        api_key_id: id of the API key that sent the request
            (:func:`service.core.api_keys.key_id`; None on an open API): the job records
            it, ``idempotency_key`` is looked up and stored scoped to it, and
            ``MAX_ACTIVE_JOBS_PER_KEY`` counts its queued + running jobs.
    Returns:
        The committed job (``queued`` when new) and whether it was replayed.
    Raises:
        ApiError: 404 ``model_not_found`` (param ``base_model_id``); 422
            ``validation_error`` (see :func:`check_spec_against_base`); 409
            ``idempotency_key_reused`` (same key, different request); 429
            ``too_many_active_jobs`` (the key's cap, with ``Retry-After``); 422
            ``invalid_webhook_url`` (param ``webhook_url``); 503 ``database_busy``.
            A broker that cannot be reached is no error: the job is committed ``queued``
            and flagged unsent (:func:`service.jobs.leases.flag_unsent`), and a reaper
            sends its message once the broker is back.
    """
    digest = request_hash(base_model_id, spec, webhook_url)
    stored_key = scoped_idempotency_key(api_key_id, idempotency_key)
    if stored_key is not None and (found := _by_key(session, stored_key)):
        return _replay(found, idempotency_key, digest, spec, base_model_id)  # type: ignore[arg-type]
    check_active_cap(session, settings, api_key_id)
    if base_model_id is not None:
        base = model_records.require_model(session, base_model_id, "base_model_id")
        check_spec_against_base(spec, base.architecture)
    webhook = webhooks.check_url(webhook_url or settings.webhook_url, settings)

    def insert() -> JobRecord:
        job = job_records.create_job(
            session,
            kind=spec.kind,
            config=spec.model_dump(mode="json"),
            base_model_id=base_model_id,
            epochs=spec.epochs,
            idempotency_key=stored_key,
            request_hash=digest if idempotency_key is not None else None,
            webhook_url=webhook,
        )
        job.api_key_id = api_key_id
        events.record_queued(session, job)
        session.commit()
        return job

    try:
        job = retry_locked(session, insert)
    except IntegrityError:
        found = _by_key(session, stored_key) if stored_key is not None else None
        if found is None:
            raise
        return _replay(found, idempotency_key, digest, spec, base_model_id)  # type: ignore[arg-type]
    except OperationalError as exc:
        if is_locked(exc):
            raise database_busy() from exc
        raise
    try:
        enqueue(job.id, settings)
    except Exception:  # the broker's errors are transport-specific
        # The job is committed: it stays queued, dated as never sent, and the next reaper
        # pass sends it (``QUEUED_RESEND_SECONDS`` bounds the wait for a lost message).
        log.warning("could not enqueue job %s; a reaper will send it", job.id, exc_info=True)
        leases.flag_unsent(session, job.id)
    return Submission(job, False)
    return Submission(job, False)


def cancel_job(session: Session, job_id: str) -> JobRecord:
    """Cancel a job (see :func:`service.jobs.state.request_cancel`).

    A queued job is ``cancelled`` on return; a running one has ``cancel_requested`` and
    ends ``cancelled`` at its next training step. Cancelling a cancelled job is a no-op.

    Raises:
        ApiError: 404 ``job_not_found``; 409 ``job_finished`` for a succeeded/failed job;
            503 ``database_busy``.
    """
    try:
        job = retry_locked(session, lambda: job_state.request_cancel(session, job_id))
    except OperationalError as exc:
        if is_locked(exc):
            raise database_busy() from exc
        raise
    if job is None:
        raise not_found("job", job_id)
    if job.status in ("succeeded", "failed"):
        raise ApiError(409, "job_finished", f"Job {job_id} already {job.status}.")
    return job
