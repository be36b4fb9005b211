"""What every method of `compare.py` trains and is scored on: the few-shot images, their batches and the evaluation
sets, written once to `workload.pt` and read by every method process (`method_run.py`).

Few-shot: train on `shots` images of every class, score on the test split among all classes. Base-to-new (CoOp's
protocol): train on the base half of the classes, score base test images among the base classes and new test images
among the new ones. `eval_on="held-out"` scores the training images that were not drawn as shots instead of the test
split, so that hyper-parameters can be chosen without looking at the test images.
"""

from __future__ import annotations

import dataclasses
import os
import random

import torch

from peft_skip.data import (
    ImageDataset,
    ImageTransform,
    build_prompts,
    load_dataset_spec,
    load_fashion_mnist,
    sample_few_shot,
    split_base_new,
    subset_classes,
)

TEMPLATE = "a photo of a {}."
SYNTHESISABLE = ("fashion-mnist", "digits")  # data sets of 10 classes that --classes extends


def training_images(data: str, num_classes: int, shots: int, seed: int) -> tuple[ImageDataset, ImageDataset, bool]:
    """The whole training split and `shots` images per class drawn from it.

    For Fashion-MNIST and scikit-learn's digits (which the offline GPU machine has), `num_classes` of their classes;
    beyond their 10, classes get synthesised names and reuse the images of real class `c % 10`. Other data sets keep
    all their classes.

    Returns:
        `(split, shots, synthetic)`: the split, the drawn images, and whether classes were synthesised.
    """
    split = load_fashion_mnist("train") if data == "fashion-mnist" else load_dataset_spec(data, "train")
    if data not in SYNTHESISABLE:
        return split, sample_few_shot(split, shots, seed), False
    real = len(split.class_names)
    if num_classes <= real:
        split = subset_classes(split, split.class_names[:num_classes])
        return split, sample_few_shot(split, shots, seed), False
    by_class = [[i for i, label in enumerate(split.labels) if label == c] for c in range(real)]
    rng = random.Random(seed)
    names, items, labels = [], [], []
    for c in range(num_classes):
        base = split.class_names[c % real]
        names.append(base if c < real else f"{base} {c // real}")
        for index in rng.sample(by_class[c % real], shots):
            items.append(split.items[index])
            labels.append(c)
    return split, ImageDataset(names, items, labels, split.source), True


def evaluation_images(split: ImageDataset, shots: ImageDataset, data: str, eval_on: str) -> ImageDataset:
    """The test split, or with `eval_on="held-out"` the images of `split` not drawn into `shots`, labelled with the
    classes of `shots` (test images of classes it lacks are dropped; synthesised classes have none)."""
    if eval_on == "held-out":
        drawn = set(shots.items)
        return split.subset([i for i, item in enumerate(split.items) if item not in drawn])
    test = load_dataset_spec(data, "test")
    # By name, never by index; the synthesised classes have no test images.
    present = [name for name in shots.class_names if name in test.class_names]
    tested = subset_classes(test, present)
    labels = [shots.class_names.index(present[label]) for label in tested.labels]
    return dataclasses.replace(tested, class_names=list(shots.class_names), labels=labels)


def _sample(dataset: ImageDataset, limit: int, seed: int) -> ImageDataset:
    """At most `limit` images of `dataset`, drawn with `seed`, in their order."""
    if limit >= len(dataset):
        return dataset
    return dataset.subset(sorted(random.Random(seed).sample(range(len(dataset)), limit)))


