"""Publish a kept epoch of a finished job as a registered model or adapter, after the fact:
the logic behind ``POST /jobs/{id}/checkpoints/{epoch}/publish``.

The checkpoint's files (written by the worker in the layout of the job's result, see
:mod:`worker.checkpoints`) are copied to the model or adapter directory, then the record is
registered; the id derives from the job's and the epoch (``job_X``, epoch 3 ->
``adp_X_e3`` / ``mdl_X_e3``), so publishing twice returns the record made the first time.
The epoch a succeeded job already selected is its result: publishing it returns that.
Test accuracy is not measured here (``POST /evaluate`` does); the record keeps null.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import NamedTuple

from sqlalchemy.orm import Session

from service.core import store
from service.core.artifacts import adapter_dir, model_dir
from service.core.errors import ApiError, artifact_unavailable
from service.core.job_spec import FinetuneLoraSpec, parse_stored
from service.core.settings import Settings
from service.core.vocab import ADAPTER_PREFIX, MODEL_PREFIX, derived_id, model_kind_of
from service.db import adapter_records, checkpoint_records, job_records, model_records
from service.db.tables import AdapterRecord, JobRecord, ModelRecord

PUBLISHABLE_STATUSES = ("succeeded", "failed")


class Published(NamedTuple):
    """What a publish answers with: the record, and whether this call registered it."""

    record: ModelRecord | AdapterRecord
    created: bool


def published_id(job: JobRecord, epoch: int) -> str:
    """The id a checkpoint of ``job`` gets when published (``adp_X_e3`` / ``mdl_X_e3``)."""
    prefix = ADAPTER_PREFIX if job.kind == FinetuneLoraSpec.kind else MODEL_PREFIX
    return f"{derived_id(prefix, job.id)}_e{epoch}"


def find_published(session: Session, job: JobRecord, epoch: int) -> str | None:
    """The id of the model or adapter published from ``epoch`` (or selected as the job's
    result), if there is one."""
    if job.status == "succeeded" and (job.test_metrics or {}).get("selected_epoch") == epoch:
        return job.result_adapter_id or job.result_model_id
    ident = published_id(job, epoch)
    getter = adapter_records.get_adapter if job.kind == "finetune_lora" else model_records.get_model
    return ident if getter(session, ident) is not None else None


def _copy(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` whole or not at all (temp dir, then rename)."""
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def publish_checkpoint(session: Session, settings: Settings, job_id: str, epoch: int) -> Published:
    """Register ``epoch``'s checkpoint of a finished job as a model (pretrain,
    finetune_full) or adapter (finetune_lora); commits.

    Raises:
        ApiError: 404 ``job_not_found`` / ``checkpoint_not_found``; 409 ``job_not_finished``
            (queued or running: its checkpoints may still change) or ``job_cancelled``; 503
            ``artifact_unavailable`` when the checkpoint's files cannot be read.
    """
    from models.adapter_io import load_adapter
    from models.checkpoint import CheckpointError, load_model
    from models.classifier import MLPConfig, count_parameters

    job = job_records.require_job(session, job_id)
    if job.status not in PUBLISHABLE_STATUSES:
        code = "job_cancelled" if job.status == "cancelled" else "job_not_finished"
        raise ApiError(409, code, f"Job {job_id} is {job.status}; publish when it has finished.")
    checkpoint = checkpoint_records.require_checkpoint(session, job_id, epoch)
    existing = find_published(session, job, epoch)
    if existing is not None:
        getter = (
            adapter_records.require_adapter
            if job.kind == "finetune_lora"
            else (model_records.require_model)
        )
        return Published(getter(session, existing), False)
    spec = parse_stored(job.kind, job.config)
    ident = published_id(job, epoch)
    try:
        source = store.fetch(settings, checkpoint.path)
        if isinstance(spec, FinetuneLoraSpec):
            base = model_records.require_model(session, job.base_model_id or "")
            weights = load_adapter(source, MLPConfig.from_dict(dict(base.architecture)))
            target = adapter_dir(settings, ident)
            _copy(source, target)
            ref = store.publish(settings, target)
            record: ModelRecord | AdapterRecord = adapter_records.register_adapter(
                session,
                adapter_id=ident,
                base_model_id=base.id,
                job_id=job.id,
                source="trained",
                lora_config=spec.lora_config(),
                trainable_parameters=weights.n_parameters,
                classes=spec.classes,
                test_accuracy=None,
                path=ref,
            )
        else:
            network, meta = load_model(source)
            target = model_dir(settings, ident)
            _copy(source, target)
            ref = store.publish(settings, target)
            record = model_records.register_model(
                session,
                model_id=ident,
                kind=model_kind_of(job.kind),
                job_id=job.id,
                parent_id=job.base_model_id,
                classes=list(meta.classes),
                architecture=network.config.to_dict(),
                n_parameters=count_parameters(network),
                test_accuracy=None,
                path=ref,
            )
    except (OSError, CheckpointError, ValueError) as exc:
        raise artifact_unavailable("checkpoint", f"{job_id} epoch {epoch}", exc) from exc
    session.commit()
    return Published(record, True)
