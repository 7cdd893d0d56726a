"""What a micro-batch is made of: the requests, the records they resolve to, the networks
and adapters loaded for them, and the answers (used by :mod:`service.serving.executor`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from models.classifier import MLP
from models.lora import AdapterWeights
from service.core.errors import ApiError, adapter_model_mismatch, not_found


@dataclass(frozen=True)
class LoadedModel:
    """A base network in memory (eval mode, frozen, linears ready for per-sample adapters)
    and the record facts it was loaded for."""

    model_id: str
    path: str
    model: MLP
    classes: tuple[int, ...]
    dtype: torch.dtype = torch.float32
    """The dtype its weights were cast to at load (``SERVING_PRECISION``)."""


@dataclass(frozen=True)
class LoadedAdapter:
    """An adapter's weights in memory and the record facts checked on every use."""

    adapter_id: str
    base_model_id: str
    path: str
    weights: AdapterWeights
    classes: tuple[int, ...]


@dataclass(frozen=True)
class Prediction:
    """One sample's answer. ``probabilities`` maps each digit (as a string) to [0, 1]."""

    digit: int
    probabilities: dict[str, float]
    model_id: str
    adapter_id: str | None


@dataclass
class BatchItem:
    """One request's samples: float32 ``x`` (n, 784) for ``model_id`` + ``adapter_id``."""

    x: torch.Tensor
    model_id: str | None
    adapter_id: str | None


@dataclass(frozen=True)
class Resolved:
    """What a request names, as its records say now."""

    model_id: str
    model_path: str
    model_classes: tuple[int, ...]
    adapter: tuple[str, str, tuple[int, ...]] | None  # (id, path, classes)

    @property
    def classes(self) -> tuple[int, ...]:
        """The digits of the head as served: the adapter's when one is used."""
        return self.adapter[2] if self.adapter else self.model_classes


@dataclass
class BatchStats:
    """Counters of the batches run so far; times in milliseconds."""

    batches: int = 0
    samples: int = 0
    largest_batch: int = 0
    forward_passes: int = 0
    forward_ms_total: float = 0.0


def resolve_item(
    item: BatchItem, adapters: dict[str, Any], models: dict[str, Any], default_id: str | None
) -> Resolved | ApiError:
    """Match one request against the records read for its batch (``adapters`` and
    ``models``: rows by id; ``default_id``: the model used when neither id is given).

    Returns the :class:`Resolved` ids, paths and classes, or the ``ApiError`` to answer:
    404 ``adapter_not_found`` / ``model_not_found`` / ``no_model``, 409
    ``adapter_model_mismatch``.
    """
    adapter = None
    model_id = item.model_id
    if item.adapter_id:
        row = adapters.get(item.adapter_id)
        if row is None:
            return not_found("adapter", item.adapter_id, "adapter_id")
        if model_id is not None and row.base_model_id != model_id:
            return adapter_model_mismatch(item.adapter_id, row.base_model_id, model_id)
        model_id = row.base_model_id
        adapter = (row.id, row.path, tuple(row.classes))
    if model_id is None:
        model_id = default_id
        if model_id is None:
            return ApiError(
                404,
                "no_model",
                "No model_id given and no pre-trained model is registered yet "
                "(train one with POST /jobs).",
                "model_id",
            )
    row = models.get(model_id)
    if row is None:
        return not_found("model", model_id, "model_id")
    return Resolved(model_id, row.path, tuple(row.classes), adapter)
