"""A process SIGKILLed while it writes a training checkpoint (``models.checkpoint``) leaves
the previous checkpoint intact, and training resumes from it.

The child process saves epoch 1, changes its weights, and starts saving epoch 2; it kills
itself with SIGKILL inside ``write_file_atomically`` (its ``os.fsync`` is patched: the new
bytes sit in the temporary file, the rename has not happened). Nothing in ``models/`` is
changed for this: the patch lives in the child's own script.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from models.checkpoint import load_training_state, read_training_meta
from models.classifier import MLP, MLPConfig
from models.training import TrainConfig, make_optimizer, train

ARCH = {"hidden1": 16, "hidden2": 16, "n_classes": 5}

CHILD = """
import os, signal, sys, torch
from safetensors.torch import save_file
import models.checkpoint as ckpt
from models.classifier import MLP, MLPConfig
from models.training import TrainConfig, make_optimizer

path, expected = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
model = MLP(MLPConfig(hidden1=16, hidden2=16, n_classes=5))
optimizer = make_optimizer(model, TrainConfig(lr_schedule="constant"))
gens = {"shuffle": torch.Generator().manual_seed(0)}  # as models.training.train saves it
ckpt.save_training_state(path, model, optimizer, 1, extra={"history": []}, generators=gens)
save_file({k: v.clone() for k, v in model.state_dict().items()}, expected)
with torch.no_grad():
    for p in model.parameters():
        p.add_(1.0)
os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)  # dies mid-write
ckpt.save_training_state(path, model, optimizer, 2, extra={"history": []}, generators=gens)
print("not reached")
"""


def test_sigkill_during_checkpoint_write_keeps_the_previous_one(
    tmp_path: Path, tiny_splits
) -> None:  # noqa: ANN001
    path = tmp_path / "ckpt" / "training_state.safetensors"
    expected = tmp_path / "epoch1.safetensors"
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(expected)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert "not reached" not in child.stdout
    (partial,) = path.parent.glob(f".{path.name}.tmp-*")  # the interrupted write
    assert partial.stat().st_size > 0

    assert read_training_meta(path)["epoch"] == 1
    model = MLP(MLPConfig(**ARCH))
    optimizer = make_optimizer(model, TrainConfig(lr_schedule="constant"))
    assert load_training_state(path, model, optimizer) == 1
    for name, tensor in load_file(str(expected)).items():
        assert torch.equal(model.state_dict()[name], tensor), name

    result = train(
        MLP(MLPConfig(**ARCH)), tiny_splits,
        TrainConfig(epochs=2, batch_size=64, lr_schedule="constant"),
        checkpoint_path=path, device="cpu",
    )  # fmt: skip
    assert [h.epoch for h in result.history] == [2]  # epoch 1 came from the checkpoint
    assert read_training_meta(path)["epoch"] == 2
