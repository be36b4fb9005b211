"""How to train: the arguments of a run, the paper's presets, and the optimiser, schedule and batches they define.

Field names follow `transformers.TrainingArguments` wherever a field means what it means there (`output_dir`,
`num_train_epochs`, `learning_rate`, `seed`, `gradient_accumulation_steps`, `save_total_limit`, `disable_tqdm`,
...); the short command-line flags (`--out`, `--epochs`, `--lr`, ...) are aliases.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from .config import StorageDtype


@dataclass(frozen=True)
class Preset:
    """Hyper-parameters of one of the paper's protocols (ViT-B/16, 16 shots)."""

    learning_rate: float
    num_train_epochs: int
    warmup_epochs: int = 0
    warmup_lr: float = 1e-6


PRESETS: dict[str, Preset] = {
    "few_shot": Preset(learning_rate=1e-5, num_train_epochs=40),
    "base_to_new": Preset(learning_rate=2e-5, num_train_epochs=20, warmup_epochs=1, warmup_lr=1e-6),
    "cross_dataset": Preset(learning_rate=1e-5, num_train_epochs=20),
}


def _arg(default, help: str, *aliases: str, **kwargs):
    """A field with its command-line help and aliases (read by `transformers.HfArgumentParser`)."""
    return field(default=default, metadata={"help": help, **({"aliases": list(aliases)} if aliases else {})}, **kwargs)


