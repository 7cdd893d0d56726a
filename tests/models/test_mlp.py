"""The classifier and its config."""

from __future__ import annotations

import pytest
import torch

from models.classifier import LINEAR_NAMES, MLP, Dropout, MLPConfig, count_parameters


def test_default_mlp_has_seed_parameter_count():
    model = MLP(MLPConfig())
    assert count_parameters(model) == 2_797_005
    assert count_parameters(model, trainable_only=True) == 2_797_005
    assert [type(getattr(model, n)).__name__ for n in LINEAR_NAMES] == ["Linear"] * 3


def test_forward_accepts_flat_and_image_batches(small_model):
    x = torch.randn(4, 1, 28, 28)
    flat = small_model(x.reshape(4, 784))
    assert flat.shape == (4, 3)
    torch.testing.assert_close(small_model(x), flat)


def test_config_round_trip():
    cfg = MLPConfig(hidden1=10, hidden2=20, n_classes=4, dropout=0.1)
    assert MLPConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "bad",
    [{"n_classes": 0}, {"dropout": 1.0}, {"hidden1": 2.5}, {"colour": "red"}, {"n_classes": True}],
)
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        MLPConfig.from_dict({**MLPConfig().to_dict(), **bad})


def test_dropout_matches_nn_dropout_semantics():
    drop = Dropout(0.3)
    x = torch.ones(200, 500, requires_grad=True)
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.01
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.7))
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.7)
    drop.eval()
    assert drop(x) is x
    with pytest.raises(ValueError):
        Dropout(1.0)


def test_set_dropout_changes_training_noise_not_the_architecture():
    model = MLP(MLPConfig(hidden1=64, hidden2=64, n_classes=3, dropout=0.5)).train()
    x = torch.randn(8, 784)
    assert not torch.equal(model(x), model(x))  # p = 0.5: two passes differ
    model.set_dropout(0.0)
    torch.testing.assert_close(model(x), model(x))  # no dropout: deterministic in train mode
    assert model.config.dropout == 0.5
    with pytest.raises(ValueError):
        model.set_dropout(1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_half_rate_dropout_keeps_fair_independent_coins(dtype):
    """p = 0.5 takes one random bit per element: kept half the time, scaled by 2, no
    pattern across neighbours (bits of one byte) or across calls."""
    torch.manual_seed(0)
    drop = Dropout(0.5)
    x = torch.ones(3, 1001, 37, dtype=dtype, requires_grad=True)  # n not a multiple of 64
    y = drop(x)
    assert y.shape == x.shape and y.dtype == dtype
    kept = y != 0
    assert set(y.detach().float().unique().tolist()) == {0.0, 2.0}
    assert abs(kept.float().mean().item() - 0.5) < 0.005
    flat = kept.flatten().float()
    # neighbouring elements (same byte, or adjacent bytes) are uncorrelated
    for lag in (1, 7, 8, 64):
        corr = torch.corrcoef(torch.stack([flat[:-lag], flat[lag:]]))[0, 1]
        assert abs(corr.item()) < 0.01, lag
    assert not torch.equal(kept, drop(x) != 0)  # a fresh mask per call
    y.float().sum().backward()
    torch.testing.assert_close(x.grad.float(), kept.float() * 2)
    torch.manual_seed(0)
    assert torch.equal(Dropout(0.5)(x) != 0, kept)  # reproducible from the seed
