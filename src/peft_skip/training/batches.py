"""The batches of an epoch: image indices drawn as the reference's samplers draw them (one class per batch, or at
random), each image at most once."""

from __future__ import annotations

import torch

from .training_args import SkipTrainingArguments


def class_batches(
    labels: torch.Tensor,
    batch_size: int,
    per_class: bool,
    generator: torch.Generator,
    drop_last: bool = False,
) -> list[torch.Tensor]:
    """One epoch of batches of image indices, each image at most once.

    The reference's samplers (`trainers/feature_loader.py`): "random" draws `batch_size` images at a time from those
    left; "batch_random" repeatedly picks a class uniformly among the classes with images left and draws `batch_size`
    of its images. Both stop drawing from a pool once fewer than `batch_size` images remain (`drop_last`).

    Args:
        labels (`torch.Tensor`): Class of every training image, shape `(n,)`.
        batch_size (`int`): Images per batch.
        per_class (`bool`): Draw every batch from a single class (the reference's "batch_random").
        generator (`torch.Generator`): Source of the shuffling.
        drop_last (`bool`): Drop incomplete batches (per class with `per_class`); else they are kept, smaller.

    Returns:
        `list[torch.Tensor]`: Index tensors of shape `(batch_size,)` (`(≤ batch_size,)` without `drop_last`) in
        training order.
    """

    def chunks(indices: torch.Tensor) -> list[torch.Tensor]:
        split = list(indices[torch.randperm(len(indices), generator=generator)].split(batch_size))
        return [b for b in split if len(b) == batch_size] if drop_last else split

    if not per_class:
        return chunks(torch.arange(len(labels)))
    pools = [chunks((labels == c).nonzero().flatten()) for c in labels.unique(sorted=True)]
    pools = [pool for pool in pools if pool]
    batches = []
    while pools:
        i = int(torch.randint(len(pools), (), generator=generator))
        batches.append(pools[i].pop(0))
        if not pools[i]:
            del pools[i]
    return batches


def uses_class_batches(args: SkipTrainingArguments, labels: torch.Tensor) -> bool:
    """Whether batches come from one class each: `sampler="class"`, or `"auto"` when the recipe's rule picks its
    one-class sampler for the smallest class (the reference: "batch_random" from `sampler_min_shots` = 4 shots on)
    and, with `dataloader_drop_last`, that class makes a full batch."""
    smallest = int(torch.bincount(labels).min())
    recipe = args.recipe()
    enough = recipe.sampler_for(smallest) == recipe.sampler
    enough = enough and (smallest >= args.batch_size or not args.dataloader_drop_last)
    return args.sampler == "class" or (args.sampler == "auto" and enough)


def check_batches(labels: torch.Tensor, class_names: list[str], args: SkipTrainingArguments, per_class: bool) -> None:
    """Refuses batches that would leave a class, or every image, out of training (before any work is done).

    Args:
        labels (`torch.Tensor`): Class of every training image, shape `(n,)`.
        class_names (`list[str]`): Names of the classes, in label order.
        args (`SkipTrainingArguments`): Gives `batch_size` and `dataloader_drop_last`.
        per_class (`bool`): Whether every batch is drawn from one class.
    """
    if not args.dataloader_drop_last:
        return
    counts = torch.bincount(labels, minlength=len(class_names))
    if per_class and int(counts.min()) < args.batch_size:
        small = int(counts.argmin())
        raise ValueError(
            f"Class {class_names[small]!r} has {int(counts[small])} images, fewer than batch_size "
            f"{args.batch_size}, so one-class batches without incomplete ones never train on it: lower "
            "batch_size, use sampler='random', or set dataloader_drop_last=False."
        )
    if len(labels) < args.batch_size:
        raise ValueError(
            f"{len(labels)} training images make no full batch of {args.batch_size}: lower batch_size or set "
            "dataloader_drop_last=False."
        )
