"""Evaluation passes: loss and accuracy over a split, errors per digit, and the accuracy on
the base model's digits "as served" (forgetting); split from :mod:`models.training`."""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from models.data import DigitSplits

EVAL_BATCH_SIZE = 8192
"""Samples per forward pass of an evaluation (memory, not results, depends on it)."""


@torch.inference_mode()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE
) -> tuple[float, float, torch.Tensor]:
    """Eval-mode pass over ``x`` (N, 784) / ``y`` (N,); restores the previous mode.

    Returns:
        (mean cross-entropy, accuracy in [0, 1], predicted head indices int64 (N,) on CPU).
        Loss and accuracy are NaN for an empty split.
    """
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=x.device, dtype=torch.float64)
    preds = []
    for start in range(0, x.shape[0], batch_size):
        logits = model(x[start : start + batch_size])
        loss_sum += F.cross_entropy(logits, y[start : start + batch_size], reduction="sum").double()
        preds.append(logits.argmax(dim=1))
    model.train(was_training)
    n = x.shape[0]
    if n == 0:
        return float("nan"), float("nan"), torch.zeros(0, dtype=torch.int64)
    pred = torch.cat(preds)
    accuracy = (pred == y).double().mean().item()
    return loss_sum.item() / n, accuracy, pred.cpu()


def per_digit_errors(
    classes: tuple[int, ...], pred: torch.Tensor, target: torch.Tensor
) -> dict[int, int]:
    """Misclassified samples per true digit (every digit of ``classes`` present, maybe 0)."""
    wrong = target.cpu()[pred.cpu() != target.cpu()]
    counts = torch.bincount(wrong, minlength=len(classes))
    return {digit: int(counts[i]) for i, digit in enumerate(classes)}


def test_figures(model: nn.Module, splits: DigitSplits) -> tuple[float, float, dict[int, int]]:
    """(mean test cross-entropy in nats, test accuracy in [0, 1], errors per digit) of
    ``model`` on ``splits``' test split (on the device the split is on)."""
    test_loss, test_accuracy, pred = evaluate(model, splits.test_x, splits.test_y)
    return test_loss, test_accuracy, per_digit_errors(splits.classes, pred, splits.test_y)


def base_digits_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy (in [0, 1]) on the base model's digits "as served": the one definition of
    what a fine-tune forgot, used per epoch by the worker and, on the test split, by the
    comparison (``POST /evaluate``) and sweeps.

    * A plain MLP (a full fine-tune): the network itself, its head read through the base's
      classes (output ``i`` = the base's ``classes[i]``), as the seed notebook measures it.
    * A LoRA-injected MLP: the base with the adapter switched off (what serving the base
      model alone answers); unchanged by training, by construction.

    Args:
        x: (N, 784) normalised images of the base's digits; y: (N,) indices into the
            base's classes.
    """
    from models.lora import disable_adapters, lora_layers

    with disable_adapters(model) if lora_layers(model) else nullcontext():
        return evaluate(model, x, y)[1]
