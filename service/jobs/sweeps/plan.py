"""Creating a sweep's jobs: at ``POST /sweeps``, when a base succeeds, and cancelling them.

The jobs of a sweep are ordinary jobs (same rows, same queue, same workers), marked with
``sweep_id`` and their ``sweep_cell`` (see :class:`service.db.tables.SweepRecord`).

* ``POST /sweeps`` (:func:`create_sweep`) validates the whole grid first (every variant's
  config, each fine-tune against the base's architecture, the number of jobs against
  ``SWEEP_MAX_JOBS``), then inserts in one transaction the sweep, the base pre-training
  jobs (or, for a given ``base_model_id``, every fine-tune cell) and the ``pretrain``
  variants' jobs, commits, and enqueues them.
* **The fine-tunes of a pre-trained base are created by the worker that finishes it**, in
  the very transaction that marks the base ``succeeded`` and registers its model
  (:func:`on_job_succeeded`, called from ``worker.runner``), and enqueued after the commit.
  So a base is never ``succeeded`` without its fine-tunes' rows, whatever process dies
  when: a worker killed after the commit leaves them ``queued`` without a message, and the
  reaper of any worker sends it once ``VISIBILITY_TIMEOUT`` has passed (as for any job
  whose message was lost). The unique ``(sweep_id, sweep_cell)`` index refuses a cell
  created twice.
* **Cancel** (:func:`cancel_sweep`) stores the sweep's cancel request, commits, then
  cancels every unfinished job. A base that succeeds meanwhile locks the sweep row before
  reading the request (``SELECT ... FOR UPDATE``; SQLite serialises writers), so either it
  sees the request and creates nothing, or its fine-tunes are committed before the cancel
  lists the jobs, and are cancelled with the rest.

Idempotency-Key: as ``POST /jobs`` (:mod:`service.jobs.submit`): the same key and the same
request (as validated) answer the sweep created first; a different request is 409.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from models.classifier import MLPConfig
from service.core.errors import ApiError, database_busy
from service.core.job_spec import JobSpec, SpecMismatch
from service.core.settings import Settings
from service.core.sweep_spec import SweepCreate, variant_spec
from service.core.vocab import UNFINISHED_STATUSES
from service.db import job_records, model_records, sweep_records
from service.db.retry import is_locked, retry_locked
from service.db.tables import JobRecord, SweepRecord
from service.jobs import events
from service.jobs import state as job_state
from service.jobs.idempotency import key_reused, request_digest

log = logging.getLogger(__name__)

Enqueue = Callable[[str, Settings], None]
BASE_CELL = "base.b"


class SweepSubmission(NamedTuple):
    """The sweep a ``POST /sweeps`` answers with; ``replayed`` when its key found it."""

    sweep: SweepRecord
    replayed: bool


def base_cell(base: int) -> str:
    """The cell of the ``base``-th pre-trained base: ``base.b<j>``."""
    return f"{BASE_CELL}{base}"


def variant_cell(variant: int, seed: int, base: int | None) -> str:
    """The cell of variant ``variant`` at ``seed`` from base ``base`` (``None``: a
    ``pretrain`` variant, which has no base): ``v<i>.s<seed>[.b<j>]``."""
    return f"v{variant}.s{seed}" + ("" if base is None else f".b{base}")


def parse_cell(cell: str) -> dict[str, int | None]:
    """``{"base": j}`` for a base's cell, ``{"variant": i, "seed": s, "base": j | None}``
    for a variant's."""
    if cell.startswith(BASE_CELL):
        return {"variant": None, "seed": None, "base": int(cell[len(BASE_CELL) :])}
    parts = {p[0]: int(p[1:]) for p in cell.split(".")}
    return {"variant": parts["v"], "seed": parts["s"], "base": parts.get("b")}


def request_hash(request: SweepCreate) -> str:
    """SHA-256 (hex) of the request as validated (key order and whitespace do not count)."""
    return request_digest(request.model_dump(mode="json"))


