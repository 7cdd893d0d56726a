"""Test-set accuracy of a model (optionally with an adapter) as served: ``POST /evaluate``.

The same record checks, caches and forward pass as ``/predict``
(:class:`~service.serving.executor.BatchExecutor`), over the official MNIST test images of
the chosen digits. :meth:`service.serving.predictor.Predictor.evaluate` runs it: the plan
(records, loading) and each chunk of :data:`EVAL_BATCH` images as separate tasks on the
predictor's thread, so micro-batches of ``/predict`` run in between; reading the test set
and counting happen off that thread. Used by ``lora-service compare`` to
measure what a model as served still knows (the base's 0-4 accuracy, which LoRA leaves
untouched, against what full fine-tuning forgot).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from models.lora import AdapterWeights
from service.core.errors import ApiError
from service.core.settings import Settings
from service.serving.batch import BatchItem, LoadedModel, Resolved
from service.serving.executor import BatchExecutor

EVAL_BATCH = 1024  # test images per forward pass (one task on the predictor's thread)
_NO_IMAGES = torch.empty(0, 784)


@dataclass(frozen=True)
class Evaluation:
    """Accuracy (fraction in [0, 1]) on ``n_samples`` test images, and errors per digit.

    ``classes`` is how head output ``i`` was read (digit ``classes[i]``), ``test_digits``
    which test images were used.
    """

    model_id: str
    adapter_id: str | None
    test_digits: list[int]
    classes: list[int]
    n_samples: int
    accuracy: float
    per_digit_errors: dict[str, int]


@lru_cache(maxsize=2)
def mnist_test_set(data_dir: str, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The official test set: normalised (10000, 784) float32 images and (10000,) digits.

    Raises:
        FileNotFoundError / RuntimeError: the files are missing (and not downloaded).
    """
    from torchvision.datasets import MNIST

    from models.data import normalize_images

    ds = MNIST(root=data_dir, train=False, download=download)
    return normalize_images(ds.data), ds.targets.clone()


def _read_as(resolved: Resolved, classes: list[int] | None) -> list[int]:
    served = list(resolved.classes)
    if classes is None:
        return served
    if len(classes) != len(served):
        raise ApiError(
            422,
            "validation_error",
            f"classes must have {len(served)} digits (the head's size).",
            "classes",
        )
    return classes


@dataclass(frozen=True)
class EvaluationPlan:
    """A resolved and loaded evaluation: what :func:`predict_chunk` runs and
    :func:`score` counts. ``test_digits`` defaults to the served classes."""

    resolved: Resolved
    base: LoadedModel
    weights: AdapterWeights | None
    test_digits: list[int]
    classes: list[int]


def plan_evaluation(
    executor: BatchExecutor,
    *,
    model_id: str,
    adapter_id: str | None,
    test_digits: list[int] | None,
    classes: list[int] | None,
) -> EvaluationPlan:
    """Resolve the records (the model first, as ``/evaluate`` names it) and load them
    through the serving caches. Runs on the predictor's thread.

    Raises:
        ApiError: 404 ``model_not_found`` / ``adapter_not_found``; 409
            ``adapter_model_mismatch``; 422 ``validation_error`` (``classes`` of the wrong
            length); 503 ``artifact_unavailable``.
    """
    probes = [BatchItem(_NO_IMAGES, model_id, None)]
    if adapter_id is not None:
        probes.append(BatchItem(_NO_IMAGES, model_id, adapter_id))
    *_, resolved = outcomes = executor.resolve(probes)
    for outcome in outcomes:
        if isinstance(outcome, ApiError):
            raise outcome
    head = _read_as(resolved, classes)
    base = executor.model(resolved)
    adapter = executor.adapter(resolved, base)
    return EvaluationPlan(
        resolved=resolved,
        base=base,
        weights=adapter.weights if adapter is not None else None,
        test_digits=test_digits or list(resolved.classes),
        classes=head,
    )


def predict_chunk(plan: EvaluationPlan, x: torch.Tensor) -> torch.Tensor:
    """Head indices int64 (n,) for test images ``x`` (n, 784) through the served forward."""
    return BatchExecutor.forward(plan.base, x, [plan.weights] * len(x)).argmax(dim=1)


def mnist_test_images(settings: Settings, digits: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalised test images (n, 784) of ``digits`` and their digits (n,).

    Raises:
        ApiError: 503 ``data_unavailable`` when MNIST cannot be read.
    """
    try:
        images, labels = mnist_test_set(str(settings.data_dir), settings.mnist_download)
    except (FileNotFoundError, RuntimeError) as exc:
        raise ApiError(503, "data_unavailable", f"MNIST test set unavailable: {exc}") from exc
    mask = torch.isin(labels, torch.tensor(digits))
    return images[mask], labels[mask]


def score(plan: EvaluationPlan, predicted: torch.Tensor, y: torch.Tensor) -> Evaluation:
    """Accuracy and errors per digit of head indices ``predicted`` (n,) against digits ``y``."""
    digits = torch.tensor(plan.classes)[predicted] if len(predicted) else predicted
    wrong = digits != y
    return Evaluation(
        model_id=plan.resolved.model_id,
        adapter_id=plan.resolved.adapter[0] if plan.resolved.adapter else None,
        test_digits=plan.test_digits,
        classes=plan.classes,
        n_samples=int(len(y)),
        accuracy=float(1.0 - wrong.float().mean()) if len(y) else 0.0,
        per_digit_errors={str(d): int(wrong[y == d].sum()) for d in plan.test_digits},
    )
