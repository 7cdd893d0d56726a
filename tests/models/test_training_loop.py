"""The training loop: metrics, cancellation, deterministic resume, LoRA, and real MNIST."""

from __future__ import annotations

import copy

import pytest
import torch

from models.classifier import MLP, MLPConfig
from models.data import load_digit_splits
from models.lora import LoraConfig, inject_lora
from models.training import TrainConfig, train

CPU = torch.device("cpu")
CONFIG = TrainConfig(
    epochs=3, lr=1e-3, weight_decay=1e-4, batch_size=32, seed=7, lr_schedule="constant"
)


def fresh_model(small_config: MLPConfig, init_seed: int = 0) -> MLP:
    torch.manual_seed(init_seed)
    return MLP(small_config)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_train_reports_metrics_and_test_results(small_config, tiny_splits):
    seen = []
    result = train(fresh_model(small_config), tiny_splits, CONFIG, on_epoch=seen.append, device=CPU)
    assert [m.epoch for m in seen] == [1, 2, 3] and result.history == seen
    assert result.epochs_completed == 3 and not result.cancelled
    assert seen[-1].val_accuracy > 0.9 and result.test_accuracy > 0.9
    assert seen[-1].train_loss < seen[0].train_loss
    assert all(m.epoch_seconds > 0 and m.samples_per_second > 0 for m in seen)
    assert set(seen[0].as_dict()) == {
        "epoch",
        "train_loss",
        "val_loss",
        "val_accuracy",
        "epoch_seconds",
        "samples_per_second",
    }
    assert set(result.per_digit_errors) == {2, 7, 9}
    wrong = round((1 - result.test_accuracy) * tiny_splits.test_y.shape[0])
    assert sum(result.per_digit_errors.values()) == wrong


def test_same_seed_gives_identical_weights(small_config, tiny_splits):
    a, b = fresh_model(small_config), fresh_model(small_config)
    train(a, tiny_splits, CONFIG, device=CPU)
    train(b, tiny_splits, CONFIG, device=CPU)
    assert_same_weights(a, b)


def test_cosine_schedule_lr_per_epoch():
    cfg = TrainConfig(epochs=4, lr=1e-3, lr_schedule="cosine")
    assert [round(cfg.epoch_lr(e), 12) for e in (1, 2, 3, 4)] == [
        1e-3,
        round(1e-3 * (1 + 2**-0.5) / 2, 12),
        5e-4,
        round(1e-3 * (1 - 2**-0.5) / 2, 12),
    ]
    assert TrainConfig(epochs=4, lr=1e-3, lr_schedule="constant").epoch_lr(4) == 1e-3
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="linear")


def test_cosine_schedule_changes_training(small_config, tiny_splits):
    constant, cosine = fresh_model(small_config), fresh_model(small_config)
    train(constant, tiny_splits, CONFIG, device=CPU)
    cos_cfg = TrainConfig(**{**CONFIG.__dict__, "lr_schedule": "cosine"})
    train(cosine, tiny_splits, cos_cfg, device=CPU)
    assert not torch.equal(constant.linear1.weight, cosine.linear1.weight)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_resume_after_on_epoch_stop_matches_uninterrupted_run(
    tmp_path, small_config, tiny_splits, schedule
):
    config = TrainConfig(**{**CONFIG.__dict__, "lr_schedule": schedule})
    reference = fresh_model(small_config)
    train(reference, tiny_splits, config, device=CPU)

    ckpt = tmp_path / "train.ckpt"
    first = train(
        fresh_model(small_config),
        tiny_splits,
        config,
        checkpoint_path=ckpt,
        on_epoch=lambda m: m.epoch == 2,
        device=CPU,
    )
    assert first.cancelled and first.epochs_completed == 2 and first.test_accuracy is None
    torch.manual_seed(12345)  # the resumed run must not depend on the caller's RNG state
    resumed_model = fresh_model(small_config, init_seed=99)
    resumed = train(resumed_model, tiny_splits, config, checkpoint_path=ckpt, device=CPU)
    assert not resumed.cancelled and resumed.epochs_completed == 3
    assert [m.epoch for m in resumed.history] == [1, 2, 3]
    assert_same_weights(resumed_model, reference)


def test_should_stop_cancels_mid_epoch_and_resume_is_exact(tmp_path, small_config, tiny_splits):
    reference = fresh_model(small_config)
    train(reference, tiny_splits, CONFIG, device=CPU)

    polls = []

    def should_stop() -> bool:
        polls.append(1)
        return len(polls) > 17  # 12 steps per epoch: stops in the middle of epoch 2

    ckpt = tmp_path / "train.ckpt"
    cancelled = train(
        fresh_model(small_config),
        tiny_splits,
        CONFIG,
        should_stop=should_stop,
        checkpoint_path=ckpt,
        device=CPU,
    )
    assert cancelled.cancelled and cancelled.epochs_completed == 1
    assert cancelled.test_accuracy is None and cancelled.per_digit_errors is None
    resumed_model = fresh_model(small_config, init_seed=5)
    train(resumed_model, tiny_splits, CONFIG, checkpoint_path=ckpt, device=CPU)
    assert_same_weights(resumed_model, reference)


def test_lora_training_updates_only_the_adapter(small_config, tiny_splits):
    model = fresh_model(small_config)
    base = copy.deepcopy(model.state_dict())
    inject_lora(model, LoraConfig(r=4, lora_alpha=8))
    result = train(
        model,
        tiny_splits,
        TrainConfig(epochs=2, batch_size=32, lr=3e-3, lr_schedule="constant"),
        device=CPU,
    )
    assert result.history[1].train_loss < result.history[0].train_loss
    for name in ("linear1", "linear2", "linear3"):
        layer = getattr(model, name)
        assert torch.equal(layer.base_layer.weight, base[f"{name}.weight"])
        assert torch.equal(layer.base_layer.bias, base[f"{name}.bias"])
        assert layer.base_layer.weight.grad is None
        assert torch.count_nonzero(layer.lora_B.weight) > 0


def test_model_without_trainable_parameters_is_rejected(small_config, tiny_splits):
    model = fresh_model(small_config).requires_grad_(False)
    with pytest.raises(ValueError, match="trainable"):
        train(model, tiny_splits, CONFIG, device=CPU)


def test_pretrain_digits_0_to_4_on_real_mnist(real_mnist):
    splits = load_digit_splits(real_mnist, classes=(0, 1, 2, 3, 4))
    assert splits.train_x.shape[0] == 21_417
    torch.manual_seed(0)
    result = train(
        MLP(MLPConfig(n_classes=5)),
        splits,
        TrainConfig(epochs=2, seed=0, lr_schedule="constant"),
        device=CPU,
    )
    assert result.test_accuracy >= 0.98, result
    assert set(result.per_digit_errors) == {0, 1, 2, 3, 4}
