"""Datasets that work offline: Fashion-MNIST from Debian's IDX files and scikit-learn's handwritten digits."""

from __future__ import annotations

import gzip
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import PIL.Image

from .dataset import ImageDataset

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
DIGITS_CLASSES = [str(digit) for digit in range(10)]


@dataclass
class _ArraySource:
    """Rows of a uint8 array of shape (N, H, W) or (N, H, W, 3)."""

    images: np.ndarray
    key: str

    def load(self, item: int) -> PIL.Image.Image:
        return PIL.Image.fromarray(self.images[item])


def _read_idx(path: Path) -> np.ndarray:
    """Reads an IDX file (the MNIST format), gzip-compressed or not."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{os.fspath(path)!r} is not an unsigned-byte IDX file.")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != math.prod(shape):
        raise ValueError(f"{os.fspath(path)!r} is truncated: expected {math.prod(shape)} values, got {array.size}.")
    return array.reshape(shape)


@lru_cache(maxsize=4)
def _fashion_mnist_arrays(root: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = {"train": "train", "test": "t10k"}[split]
    arrays = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        candidates = [Path(root) / f"{prefix}-{kind}{suffix}" for suffix in (".gz", "")]
        found = next((p for p in candidates if p.exists()), None)
        if found is None:
            raise FileNotFoundError(
                f"Fashion-MNIST file {candidates[0].name} not found in {root!r}. Install it with "
                "`apt-get install dataset-fashion-mnist` (files go to /usr/share/datasets/fashion-mnist) "
                "or pass `root`."
            )
        arrays.append(_read_idx(found))
    images, labels = arrays
    if len(images) != len(labels):
        raise ValueError(f"Fashion-MNIST {split}: {len(images)} images but {len(labels)} labels in {root!r}.")
    return images, labels


def load_fashion_mnist(split: str = "train", root: str = "/usr/share/datasets/fashion-mnist") -> ImageDataset:
    """Fashion-MNIST (10 classes, 28x28 grey) from the IDX files of Debian's `dataset-fashion-mnist`.

    Args:
        split (`str`): `"train"` (60,000 images) or `"test"` (10,000).
        root (`str`): Folder of the IDX files, gzip-compressed or not.
    """
    if split not in ("train", "test"):
        raise ValueError(f"Fashion-MNIST has splits 'train' and 'test', not {split!r}.")
    images, labels = _fashion_mnist_arrays(os.fspath(root), split)
    source = _ArraySource(images, key=f"fashion-mnist:{split}:{images.shape}")
    return ImageDataset(list(FASHION_MNIST_CLASSES), list(range(len(labels))), labels.tolist(), source)


def load_digits(split: str = "train", test_fraction: float = 0.3) -> ImageDataset:
    """scikit-learn's handwritten digits (1797 8x8 grey images, 10 classes), split per class with a fixed seed.

    Args:
        split (`str`): `"train"` or `"test"`; the two are disjoint and together hold every image.
        test_fraction (`float`): Fraction of each class's images in the test split.
    """
    if split not in ("train", "test"):
        raise ValueError(f"digits has splits 'train' and 'test', not {split!r}.")
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    rng = np.random.default_rng(0)
    rows = []
    for digit in range(10):
        members = rng.permutation(np.flatnonzero(digits.target == digit))
        num_test = round(len(members) * test_fraction)
        rows += sorted((members[:num_test] if split == "test" else members[num_test:]).tolist())
    source = _ArraySource(images, key=f"sklearn-digits:{images.shape}")
    return ImageDataset(list(DIGITS_CLASSES), rows, digits.target[rows].tolist(), source)
