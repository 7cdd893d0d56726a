"""The seed notebook's MNIST classifier: a three-layer MLP with dropout.

``linear1`` Linear(784, 1000) -> ReLU -> Dropout(0.5) -> ``linear2`` Linear(1000, 2000)
-> ReLU -> Dropout(0.5) -> ``linear3`` Linear(2000, n_classes). Output index ``i`` of the
head means ``classes[i]`` of the data split the model was trained on; the model itself
does not know which digits those are (the checkpoint sidecar records them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

LINEAR_NAMES: tuple[str, ...] = ("linear1", "linear2", "linear3")


@dataclass(frozen=True)
class MLPConfig:
    """Architecture of :class:`MLP`; everything a checkpoint needs to rebuild it.

    Attributes:
        in_features: flattened input size (784 for 28x28 MNIST).
        hidden1: width of ``linear1``'s output.
        hidden2: width of ``linear2``'s output.
        n_classes: number of output logits (one per digit the head knows).
        dropout: dropout probability after each hidden ReLU, in [0, 1).
    """

    in_features: int = 784
    hidden1: int = 1000
    hidden2: int = 2000
    n_classes: int = 5
    dropout: float = 0.5

    def __post_init__(self) -> None:
        for name in ("in_features", "hidden1", "hidden2", "n_classes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"MLPConfig.{name} must be a positive int, got {value!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)):
            raise ValueError(f"MLPConfig.dropout must be a float, got {self.dropout!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"MLPConfig.dropout must be in [0, 1), got {self.dropout!r}")

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of the fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MLPConfig:
        """Build a config from :meth:`to_dict` output.

        Raises:
            ValueError: ``d`` is not a dict, has unknown keys, or holds bad values.
        """
        if not isinstance(d, dict):
            raise ValueError(f"MLPConfig must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown MLPConfig keys: {sorted(unknown)}")
        try:
            return cls(**d)
        except TypeError as exc:  # pragma: no cover - guarded by the key check above
            raise ValueError(str(exc)) from exc


def _bit_masks(dtype: torch.dtype) -> torch.Tensor:
    """(256, 8) table: row ``b`` holds bit ``k`` of byte ``b`` in column ``k``, times 2.

    Indexing it with random bytes turns one byte into the inverted-dropout scales (0 or
    ``1 / (1 - 0.5)``) of eight elements at once.
    """
    table = _BIT_MASKS.get(dtype)
    if table is None:
        bits = torch.arange(256).unsqueeze(1).bitwise_right_shift(torch.arange(8)) & 1
        table = _BIT_MASKS[dtype] = (bits * 2).to(dtype)
    return table


_BIT_MASKS: dict[torch.dtype, torch.Tensor] = {}


class Dropout(nn.Module):
    """Inverted dropout, as ``nn.Dropout``: in training, zero each element with probability
    ``p`` and scale the rest by ``1 / (1 - p)``; identity in eval mode.

    On CPU, for ``p = 0.5`` (the seed notebook's rate) each element's keep decision is one
    bit of a random 64-bit word: ``torch.Tensor.random_`` fills ``ceil(n / 64)`` words, a
    256 x 8 table turns each byte into eight scales. That draws 64x fewer random numbers
    than ``torch.rand_like``, which CPU torch generates one at a time on one core: for a
    128 x 2000 batch on 2 threads, 0.26 ms instead of 2.4 ms (``bernoulli_``: 6.7 ms), and a
    pre-training step of the 784-1000-2000-5 MLP went from 28.4 to 24.9 ms (issue 16). Each
    bit is an exact fair coin, so the distribution is the same as ``nn.Dropout``'s. Other
    rates use ``torch.rand_like(x) >= p``. On CUDA it calls the fused ``F.dropout`` kernel.
    Different random streams from ``nn.Dropout``; deterministic under ``torch.manual_seed``.
    Input and output shapes are equal.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p!r}")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        if self.p == 0.5:
            n = x.numel()
            words = torch.empty((n + 63) // 64, dtype=torch.int64).random_(-(2**63), None)
            scales = _bit_masks(x.dtype).index_select(0, words.view(torch.uint8).int())
            return x * scales.view(-1)[:n].view_as(x)
        mask = torch.rand_like(x).ge_(self.p).mul_(1.0 / (1.0 - self.p))
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


class MLP(nn.Module):
    """Three-layer perceptron from the seed notebook.

    Args:
        config: architecture; defaults give 2,797,005 parameters with 5 classes.
    """

    def __init__(self, config: MLPConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else MLPConfig()
        c = self.config
        self.linear1 = nn.Linear(c.in_features, c.hidden1)
        self.linear2 = nn.Linear(c.hidden1, c.hidden2)
        self.linear3 = nn.Linear(c.hidden2, c.n_classes)
        self.relu = nn.ReLU()
        self.dropout = Dropout(c.dropout)

    def set_dropout(self, p: float) -> None:
        """Train with dropout probability ``p`` on the hidden layers from now on.

        For fine-tuning with another rate than pre-training (LoRA fine-tunes default to 0:
        the frozen base then sees clean activations). The architecture ``config``, which
        checkpoints record, is unchanged; dropout is inactive in eval mode either way.

        Raises:
            ValueError: ``p`` outside [0, 1).
        """
        self.dropout = Dropout(p)

    def forward(self, x: torch.Tensor, adapters: Any = None) -> torch.Tensor:
        """Map images to logits. The one place that knows the layer order.

        Args:
            x: float32 (B, 784) normalised pixels, or (B, 1, 28, 28) which is flattened.
            adapters: per-sample LoRA adapters (``models.multi_lora.AdapterBatch``), handed
                to every linear layer; those must then be ``MultiLoraLinear``
                (``models.multi_lora.enable_multi_lora``). None: the layers as they are
                (plain, or ``LoraLinear`` while training an adapter).

        Returns:
            float32 logits (B, n_classes).
        """
        kw = {} if adapters is None else {"adapters": adapters}
        x = x.reshape(x.shape[0], -1)
        x = self.dropout(self.relu(self.linear1(x, **kw)))
        x = self.dropout(self.relu(self.linear2(x, **kw)))
        return self.linear3(x, **kw)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters in ``module`` (only ``requires_grad`` ones if asked)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def linear_shapes(config: MLPConfig) -> dict[str, tuple[int, int]]:
    """``(in_features, out_features)`` of each of ``LINEAR_NAMES`` for ``config``."""
    return {
        "linear1": (config.in_features, config.hidden1),
        "linear2": (config.hidden1, config.hidden2),
        "linear3": (config.hidden2, config.n_classes),
    }
