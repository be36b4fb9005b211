"""Which images and classes a run sees: k-shot sampling, the base-to-new class split, class subsets."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from .dataset import ImageDataset


def sample_few_shot(dataset: ImageDataset, shots: int, seed: int) -> ImageDataset:
    """`shots` images of each class, drawn without replacement with `seed` (same seed, same images).

    Args:
        dataset (`ImageDataset`): The images to draw from.
        shots (`int`): Number of images per class.
        seed (`int`): Seed of the draw.

    Raises:
        ValueError: a class has no images, or fewer than `shots`.
    """
    if shots < 1:
        raise ValueError(f"shots must be at least 1, got {shots}.")
    by_class: list[list[int]] = [[] for _ in dataset.class_names]
    for index, label in enumerate(dataset.labels):
        by_class[label].append(index)
    empty = [dataset.class_names[c] for c, members in enumerate(by_class) if not members]
    if empty:
        raise ValueError(f"Classes {empty} have zero images: drop them (subset_classes) or add images.")
    short = [(dataset.class_names[c], len(m)) for c, m in enumerate(by_class) if len(m) < shots]
    if short:
        details = ", ".join(f"{name!r} has {count}" for name, count in short)
        raise ValueError(f"{shots} shots asked but {details} images: lower shots or add images.")
    rng = random.Random(seed)
    chosen = [index for members in by_class for index in sorted(rng.sample(members, shots))]
    return dataset.subset(chosen)


def split_base_new(class_names: Sequence[str]) -> tuple[list[int], list[int]]:
    """Base-to-new protocol of CoOp / CoCoOp: the first ceil(C / 2) classes are base, the rest new.

    Args:
        class_names (`Sequence[str]`): The `C` classes, in the dataset's order.

    Returns:
        `(base, new)`: the class indices of each half.
    """
    num_classes = len(class_names)
    if num_classes < 2:
        raise ValueError(f"A base/new split needs at least 2 classes, got {num_classes}.")
    num_base = math.ceil(num_classes / 2)
    return list(range(num_base)), list(range(num_base, num_classes))


def subset_classes(dataset: ImageDataset, classes: Sequence[int]) -> ImageDataset:
    """The images of `classes` only, relabelled 0..k-1 in the order of `classes`, with those classes' names.

    Args:
        dataset (`ImageDataset`): The images to keep from.
        classes (`Sequence[int]`): Indices of the classes to keep, each once.
    """
    classes = [int(c) for c in classes]
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes {classes} has duplicates: list each class once.")
    bad = [c for c in classes if not 0 <= c < len(dataset.class_names)]
    if bad:
        raise ValueError(
            f"classes {bad} out of range for {len(dataset.class_names)} classes: use indices from 0 to "
            f"{len(dataset.class_names) - 1}."
        )
    new_label = {c: i for i, c in enumerate(classes)}
    keep = [i for i, label in enumerate(dataset.labels) if label in new_label]
    return ImageDataset(
        [dataset.class_names[c] for c in classes],
        [dataset.items[i] for i in keep],
        [new_label[dataset.labels[i]] for i in keep],
        dataset.source,
    )