def _check_grid(session: Session, settings: Settings, request: SweepCreate) -> None:
    """Every variant's spec valid and fitting the base; the job count within bounds.

    Raises:
        ApiError: 422 ``sweep_too_large`` (param ``seeds``), 422 ``validation_error``
            (param ``variants.<i>.config.<field>``), 404 ``model_not_found``.
    """
    n_jobs = request.n_jobs()
    if n_jobs > settings.sweep_max_jobs:
        raise ApiError(
            422,
            "sweep_too_large",
            f"This sweep would create {n_jobs} jobs; at most {settings.sweep_max_jobs} "
            "(SWEEP_MAX_JOBS) are allowed. Use fewer variants, seeds or base_seeds.",
            "seeds",
        )
    if request.base_model_id is not None:
        base = model_records.require_model(session, request.base_model_id, "base_model_id")
        architecture = MLPConfig.from_dict(dict(base.architecture))
    else:
        assert request.pretrain is not None  # SweepCreate: exactly one of the two
        architecture = request.pretrain.mlp_config()
    for index, variant in enumerate(request.variants):
        try:
            spec = variant_spec(variant, index, request.seeds[0])
            spec.check_against_base(architecture)
        except SpecMismatch as exc:
            param = exc.param
            if param.startswith("config."):  # check_against_base names the job's field
                param = f"variants.{index}.{param}"
            raise ApiError(422, "validation_error", exc.message, param) from exc


def _add_job(
    session: Session, sweep_id: str, cell: str, spec: JobSpec, base_model_id: str | None
) -> str:
    job = job_records.create_job(
        session,
        kind=spec.kind,
        config=spec.model_dump(mode="json"),
        base_model_id=base_model_id,
        epochs=spec.epochs,
    )
    job.sweep_id, job.sweep_cell = sweep_id, cell
    session.flush()
    events.record_queued(session, job)
    return job.id


def _add_finetunes(
    session: Session, sweep_id: str, request: SweepCreate, base: int, base_model_id: str
) -> list[str]:
    """Every fine-tune cell of base ``base`` (all variants but ``pretrain``, all seeds)."""
    return [
        _add_job(
            session,
            sweep_id,
            variant_cell(index, seed, base),
            variant_spec(variant, index, seed),
            base_model_id,
        )
        for index, variant in enumerate(request.variants)
        if variant.kind != "pretrain"
        for seed in request.seeds
    ]


def _add_first_jobs(session: Session, sweep_id: str, request: SweepCreate) -> list[str]:
    """The jobs a sweep starts with: its bases (or, with a given base, its fine-tunes) and
    its ``pretrain`` variants."""
    ids: list[str] = []
    for base, spec in enumerate(request.bases()):
        ids.append(_add_job(session, sweep_id, base_cell(base), spec, None))
    if request.base_model_id is not None:
        ids += _add_finetunes(session, sweep_id, request, 0, request.base_model_id)
    for index, variant in enumerate(request.variants):
        if variant.kind == "pretrain":
            for seed in request.seeds:
                spec = variant_spec(variant, index, seed)
                ids.append(_add_job(session, sweep_id, variant_cell(index, seed, None), spec, None))
    return ids


def _replay(sweep: SweepRecord, key: str, digest: str) -> SweepSubmission:
    if sweep.request_hash != digest:
        raise key_reused(key, "sweep", sweep.id)
    return SweepSubmission(sweep, True)


def create_sweep(
    session: Session,
    settings: Settings,
    *,
    request: SweepCreate,
    enqueue: Enqueue,
    idempotency_key: str | None = None,
) -> SweepSubmission:
    """Validate the grid, insert the sweep and its first jobs, commit, enqueue them.

    Returns:
        The committed sweep and whether an Idempotency-Key replayed it.
    Raises:
        ApiError: see :func:`_check_grid`; 409 ``idempotency_key_reused``; 503
            ``broker_unavailable`` (the sweep's jobs are then ``failed`` with
            ``enqueue_failed``, and the sweep is cancelled); 503 ``database_busy``.
    """
    digest = request_hash(request)
    if idempotency_key is not None and (
        found := sweep_records.sweep_by_key(session, idempotency_key)
    ):
        return _replay(found, idempotency_key, digest)
    _check_grid(session, settings, request)

    def insert() -> tuple[SweepRecord, list[str]]:
        sweep = sweep_records.create_sweep(
            session,
            request=request.model_dump(mode="json"),
            n_jobs=request.n_jobs(),
            idempotency_key=idempotency_key,
            request_hash=digest,
        )
        ids = _add_first_jobs(session, sweep.id, request)
        session.commit()
        return sweep, ids

    try:
        sweep, ids = retry_locked(session, insert)
    except IntegrityError:
        found = (
            sweep_records.sweep_by_key(session, idempotency_key)
            if idempotency_key is not None
            else None
        )
        if found is None:
            raise
        return _replay(found, idempotency_key, digest)  # type: ignore[arg-type]
    except OperationalError as exc:
        if is_locked(exc):
            raise database_busy() from exc
        raise
    try:
        for job_id in ids:
            enqueue(job_id, settings)
    except Exception as exc:  # the broker's errors are transport-specific
        log.exception("could not enqueue the jobs of sweep %s", sweep.id)
        _fail_unsent(session, sweep.id, f"Could not reach the broker: {exc}")
        raise ApiError(
            503, "broker_unavailable", f"Sweep {sweep.id} could not be queued: broker unreachable."
        ) from exc
    return SweepSubmission(sweep, False)


