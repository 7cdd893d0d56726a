"""Numeric precision of training and serving: ``fp32``, ``bf16`` or ``auto``.

``bf16`` runs the matmuls in bfloat16 (8-bit mantissa, fp32's exponent range, so no loss
scaling is needed; Kalamkar et al. 2019, "A Study of BFLOAT16 for Deep Learning
Training") while master weights, optimizer state, the loss and every reduction stay fp32.
``auto`` resolves to ``bf16`` only where the device runs it fast, detected, never assumed:

* CUDA: ``torch.cuda.is_bf16_supported()`` (Ampere and later run bf16 on tensor cores);
* CPU: the ``amx_bf16`` or ``avx512_bf16`` flag in ``/proc/cpuinfo`` (Intel AMX / AVX512-BF16,
  which oneDNN uses for bf16 matmuls); other CPUs emulate bf16 and run it slower than fp32.

Elsewhere ``auto`` is ``fp32``. An explicit ``bf16`` is honoured on any device (slow where
emulated, same numbers).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

import torch

PRECISIONS = ("fp32", "bf16", "auto")
RESOLVED_PRECISIONS = ("fp32", "bf16")
Precision = Literal["fp32", "bf16", "auto"]
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.cache
def cpu_bf16_flags(cpuinfo: str = "/proc/cpuinfo") -> tuple[str, ...]:
    """The bf16 instruction-set flags of this CPU among :data:`CPU_BF16_FLAGS` (empty where
    ``cpuinfo`` is unreadable or lists none)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return ()
    for line in text.splitlines():
        if line.startswith("flags"):
            present = set(line.split(":", 1)[1].split())
            return tuple(f for f in CPU_BF16_FLAGS if f in present)
    return ()


def bf16_fast(device: torch.device | str) -> bool:
    """Whether ``device`` has bf16 matmul hardware (see the module docstring)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(cpu_bf16_flags())
    return False


def bf16_support(device: torch.device | str) -> str:
    """A one-line reason for :func:`bf16_fast`'s answer (for logs, skips and benchmarks)."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device) if torch.cuda.is_available() else "no CUDA"
        return f"{name}: torch.cuda.is_bf16_supported() = {bf16_fast(device)}"
    flags = cpu_bf16_flags()
    if flags:
        return f"CPU with {', '.join(flags)}"
    return "CPU without amx_bf16/avx512_bf16 (bf16 would be emulated, slower than fp32)"


def resolve_precision(requested: str, device: torch.device | str) -> str:
    """``fp32`` or ``bf16`` for ``requested`` (one of :data:`PRECISIONS`) on ``device``.

    Raises:
        ValueError: an unknown precision.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    if requested == "auto":
        return "bf16" if bf16_fast(device) else "fp32"
    return requested


def torch_dtype(precision: str) -> torch.dtype:
    """The matmul dtype of a resolved precision."""
    return torch.bfloat16 if precision == "bf16" else torch.float32