@dataclass
class SkipTrainingArguments:
    """How to train. Fields left `None` take the value of `preset`.

    Fields with `compare=False` (where to write, progress bars, resuming, debugging) never change a run's result;
    every other field is part of the run's identity, which `--resume` checks.
    """

    output_dir: str = field(
        metadata={"help": "Where the adapter, metrics.json and per-epoch checkpoints go.", "aliases": ["--out"]},
        compare=False,
    )
    preset: Literal["few_shot", "base_to_new", "cross_dataset"] = _arg(
        "few_shot",
        "The paper's hyper-parameters: few_shot (lr 1e-5, 40 epochs); base_to_new (lr 2e-5, 20 epochs, 1 warm-up "
        "epoch at 1e-6; trains on the first half of the classes, reports base, new and harmonic mean); cross_dataset "
        "(lr 1e-5, 20 epochs).",
    )
    shots: int = _arg(16, "Training images per class (k of the k-shot protocol).")
    num_train_epochs: int | None = _arg(None, "Number of epochs (default: the preset's).", "--epochs")
    learning_rate: float | None = _arg(
        None, "Peak learning rate of the cosine schedule (default: the preset's).", "--lr"
    )
    warmup_epochs: int | None = _arg(None, "Epochs at the constant warm-up lr before the cosine (default: preset's).")
    warmup_lr: float | None = _arg(None, "Learning rate during warm-up (default: the preset's).")
    batch_size: int = _arg(4, "Global batch size, split across processes under `accelerate launch` (paper: 4).")
    gradient_accumulation_steps: int = _arg(1, "Batches per optimiser step; an epoch's last step may take fewer.")
    optim: Literal["sgd", "adamw_torch"] = _arg(
        "sgd", "sgd: the paper's (momentum below); adamw_torch.", "--optimizer"
    )
    momentum: float = _arg(0.9, "SGD momentum.")
    weight_decay: float = _arg(5e-4, "Weight decay of the tuned weights, toward the pre-trained ones (paper: 5e-4).")
    sampler: Literal["auto", "class", "random"] = _arg(
        "auto",
        "class: every batch from one class (the reference's batch_random); random: at random; auto: class when every "
        "class has at least 4 images, like the reference.",
    )
    cache_mode: Literal["paper", "views"] = _arg(
        "paper",
        "paper: re-extract the image cache every epoch with that epoch's augmentation; views: build --views augmented "
        "views once and train epoch e on view e %% views.",
    )
    views: int = _arg(4, "Augmented views of cache_mode 'views'.")
    cache_dtype: StorageDtype = _arg("float32", "Storage dtype of the image cache.")
    cache_dir: str | None = _arg(None, "Memory-map the image cache to this directory instead of keeping it in RAM.")
    mixed_precision: Literal["no", "bf16", "fp16"] = _arg(
        "no", "bf16 autocasts on CPU or GPU; fp16 needs a GPU. Overrides `accelerate launch --mixed_precision`."
    )
    seed: int = _arg(0, "Seeds the few-shot sample, batches, augmentation and token drop.")
    save_total_limit: int = _arg(1, "Per-epoch checkpoints kept (the latest).", "--keep-checkpoints", compare=False)
    resume_from_checkpoint: bool = _arg(
        False,
        "Continue from the latest checkpoint in output_dir (same settings); ends where an uninterrupted run would.",
        "--resume",
        compare=False,
    )
    detect_anomaly: bool = _arg(
        False,
        "Run autograd's anomaly detection: a NaN or infinity in the backward pass names the operation that made it "
        "(slow; for debugging a non-finite loss).",
        compare=False,
    )
    disable_tqdm: bool = _arg(False, "No progress bars.", "--no-progress", compare=False)

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value, choices = getattr(self, f.name), typing.get_args(hints[f.name])
            if typing.get_origin(hints[f.name]) is Literal and value not in choices:
                raise ValueError(f"SkipTrainingArguments.{f.name}={value!r} is invalid; expected one of {choices}.")
        preset = PRESETS[self.preset]
        for name in ("num_train_epochs", "learning_rate", "warmup_epochs", "warmup_lr"):
            if getattr(self, name) is None:
                setattr(self, name, getattr(preset, name))
        for name in ("shots", "num_train_epochs", "batch_size", "gradient_accumulation_steps", "views"):
            if getattr(self, name) < 1:
                raise ValueError(f"SkipTrainingArguments.{name}={getattr(self, name)!r} is invalid; expected >= 1.")
        if self.save_total_limit < 1:
            raise ValueError(f"save_total_limit={self.save_total_limit} is invalid; keep at least 1 checkpoint.")
        if not 0 <= self.warmup_epochs < self.num_train_epochs:
            raise ValueError(
                f"SkipTrainingArguments.warmup_epochs={self.warmup_epochs} is invalid; expected 0 <= warmup_epochs < "
                f"num_train_epochs ({self.num_train_epochs})."
            )
        if not (0 < self.learning_rate < math.inf and 0 < self.warmup_lr < math.inf):
            raise ValueError(
                f"Learning rates must be finite and > 0; got learning_rate={self.learning_rate}, "
                f"warmup_lr={self.warmup_lr}."
            )

    def run_identity(self) -> dict:
        """The fields that change a run's result (all but those with `compare=False`)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.compare}


def make_optimizer(parameters: Sequence[nn.Parameter], args: SkipTrainingArguments) -> torch.optim.Optimizer:
    if args.optim == "sgd":
        return torch.optim.SGD(
            parameters, lr=args.learning_rate, momentum=args.momentum, weight_decay=args.weight_decay
        )
    return torch.optim.AdamW(parameters, lr=args.learning_rate, weight_decay=args.weight_decay)


def lr_lambda(args: SkipTrainingArguments, steps_per_epoch: int) -> Callable[[int], float]:
    """Learning-rate factor per optimiser step: constant `warmup_lr` for the warm-up epochs, then cosine to 0.

    Like the reference, the cosine runs over all epochs, warm-up included, so it resumes where it would be.
    """
    total = args.num_train_epochs * steps_per_epoch
    warmup = args.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return args.warmup_lr / args.learning_rate
        return 0.5 * (1.0 + math.cos(math.pi * step / total))

    return factor


def class_batches(
    labels: torch.Tensor, batch_size: int, per_class: bool, generator: torch.Generator
) -> list[torch.Tensor]:
    """One epoch of batches of image indices, each image exactly once.

    Args:
        labels (`torch.Tensor`): Class of every training image, shape `(n,)`.
        batch_size (`int`): Images per batch; a class's (or the epoch's) last batch may be smaller.
        per_class (`bool`): Draw every batch from a single class (the reference's "batch_random").
        generator (`torch.Generator`): Source of the shuffling.

    Returns:
        `list[torch.Tensor]`: Index tensors of shape `(≤ batch_size,)` in training order.
    """
    if not per_class:
        return list(torch.randperm(len(labels), generator=generator).split(batch_size))
    batches = []
    for c in labels.unique(sorted=True):
        members = (labels == c).nonzero().flatten()
        batches.extend(members[torch.randperm(len(members), generator=generator)].split(batch_size))
    order = torch.randperm(len(batches), generator=generator)
    return [batches[i] for i in order]


def uses_class_batches(args: SkipTrainingArguments, labels: torch.Tensor) -> bool:
    """Whether batches come from one class each: `sampler="class"`, or `"auto"` with ≥ 4 images in every class."""
    return args.sampler == "class" or (args.sampler == "auto" and int(torch.bincount(labels).min()) >= 4)