def _fail_unsent(session: Session, sweep_id: str, message: str) -> None:
    """After a failed enqueue: cancel the sweep, end its unfinished jobs ``failed``."""

    def fail() -> None:
        sweep_records.request_cancel(session, sweep_id)
        session.commit()
        for job in sweep_records.sweep_jobs(session, sweep_id):
            if job.status in UNFINISHED_STATUSES:
                job_state.mark_failed(session, job.id, code="enqueue_failed", message=message)

    retry_locked(session, fail)


def on_job_succeeded(session: Session, job_id: str, model_id: str | None) -> list[str]:
    """In the transaction marking job ``job_id`` ``succeeded``: when it is a sweep's base
    (and the sweep is not cancelled), add that base's fine-tune jobs, from ``model_id``.

    Does not commit (the caller commits with the job's success), and enqueues nothing:
    the caller passes the returned ids to :func:`enqueue_all` after the commit.

    Returns:
        The new jobs' ids (none for any other job).
    """
    row = session.execute(
        select(JobRecord.sweep_id, JobRecord.sweep_cell).where(JobRecord.id == job_id)
    ).first()
    if row is None or row[0] is None or not (row[1] or "").startswith(BASE_CELL) or not model_id:
        return []
    sweep_id, cell = row
    session.flush()  # the base's model record first: the fine-tunes' foreign key names it
    sweep = sweep_records.get_sweep(session, sweep_id, lock=True)
    if sweep is None or sweep.cancel_requested:
        return []
    request = SweepCreate.model_validate(sweep.request)
    base = parse_cell(cell)["base"]
    assert base is not None
    ids = _add_finetunes(session, sweep_id, request, base, model_id)
    log.info("sweep %s: base %d succeeded (%s); %d fine-tunes added", sweep_id, base, model_id,
             len(ids))  # fmt: skip
    return ids


def enqueue_all(job_ids: list[str], settings: Settings, enqueue: Enqueue) -> None:
    """Send each committed job's message; one that cannot be sent now stays ``queued``,
    and a reaper sends it after ``VISIBILITY_TIMEOUT`` (its message is presumed lost)."""
    for job_id in job_ids:
        try:
            enqueue(job_id, settings)
        except Exception:  # the broker's errors are transport-specific
            log.exception("could not enqueue sweep job %s; a reaper will resend it", job_id)


def cancel_sweep(session: Session, sweep_id: str) -> SweepRecord:
    """Cancel a sweep: store the request, then cancel every unfinished job (queued ones at
    once, running ones at their next step). Cancelling twice, or a finished sweep, is
    harmless.

    Raises:
        ApiError: 404 ``sweep_not_found``; 503 ``database_busy``.
    """

    def mark() -> bool:
        found = sweep_records.request_cancel(session, sweep_id)
        session.commit()
        return found

    try:
        if not retry_locked(session, mark):
            sweep_records.require_sweep(session, sweep_id)  # raises the 404
        for job in sweep_records.sweep_jobs(session, sweep_id):
            if job.status in UNFINISHED_STATUSES:
                retry_locked(session, lambda j=job.id: job_state.request_cancel(session, j))
    except OperationalError as exc:
        if is_locked(exc):
            raise database_busy() from exc
        raise
    return sweep_records.require_sweep(session, sweep_id)
