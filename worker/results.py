"""What a finished training run leaves: the selected epoch, the written artifact, its record.

Split from :mod:`worker.runner` (which decides *when* these happen, under the job's lease):
:func:`select_epoch` picks and loads the epoch named by the spec's ``select``,
:func:`write_artifact` writes the model or PEFT adapter and publishes it to the artifact
store, :func:`register_artifact` adds its model or adapter record in the success transaction.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from service.core import store
from service.core.artifacts import adapter_dir, model_dir
from service.core.job_spec import FinetuneLoraSpec, JobSpec
from service.core.settings import Settings
from service.core.vocab import ADAPTER_PREFIX, MODEL_PREFIX, derived_id, model_kind_of
from service.db import adapter_records, model_records
from service.db.tables import JobRecord
from worker.checkpoints import EpochCheckpoints


def select_epoch(
    kept: EpochCheckpoints, spec: JobSpec, model: Any, splits: Any, result: Any
) -> tuple[Any, int]:
    """The epoch whose weights become the result (``select``: best by ``select_metric``, or
    last), loaded into ``model`` and tested when it is not the last one.

    Returns ``(result, selected epoch)``: ``result`` is the ``TrainResult`` with the selected
    epoch's test figures.
    """
    from dataclasses import replace

    from models.early_stopping import best_epoch
    from models.evaluation import test_figures

    last = result.epochs_completed
    chosen = best_epoch(result.history, spec.select_metric) if spec.select == "best" else last
    if chosen is None or chosen == last:
        return result, last
    kept.load_into(model, chosen)
    test_loss, test_accuracy, errors = test_figures(
        model, splits.to(next(model.parameters()).device)
    )
    return (
        replace(result, test_loss=test_loss, test_accuracy=test_accuracy, per_digit_errors=errors),
        chosen,
    )


def write_artifact(
    settings: Settings, job: JobRecord, spec: JobSpec, model: Any
) -> tuple[str, str]:
    """Write the trained adapter (PEFT layout) or model and publish it to the artifact
    store; returns its id (derived from the job id, so a repeated run rewrites the same
    files) and its ref.

    Raises ``OSError`` (ENOSPC: the disk is full) with nothing half-written left.
    """
    from models.adapter_io import save_adapter
    from models.checkpoint import save_model
    from models.lora import AdapterWeights

    if isinstance(spec, FinetuneLoraSpec):
        artifact_id = derived_id(ADAPTER_PREFIX, job.id)
        directory = adapter_dir(settings, artifact_id)
        adapter = AdapterWeights.from_model(model)
        save_adapter(directory, adapter, base_model_name_or_path=job.base_model_id)
    else:
        artifact_id = derived_id(MODEL_PREFIX, job.id)
        directory = model_dir(settings, artifact_id)
        save_model(
            directory, model, spec.classes, parent_id=job.base_model_id, extra={"job_id": job.id}
        )
    return artifact_id, store.publish(settings, directory)


def register_artifact(
    session: Session, job: JobRecord, spec: JobSpec, model: Any, result: Any, artifact: tuple
) -> None:
    """Add the record of what the job produced, ``artifact = (id, ref)`` from
    :func:`write_artifact` (the caller commits it with ``succeeded``)."""
    from models.classifier import count_parameters

    artifact_id, directory = artifact
    if isinstance(spec, FinetuneLoraSpec):
        adapter_records.register_adapter(
            session,
            adapter_id=artifact_id,
            base_model_id=job.base_model_id or "",
            job_id=job.id,
            source="trained",
            lora_config=spec.lora_config(),
            trainable_parameters=count_parameters(model, trainable_only=True),
            classes=spec.classes,
            test_accuracy=result.test_accuracy,
            path=str(directory),
            precision=result.precision,
        )
    else:
        model_records.register_model(
            session,
            model_id=artifact_id,
            kind=model_kind_of(spec.kind),
            job_id=job.id,
            parent_id=job.base_model_id,
            classes=spec.classes,
            architecture=model.config.to_dict(),
            n_parameters=count_parameters(model),
            test_accuracy=result.test_accuracy,
            path=str(directory),
            precision=result.precision,
        )
