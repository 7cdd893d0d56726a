"""LoRA layers, injection, merging and per-sample adapter serving."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from models.classifier import LINEAR_NAMES, count_parameters
from models.lora import (
    AdapterWeights,
    LoraConfig,
    LoraLinear,
    apply_adapter,
    inject_lora,
    lora_state_dict,
    merge_and_unload,
)
from models.multi_lora import enable_multi_lora, forward_with_adapters
from tests.models.conftest import random_adapter


def test_fresh_adapter_changes_no_output(small_model):
    x = torch.randn(8, 784)
    before = small_model(x)
    inject_lora(small_model, LoraConfig(r=4, lora_alpha=8))
    torch.testing.assert_close(small_model(x), before, rtol=0, atol=0)


def test_injection_freezes_base_and_inits_like_peft(small_model):
    inject_lora(small_model, LoraConfig(r=4, target_modules=("linear1", "linear3")))
    trainable = {n for n, p in small_model.named_parameters() if p.requires_grad}
    assert trainable == {f"{m}.lora_{w}.weight" for m in ("linear1", "linear3") for w in "AB"}
    assert set(lora_state_dict(small_model)) == trainable
    layer = small_model.linear1
    assert isinstance(layer, LoraLinear) and not isinstance(small_model.linear2, LoraLinear)
    assert layer.lora_A.weight.shape == (4, 784) and layer.lora_B.weight.shape == (32, 4)
    assert torch.count_nonzero(layer.lora_B.weight) == 0
    bound = 1 / math.sqrt(784)  # kaiming_uniform(a=sqrt(5)) bound = sqrt(6 / ((1 + 5) * fan_in))
    assert 0.5 * bound < layer.lora_A.weight.abs().max() <= bound
    assert count_parameters(small_model, trainable_only=True) == 4 * 784 + 32 * 4 + 4 * 48 + 3 * 4


def test_scaling_plain_and_rslora():
    assert LoraConfig(r=4, lora_alpha=8).scaling == 2.0
    assert LoraConfig(r=4, lora_alpha=8, use_rslora=True).scaling == 4.0


def test_merge_unmerge_keep_logits(small_model):
    inject_lora(small_model, LoraConfig(r=4, lora_alpha=8))
    base_w = small_model.linear2.base_layer.weight.clone()
    with torch.no_grad():
        for name in LINEAR_NAMES:
            getattr(small_model, name).lora_B.weight.normal_()
    x = torch.randn(16, 784)
    unmerged = small_model(x)
    for name in LINEAR_NAMES:
        getattr(small_model, name).merge()
    torch.testing.assert_close(small_model(x), unmerged, rtol=0, atol=1e-5)
    for name in LINEAR_NAMES:
        getattr(small_model, name).unmerge()
    torch.testing.assert_close(small_model(x), unmerged, rtol=0, atol=1e-5)
    torch.testing.assert_close(small_model.linear2.base_layer.weight, base_w, rtol=0, atol=1e-6)


def test_merge_and_unload_gives_plain_mlp(small_model):
    config = LoraConfig(r=2, lora_alpha=4)
    adapter = random_adapter(small_model, config, seed=3)
    apply_adapter(small_model, adapter)
    x = torch.randn(5, 784)
    expected = small_model(x)
    merge_and_unload(small_model)
    assert all(type(getattr(small_model, n)) is torch.nn.Linear for n in LINEAR_NAMES)
    torch.testing.assert_close(small_model(x), expected, rtol=0, atol=1e-5)


def test_adapter_weights_from_model_round_trip(small_model):
    config = LoraConfig(r=3, lora_alpha=5, target_modules=("linear2",), use_rslora=True)
    adapter = random_adapter(small_model, config, seed=1)
    apply_adapter(small_model, adapter)
    again = AdapterWeights.from_model(small_model)
    assert again.config == config
    assert torch.equal(again.B["linear2"], adapter.B["linear2"])
    assert again.nbytes == 4 * (3 * 32 + 48 * 3)


def test_forward_with_adapters_mixes_per_sample(small_model):
    base_state = copy.deepcopy(small_model.state_dict())
    a1 = random_adapter(small_model, LoraConfig(r=4, lora_alpha=8), seed=1)
    a2 = random_adapter(
        small_model, LoraConfig(r=2, lora_alpha=2, target_modules=("linear2",), use_rslora=True), 2
    )
    x = torch.randn(7, 784)
    choice = [a1, None, a2, a1, None, a2, a2]
    mixed = forward_with_adapters(small_model, x, choice)
    for i, adapter in enumerate(choice):
        alone = forward_with_adapters(small_model, x[i : i + 1], [adapter])
        torch.testing.assert_close(mixed[i : i + 1], alone, rtol=0, atol=1e-5)
        reference = copy.deepcopy(small_model)
        if adapter is not None:
            apply_adapter(reference, adapter)
        torch.testing.assert_close(
            mixed[i : i + 1], reference.eval()(x[i : i + 1]), rtol=0, atol=1e-5
        )
    for key, value in small_model.state_dict().items():
        assert torch.equal(value, base_state[key]), key


def test_forward_with_adapters_ignores_train_mode_and_checks_length(small_model):
    x = torch.randn(4, 784)
    small_model.train()  # dropout would make two calls differ
    out = forward_with_adapters(small_model, x, [None] * 4)
    torch.testing.assert_close(out, small_model.eval()(x))
    with pytest.raises(ValueError):
        forward_with_adapters(small_model, x, [None] * 3)


def test_lora_config_peft_dict_round_trip():
    config = LoraConfig(r=4, lora_alpha=8, target_modules=("linear3", "linear1"), lora_dropout=0.1)
    assert config.target_modules == ("linear1", "linear3")
    d = config.to_peft_dict("base-123")
    assert (
        d["peft_type"] == "LORA"
        and d["bias"] == "none"
        and d["base_model_name_or_path"] == "base-123"
    )
    assert LoraConfig.from_peft_dict({**d, "some_future_key": 1}) == config


@pytest.mark.parametrize(
    "change",
    [
        {"peft_type": "IA3"},
        {"bias": "all"},
        {"modules_to_save": ["linear3"]},
        {"target_modules": ["linear4"]},
        {"target_modules": "linear1"},
        {"target_modules": []},
        {"r": 0},
        {"r": 2.5},
        {"lora_alpha": -1},
        {"lora_dropout": 1.5},
        {"use_rslora": "yes"},
        {"use_dora": True},
        {"task_type": "CAUSAL_LM"},
        {"rank_pattern": {"linear1": 2}},
    ],
)
def test_lora_config_rejects_bad_peft_dicts(change):
    with pytest.raises(ValueError):
        LoraConfig.from_peft_dict({**LoraConfig().to_peft_dict(), **change})


def test_forward_with_adapters_leaves_the_callers_modes_alone(small_model):
    small_model.train()
    flags = {name: m.training for name, m in small_model.named_modules()}
    forward_with_adapters(small_model, torch.randn(2, 784), [None, None])
    assert {name: m.training for name, m in small_model.named_modules()} == flags
    served = enable_multi_lora(copy.deepcopy(small_model).eval())
    assert not any(m.training for m in served.modules())  # wrappers take the network's mode
