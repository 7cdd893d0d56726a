"""LoRA for the MLP's linear layers (Hu et al. 2021, "LoRA", eq. 3).

A wrapped layer computes ``h = W0 x + b + scaling * B (A x)`` with the pretrained ``W0``
frozen, ``A`` (r x in) Kaiming-uniform with a = sqrt(5) and ``B`` (out x r) zeros, so a
fresh adapter changes nothing. ``scaling = lora_alpha / r``, or ``lora_alpha / sqrt(r)``
with rank-stabilised LoRA (Kalajdzievski 2023, "A Rank Stabilization Scaling Factor for
Fine-Tuning with LoRA"). Names follow huggingface/peft (``base_layer``, ``lora_A``,
``lora_B``, ``merge``/``unmerge``) so adapters round-trip through its file layout
(see ``adapter_io``). Serving several adapters in one batch, each sample its own, is
:mod:`models.multi_lora`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from models.classifier import LINEAR_NAMES, MLP, Dropout

# adapter_config.json keys that change what the weights mean; we only support their
# "off" value (None / False / empty), so an adapter using any of them is rejected.
_UNSUPPORTED_WHEN_SET = (
    "modules_to_save",
    "layers_to_transform",
    "layers_pattern",
    "rank_pattern",
    "alpha_pattern",
    "use_dora",
    "fan_in_fan_out",
    "layer_replication",
    "lora_bias",
    "target_parameters",
    "trainable_token_indices",
    "exclude_modules",
)


@dataclass
class LoraConfig:
    """Hyper-parameters of one LoRA adapter.

    Attributes:
        r: rank of the update, >= 1.
        lora_alpha: numerator of the scaling factor, > 0.
        target_modules: which of ``LINEAR_NAMES`` get an adapter (kept in that order).
        lora_dropout: dropout probability on the adapter's input during training, [0, 1).
        use_rslora: scale by ``lora_alpha / sqrt(r)`` instead of ``lora_alpha / r``.

    Raises:
        ValueError: on any bad value (checked at construction).
    """

    r: int = 8
    lora_alpha: float = 16.0
    target_modules: tuple[str, ...] = field(default=LINEAR_NAMES)
    lora_dropout: float = 0.0
    use_rslora: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"r must be a positive int, got {self.r!r}")
        alpha = self.lora_alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
            raise ValueError(f"lora_alpha must be a positive number, got {alpha!r}")
        if not math.isfinite(alpha):
            raise ValueError(f"lora_alpha must be finite, got {alpha!r}")
        self.lora_alpha = float(alpha)
        drop = self.lora_dropout
        if isinstance(drop, bool) or not isinstance(drop, (int, float)) or not 0.0 <= drop < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {drop!r}")
        self.lora_dropout = float(drop)
        if not isinstance(self.use_rslora, bool):
            raise ValueError(f"use_rslora must be a bool, got {self.use_rslora!r}")
        targets = self.target_modules
        if isinstance(targets, str) or not isinstance(targets, (list, tuple, set, frozenset)):
            raise ValueError(f"target_modules must be a list of names, got {targets!r}")
        unknown = [t for t in targets if t not in LINEAR_NAMES]
        if unknown or not targets:
            raise ValueError(
                f"target_modules must be a non-empty subset of {list(LINEAR_NAMES)}, "
                f"got {list(targets)!r}"
            )
        self.target_modules = tuple(name for name in LINEAR_NAMES if name in set(targets))

    @property
    def scaling(self) -> float:
        """``lora_alpha / r`` (Hu et al. 2021) or ``lora_alpha / sqrt(r)`` (rsLoRA)."""
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def to_peft_dict(self, base_model_name_or_path: str | None = None) -> dict[str, Any]:
        """Content of ``adapter_config.json`` as ``peft.LoraConfig.from_pretrained`` reads it."""
        alpha: float | int = (
            int(self.lora_alpha) if self.lora_alpha.is_integer() else self.lora_alpha
        )
        return {
            "peft_type": "LORA",
            "task_type": None,
            "base_model_name_or_path": base_model_name_or_path,
            "revision": None,
            "inference_mode": True,
            "r": self.r,
            "lora_alpha": alpha,
            "lora_dropout": self.lora_dropout,
            "target_modules": list(self.target_modules),
            "use_rslora": self.use_rslora,
            "bias": "none",
            "fan_in_fan_out": False,
            "init_lora_weights": True,
            "modules_to_save": None,
            "layers_to_transform": None,
            "layers_pattern": None,
            "rank_pattern": {},
            "alpha_pattern": {},
            "use_dora": False,
        }

    @classmethod
    def from_peft_dict(cls, d: Mapping[str, Any]) -> LoraConfig:
        """Parse ``adapter_config.json`` content (ours or one peft wrote).

        Unknown extra keys are ignored (peft adds new ones over time); keys whose non-default
        value would change the meaning of the weights must be unset.

        Raises:
            ValueError: not a LoRA config, ``bias`` other than "none", a non-null
                ``task_type``, ``modules_to_save`` or similar set, unknown target modules, or
                bad ``r`` / ``lora_alpha`` / ``lora_dropout`` / ``use_rslora`` values.
        """
        if not isinstance(d, Mapping):
            raise ValueError("adapter config must be a JSON object")
        if d.get("peft_type") != "LORA":
            raise ValueError(f"peft_type must be 'LORA', got {d.get('peft_type')!r}")
        if d.get("bias", "none") != "none":
            raise ValueError(f"bias must be 'none', got {d.get('bias')!r}")
        if d.get("task_type") is not None:
            raise ValueError(
                f"task_type must be null for this classifier, got {d.get('task_type')!r}"
            )
        for key in _UNSUPPORTED_WHEN_SET:
            if d.get(key):
                raise ValueError(f"unsupported adapter option {key}={d[key]!r}")
        for key in ("r", "lora_alpha", "target_modules"):
            if key not in d:
                raise ValueError(f"adapter config lacks {key!r}")
        targets = d["target_modules"]
        if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
            raise ValueError(f"target_modules must be a list of module names, got {targets!r}")
        if len(set(targets)) != len(targets):
            raise ValueError(f"target_modules has duplicates: {targets!r}")
        dropout = d.get("lora_dropout", 0.0)
        return cls(
            r=d["r"],
            lora_alpha=d["lora_alpha"],
            target_modules=tuple(targets),
            lora_dropout=0.0 if dropout is None else dropout,
            use_rslora=d.get("use_rslora", False),
        )


class LoraLinear(nn.Module):
    """``nn.Linear`` plus a low-rank update (Hu et al. 2021, eq. 3).

    ``forward(x)``: x (..., in_features) -> (..., out_features) =
    ``base_layer(x) + scaling * lora_B(lora_A(dropout(x)))`` (just ``base_layer(x)`` once
    merged). The base layer's parameters are frozen; only ``lora_A`` / ``lora_B`` train.

    Args:
        base_layer: the pretrained layer; kept (not copied) as ``self.base_layer``.
        r, lora_alpha, lora_dropout, use_rslora: as in :class:`LoraConfig`.
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        r: int,
        lora_alpha: float,
        lora_dropout: float = 0.0,
        use_rslora: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"LoraLinear wraps nn.Linear, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.r = r
        self.lora_alpha = lora_alpha
        self.use_rslora = use_rslora
        self.scaling = lora_alpha / (math.sqrt(r) if use_rslora else r)
        w = base_layer.weight
        self.lora_A = nn.Linear(
            base_layer.in_features, r, bias=False, device=w.device, dtype=w.dtype
        )
        self.lora_B = nn.Linear(
            r, base_layer.out_features, bias=False, device=w.device, dtype=w.dtype
        )
        self.lora_dropout: nn.Module = Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        self.merged = False
        self.disabled = False  # see disable_adapters
        for p in self.base_layer.parameters():
            p.requires_grad_(False)
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        """A: Kaiming-uniform with a = sqrt(5) (as peft and nn.Linear); B: zeros."""
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def delta_weight(self) -> torch.Tensor:
        """The update ``scaling * B @ A``, shape (out_features, in_features)."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update into ``base_layer.weight`` in place (no-op when merged)."""
        if not self.merged:
            self.base_layer.weight.add_(self.delta_weight())
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the update from ``base_layer.weight`` again (no-op when not merged)."""
        if self.merged:
            self.base_layer.weight.sub_(self.delta_weight())
            self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.merged or self.disabled:
            return out
        h = self.lora_A(self.lora_dropout(x))
        if out.dim() == 2:  # one fused out + scaling * h @ B^T
            return torch.addmm(out, h, self.lora_B.weight.t(), alpha=self.scaling)
        return out + self.lora_B(h) * self.scaling


def lora_layers(model: nn.Module) -> dict[str, LoraLinear]:
    """The model's LoRA-wrapped linears by attribute name (empty for a plain MLP)."""
    return {
        name: m for name in LINEAR_NAMES if isinstance(m := getattr(model, name, None), LoraLinear)
    }


