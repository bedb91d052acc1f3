"""Discrete image data for image flows: scikit-learn's 8x8 digits and the MNIST test set."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

__all__ = ["ImageSplit", "default_data_dir", "load_digits", "load_mnist"]


class ImageSplit(NamedTuple):
    """Integer-valued images of shape ``(N, 1, H, W)`` (float tensors) and labels, split."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    levels: int


def _split(images: np.ndarray, labels: np.ndarray, num_test: int, seed: int, levels: int):
    if not isinstance(num_test, int) or not 0 < num_test < len(images):
        raise ValueError(
            f"num_test must be an integer in [1, {len(images) - 1}], got {num_test!r}"
        )
    order = np.random.default_rng(seed).permutation(len(images))
    x = torch.as_tensor(images[order], dtype=torch.get_default_dtype()).unsqueeze(1)
    y = torch.as_tensor(labels[order], dtype=torch.long)
    return ImageSplit(x[num_test:], y[num_test:], x[:num_test], y[:num_test], levels)


def load_digits(num_test: int = 360, seed: int = 0) -> ImageSplit:
    """scikit-learn's 1 797 handwritten digits (8x8, grey levels 0-16), split at random.

    Ships with scikit-learn, so it needs no download. ``levels`` is 17.

    Arguments:
        num_test: The number of held-out images (default 360, 20 %).
        seed: The seed of the split.

    Example:
        >>> data = load_digits()
        >>> data.train_x.shape, data.test_x.shape, data.levels, int(data.train_x.max())
        (torch.Size([1437, 1, 8, 8]), torch.Size([360, 1, 8, 8]), 17, 16)
    """
    from sklearn.datasets import load_digits as sk_load_digits

    digits = sk_load_digits()
    return _split(digits.images.astype(np.int64), digits.target, num_test, seed, levels=17)


def default_data_dir() -> Path:
    """``$PYRO_FLOWS_DATA`` if set, else ``../shared/data`` next to the repository root."""
    env = os.environ.get("PYRO_FLOWS_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def load_mnist(
    data_dir: str | Path | None = None, num_test: int = 1000, seed: int = 0
) -> ImageSplit | None:
    """The 10 000 MNIST test digits (28x28, 256 levels) from ``mnist/mnist_t10k.npz``, split.

    Returns None when the file is absent (callers skip), so nothing depends on the data.

    Arguments:
        data_dir: The folder holding ``mnist/mnist_t10k.npz`` (default
            :func:`default_data_dir`).
        num_test: The number of held-out images (default 1 000, leaving 9 000 to train on).
        seed: The seed of the split.
    """
    path = Path(data_dir or default_data_dir()) / "mnist" / "mnist_t10k.npz"
    if not path.is_file():
        return None
    with np.load(path) as f:
        images, labels = f["images"], f["labels"]
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{path}: expected uint8 images of shape (N, H, W), got {images.shape}")
    return _split(images.astype(np.int64), labels, num_test, seed, levels=256)
