"""LoRA adapters on disk in the Hugging Face PEFT layout.

A directory with ``adapter_config.json`` (what ``peft.LoraConfig.from_pretrained`` reads)
and ``adapter_model.safetensors`` with keys ``base_model.model.<module>.lora_A.weight``
(r, in) and ``base_model.model.<module>.lora_B.weight`` (out, r), as
``PeftModel.save_pretrained`` writes them for this MLP. So an adapter trained here loads
with ``PeftModel.from_pretrained(mlp, dir)`` and one peft wrote loads here. Loading
validates everything against the base model and never unpickles (``adapter_model.bin``
is refused).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load

from models.checkpoint import write_dir_atomically, write_safetensors
from models.classifier import MLPConfig, linear_shapes
from models.lora import AdapterWeights, LoraConfig

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
KEY_PREFIX = "base_model.model."
MAX_CONFIG_BYTES = 1 << 20


class AdapterError(ValueError):
    """An adapter directory that cannot be used with the base model.

    Attributes:
        code: machine-readable reason: ``adapter_missing_file``, ``adapter_too_large``,
            ``invalid_adapter_config``, ``invalid_adapter_file``, ``adapter_missing_key``,
            ``adapter_unexpected_key``, ``adapter_shape_mismatch``, ``adapter_dtype`` or
            ``adapter_non_finite``.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def adapter_key(module: str, which: str) -> str:
    """File key of one matrix, e.g. ``base_model.model.linear1.lora_A.weight``."""
    return f"{KEY_PREFIX}{module}.lora_{which}.weight"


def save_adapter(
    directory: str | Path, adapter: AdapterWeights, base_model_name_or_path: str | None = None
) -> None:
    """Write ``adapter`` to ``directory`` in the PEFT layout, atomically (temp dir, rename).

    Args:
        directory: created (or replaced as a whole).
        adapter: the weights; stored as contiguous CPU tensors.
        base_model_name_or_path: recorded in ``adapter_config.json`` (e.g. a model id).
    """
    tensors: dict[str, torch.Tensor] = {}
    for module in adapter.config.target_modules:
        tensors[adapter_key(module, "A")] = adapter.A[module].detach().to("cpu").contiguous()
        tensors[adapter_key(module, "B")] = adapter.B[module].detach().to("cpu").contiguous()
    text = json.dumps(
        adapter.config.to_peft_dict(base_model_name_or_path), indent=2, sort_keys=True
    )

    def write(tmp: Path) -> None:
        write_safetensors(tmp / WEIGHTS_NAME, tensors)
        (tmp / CONFIG_NAME).write_text(text)

    write_dir_atomically(directory, write)


def _read_limited(path: Path, limit: int | None, what: str) -> bytes:
    if not path.is_file():
        raise AdapterError("adapter_missing_file", f"{what} not found: {path}")
    size = path.stat().st_size
    if limit is not None and size > limit:
        raise AdapterError("adapter_too_large", f"{path.name} is {size} bytes, limit {limit}")
    return path.read_bytes()


def _read_config(directory: Path) -> LoraConfig:
    raw = _read_limited(directory / CONFIG_NAME, MAX_CONFIG_BYTES, CONFIG_NAME)
    try:
        doc = json.loads(raw)
        return LoraConfig.from_peft_dict(doc)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError, TypeError) as exc:
        raise AdapterError("invalid_adapter_config", f"bad {CONFIG_NAME}: {exc}") from exc


def _check_tensor(key: str, t: torch.Tensor, shape: tuple[int, int]) -> None:
    if t.dtype != torch.float32:
        raise AdapterError("adapter_dtype", f"{key} is {t.dtype}, the base model is torch.float32")
    if tuple(t.shape) != shape:
        raise AdapterError(
            "adapter_shape_mismatch", f"{key} has shape {tuple(t.shape)}, expected {shape}"
        )
    if not torch.isfinite(t).all():
        raise AdapterError("adapter_non_finite", f"{key} has NaN or infinite values")


def load_adapter(
    directory: str | Path, base_config: MLPConfig, max_bytes: int | None = None
) -> AdapterWeights:
    """Read and validate an adapter directory (ours or one ``peft`` wrote) for a base model.

    Checks, in order: both files exist (``adapter_model.bin`` pickles are not read); the
    weights file is at most ``max_bytes`` bytes; the config is a LoRA config we support
    (see :meth:`LoraConfig.from_peft_dict`; unknown extra keys are ignored); the weights
    file parses as safetensors; its keys are exactly the A/B matrices of the target
    modules; each is float32 with shape A (r, in) / B (out, r) for ``base_config``; every
    value is finite.

    Returns:
        The adapter on CPU.

    Raises:
        AdapterError (a ValueError) with ``.code`` naming the failed check.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise AdapterError("adapter_missing_file", f"adapter directory not found: {directory}")
    config = _read_config(directory)
    weights_path = directory / WEIGHTS_NAME
    if not weights_path.is_file() and (directory / "adapter_model.bin").exists():
        raise AdapterError(
            "adapter_missing_file",
            "only adapter_model.safetensors is accepted (adapter_model.bin is a pickle)",
        )
    blob = _read_limited(weights_path, max_bytes, WEIGHTS_NAME)
    try:
        tensors = load(blob)
    except Exception as exc:  # safetensors raises its own error types on malformed input
        raise AdapterError(
            "invalid_adapter_file", f"{WEIGHTS_NAME} is not a safetensors file: {exc}"
        ) from exc

    expected = {adapter_key(m, w) for m in config.target_modules for w in "AB"}
    unexpected = sorted(set(tensors) - expected)
    if unexpected:
        raise AdapterError(
            "adapter_unexpected_key", f"unexpected keys {unexpected}; expected {sorted(expected)}"
        )
    missing = sorted(expected - set(tensors))
    if missing:
        raise AdapterError("adapter_missing_key", f"missing keys {missing}")

    shapes = linear_shapes(base_config)
    A: dict[str, torch.Tensor] = {}
    B: dict[str, torch.Tensor] = {}
    for module in config.target_modules:
        fan_in, fan_out = shapes[module]
        a, b = tensors[adapter_key(module, "A")], tensors[adapter_key(module, "B")]
        _check_tensor(adapter_key(module, "A"), a, (config.r, fan_in))
        _check_tensor(adapter_key(module, "B"), b, (fan_out, config.r))
        A[module], B[module] = a, b
    return AdapterWeights(config=config, A=A, B=B)
