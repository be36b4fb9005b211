"""Skip Tuning's training and evaluation loop on Accelerate.

One epoch: (re)build the image cache at layer ω (LSkip), draw batches of cached states, run the deep layers of the
image tower, pick the classes the text tower runs for (CSkip), run the deep text layers on the cached prompt states,
and step the optimiser on cross-entropy over `logit_scale * cos`. Evaluation always uses the whole model, every
class and no cache.

Under `accelerate launch` every process caches only its shard of the images (image `i` belongs to process
`i % num_processes`) and computes the part of each global batch that falls in its shard; the losses are scaled so that
the gradients DDP averages equal those of one process running the whole global batch.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Literal, NamedTuple

import numpy as np
import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import gather_object
from peft import PeftModel
from peft.utils import load_peft_weights, set_peft_model_state_dict
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from .cache import LayerCache, TextCache, build_text_cache, drop_tokens
from .checkpoint import publish, publish_files
from .classes import ClassSelector
from .config import SkipConfig
from .towers import Towers, get_towers

CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE = "trainer_state.pt"


@dataclass(frozen=True)
class Preset:
    """Hyper-parameters of one of the paper's protocols (ViT-B/16, 16 shots)."""

    lr: float
    epochs: int
    warmup_epochs: int = 0
    warmup_lr: float = 1e-6


PRESETS: dict[str, Preset] = {
    "few_shot": Preset(lr=1e-5, epochs=40),
    "base_to_new": Preset(lr=2e-5, epochs=20, warmup_epochs=1, warmup_lr=1e-6),
    "cross_dataset": Preset(lr=1e-5, epochs=20),
}


