"""models/ on CUDA: the same numbers as on CPU (run by benchmarks/device_check.sh on a GPU
machine; skipped here, where no GPU is). Marked ``cuda``: ``pytest -m cuda tests/models``."""

from __future__ import annotations

import pytest
import torch

from models.classifier import MLP, MLPConfig
from models.lora import LoraConfig, inject_lora
from models.training import TrainConfig, make_optimizer, train

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]


def test_lora_forward_on_cuda_matches_cpu() -> None:
    torch.manual_seed(0)
    model = inject_lora(MLP(MLPConfig(hidden1=64, hidden2=32, n_classes=5)), LoraConfig(r=4))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.eval()
    x = torch.randn(64, 784)
    cpu = model(x)
    gpu = model.cuda()(x.cuda()).cpu()
    assert torch.allclose(cpu, gpu, atol=1e-4), (cpu - gpu).abs().max()


def test_training_runs_on_cuda(tiny_splits) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = MLP(MLPConfig(hidden1=16, hidden2=16, n_classes=3))
    config = TrainConfig(epochs=2, batch_size=64, lr_schedule="constant")
    assert make_optimizer(model.cuda(), config) is not None
    result = train(model, tiny_splits, config, device="cuda")
    assert next(model.parameters()).device.type == "cuda"
    assert result.history[-1].train_loss < result.history[0].train_loss