def build_workload(
    data: str,
    num_classes: int,
    shots: int,
    seed: int,
    processor,
    epochs: int,
    batch_size: int,
    steps_per_epoch: int | None = None,
    base_to_new: bool = False,
    eval_on: str = "test",
    eval_images: int = 100,
) -> tuple[dict, dict]:
    """The workload of a comparison and its facts.

    Args:
        data (`str`): `fashion-mnist` or any `--data` spec (`world:combos`, a CoOp data set, ...).
        num_classes (`int`): Classes of Fashion-MNIST (others keep theirs).
        shots (`int`): Training images per class.
        seed (`int`): Seeds the shots, the batches and the evaluation images.
        processor: The model's processor (tokenizer and image processor).
        epochs (`int`): Epochs of batches to draw.
        batch_size (`int`): Images per step.
        steps_per_epoch (`int`, *optional*): Keep only this many steps of each epoch.
        base_to_new (`bool`): Train on the base half of the classes; score base and new.
        eval_on (`str`): `test`, or `held-out` (the training images not drawn as shots).
        eval_images (`int`): Images per evaluation set at most (0: none).

    Returns:
        `(workload, facts)`: the tensors every method reads, and what a report says about them.
    """
    from peft_skip.training.batches import class_batches

    split, train, synthetic = training_images(data, num_classes, shots, seed)
    if eval_on == "held-out" and synthetic:
        raise ValueError("eval_on='held-out' needs real classes: use --classes 10 or fewer, or another --data.")
    evaluation = evaluation_images(split, train, data, eval_on)
    if eval_on == "held-out" and len(evaluation) == 0:
        raise ValueError(f"--shots {shots} draws every training image of {data}: lower it to leave some held out.")
    groups = {"all": list(train.class_names)}
    if base_to_new:
        groups = dict(zip(("base", "new"), split_base_new(train), strict=True))
        train = subset_classes(train, groups["base"])
    transform = ImageTransform.from_processor(processor, train=False)

    def tokenize(names: list[str], template: str) -> dict[str, torch.Tensor]:
        tokens = processor.tokenizer(build_prompts(names, template), padding=True, return_tensors="pt")
        return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}

    def pixels(dataset: ImageDataset) -> torch.Tensor:
        if len(dataset) == 0:
            return torch.zeros(0, 3, 1, 1)
        return torch.stack([transform(dataset.image(i)) for i in range(len(dataset))])

    labels = torch.tensor(train.labels)
    per_class = int(torch.bincount(labels).min()) >= 4  # the reference's single-class batches from 4 shots on
    batches = []
    for epoch in range(epochs):
        drawn = class_batches(labels, batch_size, per_class, torch.Generator().manual_seed(seed + epoch))
        full_steps = len(drawn)
        batches.append(drawn[:steps_per_epoch])
    used = sorted({int(i) for epoch in batches for batch in epoch for i in batch})
    position = {index: p for p, index in enumerate(used)}
    eval_sets = {}
    for name, classes in groups.items():
        images = _sample(subset_classes(evaluation, classes), eval_images, seed)
        class_names = list(classes)
        eval_sets[name] = {
            "prompts": tokenize(class_names, TEMPLATE),
            "name_prompts": tokenize(class_names, "{}."),
            "pixels": pixels(images),
            "labels": torch.tensor(images.labels, dtype=torch.long),
        }
    workload = {
        "prompts": tokenize(train.class_names, TEMPLATE),
        "name_prompts": tokenize(train.class_names, "{}."),
        "train_pixels": pixels(train.subset(used)),
        "train_labels": labels[used],
        "batches": [[torch.tensor([position[int(i)] for i in batch]) for batch in epoch] for epoch in batches],
        "full_steps_per_epoch": full_steps,
        "num_train_images": len(train),
        "batch_size": batch_size,
        "eval_sets": eval_sets,
    }
    facts = {
        "text_tokens": workload["prompts"]["input_ids"].shape[1],
        "synthetic_classes": synthetic,
        "data": data,
        "protocol": "base-to-new" if base_to_new else "few-shot",
        "eval_on": eval_on,
        "classes": len(train.class_names),
        "train_images": len(train),
        "timed_images": len(used),
        "eval_images": {name: len(s["labels"]) for name, s in eval_sets.items()},
        "full_steps_per_epoch": full_steps,
    }
    return workload, facts


def save_workload(workload: dict, work_dir: str) -> str:
    path = os.path.join(work_dir, "workload.pt")
    torch.save(workload, path)
    return path
