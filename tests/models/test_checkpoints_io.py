"""Model checkpoints and resumable training state: round trips, atomicity, no pickle."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from models import checkpoint
from models.checkpoint import (
    CheckpointError,
    load_model,
    load_training_state,
    read_training_meta,
    save_model,
    save_training_state,
)
from models.classifier import MLP
from models.lora import LoraConfig, inject_lora


def test_model_round_trip(tmp_path, small_model):
    save_model(tmp_path / "m", small_model, classes=(2, 7, 9), parent_id="p1", extra={"note": "hi"})
    model, meta = load_model(tmp_path / "m")
    assert meta.config == small_model.config and meta.classes == (2, 7, 9)
    assert meta.parent_id == "p1" and meta.extra == {"note": "hi"}
    assert not model.training
    x = torch.randn(3, 784)
    torch.testing.assert_close(model(x), small_model(x), rtol=0, atol=0)
    save_model(tmp_path / "m", MLP(small_model.config), classes=(1, 2, 3))  # replaces as a whole
    assert load_model(tmp_path / "m")[1].classes == (1, 2, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp dirs left


def test_save_model_rejects_lora_model_and_wrong_classes(tmp_path, small_model):
    with pytest.raises(ValueError):
        save_model(tmp_path / "m", small_model, classes=(1, 2))
    inject_lora(small_model, LoraConfig(r=2))
    with pytest.raises(ValueError, match="LoRA"):
        save_model(tmp_path / "m", small_model, classes=(1, 2, 3))


def test_load_model_rejects_pickle_named_like_checkpoint(tmp_path, small_model):
    save_model(tmp_path / "m", small_model, classes=(2, 7, 9))
    path = tmp_path / "m" / "model.safetensors"
    path.write_bytes(pickle.dumps(small_model.state_dict()))
    with pytest.raises(CheckpointError, match="safetensors"):
        load_model(tmp_path / "m")
    torch.save(small_model.state_dict(), path)  # torch's zip+pickle format
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "m")


def test_load_model_rejects_mismatched_weights_and_config(tmp_path, small_model):
    save_model(tmp_path / "m", small_model, classes=(2, 7, 9))
    config_path = tmp_path / "m" / "config.json"
    config_path.write_text(config_path.read_text().replace('"hidden1": 32', '"hidden1": 33'))
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "m")
    config_path.write_text('{"architecture": "cnn"}')
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "m")


def _trained_step(model, optimizer):
    loss = model(torch.randn(8, 784)).square().mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def test_training_state_round_trip(tmp_path, small_model):
    opt = torch.optim.Adam(small_model.parameters(), lr=1e-3, weight_decay=1e-4)
    _trained_step(small_model, opt)
    gen = torch.Generator().manual_seed(3)
    torch.randperm(10, generator=gen)
    save_training_state(
        tmp_path / "s.ckpt", small_model, opt, epoch=4, extra={"k": [1, 2]}, generators={"g": gen}
    )
    expected_rng = torch.rand(3)
    expected_gen = torch.randperm(100, generator=gen)

    other = MLP(small_model.config)
    other_opt = torch.optim.Adam(other.parameters(), lr=5.0)
    other_gen = torch.Generator().manual_seed(99)
    assert (
        load_training_state(tmp_path / "s.ckpt", other, other_opt, generators={"g": other_gen}) == 4
    )
    assert torch.equal(torch.rand(3), expected_rng)
    assert torch.equal(torch.randperm(100, generator=other_gen), expected_gen)
    for a, b in zip(small_model.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    sd, other_sd = opt.state_dict(), other_opt.state_dict()
    assert other_sd["param_groups"][0]["lr"] == 1e-3 and other_sd["param_groups"][0]["betas"] == (
        0.9,
        0.999,
    )
    for idx, entry in sd["state"].items():
        for key, value in entry.items():
            assert torch.equal(other_sd["state"][idx][key], value)
    assert read_training_meta(tmp_path / "s.ckpt")["extra"] == {"k": [1, 2]}
    assert load_training_state(tmp_path / "absent.ckpt", other, other_opt) is None


def test_training_state_rejects_pickles_and_other_models(tmp_path, small_model):
    opt = torch.optim.Adam(small_model.parameters())
    path = tmp_path / "s.ckpt"
    torch.save({"model": small_model.state_dict(), "epoch": 1}, path)
    with pytest.raises(CheckpointError):
        load_training_state(path, small_model, opt)
    with pytest.raises(CheckpointError):
        read_training_meta(path)
    save_training_state(path, small_model, opt, epoch=1)
    wider = MLP(type(small_model.config)(hidden1=40, hidden2=48, n_classes=3))
    with pytest.raises(CheckpointError):
        load_training_state(path, wider, torch.optim.Adam(wider.parameters()))


def test_failed_write_leaves_previous_checkpoint_intact(tmp_path, small_model, monkeypatch):
    opt = torch.optim.Adam(small_model.parameters())
    path = tmp_path / "s.ckpt"
    save_training_state(path, small_model, opt, epoch=1)
    before = path.read_bytes()
    _trained_step(small_model, opt)

    def crash(fd):  # the temp file is fully written but not yet renamed
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        save_training_state(path, small_model, opt, epoch=2)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["s.ckpt"]
    assert load_training_state(path, small_model, opt) == 1


def test_failed_model_save_leaves_previous_directory_intact(tmp_path, small_model, monkeypatch):
    save_model(tmp_path / "m", small_model, classes=(2, 7, 9))

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "write_safetensors", crash)
    with pytest.raises(OSError):
        save_model(tmp_path / "m", MLP(small_model.config), classes=(1, 2, 3))
    monkeypatch.undo()
    assert load_model(tmp_path / "m")[1].classes == (2, 7, 9)
    assert os.listdir(tmp_path) == ["m"]
