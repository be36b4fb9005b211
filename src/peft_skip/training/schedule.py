"""The optimiser and the learning-rate schedule of a run: one parameter group per tower, each with its own peak
learning rate, under Dassl's per-epoch schedule (constant warm-up, then a cosine restarting at the peak) or a
per-step cosine."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ..towers import get_towers
from .recipes import dassl_cosine
from .training_args import SkipTrainingArguments


def make_optimizer(model: nn.Module, args: SkipTrainingArguments) -> torch.optim.Optimizer:
    """The optimiser of the trainable parameters, in two named groups: `"vision"` (the image tower's layers and head)
    at `args.vision_learning_rate`, and `"text"` (every other trainable parameter: the text tower's) at
    `args.learning_rate`.

    Args:
        model (`nn.Module`): The model being trained (a `PeftModel` or its base model).
        args (`SkipTrainingArguments`): Gives the optimiser and its settings.
    """
    towers = get_towers(model)
    vision = {id(p) for p in towers.vision.layer_and_head_parameters()} if towers.vision is not None else set()
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"name": "text", "params": [p for p in trainable if id(p) not in vision], "lr": args.learning_rate},
        {"name": "vision", "params": [p for p in trainable if id(p) in vision], "lr": args.vision_learning_rate},
    ]
    groups = [group for group in groups if group["params"]]
    if args.optim == "sgd":
        recipe = args.recipe()
        return torch.optim.SGD(
            groups,
            lr=args.learning_rate,
            momentum=args.momentum,
            weight_decay=args.weight_decay,
            nesterov=recipe.nesterov,
            dampening=recipe.dampening,
        )
    return torch.optim.AdamW(groups, lr=args.learning_rate, weight_decay=args.weight_decay)


def lr_lambda(args: SkipTrainingArguments, peak_lr: float, steps_per_epoch: int = 1) -> Callable[[int], float]:
    """Factor of `peak_lr` (a parameter group's learning rate) after `t` steps of the scheduler.

    `dassl_cosine` (`t` counts epochs, the scheduler is stepped once per epoch): `warmup_epochs` epochs at
    `warmup_lr`, then the cosine restarts at `peak_lr` and decays over `num_train_epochs` epochs, as Dassl's
    `ConstantWarmupScheduler` around `CosineAnnealingLR` does (`recipes.dassl_cosine`, also `Recipe.lr_at_epoch`'s).
    `cosine_per_step` (`t` counts optimiser steps, `steps_per_epoch` per epoch): warm-up, then a cosine over all
    steps, warm-up included, that goes on where it would be.
    """
    warmup = args.warmup_lr / peak_lr if args.warmup_epochs else 1.0
    if args.lr_scheduler_type == "dassl_cosine":

        def per_epoch(epoch: int) -> float:
            if epoch < args.warmup_epochs:
                return warmup
            return dassl_cosine(epoch, args.warmup_epochs, args.num_train_epochs)

        return per_epoch
    total = args.num_train_epochs * steps_per_epoch
    warmup_steps = args.warmup_epochs * steps_per_epoch

    def per_step(step: int) -> float:
        if step < warmup_steps:
            return warmup
        return 0.5 * (1.0 + math.cos(math.pi * step / total))

    return per_step


def make_scheduler(
    optimizer: torch.optim.Optimizer, args: SkipTrainingArguments, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule of every parameter group (see `lr_lambda`); step it once per epoch for `dassl_cosine`, once per
    optimiser step for `cosine_per_step`."""
    factors = [lr_lambda(args, group["lr"], steps_per_epoch) for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factors)
