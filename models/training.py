"""One training loop for pre-training, full fine-tuning and LoRA fine-tuning.

The loop trains whatever parameters have ``requires_grad`` (everything for pre-training
and full fine-tuning; only ``lora_A``/``lora_B`` after ``inject_lora``) with Adam. Splits
are preloaded tensors on the training device, batched by index from a ``torch.randperm``
drawn from a seeded ``torch.Generator``: no DataLoader, no per-sample work. The loss is
accumulated on the device so a step never waits for the host. Evaluation runs under
``torch.inference_mode`` in large batches. On CPU a given seed gives bit-identical
results, also across a checkpoint/resume.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.checkpoint import load_training_state, read_training_meta, save_training_state
from models.data import DigitSplits
from models.early_stopping import EarlyStopping
from models.evaluation import evaluate, test_figures
from models.precision import PRECISIONS, resolve_precision, torch_dtype

LR_SCHEDULES = ("constant", "cosine")


@dataclass(kw_only=True)
class TrainConfig:
    """Optimisation settings.

    The service builds this from its job spec (``service.core.job_spec``), which holds the
    job defaults; the defaults here are the seed notebook's pre-training values and a test
    keeps them equal to the spec's. ``lr_schedule`` has no default: the spec's (cosine)
    and round one's loop (constant) differ, so every caller says which it wants.

    Attributes:
        epochs: passes over the train split, >= 0.
        lr: Adam learning rate, > 0.
        weight_decay: Adam (L2) weight decay, >= 0.
        batch_size: samples per step, >= 1 (the last batch of an epoch may be smaller).
        seed: seeds parameter-independent randomness: shuffling and dropout.
        lr_schedule: ``"constant"`` (``lr`` throughout) or ``"cosine"``: epoch ``e``
            (1-based) of ``E`` runs at ``lr * (1 + cos(pi * (e - 1) / E)) / 2``, the
            per-epoch form of SGDR's cosine annealing (Loshchilov & Hutter 2017, eq. 5,
            one cycle, eta_min = 0). Derived from the epoch number alone, so a resumed run
            follows the same schedule.
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"`` (:mod:`models.precision`, resolved
            by :func:`train` for its device): in bf16 the forward (and so the backward)
            matmuls run under ``torch.autocast`` in bfloat16, while master weights, Adam's
            state, the loss and evaluation stay float32.
    """

    epochs: int = 30
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 128
    seed: int = 0
    lr_schedule: str
    precision: str = "fp32"

    def epoch_lr(self, epoch: int) -> float:
        """Learning rate of 1-based ``epoch`` under ``lr_schedule``."""
        if self.lr_schedule == "constant":
            return self.lr
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / self.epochs))

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1:
            raise ValueError("epochs must be >= 0 and batch_size >= 1")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ValueError("lr must be > 0 and weight_decay >= 0")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}")


@dataclass
class EpochMetrics:
    """Figures for one finished epoch (1-based ``epoch``).

    ``train_loss``/``val_loss``: mean cross-entropy (nats); ``val_accuracy`` in [0, 1];
    ``epoch_seconds``: wall time of the epoch including validation; ``samples_per_second``:
    train samples / epoch_seconds.
    """

    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    epoch_seconds: float
    samples_per_second: float

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready)."""
        return asdict(self)


@dataclass
class TrainResult:
    """Outcome of :func:`train`. Test fields are None when the run was cancelled.

    ``per_digit_errors`` maps each digit (not head index) to its misclassified test
    samples; ``train_seconds`` is the wall time of this call.
    """

    epochs_completed: int
    cancelled: bool
    test_accuracy: float | None
    test_loss: float | None
    per_digit_errors: dict[int, int] | None
    history: list[EpochMetrics] = field(default_factory=list)
    train_seconds: float = 0.0
    stopped_early: str | None = None
    """Why training ended before ``config.epochs`` (early stopping), if it did."""
    precision: str = "fp32"
    """The precision the matmuls ran in (``config.precision`` resolved: fp32 or bf16)."""


