"""Precision: detection of bf16 hardware, and bf16 training on real MNIST (issue 16).

The real-MNIST test trains the full MLP (784-1000-2000-5) for one epoch on a 6,000-image
slice of digits 0-4, then a LoRA r=8 adapter on digits 5-9, once in fp32 and once in bf16
from the same seed. It is skipped where bf16 is not fast (no AMX/AVX512-BF16, no CUDA bf16):
there bf16 is emulated, slow, and ``auto`` never picks it.
"""

from __future__ import annotations

import copy

import pytest
import torch

from models.classifier import MLP, MLPConfig
from models.data import load_digit_splits
from models.lora import LoraConfig, inject_lora
from models.precision import bf16_fast, bf16_support, cpu_bf16_flags, resolve_precision
from models.training import TrainConfig, make_optimizer, train


def test_cpu_flags_are_read_from_cpuinfo_not_assumed(tmp_path) -> None:
    with_amx = tmp_path / "amx"
    with_amx.write_text("processor: 0\nflags\t\t: fpu sse avx512f amx_bf16 amx_tile\n")
    without = tmp_path / "plain"
    without.write_text("processor: 0\nflags\t\t: fpu sse avx2\n")
    assert cpu_bf16_flags(str(with_amx)) == ("amx_bf16",)
    assert cpu_bf16_flags(str(without)) == ()
    assert cpu_bf16_flags(str(tmp_path / "missing")) == ()


def test_resolve_precision() -> None:
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_bf16_flags() else "fp32")
    assert bf16_fast("cpu") == bool(cpu_bf16_flags())
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(lr_schedule="constant", precision="half")


def test_bf16_training_matches_fp32_on_real_mnist(real_mnist) -> None:
    """Same seed, same data: bf16 pre-training and LoRA fine-tuning land within a point of
    fp32 test accuracy; master weights and Adam's state stay float32; the result says bf16."""
    if not bf16_fast("cpu"):
        pytest.skip(f"bf16 is not fast here ({bf16_support('cpu')}); auto would pick fp32")
    base_splits = load_digit_splits(real_mnist, (0, 1, 2, 3, 4))
    ft_splits = load_digit_splits(real_mnist, (5, 6, 7, 8, 9))
    for s in (base_splits, ft_splits):
        s.train_x, s.train_y = s.train_x[:6000], s.train_y[:6000]
    results = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        base = MLP(MLPConfig())
        config = TrainConfig(epochs=1, seed=0, lr_schedule="constant", precision=precision)
        pre = train(base, base_splits, config, device="cpu")
        assert pre.precision == precision
        assert all(p.dtype == torch.float32 for p in base.parameters())
        lora = inject_lora(copy.deepcopy(base), LoraConfig(r=8, lora_alpha=16.0))
        lora.set_dropout(0.0)
        ft_config = TrainConfig(
            epochs=1, seed=0, weight_decay=0.0, lr_schedule="constant", precision=precision
        )
        ft = train(lora, ft_splits, ft_config, device="cpu")
        assert ft.precision == precision
        results[precision] = (pre.test_accuracy, ft.test_accuracy)
    (pre32, ft32), (pre16, ft16) = results["fp32"], results["bf16"]
    assert pre32 > 0.95 and ft32 > 0.8, results
    assert abs(pre16 - pre32) < 0.01 and abs(ft16 - ft32) < 0.02, results
    optimizer = make_optimizer(base, TrainConfig(lr_schedule="constant"))
    assert all(p.dtype == torch.float32 for g in optimizer.param_groups for p in g["params"])
