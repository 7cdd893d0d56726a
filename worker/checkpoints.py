"""A job's kept epochs: write each finished epoch's weights, keep the last N plus the best,
and go back to the chosen one at the end.

Each epoch's weights go to ``{artifact_dir}/checkpoints/{job_id}/epoch-N/`` in the layout
of the job's result (a model directory, or a PEFT adapter directory), so that any kept
epoch can become a registered model or adapter later
(``POST /jobs/{id}/checkpoints/{epoch}/publish``). The record of an epoch's checkpoint and
its ``checkpoint`` event commit with the epoch's metrics (:func:`service.jobs.state.
record_epoch`); epochs that fall out of "the last ``keep_checkpoints`` plus the best by
``select_metric``" are deleted after that commit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from service.core import store
from service.core.artifacts import epoch_checkpoint_dir
from service.core.job_spec import FinetuneLoraSpec, JobSpec
from service.core.settings import Settings
from service.db import checkpoint_records
from service.jobs import events


def kept_epochs(metrics_by_epoch: dict[int, dict[str, float]], keep: int, metric: str) -> set[int]:
    """The epochs to keep: the ``keep`` most recent, plus the best by ``metric``
    (lowest ``val_loss`` / highest ``val_accuracy``; the earliest on ties)."""
    from models.early_stopping import improves

    epochs = sorted(metrics_by_epoch)
    kept = set(epochs[-keep:])
    best: int | None = None
    for epoch in epochs:
        value = metrics_by_epoch[epoch].get(metric, math.nan)
        if math.isnan(value):
            continue
        if best is None or improves(metric, value, metrics_by_epoch[best][metric]):
            best = epoch
    if best is not None:
        kept.add(best)
    return kept


@dataclass
class EpochCheckpoints:
    """The kept epochs of one job attempt."""

    settings: Settings
    job_id: str
    base_model_id: str | None
    spec: JobSpec

    def directory(self, epoch: int) -> Path:
        """Where ``epoch``'s weights are written."""
        return epoch_checkpoint_dir(self.settings, self.job_id, epoch)

    def write(self, epoch: int, model: Any) -> str:
        """Write ``model``'s weights after ``epoch`` (the adapter alone for LoRA jobs) and
        publish them to the artifact store; returns the ref."""
        from models.adapter_io import save_adapter
        from models.checkpoint import save_model
        from models.lora import AdapterWeights

        directory = self.directory(epoch)
        if isinstance(self.spec, FinetuneLoraSpec):
            save_adapter(
                directory,
                AdapterWeights.from_model(model),
                base_model_name_or_path=self.base_model_id,
            )
        else:
            save_model(
                directory,
                model,
                self.spec.classes,
                parent_id=self.base_model_id,
                extra={"job_id": self.job_id, "epoch": epoch},
            )
        return store.publish(self.settings, directory)

    def record(self, session: Session, epoch: int, metrics: dict[str, float]) -> None:
        """Add ``epoch``'s checkpoint record and event (in the epoch's transaction)."""
        checkpoint_records.add_checkpoint(
            session,
            self.job_id,
            epoch,
            metrics,
            store.ref_for(self.settings, self.directory(epoch)),
        )
        events.record_checkpoint(session, self.job_id, epoch, metrics)

    def prune(self, factory: sessionmaker[Session]) -> None:
        """Delete the records, then the files, of epochs no longer kept."""
        with factory() as session:
            records = checkpoint_records.list_checkpoints(session, self.job_id)
            kept = kept_epochs(
                {r.epoch: r.metrics for r in records},
                self.spec.keep_checkpoints,
                self.spec.select_metric,
            )
            dropped = [r.epoch for r in records if r.epoch not in kept]
            if not dropped:
                return
            checkpoint_records.delete_checkpoints(session, self.job_id, dropped)
            session.commit()
        for epoch in dropped:
            store.delete(self.settings, self.directory(epoch))

    def load_into(self, model: Any, epoch: int) -> None:
        """Put ``epoch``'s kept weights into ``model`` (in place, on its device).

        Raises:
            OSError / ValueError: the checkpoint is missing or does not fit ``model``.
        """
        from models.adapter_io import load_adapter
        from models.checkpoint import load_model
        from models.lora import set_adapter_weights

        directory = store.fetch(self.settings, store.ref_for(self.settings, self.directory(epoch)))
        if isinstance(self.spec, FinetuneLoraSpec):
            set_adapter_weights(model, load_adapter(directory, model.config))
            return
        kept, _ = load_model(directory)
        model.load_state_dict(kept.state_dict())
