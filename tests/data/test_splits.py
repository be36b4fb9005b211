"""k-shot sampling, the base/new class split and class subsets."""

from __future__ import annotations

import math

import pytest

from peft_skip.data import (
    ImageDataset,
    load_dataset_spec,
    sample_few_shot,
    split_base_new,
    subset_classes,
)


def test_sample_few_shot_is_seeded_and_balanced():
    dataset = load_dataset_spec("digits", "train")
    first = sample_few_shot(dataset, 4, seed=1)
    assert first.class_counts() == [4] * 10
    assert first.items == sample_few_shot(dataset, 4, seed=1).items
    assert first.items != sample_few_shot(dataset, 4, seed=2).items
    assert len(set(first.items)) == 40


def test_sample_few_shot_errors():
    dataset = ImageDataset(["cat", "dog", "eel"], ["a", "b", "c", "d"], [0, 0, 0, 1])
    with pytest.raises(ValueError, match=r"\['eel'\] have zero images"):
        sample_few_shot(dataset, 1, 0)
    dataset = ImageDataset(["cat", "dog"], ["a", "b", "c", "d"], [0, 0, 0, 1])
    with pytest.raises(ValueError, match="2 shots asked but 'dog' has 1 images"):
        sample_few_shot(dataset, 2, 0)
    with pytest.raises(ValueError, match="at least 1"):
        sample_few_shot(dataset, 0, 0)


@pytest.mark.parametrize("num_classes, num_base", [(2, 1), (5, 3), (10, 5), (37, 19), (101, 51)])
def test_split_base_new(num_classes, num_base):
    base, new = split_base_new([f"c{i}" for i in range(num_classes)])
    assert base == list(range(num_base)) and new == list(range(num_base, num_classes))
    assert num_base == math.ceil(num_classes / 2)


def test_subset_classes_relabels():
    dataset = ImageDataset(["a", "b", "c", "d"], list("pqrstu"), [0, 1, 2, 3, 2, 1])
    new = subset_classes(dataset, [2, 3])
    assert new.class_names == ["c", "d"] and new.items == ["r", "s", "t"] and new.labels == [0, 1, 0]
    swapped = subset_classes(dataset, [3, 1])
    assert swapped.class_names == ["d", "b"] and swapped.labels == [1, 0, 1]
    with pytest.raises(ValueError, match="duplicates"):
        subset_classes(dataset, [1, 1])
    with pytest.raises(ValueError, match="out of range"):
        subset_classes(dataset, [4])
