"""What a job trains, built from its spec: the MNIST subset and the network.

A fresh MLP for ``pretrain``, a copy of the base model for ``finetune_full``, the base with
LoRA injected for ``finetune_lora``; everything read from the typed spec
(:mod:`service.core.job_spec`), nothing by string key.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from service.core import store
from service.core.job_spec import FinetuneLoraSpec, JobSpec, PretrainSpec, SpecMismatch
from service.core.settings import Settings, get_settings
from service.db import model_records
from service.db.tables import JobRecord


class JobFailure(Exception):
    """A failure with a stable error code, e.g. ``base_model_missing``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def load_base(
    factory: sessionmaker[Session], job: JobRecord, settings: Settings | None = None
) -> tuple[Any, Any]:
    """The job's base network and its ``ModelMeta``, from the base model's record.

    Raises:
        JobFailure: ``base_model_missing`` (no record) or ``base_model_unreadable``.
    """
    from models.checkpoint import CheckpointError, load_model

    with factory() as session:
        base = model_records.get_model(session, job.base_model_id or "")
    if base is None:
        raise JobFailure("base_model_missing", f"Base model {job.base_model_id} is not registered.")
    try:
        return load_model(store.fetch(settings or get_settings(), base.path))
    except (OSError, CheckpointError) as exc:
        raise JobFailure(
            "base_model_unreadable", f"Cannot load base model {base.id} from {base.path}: {exc}"
        ) from exc


def build_network(
    factory: sessionmaker[Session], job: JobRecord, spec: JobSpec, settings: Settings | None = None
) -> Any:
    """The network to train: a fresh MLP, a copy of the base model, or the base plus LoRA.

    Raises:
        JobFailure: ``base_model_missing``, ``base_model_unreadable``, or ``invalid_config``
            when the spec does not fit the base (checked at submission too).
    """
    import torch

    from models.classifier import MLP
    from models.lora import inject_lora

    torch.manual_seed(spec.seed)  # deterministic initialisation (MLP weights, lora_A)
    if isinstance(spec, PretrainSpec):
        return MLP(spec.mlp_config())
    model, meta = load_base(factory, job, settings)
    try:
        spec.check_against_base(meta.config)
    except SpecMismatch as exc:
        raise JobFailure("invalid_config", f"Base model {job.base_model_id}: {exc}") from exc
    if spec.dropout is not None:  # None: keep the base's (round-one fine-tunes did)
        model.set_dropout(spec.dropout)
    if isinstance(spec, FinetuneLoraSpec):
        inject_lora(model, spec.lora_config())
    return model


def load_data(settings: Settings, spec: JobSpec) -> Any:
    """The spec's MNIST subset, its train split cut to ``max_train_samples``.

    Raises:
        JobFailure: ``data_unavailable`` when MNIST cannot be read.
    """
    from models.data import load_digit_splits

    try:
        splits = load_digit_splits(
            settings.data_dir,
            classes=spec.classes,
            val_fraction=spec.val_fraction,
            seed=spec.seed,
            download=settings.mnist_download,
        )
    except (FileNotFoundError, RuntimeError) as exc:  # files missing; torchvision's download
        raise JobFailure("data_unavailable", f"MNIST unavailable: {exc}") from exc
    if spec.max_train_samples:
        n = spec.max_train_samples
        splits.train_x, splits.train_y = splits.train_x[:n], splits.train_y[:n]
    return splits


def load_base_digits(
    settings: Settings, factory: sessionmaker[Session], job: JobRecord, spec: JobSpec
) -> Any:
    """For a fine-tune: the validation split of its base model's digits (same seed and
    ``val_fraction`` as the job), labels indexing the base's classes; None for pre-training.

    Raises:
        JobFailure: ``base_model_missing``; ``data_unavailable``.
    """
    from models.data import load_digit_splits

    if isinstance(spec, PretrainSpec):
        return None
    with factory() as session:
        base = model_records.get_model(session, job.base_model_id or "")
    if base is None:
        raise JobFailure("base_model_missing", f"Base model {job.base_model_id} is not registered.")
    try:
        return load_digit_splits(
            settings.data_dir,
            classes=list(base.classes),
            val_fraction=spec.val_fraction,
            seed=spec.seed,
            download=settings.mnist_download,
        )
    except (FileNotFoundError, RuntimeError) as exc:
        raise JobFailure("data_unavailable", f"MNIST unavailable: {exc}") from exc
