"""Which images and classes a run sees: the few-shot draw, the base-to-new class split, class subsets by name.

One implementation of each, used by `peft-skip train`, `peft-skip benchmark` and the benchmarks. The few-shot draw is
Dassl's (`DatasetBase.generate_fewshot_dataset`): Python's `random` seeded with the run's seed, then class by class in
order of first appearance `random.sample(images, k)`, a class with fewer than k images kept whole. The base / new
split is Dassl's `subsample_classes`: the labels present, sorted, the first ceil(C / 2) base. Classes are identified
by name, so that a train and a test split whose folders hold different class sets are never matched by index.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import replace

from .dataset import ImageDataset


def few_shot_indices(labels: Sequence[int], shots: int, rng: random.Random) -> list[int]:
    """Indices of `shots` items per class, in Dassl's order: classes by first appearance, items as sampled.

    Args:
        labels (`Sequence[int]`): The class of every item.
        shots (`int`): Items per class; a class with fewer keeps all of its items (no repeats), as in Dassl.
        rng (`random.Random`): The draw's stream; Dassl draws a dataset's val split from the stream its train split
            left.
    """
    if shots < 1:
        raise ValueError(f"shots must be at least 1, got {shots}.")
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    chosen = []
    for members in by_class.values():
        chosen += rng.sample(members, shots) if len(members) >= shots else members
    return chosen


def check_shots(dataset: ImageDataset, shots: int) -> None:
    """Refuses a request the data cannot satisfy, before a run does any work: a class without images, or `shots`
    above every class's images (`sample_few_shot` would then silently draw fewer, as Dassl does).

    Some classes having fewer than `shots` images is not refused: the draw keeps them whole, as Dassl keeps them, and
    the runs record them (`short_classes`).

    Raises:
        ValueError: One line naming the classes or the largest class and how to fix it.
    """
    if shots < 1:
        raise ValueError(f"shots must be at least 1, got {shots}.")
    counts = dataset.class_counts()
    empty = [name for name, count in zip(dataset.class_names, counts, strict=True) if not count]
    if empty:
        raise ValueError(f"Classes {empty} have zero images: drop them (subset_classes) or add images.")
    if shots > max(counts):
        raise ValueError(
            f"--shots {shots} asked but no class has more than {max(counts)} images: use --shots {max(counts)} or "
            "fewer, or add images."
        )


def short_classes(dataset: ImageDataset, shots: int) -> dict[str, int]:
    """The classes of `dataset` with fewer than `shots` images, and how many they have (a draw keeps them whole)."""
    counts = zip(dataset.class_names, dataset.class_counts(), strict=True)
    return {name: count for name, count in counts if count < shots}


def sample_few_shot(dataset: ImageDataset, shots: int, seed: int) -> ImageDataset:
    """`shots` images of each class drawn as Dassl draws them with `seed` (same seed, same images, same order).

    Args:
        dataset (`ImageDataset`): The images to draw from (a train split).
        shots (`int`): Images per class; a class with fewer is kept whole.
        seed (`int`): Seed of the draw (`random.Random(seed)`, the stream Dassl's `random.seed(seed)` gives).

    Runs call `check_shots` first.
    """
    return dataset.subset(few_shot_indices(dataset.labels, shots, random.Random(seed)))


def split_base_new(dataset: ImageDataset) -> tuple[list[str], list[str]]:
    """Base-to-new protocol of CoOp / CoCoOp (Dassl's `subsample_classes`): the classes with images in `dataset`
    (the training split), in label order; the first ceil(C / 2) are base, the rest new.

    Returns:
        `(base, new)`: the class names of each half.
    """
    present = sorted(set(dataset.labels))
    if len(present) < 2:
        raise ValueError(f"A base/new split needs at least 2 classes, got {len(present)}.")
    names = [dataset.class_names[label] for label in present]
    middle = math.ceil(len(names) / 2)
    return names[:middle], names[middle:]


def subset_classes(dataset: ImageDataset, classes: Sequence[str]) -> ImageDataset:
    """The images of the classes named `classes` only, relabelled 0..k-1 in the order of `classes`.

    Args:
        dataset (`ImageDataset`): The images to keep from.
        classes (`Sequence[str]`): Names of the classes to keep, each once; each must be a class of `dataset`.
    """
    classes = [str(name) for name in classes]
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes {classes} has duplicates: list each class once.")
    label_of = {name: label for label, name in enumerate(dataset.class_names)}
    missing = [name for name in classes if name not in label_of]
    if missing:
        raise ValueError(
            f"Classes {missing[:5]} are not classes of this dataset ({len(dataset.class_names)} classes, e.g. "
            f"{dataset.class_names[:3]}): name classes it has."
        )
    new_label = {label_of[name]: i for i, name in enumerate(classes)}
    keep = [i for i, label in enumerate(dataset.labels) if label in new_label]
    # `replace` keeps every other field (source, decoding) as it is.
    return replace(
        dataset,
        class_names=classes,
        items=[dataset.items[i] for i in keep],
        labels=[new_label[dataset.labels[i]] for i in keep],
    )


def check_same_classes(train: ImageDataset, test: ImageDataset) -> None:
    """Refuses a base-to-new test split whose classes differ from the training split's (by name): a base or new
    class without test images, or test classes in neither group, would be scored wrongly or silently dropped."""
    missing = [name for name in train.class_names if name not in test.class_names]
    extra = [name for name in test.class_names if name not in train.class_names]
    if missing or extra:
        raise ValueError(
            f"base_to_new needs the same classes in the train and test splits; the test split lacks {missing[:5]} "
            f"and adds {extra[:5]}: give both splits the same class folders."
        )