@dataclass
class TrainingArguments:
    """How to train. Fields left `None` take the value of `preset`.

    Args:
        output_dir (`str`): Where the adapter, `metrics.json` and the per-epoch checkpoints are written.
        preset (`str`): `few_shot`, `base_to_new` or `cross_dataset` (the paper's protocols).
        epochs (`int`, *optional*): Number of epochs.
        lr (`float`, *optional*): Peak learning rate of the cosine schedule.
        warmup_epochs (`int`, *optional*): Epochs at the constant `warmup_lr` before the cosine schedule.
        warmup_lr (`float`, *optional*): Learning rate during warm-up.
        batch_size (`int`): Global batch size (split across processes under `accelerate launch`).
        gradient_accumulation_steps (`int`): Batches per optimiser step; an epoch's last step may take fewer.
        optimizer (`str`): `sgd` (the paper's: momentum 0.9) or `adamw`.
        momentum (`float`): SGD momentum.
        weight_decay (`float`): Weight decay of the tuned weights (the paper's 5e-4).
        sampler (`str`): `class` draws each batch from a single class (the reference's "batch_random"), `random` at
            random; `auto` picks `class` when every class has at least 4 images, like the reference.
        cache_mode (`str`): `paper` re-extracts the image cache every epoch with that epoch's augmentation; `views`
            builds `views` augmented views once and trains epoch `e` on view `e % views`.
        views (`int`): Number of augmented views of the `views` cache mode.
        cache_dtype (`str`): Dtype the image cache is stored in: `float32`, `float16` or `bfloat16`.
        cache_dir (`str`, *optional*): Directory to memory-map the image cache to instead of keeping it in RAM.
        mixed_precision (`str`): `no`, `bf16` (CPU or GPU) or `fp16` (GPU only).
        seed (`int`): Seeds sampling, augmentation and token drop; a resumed run repeats an uninterrupted one.
        keep_checkpoints (`int`): Number of most recent per-epoch checkpoints kept.
        progress (`bool`): Show a tqdm progress bar.
    """

    output_dir: str
    preset: str = "few_shot"
    epochs: int | None = None
    lr: float | None = None
    warmup_epochs: int | None = None
    warmup_lr: float | None = None
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    optimizer: Literal["sgd", "adamw"] = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    sampler: Literal["auto", "class", "random"] = "auto"
    cache_mode: Literal["paper", "views"] = "paper"
    views: int = 4
    cache_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    cache_dir: str | None = None
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    seed: int = 0
    keep_checkpoints: int = 1
    progress: bool = field(default=True, compare=False)

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"Unknown preset {self.preset!r}; expected one of {sorted(PRESETS)}.")
        preset = PRESETS[self.preset]
        for name in ("epochs", "lr", "warmup_epochs", "warmup_lr"):
            if getattr(self, name) is None:
                setattr(self, name, getattr(preset, name))
        choices = {
            "optimizer": ("sgd", "adamw"),
            "sampler": ("auto", "class", "random"),
            "cache_mode": ("paper", "views"),
            "cache_dtype": ("float32", "float16", "bfloat16"),
            "mixed_precision": ("no", "bf16", "fp16"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"TrainingArguments.{name}={getattr(self, name)!r} is invalid; expected one of {allowed}."
                )
        for name in ("epochs", "batch_size", "gradient_accumulation_steps", "views", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"TrainingArguments.{name}={getattr(self, name)!r} is invalid; expected an integer >= 1."
                )
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(
                f"TrainingArguments.warmup_epochs={self.warmup_epochs} is invalid; expected 0 <= warmup_epochs < "
                f"epochs ({self.epochs})."
            )
        if self.lr <= 0 or self.warmup_lr <= 0:
            raise ValueError(f"Learning rates must be > 0; got lr={self.lr}, warmup_lr={self.warmup_lr}.")


def make_accelerator(mixed_precision: str = "no") -> Accelerator:
    """The `Accelerator` of a run; create it before anything else touches Accelerate's state.

    Args:
        mixed_precision (`str`): `no`, `bf16` (autocast on CPU or GPU) or `fp16` (GPU only).
    """
    if mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("mixed_precision='fp16' needs a CUDA GPU; use 'bf16' (autocast on CPU) or 'no'.")
    # Started as several processes (torchrun, `accelerate launch` with MULTI_GPU) on a machine without CUDA,
    # Accelerate only joins them in a (gloo) process group when told to run on the CPU.
    cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped and the last good checkpoint was kept."""


class StepOutput(NamedTuple):
    loss: torch.Tensor  # mean cross-entropy over the batch
    logits: torch.Tensor  # (B, K') over the kept classes
    targets: torch.Tensor  # (B,) positions of the labels among the kept classes


def skip_tuning_loss(
    towers: Towers,
    image_states: torch.Tensor,
    labels: torch.Tensor,
    text_cache: TextCache,
    prototypes: torch.Tensor,
    selector: ClassSelector,
    config: SkipConfig,
    generator: torch.Generator | None = None,
) -> StepOutput:
    """One Skip Tuning step from cached states (the paper's steps 5-9).

    Args:
        towers (`Towers`): The towers of the model being trained.
        image_states (`torch.Tensor`): Cached image states at layer ω_v, shape `(B, T, D_v)`.
        labels (`torch.Tensor`): Class indices, shape `(B,)`.
        text_cache (`TextCache`): Cached prompt states at layer ω_t of all `C` classes.
        prototypes (`torch.Tensor`): Normalised zero-shot text features of the pre-trained model, shape `(C, d)`.
        selector (`ClassSelector`): CSkip: which classes the text tower runs for.
        config (`SkipConfig`): Gives ω of both towers and the token drop ratio.
        generator (`torch.Generator`, *optional*): Randomness of the token drop.
    """
    vision, text = towers.vision, towers.text
    image_states = drop_tokens(image_states, config.token_drop, generator, vision.class_tokens)
    hidden = vision.run_layers(image_states, config.tower_skip_layers("vision"), vision.num_layers)
    image_features = F.normalize(vision.pool(hidden), dim=-1)
    with torch.no_grad():
        kept, targets = selector.select(image_features.detach().float(), prototypes, labels)
    prompts = text_cache if selector.keeps_all else text_cache.subset(kept)
    hidden = text.run_layers(
        prompts.hidden, config.tower_skip_layers("text"), text.num_layers, attention_mask=prompts.attention_mask
    )
    text_features = F.normalize(text.pool(hidden, prompts.input_ids), dim=-1)
    logits = towers.logit_scale.exp() * image_features @ text_features.T
    if towers.logit_bias is not None:  # SigLIP families
        logits = logits + towers.logit_bias
    return StepOutput(F.cross_entropy(logits.float(), targets), logits, targets)


class _SkipTuningStep(nn.Module):
    """The model plus what a step needs, so that Accelerate wraps one forward per step (DDP, autocast)."""

    def __init__(
        self,
        model: PeftModel,
        towers: Towers,
        text_cache: TextCache,
        prototypes: torch.Tensor,
        selector: ClassSelector,
    ) -> None:
        super().__init__()
        self.model = model
        self.towers = towers
        self.text_cache = text_cache
        self.prototypes = prototypes
        self.selector = selector

    def forward(
        self, image_states: torch.Tensor, labels: torch.Tensor, scale: float, generator: torch.Generator
    ) -> StepOutput:
        if image_states.shape[0] == 0:
            # None of this batch is in this process's shard; DDP still needs every trainable parameter in the graph.
            zero = sum(p.sum() for p in self.model.parameters() if p.requires_grad) * 0.0
            return StepOutput(zero, image_states.new_zeros(0, 1), labels)
        config = self.model.peft_config[self.model.active_adapter]
        out = skip_tuning_loss(
            self.towers,
            image_states,
            labels,
            self.text_cache,
            self.prototypes,
            self.selector,
            config,
            generator,
        )
        return out._replace(loss=out.loss * scale)


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


def lr_lambda(args: TrainingArguments, steps_per_epoch: int) -> Callable[[int], float]:
    """Learning-rate factor per optimiser step: constant `warmup_lr` for the warm-up epochs, then cosine to 0.

    Like the reference, the cosine runs over all epochs, warm-up included, so it resumes where it would be.
    """
    total = args.epochs * steps_per_epoch
    warmup = args.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return args.warmup_lr / args.lr
        return 0.5 * (1.0 + math.cos(math.pi * step / total))

    return factor


def make_optimizer(parameters: Sequence[nn.Parameter], args: TrainingArguments) -> torch.optim.Optimizer:
    if args.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    return torch.optim.AdamW(parameters, lr=args.lr, weight_decay=args.weight_decay)


def _generator(*keys: int) -> torch.Generator:
    """A generator seeded by a tuple of integers: the same keys give the same stream in every process."""
    return torch.Generator().manual_seed(hash(keys) & 0xFFFF_FFFF_FFFF)


def _describe(transform: Callable) -> dict | str:
    """What identifies an augmentation across runs (its settings, not its address) for the cache fingerprint."""
    if not hasattr(transform, "__dict__") or not vars(transform):
        return getattr(transform, "__qualname__", type(transform).__qualname__)
    return {k: str(v) for k, v in vars(transform).items() if not isinstance(v, torch.Generator)}


def _checkpoints(output_dir: str) -> list[str]:
    root = os.path.join(output_dir, CHECKPOINTS_DIR)
    if not os.path.isdir(root):
        return []
    names = sorted(n for n in os.listdir(root) if n.startswith("epoch-") and not n.endswith(".tmp"))
    return [os.path.join(root, n) for n in names]


@dataclass
class TrainResult:
    """What a training run did, per epoch and in total."""

    history: list[dict] = field(default_factory=list)
    cache_bytes: int = 0
    cache_seconds: float = 0.0
    train_seconds: float = 0.0
    resumed_from_epoch: int = 0


class SkipTrainer:
    """Trains a Skip Tuning model on a few-shot image data set.

    Args:
        model (`PeftModel`): A model wrapped with `get_peft_model(model, SkipConfig(...))`.
        args (`TrainingArguments`): How to train.
        train_set: An `ImageDataset` (`len`, `image(i)`, `labels`, `class_names`).
        prompts (`dict[str, torch.Tensor]`): Tokenised prompts of all classes: `input_ids` and `attention_mask`,
            shape `(C, L)`, in class order.
        transform (`Callable`): Training augmentation: `transform(pil_image, generator=...)` -> `(3, S, S)`.
        accelerator (`Accelerator`, *optional*): Defaults to `make_accelerator(args.mixed_precision)`.
    """

    def __init__(
        self,
        model: PeftModel,
        args: TrainingArguments,
        train_set,
        prompts: dict[str, torch.Tensor],
        transform: Callable,
        accelerator: Accelerator | None = None,
    ) -> None:
        if not isinstance(model, PeftModel) or not isinstance(model.peft_config[model.active_adapter], SkipConfig):
            raise TypeError("SkipTrainer needs a model wrapped by `get_peft_model(model, SkipConfig(...))`.")
        if prompts["input_ids"].shape[0] != len(train_set.class_names):
            raise ValueError(
                f"Got {prompts['input_ids'].shape[0]} prompts for {len(train_set.class_names)} classes; tokenise one "
                "prompt per class, in class order."
            )
        self.model = model
        self.args = args
        self.train_set = train_set
        self.prompts = prompts
        self.transform = transform
        self.config: SkipConfig = model.peft_config[model.active_adapter]
        self.accelerator = accelerator or make_accelerator(args.mixed_precision)
        self.labels = torch.as_tensor(train_set.labels)
        # Resolved once (an unsupported model fails here): the towers only hold references to the model's modules.
        self.towers = get_towers(model)

    def _images(self, key: int) -> Callable[[int, torch.Tensor], torch.Tensor]:
        """The augmented images of cache pass `key` (an epoch or a view): the same in every process."""

        def images(view: int, indices: torch.Tensor) -> torch.Tensor:
            return torch.stack(
                [
                    self.transform(self.train_set.image(int(i)), generator=_generator(self.args.seed, key, int(i)))
                    for i in indices
                ]
            )

        return images

    def _build_cache(self, key: int, views: int) -> LayerCache:
        state = self.accelerator.state
        shard = torch.arange(state.process_index, len(self.train_set), state.num_processes)
        return LayerCache.build(
            self.towers.vision,
            self._images(key),
            num_images=len(self.train_set),
            skip_layers=self.config.tower_skip_layers("vision"),
            views=views,
            dtype=getattr(torch, self.args.cache_dtype),
            cache_dir=self.args.cache_dir,
            fingerprint={
                "data": self.train_set.fingerprint()
                if hasattr(self.train_set, "fingerprint")
                else len(self.train_set),
                "augmentation": _describe(self.transform),
                "seed": self.args.seed,
                "pass": key,
            },
            indices=shard,
        )

    @torch.no_grad()
    def _text_cache_and_prototypes(self) -> tuple[TextCache, torch.Tensor]:
        device = self.accelerator.device
        input_ids = self.prompts["input_ids"].to(device)
        attention_mask = self.prompts["attention_mask"].to(device)
        skip_layers = self.config.tower_skip_layers("text")
        text_cache = build_text_cache(self.towers.text, input_ids, attention_mask, skip_layers)
        # Prototypes come from the pre-trained model, also when resuming with non-zero deltas.
        with self.model.disable_adapter():
            prototypes = text_features(self.model, input_ids, attention_mask)
        return text_cache, prototypes

    def _save_checkpoint(self, epoch: int, optimizer, scheduler) -> None:
        accelerator = self.accelerator
        if accelerator.is_main_process:
            final = os.path.join(self.args.output_dir, CHECKPOINTS_DIR, f"epoch-{epoch:04d}")
            tmp = final + ".tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            self.model.save_pretrained(tmp)
            numpy_rng = np.random.get_state()
            state = {
                "epoch": epoch,
                "args": asdict(self.args),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                # Plain tensors and numbers only, so that loading needs no pickle (torch.load(weights_only=True)).
                "rng": {
                    "torch": torch.get_rng_state(),
                    "numpy": (torch.from_numpy(numpy_rng[1].astype(np.int64)), *numpy_rng[2:]),
                    "python": random.getstate(),
                },
            }
            torch.save(state, os.path.join(tmp, TRAINER_STATE))
            # Published last, whole and on disk, so an interrupted save never looks like a complete checkpoint.
            publish(tmp, final)
            for old in _checkpoints(self.args.output_dir)[: -self.args.keep_checkpoints]:
                shutil.rmtree(old)
        accelerator.wait_for_everyone()

    def _load_checkpoint(self, optimizer, scheduler) -> int:
        """Loads the latest checkpoint; returns the number of epochs it completed (0 if there is none)."""
        checkpoints = _checkpoints(self.args.output_dir)
        if not checkpoints:
            return 0
        path = checkpoints[-1]
        state = torch.load(os.path.join(path, TRAINER_STATE), weights_only=True)
        saved = {k: v for k, v in state["args"].items() if k not in ("output_dir", "progress")}
        current = {k: v for k, v in asdict(self.args).items() if k not in ("output_dir", "progress")}
        changed = {k: (saved[k], current[k]) for k in saved if saved[k] != current.get(k)}
        if changed:
            raise ValueError(
                f"Cannot resume from {path}: training arguments differ from the saved run's (saved, now): {changed}. "
                "Resume with the same arguments or use a new output directory."
            )
        set_peft_model_state_dict(self.model, load_peft_weights(path, device=str(self.accelerator.device)))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        keys, *position = state["rng"]["numpy"]
        np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), *position))
        random.setstate(state["rng"]["python"])
        return state["epoch"]

    def train(self, resume: bool = False) -> TrainResult:
        """Runs the training.

        Args:
            resume (`bool`): Continue from the latest checkpoint in `output_dir` (loses at most the epoch that was
                running).

        Raises:
            NonFiniteLossError: The loss became NaN or infinite; the last good checkpoint is kept.
        """
        args, accelerator = self.args, self.accelerator
        num_processes, rank = accelerator.num_processes, accelerator.process_index
        torch.manual_seed(args.seed)
        self.model.to(accelerator.device)
        self.model.train()

        per_class = args.sampler == "class" or (args.sampler == "auto" and int(torch.bincount(self.labels).min()) >= 4)
        steps_per_epoch = math.ceil(
            len(class_batches(self.labels, args.batch_size, per_class, _generator(0)))
            / args.gradient_accumulation_steps
        )
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = make_optimizer(trainable, args)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(args, steps_per_epoch))
        result = TrainResult()
        start_epoch = self._load_checkpoint(optimizer, scheduler) if resume else 0
        result.resumed_from_epoch = start_epoch

        text_cache, prototypes = self._text_cache_and_prototypes()
        selector = ClassSelector(
            len(self.train_set.class_names),
            self.config.class_ratio,
            self.config.max_classes,
            self.config.class_decay,
            generator=_generator(args.seed, -1),
        )
        # The scheduler is stepped here once per optimiser step, so it is not handed to Accelerate (which would step
        # it once per process).
        step_module, optimizer = accelerator.prepare(
            _SkipTuningStep(self.model, self.towers, text_cache, prototypes.float(), selector), optimizer
        )

        cache = None
        bar = tqdm(
            total=args.epochs * steps_per_epoch,
            initial=start_epoch * steps_per_epoch,
            disable=not (args.progress and accelerator.is_local_main_process),
            dynamic_ncols=True,
        )
        started = time.perf_counter()
        for epoch in range(start_epoch, args.epochs):
            epoch_start = time.perf_counter()
            if args.cache_mode == "paper" or cache is None:
                cache_start = time.perf_counter()
                cache = self._build_cache(
                    epoch if args.cache_mode == "paper" else -1, 1 if args.cache_mode == "paper" else args.views
                )
                result.cache_seconds += time.perf_counter() - cache_start
                result.cache_bytes = cache.nbytes
            view = 0 if args.cache_mode == "paper" else epoch % args.views
            generator = _generator(args.seed, epoch, rank)
            batches = class_batches(self.labels, args.batch_size, per_class, _generator(args.seed, epoch))
            totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count
            bar.set_description(f"epoch {epoch + 1}/{args.epochs}")
            for step in range(steps_per_epoch):
                group = batches[
                    step * args.gradient_accumulation_steps : (step + 1) * args.gradient_accumulation_steps
                ]
                group_size = sum(len(b) for b in group)
                for micro, batch in enumerate(group):
                    local = batch[batch % num_processes == rank]
                    states = cache.get(local, view) if len(local) else None
                    if states is None:
                        states = torch.zeros(0, 1, 1)
                    states = states.to(accelerator.device)
                    labels = self.labels[local].to(accelerator.device)
                    # Mean over the local images, rescaled so that DDP's average over processes is the mean over the
                    # whole group of batches.
                    scale = len(local) * num_processes / group_size
                    sync = micro == len(group) - 1
                    with accelerator.no_sync(step_module) if not sync else nullcontext():
                        out = step_module(states, labels, scale, generator)
                        stats = torch.stack(
                            [
                                out.loss.detach().double() * group_size / num_processes,
                                (out.logits.argmax(-1) == out.targets).sum().double(),
                                torch.tensor(float(len(local)), dtype=torch.float64, device=out.loss.device),
                            ]
                        )
                        stats = accelerator.reduce(stats.to(accelerator.device), reduction="sum").cpu()
                        if not torch.isfinite(stats[0]):
                            bar.close()
                            last = _checkpoints(args.output_dir)
                            raise NonFiniteLossError(
                                f"Non-finite loss ({stats[0].item()}) at epoch {epoch + 1}, step {step + 1}; training "
                                f"stopped. Last good checkpoint: {last[-1] if last else 'none (failed in epoch 1)'}. "
                                "Lower the learning rate or use mixed_precision='no'."
                            )
                        accelerator.backward(out.loss)
                    totals += stats
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                bar.update(1)
                bar.set_postfix(loss=f"{totals[0] / totals[2]:.4f}", acc=f"{totals[1] / totals[2]:.3f}")
            result.history.append(
                {
                    "epoch": epoch + 1,
                    "loss": (totals[0] / totals[2]).item(),
                    "accuracy": (totals[1] / totals[2]).item(),
                    "lr": lr,  # of the epoch's last step
                    "seconds": time.perf_counter() - epoch_start,
                }
            )
            self._save_checkpoint(epoch + 1, optimizer, scheduler)
        bar.close()
        result.train_seconds = time.perf_counter() - started
        if accelerator.is_main_process:
            tmp = os.path.join(args.output_dir, ".adapter.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            self.model.save_pretrained(tmp)
            publish_files(tmp, args.output_dir)
        accelerator.wait_for_everyone()
        return result


def _features(output) -> torch.Tensor:
    # transformers 5 returns a model output whose `pooler_output` holds the projected features.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@torch.no_grad()
def text_features(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Normalised text features of the full model, shape `(C, d)`.

    Args:
        model (`nn.Module`): A CLIP-family model, plain or wrapped by peft.
        input_ids (`torch.Tensor`): Token ids, shape `(C, L)`.
        attention_mask (`torch.Tensor`): Padding mask, shape `(C, L)`.
    """
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    return F.normalize(_features(base.get_text_features(input_ids=input_ids, attention_mask=attention_mask)), dim=-1)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset,
    prompts: dict[str, torch.Tensor],
    transform: Callable,
    batch_size: int = 64,
) -> dict:
    """Accuracy of the full model (all layers, all classes, no cache) on `dataset`.

    Under `accelerate launch` every process classifies its shard of the images; all processes return the same
    result. Wrap the call in `model.disable_adapter()` for the zero-shot accuracy of the base model.

    Args:
        model (`nn.Module`): A CLIP-family model, plain or wrapped by peft.
        dataset: An `ImageDataset` (`len`, `image(i)`, `labels`, `class_names`).
        prompts (`dict[str, torch.Tensor]`): `input_ids` and `attention_mask` of one prompt per class, `(C, L)`.
        transform (`Callable`): Evaluation transform `transform(pil_image)` -> `(3, S, S)`.
        batch_size (`int`): Images per forward pass.

    Returns:
        `dict`: `accuracy`, `per_class` (class name -> accuracy), `num_images`.
    """
    state = PartialState()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    vision = get_towers(model).vision
    classes = text_features(model, prompts["input_ids"].to(device), prompts["attention_mask"].to(device))
    shard = range(state.process_index, len(dataset), state.num_processes)
    predictions = []
    for start in range(0, len(shard), batch_size):
        indices = shard[start : start + batch_size]
        pixels = torch.stack([transform(dataset.image(i)) for i in indices]).to(device)
        images = F.normalize(_features(base.get_image_features(**vision.image_inputs(pixels))), dim=-1)
        predictions.extend(zip(indices, (images @ classes.T.to(images.dtype)).argmax(-1).tolist(), strict=True))
    model.train(was_training)
    if state.num_processes > 1:
        predictions = gather_object(predictions)
    predictions = [p for _, p in sorted(predictions)]
    return accuracy_report(predictions, list(dataset.labels), dataset.class_names)


def accuracy_report(predictions: Sequence[int], references: Sequence[int], class_names: Sequence[str]) -> dict:
    """Overall and per-class accuracy.

    `evaluate.load("accuracy")` needs the Hugging Face Hub (its metric script is not installed with the package),
    so the accuracy, a plain fraction of correct predictions, is computed here to work offline.
    """
    predictions, references = torch.as_tensor(predictions), torch.as_tensor(references)
    correct = predictions == references
    per_class = {}
    for c, name in enumerate(class_names):
        mask = references == c
        if mask.any():
            per_class[name] = correct[mask].double().mean().item()
    return {"accuracy": correct.double().mean().item(), "per_class": per_class, "num_images": len(references)}
