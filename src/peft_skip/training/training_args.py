"""How to train: the arguments of a run, resolved from the paper's recipe, and the optimiser, schedule and batches they
define.

Field names follow `transformers.TrainingArguments` wherever a field means what it means there (`output_dir`,
`num_train_epochs`, `learning_rate`, `lr_scheduler_type`, `dataloader_drop_last`, `seed`, `save_total_limit`,
`disable_tqdm`, ...); the short command-line flags (`--out`, `--epochs`, `--lr`, ...) are aliases. Every field left
`None` takes the value of `peft_skip.training.recipes.reference_recipe(protocol, recipe_dataset)`, the one source
of the paper's hyper-parameters.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Literal

import torch

from ..tuner.config import StorageDtype
from .recipes import PROTOCOLS, REFERENCE_DATASETS, Recipe, reference_recipe
from .tracking import ReportTo, tracker_names

_FLOAT16_MAX = 65504.0


def _arg(default, help: str, *aliases: str, **kwargs):
    """A field with its command-line help and aliases (read by `transformers.HfArgumentParser`)."""
    return field(default=default, metadata={"help": help, **({"aliases": list(aliases)} if aliases else {})}, **kwargs)


@dataclass
class SkipTrainingArguments:
    """How to train. Fields left `None` take the value of the paper's recipe for `protocol` and `recipe_dataset`
    (`peft-skip recipe` prints it).

    Fields with `compare=False` (where to write, progress bars, resuming, debugging) never change a run's result;
    every other field is part of the run's identity, which `--resume` checks.
    """

    output_dir: str = field(
        metadata={"help": "Where the adapter, metrics.json and per-epoch checkpoints go.", "aliases": ["--out"]},
        compare=False,
    )
    overwrite_output_dir: bool = _arg(
        False,
        "Write into an output_dir that holds files peft-skip did not write; they are kept (never replaced or "
        "emptied), and one at a name a run writes is still refused.",
        compare=False,
    )
    protocol: Literal[PROTOCOLS] = _arg(
        "few_shot",
        "The paper's protocol, whose recipe sets every option left unset: few_shot (lr 1e-5 both towers, 40 epochs); "
        "base_to_new (text lr 2e-5, image lr 5e-6, 20 epochs, 1 warm-up epoch at 1e-6; trains on the first half of "
        "the classes, reports base, new and harmonic mean); cross_dataset and domain_generalization (train on "
        "ImageNet: text lr 1e-5, image lr 1e-6, 5 epochs, 1 warm-up epoch at 1e-8). See `peft-skip recipe`.",
        "--preset",
    )
    recipe_dataset: Literal[REFERENCE_DATASETS] | None = _arg(
        None,
        "Which of the paper's datasets --data holds, so that its recipe applies (a quarter of the epochs on imagenet, "
        "sun397 and food101; its prompt template). Default: the protocol's defaults.",
    )
    shots: int = _arg(16, "Training images per class (k of the k-shot protocol).")
    num_train_epochs: int | None = _arg(
        None, "Number of epochs, warm-up included (default: the recipe's).", "--epochs"
    )
    learning_rate: float | None = _arg(
        None, "Peak learning rate of the text tower and its head (default: the recipe's).", "--lr"
    )
    vision_learning_rate: float | None = _arg(
        None,
        "Peak learning rate of the image tower and its head (default: the recipe's; with --lr given, --lr times the "
        "recipe's image/text ratio: 1 for few_shot, 1/4 for base_to_new, 1/10 for cross_dataset).",
        "--vision-lr",
    )
    warmup_epochs: int | None = _arg(None, "Epochs at the constant warm-up lr before the cosine (default: recipe's).")
    warmup_lr: float | None = _arg(None, "Learning rate of both towers during warm-up (default: the recipe's).")
    lr_scheduler_type: Literal["dassl_cosine", "cosine_per_step"] | None = _arg(
        None,
        "dassl_cosine (the recipe's): warm-up, then a cosine restarting at the peak lr over num_train_epochs, stepped "
        "once per epoch; cosine_per_step: warm-up, then a cosine over all steps (warm-up included), stepped per step.",
    )
    batch_size: int | None = _arg(
        None, "Global batch size, split across processes under `accelerate launch` (default: the recipe's, 4)."
    )
    gradient_accumulation_steps: int = _arg(1, "Batches per optimiser step; an epoch's last step may take fewer.")
    optim: Literal["sgd", "adamw_torch"] | None = _arg(
        None, "sgd (the recipe's, with the momentum below) or adamw_torch.", "--optimizer"
    )
    momentum: float | None = _arg(None, "SGD momentum (default: the recipe's, 0.9).")
    weight_decay: float | None = _arg(
        None, "Weight decay of the trained weights, toward zero as in the reference (default: the recipe's, 5e-4)."
    )
    sampler: Literal["auto", "class", "random"] = _arg(
        "auto",
        "class: every batch from one class, the class drawn at random among those with images left (the reference's "
        "batch_random); random: at random; auto: class when every class has at least 4 images (and at least "
        "batch_size with dataloader_drop_last), like the reference.",
    )
    dataloader_drop_last: bool | None = _arg(
        None,
        "Drop incomplete batches (with sampler class: a class's last batch; default: the recipe's, true); false "
        "trains on every image every epoch.",
    )
    cache_mode: Literal["paper", "views"] = _arg(
        "paper",
        "paper: re-extract the image cache every epoch with that epoch's augmentation; views: build --views augmented "
        "views once and train epoch e on view e %% views.",
    )
    views: int = _arg(4, "Augmented views of cache_mode 'views'.")
    crop_min_area: float | None = _arg(
        None,
        "Smallest area of the training augmentation's random resized crop, as a fraction of the image (default: "
        "the recipe's, 0.08); 1 keeps whole images (flips only), for images whose size or position classifies.",
    )
    cache_dtype: StorageDtype | None = _arg(
        None,
        "Storage dtype of the image cache. Default: float16 under precision fp16_reference (the reference keeps the "
        "cache in its float16 model's dtype: 197 x 768 x 2 bytes per image for ViT-B/16), else float32.",
    )
    cache_dir: str | None = _arg(None, "Memory-map the image cache to this directory instead of keeping it in RAM.")
    offload_frozen: bool = _arg(
        True,
        "During the steps, keep the frozen weights they never read (embeddings, shallow layers, the deep layers' "
        "base weights) off the compute device: in CPU memory from a GPU, in a temporary file on the CPU.",
        compare=False,
    )
    dataloader_num_workers: int = _arg(
        2,
        "Worker processes that decode and transform images for the cache builds and evaluation (0: none).",
        compare=False,
    )
    precision: Literal["fp16_reference", "fp32"] | None = _arg(
        None,
        "fp16_reference (the recipe's): the whole model in float16 but its layer norms (float32), trained in float16 "
        "without master weights or loss scaling, as the reference does; fp32: float32 weights (with "
        "--mixed-precision: autocast over them). Default: fp16_reference where CUDA is present, fp32 on a CPU (where "
        "float16 kernels are slow or missing) and with --mixed-precision or adamw_torch.",
    )
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
    report_to: ReportTo = _arg(
        "none",
        "Experiment tracker of the per-epoch loss, accuracy, learning rates, kept classes and cache build time, "
        "through Accelerate: tensorboard (under output_dir/runs), wandb, mlflow, all (those installed), none.",
        compare=False,
    )
    push_to_hub: bool = _arg(
        False,
        "Upload the adapter, its model card and metrics.json to the Hub after training (the repository is created "
        "first, so a missing login fails before training).",
        compare=False,
    )
    hub_model_id: str | None = _arg(
        None, "Hub repository of --push_to_hub, 'user/name' (default: output_dir's name).", compare=False
    )
    license: str | None = _arg(
        None,
        "License of the adapter's model card, a Hub license id such as mit (default: the base model's, where its "
        "card is at hand).",
        compare=False,
    )
    hub_private_repo: bool | None = _arg(
        None, "Create the repository private (default: the Hub's default).", compare=False
    )

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value, choices = getattr(self, f.name), _choices(hints[f.name])
            if choices is not None and value not in choices:
                raise ValueError(f"SkipTrainingArguments.{f.name}={value!r} is invalid; expected one of {choices}.")
        self._resolve(self.recipe())
        for name in ("shots", "num_train_epochs", "batch_size", "gradient_accumulation_steps", "views"):
            if getattr(self, name) < 1:
                raise ValueError(f"SkipTrainingArguments.{name}={getattr(self, name)!r} is invalid; expected >= 1.")
        tracker_names(self.report_to)  # a tracker that is not installed fails here, before any work
        if self.dataloader_num_workers < 0:
            raise ValueError(f"dataloader_num_workers={self.dataloader_num_workers} is invalid; expected >= 0.")
        if not 0 < self.crop_min_area <= 1:
            raise ValueError(f"crop_min_area={self.crop_min_area} is invalid; expected a fraction in (0, 1].")
        if self.save_total_limit < 1:
            raise ValueError(f"save_total_limit={self.save_total_limit} is invalid; keep at least 1 checkpoint.")
        if not 0 <= self.warmup_epochs < self.num_train_epochs:
            raise ValueError(
                f"SkipTrainingArguments.warmup_epochs={self.warmup_epochs} is invalid; expected 0 <= warmup_epochs < "
                f"num_train_epochs ({self.num_train_epochs})."
            )
        if self.warmup_epochs and self.warmup_lr is None:
            raise ValueError(
                f"warmup_epochs={self.warmup_epochs} needs a warmup_lr: the {self.protocol} recipe has none."
            )
        rates = {"learning_rate": self.learning_rate, "vision_learning_rate": self.vision_learning_rate}
        if self.warmup_epochs:
            rates["warmup_lr"] = self.warmup_lr
        bad = ", ".join(f"{name}={rate}" for name, rate in rates.items() if not 0 < rate < math.inf)
        if bad:
            raise ValueError(f"Learning rates must be finite and > 0; got {bad}.")
        # The float16 SGD update multiplies by -lr in float16: a larger rate is no float16 number at all.
        too_large = ", ".join(f"{name}={rate}" for name, rate in rates.items() if rate > _FLOAT16_MAX)
        if self.precision == "fp16_reference" and too_large:
            raise ValueError(
                f"precision='fp16_reference' updates float16 weights, whose largest value is {_FLOAT16_MAX}; got "
                f"{too_large}. Use a smaller learning rate, or precision='fp32'."
            )
        if not self.push_to_hub and (self.hub_model_id is not None or self.hub_private_repo is not None):
            raise ValueError(
                "hub_model_id / hub_private_repo are set but push_to_hub is not: add --push_to_hub to upload the "
                "adapter, or drop them."
            )
        if self.precision == "fp16_reference" and (self.mixed_precision != "no" or self.optim != "sgd"):
            raise ValueError(
                f"precision='fp16_reference' trains float16 weights with SGD and no autocast; got "
                f"mixed_precision={self.mixed_precision!r}, optim={self.optim!r}: use precision='fp32' with them."
            )

    def _resolve(self, recipe: Recipe) -> None:
        """Sets every field left `None` from `recipe`."""
        self.optim = recipe.optimizer if self.optim is None else self.optim  # the precision's default depends on it
        if self.vision_learning_rate is None:
            given = self.learning_rate is not None
            self.vision_learning_rate = (
                self.learning_rate * (recipe.vision_lr / recipe.text_lr) if given else recipe.vision_lr
            )
        self._precision_given = self.precision is not None
        if self.precision is None:
            autocast_or_adam = self.mixed_precision != "no" or self.optim != "sgd"
            on_cpu = not torch.cuda.is_available()
            self.precision = "fp32" if autocast_or_adam or on_cpu else recipe.precision
        if self.cache_dtype is None:
            self.cache_dtype = "float16" if self.precision == "fp16_reference" else "float32"
        from_recipe = {
            "learning_rate": recipe.text_lr,
            "num_train_epochs": recipe.epochs,
            "warmup_epochs": recipe.warmup_epochs,
            "warmup_lr": recipe.warmup_lr,
            "lr_scheduler_type": recipe.schedule,
            "batch_size": recipe.batch_size,
            "momentum": recipe.momentum,
            "weight_decay": recipe.weight_decay,
            "dataloader_drop_last": recipe.drop_last,
            "crop_min_area": recipe.crop_scale[0],
        }
        for name, value in from_recipe.items():
            if getattr(self, name) is None:
                setattr(self, name, value)

    def precision_note(self) -> str:
        """One line: the precision the run trains in, why, and how to change it."""
        if not self._precision_given and (self.mixed_precision != "no" or self.optim != "sgd"):
            return (
                f"precision: fp32 (with mixed_precision={self.mixed_precision!r}, optim={self.optim!r}); the paper's "
                "float16, --precision fp16_reference, needs --optim sgd and --mixed_precision no"
            )
        if self._precision_given:
            why = "as given by --precision"
        elif self.precision == "fp32":
            why = "the default on a CPU, where float16 kernels are slow or missing"
        else:
            why = "the paper's float16 weights, the default where CUDA is present"
        other = "fp32" if self.precision == "fp16_reference" else "fp16_reference"
        return f"precision: {self.precision} ({why}); change it with --precision {other}"

    def recipe(self) -> Recipe:
        """The paper's recipe for `protocol` and `recipe_dataset` (the source of the fields left `None`)."""
        return reference_recipe(self.protocol, self.recipe_dataset, strict=True)

    def run_identity(self) -> dict:
        """The fields that change a run's result (all but those with `compare=False`)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.compare}


def _choices(hint) -> tuple | None:
    """The allowed values of a `Literal` (or optional `Literal`) field, else `None`."""
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    literals = [h for h in typing.get_args(hint) if typing.get_origin(h) is Literal]
    return (*typing.get_args(literals[0]), None) if literals else None
