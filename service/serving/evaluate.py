"""Test-set accuracy of a model (optionally with an adapter) as served: ``POST /evaluate``.

Runs on the predictor's thread through :class:`~service.serving.executor.BatchExecutor`:
the same record checks, the same caches and the same forward pass as ``/predict``, over
the official MNIST test images of the chosen digits. Used by ``lora-service compare`` to
measure what a model as served still knows (the base's 0-4 accuracy, which LoRA leaves
untouched, against what full fine-tuning forgot).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from service.core.errors import ApiError
from service.core.settings import Settings
from service.serving.executor import BatchExecutor, BatchItem, Resolved

EVAL_BATCH = 4096  # test images per forward pass


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


def evaluate(
    executor: BatchExecutor,
    settings: Settings,
    *,
    model_id: str,
    adapter_id: str | None,
    test_digits: list[int] | None,
    classes: list[int] | None,
) -> Evaluation:
    """Accuracy of ``model_id`` (+ ``adapter_id``) on the MNIST test images of
    ``test_digits`` (default: the served classes), reading head output ``i`` as
    ``classes[i]`` (default: the record's classes, the adapter's when one is used).

    Raises:
        ApiError: 404 ``model_not_found`` / ``adapter_not_found``; 409
            ``adapter_model_mismatch``; 422 ``validation_error`` (``classes`` of the wrong
            length); 503 ``artifact_unavailable`` or ``data_unavailable``.
    """
    (resolved,) = executor.resolve([BatchItem(torch.empty(0, 784), model_id, adapter_id)])
    if isinstance(resolved, ApiError):
        raise resolved
    head = _read_as(resolved, classes)
    digits = test_digits or list(resolved.classes)
    try:
        images, labels = mnist_test_set(str(settings.data_dir), settings.mnist_download)
    except (FileNotFoundError, RuntimeError) as exc:
        raise ApiError(503, "data_unavailable", f"MNIST test set unavailable: {exc}") from exc
    mask = torch.isin(labels, torch.tensor(digits))
    x, y = images[mask], labels[mask]
    base = executor.model(resolved)
    adapter = executor.adapter(resolved, base)
    weights = adapter.weights if adapter is not None else None
    top = [
        executor.forward(base, chunk, [weights] * len(chunk)).argmax(dim=1)
        for chunk in x.split(EVAL_BATCH)
    ]
    predicted = torch.tensor(head)[torch.cat(top)] if top else torch.zeros(0, dtype=torch.int64)
    wrong = predicted != y
    return Evaluation(
        model_id=resolved.model_id,
        adapter_id=adapter_id,
        test_digits=digits,
        classes=head,
        n_samples=int(len(y)),
        accuracy=float(1.0 - wrong.float().mean()) if len(y) else 0.0,
        per_digit_errors={str(d): int(wrong[y == d].sum()) for d in digits},
    )
