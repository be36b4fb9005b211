"""The offline datasets: Fashion-MNIST from Debian's IDX files and scikit-learn's digits."""

from __future__ import annotations

import numpy as np
import pytest

from peft_skip.data import (
    FASHION_MNIST_CLASSES,
    load_dataset_spec,
    load_fashion_mnist,
)

FASHION_ROOT = "/usr/share/datasets/fashion-mnist"


def test_fashion_mnist():
    test = load_fashion_mnist("test")
    assert len(test) == 10_000 and test.class_names == FASHION_MNIST_CLASSES
    assert test.class_counts() == [1000] * 10
    image = test.image(0)
    assert image.mode == "RGB" and image.size == (28, 28)
    r, g, b = (np.asarray(image)[..., c] for c in range(3))
    assert (r == g).all() and (g == b).all() and r.max() > 100
    assert test.labels[0] == 9  # the first test image is an ankle boot
    assert load_dataset_spec("fashion-mnist", "test").fingerprint() == test.fingerprint()
    with pytest.raises(ValueError, match="splits 'train' and 'test'"):
        load_fashion_mnist("val")


def test_fashion_mnist_missing_files_say_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("test", root=str(tmp_path))


def test_fashion_mnist_uncompressed_idx(tmp_path):
    import gzip

    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(f"{FASHION_ROOT}/{name}.gz", "rb") as f:
            (tmp_path / name).write_bytes(f.read())
    uncompressed = load_fashion_mnist("test", root=str(tmp_path))
    reference = load_fashion_mnist("test")
    assert uncompressed.labels == reference.labels
    assert np.array_equal(np.asarray(uncompressed.image(123)), np.asarray(reference.image(123)))


def test_digits_split_is_deterministic_and_disjoint():
    train, test = load_dataset_spec("digits", "train"), load_dataset_spec("digits", "test")
    assert len(train) + len(test) == 1797 and not set(train.items) & set(test.items)
    assert train.items == load_dataset_spec("digits", "train").items
    assert all(count > 0 for count in test.class_counts())
    assert train.image(0).size == (8, 8) and train.image(0).mode == "RGB"
