"""Loading digit subsets as preloaded tensors (on a tiny fake MNIST in the idx format)."""

from __future__ import annotations

import pytest
import torch
from torchvision import transforms

from models.data import MNIST_MEAN, MNIST_STD, load_digit_splits, normalize_images


def test_normalize_matches_torchvision_transforms():
    images = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    pipeline = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))]
    )
    expected = torch.stack([pipeline(img.numpy()) for img in images]).reshape(3, 784)
    torch.testing.assert_close(normalize_images(images), expected)


def test_splits_select_digits_and_map_labels(fake_mnist_dir):
    splits = load_digit_splits(fake_mnist_dir, classes=(7, 3), val_fraction=0.25, seed=5)
    assert splits.classes == (7, 3)
    # 200 train images with labels cycling 0..9: 20 sevens + 20 threes -> 30 train / 10 val
    assert splits.train_x.shape == (30, 784) and splits.val_x.shape == (10, 784)
    assert splits.test_x.shape == (10, 784) and splits.test_y.tolist().count(0) == 5
    assert splits.train_x.dtype == torch.float32 and splits.train_y.dtype == torch.int64
    assert set(splits.train_y.tolist()) <= {0, 1}


def test_split_is_deterministic_by_seed(fake_mnist_dir):
    a = load_digit_splits(fake_mnist_dir, seed=1)
    b = load_digit_splits(fake_mnist_dir, seed=1)
    c = load_digit_splits(fake_mnist_dir, seed=2)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.val_y, b.val_y)
    assert not torch.equal(a.train_x, c.train_x)
    # train and val together are exactly the selected training images
    assert a.train_x.shape[0] + a.val_x.shape[0] == 100


def test_missing_files_raise_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="MNIST"):
        load_digit_splits(tmp_path)


@pytest.mark.parametrize("classes", [(), (1, 1), (10,), (-1,), ("3",)])
def test_bad_classes_rejected(fake_mnist_dir, classes):
    with pytest.raises(ValueError):
        load_digit_splits(fake_mnist_dir, classes=classes)
