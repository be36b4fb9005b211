"""Skip Tuning's training loop on Accelerate.

One epoch: (re)build the image cache at layer ω (LSkip), draw batches of cached states, and for each optimiser step
run `SkipTuningStep` (deep image layers, CSkip, deep text layers on the cached prompts, loss) and step SGD.

Under `accelerate launch` every process caches only its shard of the images (image `i` belongs to process
`i % num_processes`) and computes the part of each global batch that falls in its shard; the losses are scaled so that
the gradients DDP averages equal those of one process running the whole global batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from peft import PeftModel
from tqdm.auto import tqdm

from ..data.augmented import AugmentedImages, seeded_generator
from ..towers import get_towers
from ..tuner.config import SkipConfig
from .accelerator import make_accelerator
from .batches import check_batches, class_batches, uses_class_batches
from .cache import ImageCache
from .finite import NonFiniteLossError, has_non_finite, non_finite_error  # noqa: F401 (part of the API)
from .loss import SkipTuningStep
from .offload import FrozenOffload, idle_parameters
from .output_dir import claim_output_dir
from .precision import COMPUTE_DTYPES, to_reference_fp16
from .preflight import warn_if_untrainable
from .run_state import (
    check_resumable,
    load_checkpoint,
    run_identity,
    save_adapter,
    save_checkpoint,
    start_new_run,
)
from .schedule import make_optimizer, make_scheduler
from .tracking import EpochStats, epoch_scalars, start_tracking
from .training_args import SkipTrainingArguments


@dataclass
class TrainResult:
    """What a training run did, per epoch and in total."""

    history: list[dict] = field(default_factory=list)  # every epoch of the run, those before a resume included
    cache_bytes: int = 0
    cache_seconds: float = 0.0
    train_seconds: float = 0.0
    resumed_from_epoch: int = 0


class SkipTrainer:
    """Trains a Skip Tuning model on a few-shot image data set.

    Args:
        model (`PeftModel`): A model wrapped with `get_peft_model(model, SkipConfig(...))`.
        args (`SkipTrainingArguments`): How to train.
        train_set: An `ImageDataset` (`len`, `image(i)`, `labels`, `class_names`).
        prompts (`dict[str, torch.Tensor]`): Tokenised prompts of all classes: `input_ids` and `attention_mask`,
            shape `(C, L)`, in class order (see `peft_skip.training.evaluation.tokenize_classes`).
        transform (`Callable`): Training augmentation: `transform(pil_image, generator=...)` -> `(3, S, S)`.
        accelerator (`Accelerator`, *optional*): Defaults to `make_accelerator(args.mixed_precision, args.report_to,
            args.output_dir)`.
    """

    def __init__(
        self,
        model: PeftModel,
        args: SkipTrainingArguments,
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
        warn_if_untrainable(train_set.class_names, prompts)
        self.model = model
        self.args = args
        self.train_set = train_set
        self.prompts = prompts
        self.transform = transform
        self.config: SkipConfig = model.peft_config[model.active_adapter]
        self.accelerator = accelerator or make_accelerator(args.mixed_precision, args.report_to, args.output_dir)
        self.labels = torch.as_tensor(train_set.labels)
        # Resolved once (an unsupported model fails here): the towers only hold references to the model's modules.
        self.towers = get_towers(model)
        self.compute_dtype = COMPUTE_DTYPES[args.precision]
        self.per_class = uses_class_batches(args, self.labels)
        check_batches(self.labels, train_set.class_names, args, self.per_class)
        self._check_identifiable(args.resume_from_checkpoint)

    def _check_identifiable(self, resume: bool) -> None:
        """Refuses to resume or to use a cache directory without a data fingerprint, which tells data sets apart."""
        if hasattr(self.train_set, "fingerprint") or not (resume or self.args.cache_dir):
            return
        raise ValueError(
            f"The training set ({type(self.train_set).__name__}) has no fingerprint(), so it cannot resume or use "
            "cache_dir: wrap it in a peft_skip.data.ImageDataset, or drop --resume and --cache-dir."
        )

    def check_resume(self) -> None:
        """Raises if the latest checkpoint in `output_dir` is damaged or of another run (naming what differs); for
        callers that want to know before any expensive work. `train` checks it again."""
        identity = run_identity(self.args, self.config, self.train_set, self.prompts)
        check_resumable(self.args.output_dir, identity, self.model)

    def train(self, resume_from_checkpoint: bool | None = None, save_final: bool = True) -> TrainResult:
        """Runs the training and saves the adapter to `args.output_dir`.

        Args:
            resume_from_checkpoint (`bool`, *optional*): Continue from the latest checkpoint in `output_dir` (loses
                at most the epoch that was running); defaults to `args.resume_from_checkpoint`.
            save_final (`bool`): Save the adapter at the end; `False` leaves it to `save_model()`, for a caller that
                first checks the tuned model (its evaluation logits) so that a broken result is never saved.

        Raises:
            NonFiniteLossError: The loss became NaN or infinite; the last good checkpoint is kept.
            OSError: `output_dir` is unusable or another run is writing to it.
        """
        args = self.args
        with claim_output_dir(args.output_dir, self.accelerator.is_main_process, args.overwrite_output_dir):
            result = self._train(resume_from_checkpoint)
            if save_final:
                self.save_model()
            return result

    def save_model(self) -> None:
        """Saves the adapter to `args.output_dir` (main process; the others wait), refusing non-finite deltas."""
        args = self.args
        with claim_output_dir(args.output_dir, self.accelerator.is_main_process, args.overwrite_output_dir):
            if self.accelerator.is_main_process:
                save_adapter(self.model, args.output_dir)
            self.accelerator.wait_for_everyone()

    def _train(self, resume_from_checkpoint: bool | None) -> TrainResult:
        args, accelerator = self.args, self.accelerator
        if resume_from_checkpoint is None:
            resume_from_checkpoint = args.resume_from_checkpoint
        self._check_identifiable(resume_from_checkpoint)
        torch.manual_seed(args.seed)
        if args.precision == "fp16_reference":
            to_reference_fp16(self.model)
        self.model.to(accelerator.device)
        self.model.train()

        steps_per_epoch = math.ceil(len(self._batches(epoch=0)) / args.gradient_accumulation_steps)
        optimizer = make_optimizer(self.model, args)
        # Stepped here (per epoch, or per step for cosine_per_step), so not handed to Accelerate, which would step it
        # once per process.
        scheduler = make_scheduler(optimizer, args, steps_per_epoch)
        per_step = args.lr_scheduler_type == "cosine_per_step"
        result = TrainResult()
        identity = run_identity(args, self.config, self.train_set, self.prompts)
        if resume_from_checkpoint:
            result.resumed_from_epoch, result.history = load_checkpoint(
                self.model, args.output_dir, identity, optimizer, scheduler, accelerator.device
            )
        elif accelerator.is_main_process:
            start_new_run(args.output_dir)
        tracking = start_tracking(accelerator, args, self.config)
        step = SkipTuningStep.from_prompts(
            self.model, self.towers, self.prompts, seeded_generator(args.seed, -1), accelerator.device
        )
        step, optimizer = accelerator.prepare(step, optimizer)
        # The steps read neither the shallow layers nor the deep layers' base weights: off the device during them.
        frozen = FrozenOffload(self.model, idle_parameters(self.model) if args.offload_frozen else {})

        cache = None
        bar = tqdm(
            total=args.num_train_epochs * steps_per_epoch,
            initial=result.resumed_from_epoch * steps_per_epoch,
            disable=args.disable_tqdm or not accelerator.is_local_main_process,
            dynamic_ncols=True,
        )
        started = time.perf_counter()
        for epoch in range(result.resumed_from_epoch, args.num_train_epochs):
            epoch_start, cache_seconds = time.perf_counter(), 0.0
            # Whatever draws from torch's global generator (a model's dropout) draws the same in a resumed epoch.
            torch.manual_seed(seeded_generator(args.seed, epoch, accelerator.process_index).initial_seed())
            if args.cache_mode == "paper" or cache is None:
                cache = self._image_cache(epoch if args.cache_mode == "paper" else -1)
                cache_seconds = time.perf_counter() - epoch_start
                result.cache_seconds += cache_seconds
                result.cache_bytes = cache.nbytes
            bar.set_description(f"epoch {epoch + 1}/{args.num_train_epochs}")
            with frozen:
                stats, lrs = self._train_epoch(step, optimizer, scheduler if per_step else None, cache, epoch, bar)
            if not per_step:
                scheduler.step()
            result.history.append(stats.row(epoch + 1, lrs, time.perf_counter() - epoch_start, cache_seconds))
            accelerator.log(epoch_scalars(result.history[-1]), step=epoch + 1)
            if has_non_finite(_trained(optimizer)):
                raise non_finite_error("weight", args.output_dir, epoch)
            if accelerator.is_main_process:
                keep = args.save_total_limit
                save_checkpoint(
                    self.model, args.output_dir, epoch + 1, identity, optimizer, scheduler, keep, result.history
                )
            accelerator.wait_for_everyone()
        bar.close()
        result.train_seconds = time.perf_counter() - started
        if tracking:
            accelerator.end_training()
        return result

    def _train_epoch(self, step, optimizer, step_scheduler, cache: ImageCache, epoch: int, bar) -> tuple:
        """The optimiser steps of one epoch (`step_scheduler`, if given, is stepped after each); returns the epoch's
        `EpochStats` and the learning rates of its last step by parameter group."""
        args, stats = self.args, EpochStats()
        batches = self._batches(epoch)
        for i in range(math.ceil(len(batches) / args.gradient_accumulation_steps)):
            group = batches[i * args.gradient_accumulation_steps : (i + 1) * args.gradient_accumulation_steps]
            lrs = {param_group["name"]: param_group["lr"] for param_group in optimizer.param_groups}
            self._optimizer_step(step, cache, group, epoch, i, stats)
            if has_non_finite([p.grad for p in _trained(optimizer) if p.grad is not None]):
                raise non_finite_error("gradient", args.output_dir, epoch, i)
            optimizer.step()
            if step_scheduler is not None:
                step_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            bar.update(1)
            bar.set_postfix(loss=f"{stats.loss / stats.images:.4f}", acc=f"{stats.correct / stats.images:.3f}")
        return stats, lrs

    def _batches(self, epoch: int) -> list[torch.Tensor]:
        """The epoch's batches of global image indices, the same in every process."""
        args = self.args
        generator = seeded_generator(args.seed, epoch)
        return class_batches(self.labels, args.batch_size, self.per_class, generator, args.dataloader_drop_last)

    def _optimizer_step(
        self,
        step: SkipTuningStep,
        cache: ImageCache,
        group: list[torch.Tensor],
        epoch: int,
        index: int,
        stats: EpochStats,
    ) -> None:
        """Forward and backward of the group of batches of step `index` (gradient accumulation), adding to `stats`;
        gradients are synchronised across processes on the last batch only."""
        accelerator = self.accelerator
        num_processes, rank = accelerator.num_processes, accelerator.process_index
        generator = seeded_generator(self.args.seed, epoch, rank, index)
        group_size = sum(len(b) for b in group)
        view = epoch % self.args.views if self.args.cache_mode == "views" else 0
        for micro, batch in enumerate(group):
            local = batch[batch % num_processes == rank]
            states = cache.get(local, view, self.compute_dtype) if len(local) else torch.zeros(0, 1, 1)
            labels = self.labels[local].to(accelerator.device)
            # Mean over the local images, rescaled so that DDP's average is the mean over the whole group.
            scale = len(local) * num_processes / group_size
            last = micro == len(group) - 1
            with nullcontext() if last else accelerator.no_sync(step):
                out = step(states.to(accelerator.device), labels, scale, generator)
                # Images, kept classes and batches of this process (CSkip runs on each process's own images).
                counts = [len(local), out.logits.shape[-1] if len(local) else 0, int(len(local) > 0)]
                totals = torch.cat(
                    [
                        out.loss.detach().double().reshape(1) * group_size / num_processes,
                        (out.logits.argmax(-1) == out.targets).sum().double().reshape(1),
                        torch.tensor(counts, dtype=torch.float64, device=out.loss.device),
                    ]
                )
                loss_sum, correct, images, kept, batches = accelerator.reduce(totals, reduction="sum").tolist()
                if not math.isfinite(loss_sum):
                    raise non_finite_error(f"loss ({loss_sum})", self.args.output_dir, epoch, index)
                accelerator.backward(out.loss)
            stats.loss += loss_sum
            stats.correct += int(correct)
            stats.images += int(images)
            stats.kept_classes += int(kept)
            stats.batches += int(batches)

    def _image_cache(self, key: int) -> ImageCache:
        """This process's shard of the image cache for pass `key` (an epoch, or -1 for the views built once)."""
        args, state = self.args, self.accelerator.state
        views = 1 if args.cache_mode == "paper" else args.views

        images = AugmentedImages(self.train_set, self.transform, args.seed, key)
        return ImageCache.build(
            self.towers.vision,
            images,
            num_images=len(self.train_set),
            skip_layers=self.config.tower_skip_layers("vision"),
            views=views,
            dtype=getattr(torch, args.cache_dtype),
            cache_dir=args.cache_dir,
            fingerprint=images.fingerprint(),
            indices=torch.arange(state.process_index, len(self.train_set), state.num_processes),
            progress=not args.disable_tqdm and self.accelerator.is_local_main_process,
            num_workers=args.dataloader_num_workers,
        )


def _trained(optimizer) -> list[torch.Tensor]:
    """The parameters `optimizer` trains (a walk over the model's parameters costs milliseconds per step)."""
    return [p for group in optimizer.param_groups for p in group["params"]]