@contextmanager
def disable_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``model``'s LoRA layers compute ``base_layer(x)`` alone: the base
    as it is served without the adapter (peft's ``disable_adapter()``). Not for merged
    layers (their base weight holds the update).

    Raises:
        ValueError: a layer is merged.
    """
    layers = list(lora_layers(model).values())
    if any(layer.merged for layer in layers):
        raise ValueError("cannot disable merged LoRA layers; unmerge first")
    for layer in layers:
        layer.disabled = True
    try:
        yield model
    finally:
        for layer in layers:
            layer.disabled = False


def inject_lora(model: MLP, config: LoraConfig) -> MLP:
    """Wrap ``config.target_modules`` of ``model`` in :class:`LoraLinear`, in place.

    Every parameter that is not a LoRA parameter is frozen (``requires_grad=False``), so
    training computes no gradient for the base weights.

    Returns:
        ``model`` itself.

    Raises:
        ValueError: a target is missing or already wrapped.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    for name in config.target_modules:
        layer = getattr(model, name, None)
        if isinstance(layer, LoraLinear):
            raise ValueError(f"{name} already has a LoRA adapter")
        if not isinstance(layer, nn.Linear):
            raise ValueError(f"model has no nn.Linear named {name!r}")
        setattr(
            model,
            name,
            LoraLinear(layer, config.r, config.lora_alpha, config.lora_dropout, config.use_rslora),
        )
    return model


def merge_and_unload(model: MLP) -> MLP:
    """Merge every adapter into its base layer and put plain ``nn.Linear`` back, in place.

    The result is an ordinary MLP (all parameters frozen as they were) that
    ``checkpoint.save_model`` accepts. Returns ``model``.
    """
    for name, layer in lora_layers(model).items():
        layer.merge()
        setattr(model, name, layer.base_layer)
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """LoRA weights keyed ``"<module>.lora_A.weight"`` / ``"<module>.lora_B.weight"``.

    Tensors are the live parameters (not copies); A is (r, in), B is (out, r).
    """
    out: dict[str, torch.Tensor] = {}
    for name, layer in lora_layers(model).items():
        out[f"{name}.lora_A.weight"] = layer.lora_A.weight
        out[f"{name}.lora_B.weight"] = layer.lora_B.weight
    return out


@dataclass(frozen=True)
class AdapterWeights:
    """A detached LoRA adapter: its config and per-module matrices.

    Attributes:
        config: the adapter's :class:`LoraConfig`.
        A: module name -> float32 (r, in_features).
        B: module name -> float32 (out_features, r).
    """

    config: LoraConfig
    A: dict[str, torch.Tensor]
    B: dict[str, torch.Tensor]

    @property
    def scaling(self) -> float:
        """See :attr:`LoraConfig.scaling`."""
        return self.config.scaling

    @property
    def n_parameters(self) -> int:
        """Scalars in the matrices (the adapter's trainable parameters)."""
        return sum(t.numel() for t in (*self.A.values(), *self.B.values()))

    @property
    def nbytes(self) -> int:
        """Memory held by the matrices, in bytes."""
        return sum(t.numel() * t.element_size() for t in (*self.A.values(), *self.B.values()))

    def to(self, device: torch.device | str) -> AdapterWeights:
        """Copy with every matrix on ``device``."""
        return AdapterWeights(
            self.config,
            {k: v.to(device) for k, v in self.A.items()},
            {k: v.to(device) for k, v in self.B.items()},
        )

    @classmethod
    def from_model(cls, model: nn.Module) -> AdapterWeights:
        """Detached copies of a LoRA-injected model's adapter weights.

        Raises:
            ValueError: the model has no LoRA layers.
        """
        layers = lora_layers(model)
        if not layers:
            raise ValueError("model has no LoRA layers")
        first = next(iter(layers.values()))
        dropout = first.lora_dropout.p if isinstance(first.lora_dropout, Dropout) else 0.0
        config = LoraConfig(
            r=first.r,
            lora_alpha=first.lora_alpha,
            target_modules=tuple(layers),
            lora_dropout=dropout,
            use_rslora=first.use_rslora,
        )
        return cls(
            config,
            {n: m.lora_A.weight.detach().clone() for n, m in layers.items()},
            {n: m.lora_B.weight.detach().clone() for n, m in layers.items()},
        )


def apply_adapter(model: MLP, adapter: AdapterWeights) -> MLP:
    """Inject ``adapter.config`` into a plain ``model`` and copy the adapter's weights in.

    In place; returns ``model``. Raises ValueError if ``model`` already has LoRA layers or
    a matrix does not fit its layer.
    """
    if lora_layers(model):
        raise ValueError("model already has LoRA layers")
    inject_lora(model, adapter.config)
    return set_adapter_weights(model, adapter)


def set_adapter_weights(model: nn.Module, adapter: AdapterWeights) -> nn.Module:
    """Copy ``adapter``'s matrices into ``model``'s LoRA layers (injected with the same
    config), in place; returns ``model``. Used to go back to a kept epoch's adapter.

    Raises:
        ValueError: the layers differ from ``adapter.config.target_modules`` or a matrix
            does not fit its layer.
    """
    layers = lora_layers(model)
    if set(layers) != set(adapter.A):
        raise ValueError(f"LoRA layers {sorted(layers)} != adapter modules {sorted(adapter.A)}")
    with torch.no_grad():
        for name, layer in layers.items():
            for mod, src in ((layer.lora_A, adapter.A[name]), (layer.lora_B, adapter.B[name])):
                if mod.weight.shape != src.shape:
                    raise ValueError(
                        f"{name}: shape {tuple(src.shape)} != {tuple(mod.weight.shape)}"
                    )
                mod.weight.copy_(src.to(mod.weight.device))
    return model
