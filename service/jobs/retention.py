"""Retention: deleting models and finished jobs with what they own, expiring the kept
checkpoints of finished jobs, and collecting artifacts no record points to (``lora-service
gc``). Records are committed first, then the objects go (a crash in between leaves only
unreferenced objects, which the next ``gc`` removes).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from service.core import store
from service.core.artifacts import checkpoint_dir
from service.core.errors import ApiError
from service.core.settings import Settings
from service.db import job_records, model_records
from service.db.tables import (
    AdapterRecord,
    CheckpointRecord,
    JobEventRecord,
    JobRecord,
    MetricRecord,
    ModelRecord,
    WebhookDeliveryRecord,
    utcnow,
)

log = logging.getLogger(__name__)
UNFINISHED = ("queued", "running")
FINISHED = ("succeeded", "failed", "cancelled")


@dataclass
class Deleted:
    """What a deletion removed (ids)."""

    models: list[str] = field(default_factory=list)
    adapters: list[str] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)


def _descendants(session: Session, model_id: str) -> list[str]:
    """``model_id`` and every model fine-tuned from it, transitively (parents first)."""
    found, frontier = [model_id], [model_id]
    while frontier:
        children = session.scalars(
            select(ModelRecord.id).where(ModelRecord.parent_id.in_(frontier))
        ).all()
        frontier = [c for c in children if c not in found]
        found += frontier
    return found


def delete_model(session: Session, settings: Settings, model_id: str, cascade: bool) -> Deleted:
    """Delete a model's record and its objects; commits.

    Without ``cascade`` it is refused while adapters or fine-tuned models depend on it;
    with ``cascade`` those go too (transitively). Unfinished jobs on any of them always
    refuse it (cancel them first). Finished jobs that trained on a deleted model keep their
    record with ``base_model_id`` cleared.

    Raises:
        ApiError: 404 ``model_not_found``; 409 ``model_in_use`` naming the dependents.
    """
    model_records.require_model(session, model_id)
    models = _descendants(session, model_id) if cascade else [model_id]
    adapters = session.scalars(
        select(AdapterRecord.id).where(AdapterRecord.base_model_id.in_(models))
    ).all()
    children = [m for m in _descendants(session, model_id) if m != model_id]
    running = session.scalars(
        select(JobRecord.id).where(
            JobRecord.base_model_id.in_(models), JobRecord.status.in_(UNFINISHED)
        )
    ).all()
    if running or (not cascade and (adapters or children)):
        parts = [
            f"{what}: {', '.join(ids[:5])}{' …' if len(ids) > 5 else ''}"
            for what, ids in (
                ("unfinished jobs", running),
                ("adapters", [] if cascade else adapters),
                ("fine-tuned models", [] if cascade else children),
            )
            if ids
        ]
        hint = "cancel the jobs first" if running else "pass cascade=true to delete them too"
        raise ApiError(
            409,
            "model_in_use",
            f"Model {model_id} has dependents ({'; '.join(parts)}): {hint}.",
        )
    refs = [r for (r,) in session.execute(select(AdapterRecord.path).where(
        AdapterRecord.id.in_(adapters)))]  # fmt: skip
    refs += [r for (r,) in session.execute(select(ModelRecord.path).where(
        ModelRecord.id.in_(models)))]  # fmt: skip
    session.execute(
        update(JobRecord).where(JobRecord.base_model_id.in_(models)).values(base_model_id=None)
    )
    session.execute(delete(AdapterRecord).where(AdapterRecord.id.in_(adapters)))
    for model in reversed(models):  # children first (parent_id)
        session.execute(delete(ModelRecord).where(ModelRecord.id == model))
    session.commit()
    for ref in refs:
        store.delete(settings, ref)
    log.info("deleted models %s and adapters %s", models, list(adapters))
    return Deleted(models=list(models), adapters=list(adapters))


def delete_job(session: Session, settings: Settings, job_id: str) -> None:
    """Delete a finished job's record (with its events, metrics, checkpoint records and
    webhook deliveries) and its checkpoints' objects; commits. The model or adapter it
    produced stays registered.

    Raises:
        ApiError: 404 ``job_not_found``; 409 ``job_not_finished``.
    """
    job = job_records.require_job(session, job_id)
    if job.status not in FINISHED:
        raise ApiError(
            409, "job_not_finished", f"Job {job_id} is {job.status}; cancel it, then delete it."
        )
    for table in (JobEventRecord, MetricRecord, CheckpointRecord, WebhookDeliveryRecord):
        session.execute(delete(table).where(table.job_id == job_id))
    session.execute(delete(JobRecord).where(JobRecord.id == job_id))
    session.commit()
    store.delete(settings, checkpoint_dir(settings, job_id))


def expire_checkpoints(session: Session, settings: Settings, older_than: float) -> list[str]:
    """Delete the kept checkpoints (records, then objects) of jobs finished more than
    ``older_than`` seconds ago; returns the job ids."""
    cutoff = utcnow() - timedelta(seconds=older_than)
    jobs = session.scalars(
        select(CheckpointRecord.job_id)
        .join(JobRecord, JobRecord.id == CheckpointRecord.job_id)
        .where(JobRecord.status.in_(FINISHED), JobRecord.finished_at < cutoff)
        .distinct()
    ).all()
    if jobs:
        session.execute(delete(CheckpointRecord).where(CheckpointRecord.job_id.in_(jobs)))
        session.commit()
    for job_id in jobs:
        store.delete(settings, checkpoint_dir(settings, job_id))
    return list(jobs)


def unreferenced(session: Session, settings: Settings, min_age: float) -> list[str]:
    """Keys of artifacts no record points to, published more than ``min_age`` s ago.

    Never a key a queued or running job may still write (its checkpoints, its training
    state, the model or adapter derived from its id); ``min_age`` covers the moment between
    an upload and the commit of its record (imports, publishing).
    """
    backend = store.get_store(settings)
    now = time.time()
    models = set(session.scalars(select(ModelRecord.id)))
    adapters = set(session.scalars(select(AdapterRecord.id)))
    statuses = dict(session.execute(select(JobRecord.id, JobRecord.status)).all())
    checkpoints = {
        (j, e) for j, e in session.execute(select(CheckpointRecord.job_id, CheckpointRecord.epoch))
    }
    active = {j.split("_", 1)[-1] for j, s in statuses.items() if s in UNFINISHED}
    garbage = []
    for top, known in (("models", models), ("adapters", adapters)):
        for key, modified in backend.artifacts(top):
            ident = key.split("/", 1)[1]
            suffix = ident.split("_", 1)[-1]
            if ident in known or suffix in active or now - modified < min_age:
                continue
            garbage.append(key)
    for key, modified in backend.artifacts("checkpoints"):
        _, job_id, sub = key.split("/", 2)
        if statuses.get(job_id) in UNFINISHED or now - modified < min_age:
            continue
        if sub.startswith("epoch-") and (job_id, _epoch(sub)) in checkpoints:
            continue
        garbage.append(key)
    return sorted(garbage)


def _epoch(sub: str) -> int:
    try:
        return int(sub.removeprefix("epoch-"))
    except ValueError:
        return -1


def collect_garbage(
    session: Session, settings: Settings, min_age: float, dry_run: bool
) -> list[str]:
    """Expire old checkpoints (``CHECKPOINT_RETENTION_SECONDS``), then delete every
    :func:`unreferenced` key (unless ``dry_run``); returns the keys."""
    if settings.checkpoint_retention_seconds is not None and not dry_run:
        expire_checkpoints(session, settings, settings.checkpoint_retention_seconds)
    keys = unreferenced(session, settings, min_age)
    session.rollback()
    if not dry_run:
        for key in keys:
            store.get_store(settings).delete(key)
    return keys
