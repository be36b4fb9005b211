"""The reference recipe of Skip Tuning (Wu et al., CVPR 2025) as data: what the authors' code trains with, per protocol
and dataset.

Every value was read from the authors' repository (Koorye/SkipTuning): `configs/trainers/SkipTuning/vit_b16_bs4.yaml`
(base-to-new), `vit_b16_bs4_cross_datasets.yaml` (cross-dataset and domain generalisation), `vit_b16_bs4_few_shot.yaml`
(few-shot), `train.py` (`extend_cfg`: staged lr on `image_encoder`, fp16, the CSkip / LSkip defaults),
`trainers/_base_/defaults.py` (SGD settings), `trainers/_base_/lr_scheduler.py` with Dassl's `ConstantWarmupScheduler`
(the schedule), `trainers/skip_tuning.py` (a quarter of the epochs on ImageNet, SUN397 and Food101; the sampler rule),
`trainers/feature_loader.py` (the samplers), `trainers/baselines/ft_clip.py` (the prompt templates), `configs.py` and
`utils/templates.py` (shots, seeds, which datasets each protocol trains and tests on). The prompt templates are
`peft_skip.data.TEMPLATES` (one table for the whole package).

`SkipTrainingArguments` resolves every unset training field from `reference_recipe(protocol, recipe_dataset)`, and
`peft-skip recipe --protocol P --dataset D` prints the resolved recipe as JSON.

Where this project departs from the reference on purpose (CSkip's labels and float32 ranking, float32 logits for the
loss, seeded random streams, file order, JSON few-shot files) is listed once, in docs/training.md ("Deliberate
deviations from the authors' code"); `tests/training/test_reference.py` checks the rest against the authors' step and
loop.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

from ..data.coop import COOP_DATASETS, DOMAIN_SHIFT_DATASETS, TRAIN_DATASETS
from ..data.prompts import TEMPLATES

PROTOCOLS = ("few_shot", "base_to_new", "cross_dataset", "domain_generalization")

# The reference trains on TRAIN_DATASETS in base-to-new and few-shot (`configs.py`, `datasets_base_to_new`) and
# evaluates the ImageNet model on DOMAIN_SHIFT_DATASETS (domain generalisation).
REFERENCE_DATASETS = COOP_DATASETS
CROSS_DATASET_TARGETS = tuple(name for name in TRAIN_DATASETS if name != "imagenet")

# Dassl's class name of each dataset (`DATASET.NAME`, the key of the reference's template table).
DASSL_NAMES = {
    "imagenet": "ImageNet",
    "caltech101": "Caltech101",
    "oxford_pets": "OxfordPets",
    "stanford_cars": "StanfordCars",
    "oxford_flowers": "OxfordFlowers",
    "food101": "Food101",
    "fgvc_aircraft": "FGVCAircraft",
    "sun397": "SUN397",
    "dtd": "DescribableTextures",
    "eurosat": "EuroSAT",
    "ucf101": "UCF101",
    "imagenetv2": "ImageNetV2",
    "imagenet_sketch": "ImageNetSketch",
    "imagenet_a": "ImageNetA",
    "imagenet_r": "ImageNetR",
}

# `SkipTuning.__init__` trains these for `int(MAX_EPOCH / 4)` epochs (the cosine spans the shortened run too).
QUARTER_EPOCH_DATASETS = ("imagenet", "sun397", "food101")


def dassl_cosine(epoch: int, warmup_epochs: int, epochs: int) -> float:
    """Factor of the peak learning rate during 0-based `epoch` >= `warmup_epochs` under Dassl's schedule: the cosine
    restarts at the peak after the warm-up and decays over `epochs` epochs (`WARMUP_RECOUNT`), so the last epoch
    stays above zero. The one definition: `Recipe.lr_at_epoch` and the trainer's scheduler (`schedule.lr_lambda`)."""
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / epochs))


