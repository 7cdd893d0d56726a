"""MNIST digit subsets held as preloaded tensors.

The raw files are read once with ``torchvision.datasets.MNIST`` (its ``data`` and
``targets`` tensors; no per-sample PIL transforms), restricted to the chosen digits,
normalised with the usual MNIST statistics and split into train / validation
deterministically by seed. The test split is the official test set restricted to the same
digits. Labels are indices into ``classes``: head output ``i`` means digit ``classes[i]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


@dataclass
class DigitSplits:
    """Train / validation / test tensors for one digit subset.

    Attributes:
        classes: the digits, in head order (label ``i`` means digit ``classes[i]``).
        train_x, val_x, test_x: float32 (N, 784), normalised with MNIST_MEAN / MNIST_STD.
        train_y, val_y, test_y: int64 (N,), indices into ``classes``.
    """

    classes: tuple[int, ...]
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def to(self, device: torch.device | str) -> DigitSplits:
        """Return a copy with every tensor on ``device`` (a no-op copy when already there)."""
        return DigitSplits(
            classes=self.classes,
            **{
                name: getattr(self, name).to(device)
                for name in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")
            },
        )


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """Turn raw MNIST pixels into model inputs.

    Same result as torchvision's ``ToTensor()`` then ``Normalize((0.1307,), (0.3081,))``,
    flattened.

    Args:
        images: uint8 (N, 28, 28) pixels in [0, 255].

    Returns:
        float32 (N, 784): ``(pixel / 255 - MNIST_MEAN) / MNIST_STD``.

    Raises:
        ValueError: ``images`` is not a uint8 tensor with 3 dimensions.
    """
    if images.dtype != torch.uint8 or images.dim() != 3:
        raise ValueError(
            f"expected uint8 (N, 28, 28) images, got {images.dtype} {tuple(images.shape)}"
        )
    x = images.reshape(images.shape[0], -1).to(torch.float32).div_(255.0)
    return x.sub_(MNIST_MEAN).div_(MNIST_STD)


def check_classes(classes: Sequence[int]) -> tuple[int, ...]:
    """Validate a digit subset and return it as a tuple.

    Raises:
        ValueError: empty, duplicated, non-int or outside 0..9.
    """
    out = tuple(classes)
    if not out:
        raise ValueError("classes must name at least one digit")
    for c in out:
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= 9:
            raise ValueError(f"classes must be ints in 0..9, got {c!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"classes must be distinct, got {out}")
    return out


def _select(
    images: torch.Tensor, targets: torch.Tensor, classes: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the samples whose digit is in ``classes``; labels become indices into it."""
    lookup = torch.full((10,), -1, dtype=torch.int64)
    lookup[torch.tensor(classes, dtype=torch.int64)] = torch.arange(len(classes))
    labels = lookup[targets.to(torch.int64)]
    keep = labels >= 0
    return normalize_images(images[keep]), labels[keep]


def _read_mnist(data_dir: Path, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets import MNIST  # imported lazily: only data loading needs it

    try:
        ds = MNIST(root=str(data_dir), train=train, download=download)
    except RuntimeError as exc:
        if download:
            raise
        raise FileNotFoundError(
            f"MNIST raw files not found under {data_dir / 'MNIST' / 'raw'} "
            "(expected train-images-idx3-ubyte etc.); pass download=True to fetch them"
        ) from exc
    return ds.data, ds.targets


def load_digit_splits(
    data_dir: str | Path,
    classes: Sequence[int] = (0, 1, 2, 3, 4),
    val_fraction: float = 0.3,
    seed: int = 0,
    download: bool = False,
) -> DigitSplits:
    """Load MNIST restricted to ``classes`` as preloaded tensors.

    The official training set (restricted to ``classes``) is shuffled with a
    ``torch.Generator`` seeded by ``seed``; the first ``round(N * (1 - val_fraction))``
    samples form the train split, the rest validation. For digits 0-4 and the defaults
    that is 21,417 train / 9,179 validation / 5,139 test samples.

    Args:
        data_dir: directory holding ``MNIST/raw/`` (torchvision's ``root``).
        classes: distinct digits in head order.
        val_fraction: share of the training set held out for validation, in [0, 1).
        seed: split seed.
        download: let torchvision download the files when they are missing.

    Raises:
        FileNotFoundError: files missing and ``download`` is False.
        ValueError: bad ``classes`` or ``val_fraction``.
    """
    classes = check_classes(classes)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    data_dir = Path(data_dir)
    train_images, train_targets = _read_mnist(data_dir, train=True, download=download)
    test_images, test_targets = _read_mnist(data_dir, train=False, download=download)

    x, y = _select(train_images, train_targets, classes)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(x.shape[0], generator=gen)
    n_train = round(x.shape[0] * (1.0 - val_fraction))
    train_idx, val_idx = perm[:n_train], perm[n_train:]
    test_x, test_y = _select(test_images, test_targets, classes)
    return DigitSplits(
        classes=classes,
        train_x=x[train_idx].contiguous(),
        train_y=y[train_idx].contiguous(),
        val_x=x[val_idx].contiguous(),
        val_y=y[val_idx].contiguous(),
        test_x=test_x.contiguous(),
        test_y=test_y.contiguous(),
    )
