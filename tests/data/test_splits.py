"""The one few-shot draw (Dassl's), the base/new class split and class subsets by name."""

from __future__ import annotations

import math
import random

import pytest
from coop_miniature import write_coop_miniature

from peft_skip.data import (
    ImageDataset,
    load_dataset_spec,
    sample_few_shot,
    short_classes,
    split_base_new,
    subset_classes,
)
from peft_skip.data.coop import load_coop_dataset
from peft_skip.data.coop_fewshot import coop_few_shot
from peft_skip.data.splits import check_same_classes, check_shots


def test_sample_few_shot_is_seeded_and_balanced():
    dataset = load_dataset_spec("digits", "train")
    first = sample_few_shot(dataset, 4, seed=1)
    assert first.class_counts() == [4] * 10
    assert first.items == sample_few_shot(dataset, 4, seed=1).items
    assert first.items != sample_few_shot(dataset, 4, seed=2).items
    assert len(set(first.items)) == 40


def test_sample_few_shot_walks_classes_in_order_of_first_appearance_with_one_stream():
    # Class 1 appears first: its draw comes first and takes the stream's first numbers; items stay as sampled.
    dataset = ImageDataset(["a", "b"], [f"i{k}" for k in range(8)], [1, 0, 1, 0, 1, 0, 1, 0])
    rng = random.Random(3)
    expected = rng.sample(["i0", "i2", "i4", "i6"], 2) + rng.sample(["i1", "i3", "i5", "i7"], 2)
    assert sample_few_shot(dataset, 2, seed=3).items == expected


def test_short_classes_are_kept_whole_and_reported():
    dataset = ImageDataset(["cat", "dog"], ["a", "b", "c", "d"], [0, 0, 0, 1])
    drawn = sample_few_shot(dataset, 2, 0)
    assert drawn.class_counts() == [2, 1] and "d" in drawn.items
    assert short_classes(drawn, 2) == {"dog": 1} and short_classes(drawn, 1) == {}


def test_requests_the_data_cannot_satisfy_are_refused_in_one_line():
    dataset = ImageDataset(["cat", "dog", "eel"], ["a", "b", "c", "d"], [0, 0, 0, 1])
    with pytest.raises(ValueError, match=r"\['eel'\] have zero images"):
        check_shots(dataset, 1)
    dataset = ImageDataset(["cat", "dog"], ["a", "b", "c", "d"], [0, 0, 0, 1])
    with pytest.raises(ValueError, match="--shots 100 asked but no class has more than 3 images") as err:
        check_shots(dataset, 100)
    assert "\n" not in str(err.value)
    check_shots(dataset, 3)  # the largest class's count is still allowed; "dog" is kept whole
    assert sample_few_shot(dataset, 100, 0).class_counts() == [3, 1]  # the draw itself is Dassl's: never refuses
    with pytest.raises(ValueError, match="at least 1"):
        check_shots(dataset, 0)
    with pytest.raises(ValueError, match="at least 1"):
        sample_few_shot(dataset, 0, 0)


@pytest.mark.parametrize("shots, seed", [(1, 1), (4, 2), (8, 3)])
def test_train_and_benchmark_draw_the_same_images_from_the_same_split(tmp_path, shots, seed):
    root = write_coop_miniature(tmp_path / "data", datasets=("dtd",))
    train = load_coop_dataset("dtd", root, "train")
    benchmark_train, _ = coop_few_shot("dtd", root, shots, seed, tmp_path / "runs")
    assert sample_few_shot(train, shots, seed).items == benchmark_train.items  # 8 shots of 6 images: kept whole
    drawn = load_dataset_spec("dtd", "train", data_root=str(root))  # `peft-skip train --data dtd`'s loader
    assert sample_few_shot(drawn, shots, seed).items == benchmark_train.items


@pytest.mark.parametrize("num_classes, num_base", [(2, 1), (5, 3), (10, 5), (37, 19), (101, 51)])
def test_split_base_new(num_classes, num_base):
    names = [f"c{i}" for i in range(num_classes)]
    base, new = split_base_new(ImageDataset(names, names, list(range(num_classes))))
    assert base == names[:num_base] and new == names[num_base:]
    assert num_base == math.ceil(num_classes / 2)


def test_subset_classes_relabels_by_name():
    dataset = ImageDataset(["a", "b", "c", "d"], list("pqrstu"), [0, 1, 2, 3, 2, 1])
    new = subset_classes(dataset, ["c", "d"])
    assert new.class_names == ["c", "d"] and new.items == ["r", "s", "t"] and new.labels == [0, 1, 0]
    swapped = subset_classes(dataset, ["d", "b"])
    assert swapped.class_names == ["d", "b"] and swapped.labels == [1, 0, 1]
    with pytest.raises(ValueError, match="duplicates"):
        subset_classes(dataset, ["b", "b"])
    with pytest.raises(ValueError, match=r"\['e'\] are not classes of this dataset"):
        subset_classes(dataset, ["e"])
    assert subset_classes(dataset.with_decoding("dassl"), ["a"]).decoding == "dassl"  # as Dassl reads the test set


def test_class_identity_is_by_name_when_train_and_test_hold_different_class_sets():
    # train/ holds a, b, c, d; test/ lacks "b": by index, test's class 1 ("c") would pass for base class "b".
    train = ImageDataset(["a", "b", "c", "d"], list("pqrs"), [0, 1, 2, 3])
    test = ImageDataset(["a", "c", "d"], list("xyz"), [0, 1, 2])
    base, new = split_base_new(train)
    assert (base, new) == (["a", "b"], ["c", "d"])
    assert subset_classes(test, new).items == ["y", "z"]
    with pytest.raises(ValueError, match=r"\['b'\] are not classes"):
        subset_classes(test, base)
    with pytest.raises(ValueError, match=r"test split lacks \['b'\] and adds \[\]") as err:
        check_same_classes(train, test)
    assert "\n" not in str(err.value)
    check_same_classes(train, ImageDataset(["d", "c", "b", "a"], ["w"], [0]))  # the same names, in any order