@dataclass(frozen=True)
class Recipe:
    """How the reference trains and evaluates one dataset under one protocol.

    Args:
        protocol: one of `PROTOCOLS`.
        dataset: the dataset this recipe was resolved for (its prompt template is `template`); `None`: the
            protocol's defaults.
        train_dataset: the dataset the model is trained on: `dataset` (`None` with it), ImageNet for cross-dataset
            and domain generalisation.
        text_lr, vision_lr: peak lr of the text tower (with its final layer norm and projection) and of the image
            tower (with its post layer norm and projection); they differ under the reference's staged lr.
        epochs: training epochs, warm-up included (`MAX_EPOCH`, already quartered where the reference does).
        warmup_epochs, warmup_lr: epochs at the constant `warmup_lr` for both towers before the cosine (none: 0, None).
        schedule: `"dassl_cosine"`, stepped once per epoch: see `lr_at_epoch`.
        batch_size, sampler, sampler_min_shots, fallback_sampler, drop_last: batches of `batch_size` drawn by
            `sampler` when shots >= `sampler_min_shots`, else by `fallback_sampler` (see `sampler_for`).
        optimizer, momentum, weight_decay, nesterov, dampening: the optimiser (weight decay on every parameter).
        precision: `"fp16_reference"`: OpenAI `convert_weights` (linear, attention and projection weights fp16, layer
            norms and embeddings fp32); forward, backward and the SGD update in fp16, no master weights, no scaling.
        template, train_template: prompt template of `dataset` (evaluation) and of `train_dataset` (training);
            class names have `_` replaced by spaces.
        shots, seeds: k-shot settings run and seeds averaged.
        train_classes: `"base"` (first ceil(C/2) labels; base and new classes are then each tested among their
            own) or `"all"`.
        eval_datasets: datasets the trained model is tested on in this protocol.
        skip_layers, class_ratio, max_classes, class_decay, token_drop: LSkip / CSkip (`START_LAYER`, `TOP_RATIO`,
            `MAX_TOP`, `LAMBDA`, `DROP_RATIO`).
        crop_scale: area range of the random resized crop (the input size and resampling are the processor's:
            224 px bicubic for ViT-B/16, as the reference's).
        image_decoding: `"dassl"`: image files opened with PIL and converted to RGB, nothing else (Dassl's
            `read_image`: no EXIF rotation, transparency dropped).
        token_drop_mode: `"reference"`: `drop_tokens` of `trainers/skip_tuning.py` (the same tokens for the batch,
            the class token a candidate, `ceil`).
        test_batch_size: evaluation batch size.
    """

    protocol: str
    dataset: str | None
    train_dataset: str | None
    text_lr: float
    vision_lr: float
    epochs: int
    warmup_epochs: int
    warmup_lr: float | None
    template: str
    train_template: str
    shots: tuple[int, ...]
    train_classes: str
    eval_datasets: tuple[str, ...]
    schedule: str = "dassl_cosine"
    batch_size: int = 4
    sampler: str = "batch_random"
    sampler_min_shots: int = 4
    fallback_sampler: str = "random"
    drop_last: bool = True
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    dampening: float = 0.0
    precision: str = "fp16_reference"
    seeds: tuple[int, ...] = (1, 2, 3)
    skip_layers: int = 6
    class_ratio: float = 0.5
    max_classes: int = 50
    class_decay: float = 0.3
    token_drop: float = 0.0
    crop_scale: tuple[float, float] = (0.08, 1.0)
    image_decoding: str = "dassl"
    token_drop_mode: str = "reference"
    test_batch_size: int = 100

    def to_dict(self) -> dict:
        """The recipe as JSON-ready values (tuples become lists)."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    def lr_at_epoch(self, epoch: int, tower: str) -> float:
        """Learning rate of `tower` (`"text"` or `"vision"`) during 0-based `epoch`.

        Dassl steps the schedule once per epoch: `warmup_epochs` epochs at `warmup_lr`, then the cosine restarts at
        the peak lr and decays over `epochs` steps (`WARMUP_RECOUNT`), so the last epoch stays above zero.
        """
        if tower not in ("text", "vision"):
            raise ValueError(f"tower must be 'text' or 'vision', got {tower!r}.")
        if not 0 <= epoch < self.epochs:
            raise ValueError(f"epoch {epoch} is outside this recipe's {self.epochs} epochs (0-based).")
        if epoch < self.warmup_epochs:
            return self.warmup_lr
        peak = self.text_lr if tower == "text" else self.vision_lr
        return peak * dassl_cosine(epoch, self.warmup_epochs, self.epochs)

    def sampler_for(self, shots: int) -> str:
        """The reference's batch sampler for a `shots`-shot training set (`SkipTuning.before_train`)."""
        return self.sampler if shots >= self.sampler_min_shots else self.fallback_sampler


