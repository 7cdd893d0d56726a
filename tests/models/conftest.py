"""Fixtures for the models/ tests: a small MLP, synthetic splits and a fake MNIST directory."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
import torch

from models.classifier import MLP, MLPConfig
from models.data import DigitSplits
from models.lora import AdapterWeights, LoraConfig

REPO_ROOT = Path(__file__).resolve().parents[2]


def real_mnist_dir() -> Path:
    """$DATA_DIR, else ../shared/data relative to the repository root."""
    return Path(os.environ.get("DATA_DIR") or REPO_ROOT.parent / "shared" / "data").resolve()


@pytest.fixture
def small_config() -> MLPConfig:
    """Real input size (peft and the data path expect 784) but narrow hidden layers."""
    return MLPConfig(in_features=784, hidden1=32, hidden2=48, n_classes=3, dropout=0.5)


@pytest.fixture
def small_model(small_config: MLPConfig) -> MLP:
    torch.manual_seed(0)
    return MLP(small_config).eval()


def synthetic_splits(
    n_train: int = 384, n_val: int = 96, n_test: int = 96, seed: int = 0
) -> DigitSplits:
    """Three linearly separable classes (digits 2, 7, 9) of 784-dim gaussian blobs."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(3, 784, generator=gen) * 0.5

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 3, (n,), generator=gen)
        return centers[y] + torch.randn(n, 784, generator=gen), y

    (tx, ty), (vx, vy), (sx, sy) = draw(n_train), draw(n_val), draw(n_test)
    return DigitSplits((2, 7, 9), tx, ty, vx, vy, sx, sy)


@pytest.fixture
def tiny_splits() -> DigitSplits:
    return synthetic_splits()


def _write_idx(path: Path, array: torch.Tensor) -> None:
    """Write a uint8 tensor in the MNIST idx format (magic 0x08 = ubyte)."""
    dims = list(array.shape)
    header = struct.pack(">I", 0x0800 + len(dims)) + b"".join(struct.pack(">I", d) for d in dims)
    path.write_bytes(header + array.contiguous().numpy().tobytes())


@pytest.fixture
def fake_mnist_dir(tmp_path: Path) -> Path:
    """A torchvision-readable MNIST root: 200 train / 50 test images, labels cycling 0..9."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    gen = torch.Generator().manual_seed(1)
    for prefix, n in (("train", 200), ("t10k", 50)):
        images = torch.randint(0, 256, (n, 28, 28), generator=gen, dtype=torch.uint8)
        labels = (torch.arange(n) % 10).to(torch.uint8)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return tmp_path


@pytest.fixture
def real_mnist() -> Path:
    """The real MNIST root; skips the test (with the path) when the raw files are absent."""
    root = real_mnist_dir()
    if not (root / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.skip(f"MNIST raw files not found under {root / 'MNIST' / 'raw'} (set DATA_DIR)")
    return root


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Run each models test on one intra-op thread (restored afterwards).

    On a small shared machine, two OpenMP threads contending with other processes made
    steps several times slower than one thread; one thread keeps the suite's time steady.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_adapter(model: MLP, config: LoraConfig, seed: int = 0) -> AdapterWeights:
    """An adapter for ``model``'s shapes with non-zero A (r, in) and B (out, r), seeded."""
    gen = torch.Generator().manual_seed(seed)
    A, B = {}, {}
    for name in config.target_modules:
        layer = getattr(model, name)
        A[name] = torch.randn(config.r, layer.in_features, generator=gen) * 0.1
        B[name] = torch.randn(layer.out_features, config.r, generator=gen) * 0.1
    return AdapterWeights(config, A, B)
