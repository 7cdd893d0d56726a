"""Adapters in the Hugging Face PEFT layout: our files in peft, peft's files in ours."""

from __future__ import annotations

import copy
import json

import peft
import pytest
import torch
from safetensors.torch import load_file, save_file

from models.adapter_io import AdapterError, adapter_key, load_adapter, save_adapter
from models.classifier import LINEAR_NAMES
from models.lora import LoraConfig
from models.multi_lora import forward_with_adapters
from tests.models.conftest import random_adapter


@pytest.fixture
def saved_adapter(tmp_path, small_model):
    adapter = random_adapter(small_model, LoraConfig(r=4, lora_alpha=8))
    save_adapter(tmp_path / "ad", adapter, base_model_name_or_path="base-1")
    return tmp_path / "ad", adapter


def test_save_writes_peft_layout(saved_adapter):
    directory, adapter = saved_adapter
    assert sorted(p.name for p in directory.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    tensors = load_file(directory / "adapter_model.safetensors")
    assert set(tensors) == {
        f"base_model.model.{m}.lora_{w}.weight" for m in LINEAR_NAMES for w in "AB"
    }
    config = peft.LoraConfig.from_pretrained(str(directory))
    assert (
        config.r == 4 and config.lora_alpha == 8 and set(config.target_modules) == set(LINEAR_NAMES)
    )


def test_load_round_trip(saved_adapter, small_config):
    directory, adapter = saved_adapter
    loaded = load_adapter(directory, small_config)
    assert loaded.config == adapter.config
    for m in LINEAR_NAMES:
        assert torch.equal(loaded.A[m], adapter.A[m]) and torch.equal(loaded.B[m], adapter.B[m])


def test_peft_loads_our_adapter_with_same_logits(saved_adapter, small_model):
    directory, adapter = saved_adapter
    x = torch.randn(6, 784)
    ours = forward_with_adapters(small_model, x, [adapter] * 6)
    peft_model = peft.PeftModel.from_pretrained(copy.deepcopy(small_model), str(directory)).eval()
    with torch.no_grad():
        torch.testing.assert_close(peft_model(x), ours, rtol=0, atol=1e-5)


@pytest.mark.parametrize("use_rslora", [False, True])
def test_adapter_written_by_peft_loads_with_same_logits(
    tmp_path, small_model, small_config, use_rslora
):
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["linear1", "linear2", "linear3"], use_rslora=use_rslora
    )
    peft_model = peft.get_peft_model(copy.deepcopy(small_model), config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
    peft_model.save_pretrained(str(tmp_path / "from_peft"))
    x = torch.randn(5, 784)
    with torch.no_grad():
        expected = peft_model.eval()(x)

    loaded = load_adapter(tmp_path / "from_peft", small_config)
    assert loaded.config.use_rslora is use_rslora and loaded.scaling == (4.0 if use_rslora else 2.0)
    ours = forward_with_adapters(small_model, x, [loaded] * 5)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
    assert not torch.allclose(ours, small_model(x), atol=1e-3)  # the adapter really does something


def _rewrite_tensors(directory, change):
    path = directory / "adapter_model.safetensors"
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path)


def _rewrite_config(directory, change):
    path = directory / "adapter_config.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (
            lambda t: t.update({"base_model.model.linear9.lora_A.weight": torch.zeros(4, 784)}),
            "adapter_unexpected_key",
        ),
        (lambda t: t.pop(adapter_key("linear2", "B")), "adapter_missing_key"),
        (
            lambda t: t.update({adapter_key("linear1", "A"): torch.zeros(4, 783)}),
            "adapter_shape_mismatch",
        ),
        (
            lambda t: t.update({adapter_key("linear3", "B"): torch.zeros(4, 4)}),
            "adapter_shape_mismatch",
        ),
        (
            lambda t: t.update(
                {adapter_key("linear1", "A"): torch.zeros(4, 784, dtype=torch.float64)}
            ),
            "adapter_dtype",
        ),
        (
            lambda t: t.update(
                {adapter_key("linear1", "B"): torch.zeros(32, 4, dtype=torch.int64)}
            ),
            "adapter_dtype",
        ),
        (
            lambda t: t[adapter_key("linear2", "A")].__setitem__((0, 0), float("nan")),
            "adapter_non_finite",
        ),
        (
            lambda t: t[adapter_key("linear2", "B")].__setitem__((1, 1), float("inf")),
            "adapter_non_finite",
        ),
    ],
)
def test_load_rejects_bad_tensors(saved_adapter, small_config, change, code):
    directory, _ = saved_adapter
    _rewrite_tensors(directory, change)
    with pytest.raises(AdapterError) as info:
        load_adapter(directory, small_config)
    assert info.value.code == code


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.update(peft_type="PREFIX_TUNING"),
        lambda d: d.update(bias="lora_only"),
        lambda d: d.update(modules_to_save=["linear3"]),
        lambda d: d.update(target_modules=["linear1", "conv1"]),
        lambda d: d.update(r=-2),
        lambda d: d.pop("r"),
        lambda d: d.clear(),
    ],
)
def test_load_rejects_bad_config(saved_adapter, small_config, change):
    directory, _ = saved_adapter
    _rewrite_config(directory, change)
    with pytest.raises(AdapterError) as info:
        load_adapter(directory, small_config)
    assert info.value.code == "invalid_adapter_config"


def test_load_rejects_rank_that_does_not_match_config(saved_adapter, small_config):
    directory, _ = saved_adapter
    _rewrite_config(directory, lambda d: d.update(r=8))
    with pytest.raises(AdapterError, match="shape") as info:
        load_adapter(directory, small_config)
    assert info.value.code == "adapter_shape_mismatch"


def test_load_rejects_other_base_model(saved_adapter, small_config):
    directory, _ = saved_adapter
    wider = type(small_config)(hidden1=64, hidden2=48, n_classes=3)
    with pytest.raises(AdapterError) as info:
        load_adapter(directory, wider)
    assert info.value.code == "adapter_shape_mismatch"


def test_load_rejects_garbage_pickles_and_oversize(saved_adapter, small_config):
    directory, _ = saved_adapter
    with pytest.raises(AdapterError) as info:
        load_adapter(directory, small_config, max_bytes=100)
    assert info.value.code == "adapter_too_large"
    (directory / "adapter_model.safetensors").write_bytes(b"\x80\x04\x95not a safetensors file")
    with pytest.raises(AdapterError) as info:
        load_adapter(directory, small_config)
    assert info.value.code == "invalid_adapter_file"
    (directory / "adapter_model.safetensors").unlink()
    (directory / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(AdapterError, match="pickle") as info:
        load_adapter(directory, small_config)
    assert info.value.code == "adapter_missing_file"
    (directory / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterError) as info:
        load_adapter(directory, small_config)
    assert info.value.code == "invalid_adapter_config"