# Per protocol: (text lr, vision lr, epochs, warm-up epochs, warm-up lr, shots). The few-shot yaml sets no staged
# lr, so both towers share OPTIM.LR; the other two put `image_encoder` parameters at OPTIM.NEW_LR.
_PROTOCOL_OPTIM = {
    "base_to_new": (2e-5, 5e-6, 20, 1, 1e-6, (16,)),
    "cross_dataset": (1e-5, 1e-6, 20, 1, 1e-8, (16,)),
    "domain_generalization": (1e-5, 1e-6, 20, 1, 1e-8, (16,)),
    "few_shot": (1e-5, 1e-5, 40, 0, None, (1, 2, 4, 8, 16)),
}


def _one_line_choices(values) -> str:
    return ", ".join(values)


def reference_recipe(protocol: str, dataset: str | None = None, strict: bool = False) -> Recipe:
    """The reference recipe of `protocol` for `dataset`.

    Args:
        protocol: `"few_shot"`, `"base_to_new"`, `"cross_dataset"` or `"domain_generalization"`.
        dataset: one of `REFERENCE_DATASETS`; `None` or another name gets the protocol's defaults (full epochs, the
            default template; cross-dataset and domain generalisation always train on ImageNet) unless `strict`.
        strict: refuse dataset names outside `REFERENCE_DATASETS`.

    Raises:
        ValueError: unknown protocol; a name outside the paper's datasets with `strict`; a test-only dataset under a
            protocol that trains on it.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"Unknown protocol {protocol!r}: choose one of {_one_line_choices(PROTOCOLS)}.")
    if dataset is not None and (not isinstance(dataset, str) or not dataset.strip()):
        raise ValueError(f"dataset must be a non-empty name, got {dataset!r}.")
    known = dataset in REFERENCE_DATASETS
    if strict and dataset is not None and not known:
        raise ValueError(
            f"Unknown dataset {dataset!r} for the reference recipe: choose one of "
            f"{_one_line_choices(REFERENCE_DATASETS)}, or pass strict=False for the protocol's defaults."
        )
    text_lr, vision_lr, epochs, warmup_epochs, warmup_lr, shots = _PROTOCOL_OPTIM[protocol]
    if protocol in ("base_to_new", "few_shot"):
        if dataset in DOMAIN_SHIFT_DATASETS:
            raise ValueError(
                f"{dataset!r} is test-only (no train split), so it has no {protocol} run: choose one of "
                f"{_one_line_choices(TRAIN_DATASETS)}, or evaluate it under domain_generalization."
            )
        train_dataset = dataset
        eval_datasets = (dataset,) if dataset is not None else ()
    else:
        train_dataset = "imagenet"
        targets = CROSS_DATASET_TARGETS if protocol == "cross_dataset" else DOMAIN_SHIFT_DATASETS
        eval_datasets = ("imagenet",) + targets
    if train_dataset in QUARTER_EPOCH_DATASETS:
        epochs = int(epochs / 4)
    return Recipe(
        protocol=protocol,
        dataset=dataset,
        train_dataset=train_dataset,
        text_lr=text_lr,
        vision_lr=vision_lr,
        epochs=epochs,
        warmup_epochs=warmup_epochs,
        warmup_lr=warmup_lr,
        template=TEMPLATES[dataset if known else "default"],
        train_template=TEMPLATES[train_dataset if train_dataset in REFERENCE_DATASETS else "default"],
        shots=shots,
        train_classes="base" if protocol == "base_to_new" else "all",
        eval_datasets=eval_datasets,
    )


def with_overrides(recipe: Recipe, **changes) -> Recipe:
    """A copy of `recipe` with `changes` (a run that departs from the reference on purpose says so explicitly)."""
    unknown = sorted(set(changes) - set(Recipe.__dataclass_fields__))
    if unknown:
        fields = _one_line_choices(Recipe.__dataclass_fields__)
        raise ValueError(f"Recipe has no field {unknown}: choose from {fields}.")
    return replace(recipe, **changes)


@dataclass
class RecipeArguments:
    """What `peft-skip recipe` resolves."""

    protocol: Literal[PROTOCOLS] = field(
        default="few_shot", metadata={"help": "The paper's protocol.", "aliases": ["--preset"]}
    )
    dataset: Literal[REFERENCE_DATASETS] | None = field(
        default=None, metadata={"help": "One of the paper's datasets; default: the protocol's defaults."}
    )
    as_train_config: bool = field(
        default=False,
        metadata={
            "help": "Print the `peft-skip train` options this recipe sets (save them and pass `train --config FILE`) "
            "instead of the recipe."
        },
    )