def pick_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Adam:
    """Adam over the parameters that require grad.

    Uses the fused implementation (one pass over each parameter instead of a dozen; on
    CPU it cut the step time of the full MLP by roughly 30 ms) when every parameter is a
    float32 tensor on CPU or CUDA; same update rule as the default implementation.

    Raises:
        ValueError: nothing to train.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    fused = all(p.dtype == torch.float32 and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused)


def train_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    precision: str = "fp32",
) -> Iterator[tuple[torch.Tensor, int]]:
    """One shuffled pass over ``x`` (N, 784) / ``y`` (N,), one optimizer step per item.

    ``precision`` (resolved: fp32 or bf16): in bf16 the forward runs under
    ``torch.autocast`` (matmuls in bfloat16, their backward too); the logits are cast back
    so the loss, the gradients reaching the fp32 master weights and Adam stay float32.

    The order is ``torch.randperm(N, generator=generator)`` (drawn on CPU, then moved to
    the data's device); batches are index gathers from the preloaded tensors. After each
    step it yields ``(loss_sum, seen)``: the summed cross-entropy (nats) of the samples so
    far as a 0-dim tensor on the device (no host sync) and their count. Callers decide
    between steps whether to continue (cancellation, interleaved benchmarking).
    """
    model.train()
    n = x.shape[0]
    perm = torch.randperm(n, generator=generator).to(x.device, non_blocking=True)
    total = torch.zeros((), device=x.device)
    seen = 0
    bf16 = precision == "bf16"
    for start in range(0, n, batch_size):
        idx = perm[start : start + batch_size]
        if bf16:
            with torch.autocast(x.device.type, dtype=torch_dtype(precision)):
                logits = model(x[idx])
            loss = F.cross_entropy(logits.float(), y[idx])
        else:
            loss = F.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach() * idx.shape[0]
        seen += idx.shape[0]
        yield total, seen


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    should_stop: Callable[[], bool] | None = None,
    precision: str = "fp32",
) -> tuple[float, bool]:
    """Run :func:`train_steps` (in ``precision``, resolved) to the end of the epoch,
    polling ``should_stop`` before each step.

    Returns:
        (mean train loss over the samples seen, stopped early). NaN if no step ran.
    """
    total, seen = torch.zeros(()), 0
    steps = train_steps(model, optimizer, x, y, batch_size, generator, precision)
    for _ in range(math.ceil(x.shape[0] / batch_size)):
        if should_stop is not None and should_stop():
            return (total.item() / seen if seen else float("nan")), True
        total, seen = next(steps)
    return (total.item() / seen if seen else float("nan")), False


def train(
    model: nn.Module,
    splits: DigitSplits,
    config: TrainConfig,
    *,
    on_epoch: Callable[[EpochMetrics], bool | None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoint_path: str | Path | None = None,
    device: torch.device | str | None = None,
    early_stopping: EarlyStopping | None = None,
) -> TrainResult:
    """Train every parameter of ``model`` that requires grad with Adam, then test.

    ``model`` is moved to ``device`` (default :func:`pick_device`) and trained in place.
    Seeds the global torch RNG with ``config.seed`` (dropout) unless resuming.

    Args:
        model: an MLP, possibly with LoRA injected (then only the adapter trains).
        splits: preloaded data; labels index ``splits.classes``.
        config: optimisation settings.
        on_epoch: called after each finished epoch (after its checkpoint is written);
            returning True stops the run as cancelled.
        should_stop: polled before every step; True cancels the run (the checkpoint keeps
            the last finished epoch).
        checkpoint_path: resume from this file when it exists; rewritten atomically after
            every epoch. History of earlier epochs is restored from it.
        device: where to train.
        early_stopping: end the run (not cancelled: it is tested) once its rule says so,
            checked after each epoch's ``on_epoch``; the reason is ``stopped_early``.

    Returns:
        A :class:`TrainResult` of the last epoch's weights; test fields are None when
        cancelled.

    Raises:
        ValueError: no trainable parameters or an empty train split.
        CheckpointError: ``checkpoint_path`` exists but does not fit this model/optimizer.
    """
    started = time.perf_counter()
    device = torch.device(device) if device is not None else pick_device()
    if splits.train_x.shape[0] == 0:
        raise ValueError("empty train split")
    model.to(device)
    data = splits.to(device)
    precision = resolve_precision(config.precision, device)
    optimizer = make_optimizer(model, config)
    shuffle = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)

    history: list[EpochMetrics] = []
    start_epoch = 0
    if checkpoint_path is not None:
        resumed = load_training_state(
            checkpoint_path, model, optimizer, generators={"shuffle": shuffle}
        )
        if resumed is not None:
            start_epoch = resumed
            meta = read_training_meta(checkpoint_path) or {}
            history = [EpochMetrics(**h) for h in meta.get("extra", {}).get("history", [])]

    n_train = data.train_x.shape[0]
    cancelled = False
    stopped_early = None
    if early_stopping is not None and history and history[-1].epoch < config.epochs:
        stopped_early = early_stopping.reason(history)  # a resumed run that had stopped
    for epoch in range(start_epoch + 1, config.epochs + 1):
        if stopped_early:
            break
        t0 = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = config.epoch_lr(epoch)
        train_loss, stopped = train_one_epoch(
            model,
            optimizer,
            data.train_x,
            data.train_y,
            config.batch_size,
            shuffle,
            should_stop,
            precision,
        )
        if stopped:
            cancelled = True
            break
        val_loss, val_accuracy, _ = evaluate(model, data.val_x, data.val_y)
        seconds = time.perf_counter() - t0
        metrics = EpochMetrics(
            epoch, train_loss, val_loss, val_accuracy, seconds, n_train / seconds
        )
        history.append(metrics)
        if checkpoint_path is not None:
            save_training_state(
                checkpoint_path,
                model,
                optimizer,
                epoch,
                extra={"history": [h.as_dict() for h in history], "train_config": asdict(config)},
                generators={"shuffle": shuffle},
            )
        if on_epoch is not None and on_epoch(metrics):
            cancelled = True
            break
        if early_stopping is not None and epoch < config.epochs:
            stopped_early = early_stopping.reason(history)

    epochs_completed = history[-1].epoch if history else start_epoch
    if cancelled:
        return TrainResult(
            epochs_completed,
            True,
            None,
            None,
            None,
            history,
            time.perf_counter() - started,
            precision=precision,
        )
    test_loss, test_accuracy, errors = test_figures(model, data)
    return TrainResult(
        epochs_completed=epochs_completed,
        cancelled=False,
        test_accuracy=test_accuracy,
        test_loss=test_loss,
        per_digit_errors=errors,
        history=history,
        train_seconds=time.perf_counter() - started,
        stopped_early=stopped_early,
        precision=precision,
    )
