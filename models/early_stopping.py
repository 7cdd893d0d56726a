"""Which epoch is best, and when to stop: the rules early stopping and checkpoint
selection share (split from :mod:`models.training`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

WATCHED_METRICS = ("val_loss", "val_accuracy")
"""Metrics early stopping and checkpoint selection may watch: lower val_loss is better,
higher val_accuracy is better."""


def improves(metric: str, value: float, best: float, min_delta: float = 0.0) -> bool:
    """Whether ``value`` of ``metric`` beats ``best`` by more than ``min_delta``."""
    if metric == "val_loss":
        return value < best - min_delta
    return value > best + min_delta


def best_epoch(history: Sequence[Any], metric: str = "val_loss") -> int | None:
    """The epoch with the best ``metric`` (the earliest on ties); None for no history.
    NaN values never win. ``history``: ``models.training.EpochMetrics`` in epoch order."""
    best: Any = None
    for h in history:
        value = getattr(h, metric)
        if math.isnan(value):
            continue
        if best is None or improves(metric, value, getattr(best, metric)):
            best = h
    return best.epoch if best is not None else None


@dataclass(frozen=True)
class EarlyStopping:
    """Stop when ``metric`` has not improved by more than ``min_delta`` for ``patience``
    epochs in a row (the rule of Keras' and Lightning's ``EarlyStopping``).

    Attributes:
        patience: epochs without improvement tolerated, >= 1.
        min_delta: smallest change that counts as an improvement (nats for val_loss,
            fraction for val_accuracy), >= 0.
        metric: ``val_loss`` (lower is better) or ``val_accuracy`` (higher is better).
    """

    patience: int
    min_delta: float = 0.0
    metric: str = "val_loss"

    def __post_init__(self) -> None:
        if self.patience < 1 or self.min_delta < 0 or self.metric not in WATCHED_METRICS:
            raise ValueError(f"patience >= 1, min_delta >= 0, metric in {WATCHED_METRICS}")

    def reason(self, history: Sequence[Any]) -> str | None:
        """Why to stop after the last epoch of ``history``, or None to go on. Depends on
        the history alone, so a resumed run decides as the first would have."""
        best, since = None, 0
        for h in history:
            value = getattr(h, self.metric)
            if math.isnan(value):
                since += 1
            elif best is None or improves(self.metric, value, best, self.min_delta):
                best, since = value, 0
            else:
                since += 1
        if since < self.patience:
            return None
        return (
            f"early stop at epoch {history[-1].epoch}: {self.metric} has not improved by "
            f"{self.min_delta:g} for {since} epochs"
        )
