"""Skip Tuning inside `transformers.Trainer`: its loop, flags and callbacks, with Skip Tuning's steps.

`SkipHFTrainer` keeps everything Trainer users rely on (`logging_steps`, `eval_strategy`, `save_strategy`,
`max_steps`, callbacks, `report_to`, `resume_from_checkpoint`) and replaces only what a step computes: each batch is
a batch of image indices, drawn as `SkipTrainer` draws them, and its loss is `SkipTuningStep`'s on the LSkip image
cache (rebuilt per epoch as `SkipTrainingArguments.cache_mode` says) with CSkip; the optimiser is `SkipTrainer`'s
(one group per tower). The caches and batches come from a `SkipTrainer` the trainer holds, so both train alike: one
epoch gives the same losses and deltas.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Dataset
from transformers import Trainer, TrainingArguments

from ..data.augmented import seeded_generator
from .evaluation import evaluate_accuracy
from .loss import SkipTuningStep
from .precision import to_reference_fp16
from .schedule import make_optimizer
from .trainer import SkipTrainer
from .training_args import SkipTrainingArguments


class _ImageIndices(Dataset):
    """Item `i` is `{"index": i}`: a step reads the cached states of its images, not their pixels."""

    def __init__(self, num_images: int) -> None:
        self.num_images = num_images

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> dict[str, int]:
        return {"index": index}


class _EpochBatches:
    """The batches of the epoch Trainer is in, as `SkipTrainer` draws them (`SkipTrainer._batches`)."""

    def __init__(self, trainer: SkipHFTrainer) -> None:
        self.trainer = trainer

    def __len__(self) -> int:
        return len(self.trainer.skip._batches(epoch=0))

    def __iter__(self):
        return iter(b.tolist() for b in self.trainer.skip._batches(self.trainer.current_epoch()))


class SkipHFTrainer(Trainer):
    """A `transformers.Trainer` whose training steps are Skip Tuning's (LSkip caches, CSkip).

    Args:
        model (`PeftModel`): A model wrapped with `get_peft_model(model, SkipConfig(...))`.
        args (`TrainingArguments`): The loop: epochs or `max_steps`, logging, evaluation, checkpoints, `bf16` /
            `fp16` autocast, the per-step learning-rate schedule (`lr_scheduler_type`, warm-up).
        train_set: An `ImageDataset` (`len`, `image(i)`, `labels`, `class_names`).
        prompts (`dict[str, torch.Tensor]`): `input_ids` and `attention_mask` of one prompt per class, `(C, L)`.
        transform (`Callable`): Training augmentation `transform(pil_image, generator=...)` -> `(3, S, S)`.
        skip_args (`SkipTrainingArguments`): Skip Tuning's side: batches (`batch_size`, `sampler`, equal to
            `args.per_device_train_batch_size`), the cache (`cache_mode`, `views`, `cache_dtype`, `cache_dir`),
            `precision`, the optimiser and its per-tower learning rates, the seed of batches, cache and token drop.
        eval_set (*optional*): An `ImageDataset` that `evaluate` scores (`eval_accuracy`): the full model, all classes.
        eval_prompts (`dict[str, torch.Tensor]`, *optional*): Prompts of `eval_set`'s classes (default: `prompts`).
        eval_transform (`Callable`, *optional*): Evaluation transform of `eval_set`.
        **kwargs: Passed to `Trainer` (`callbacks`, `processing_class`, ...).
    """

    def __init__(
        self,
        model,
        args: TrainingArguments,
        train_set,
        prompts: dict[str, torch.Tensor],
        transform: Callable,
        skip_args: SkipTrainingArguments,
        eval_set=None,
        eval_prompts: dict[str, torch.Tensor] | None = None,
        eval_transform: Callable | None = None,
        **kwargs,
    ) -> None:
        if skip_args.batch_size != args.per_device_train_batch_size:
            raise ValueError(
                f"skip_args.batch_size={skip_args.batch_size} differs from args.per_device_train_batch_size="
                f"{args.per_device_train_batch_size}: set both to the batch size you train with."
            )
        if eval_set is not None and eval_transform is None:
            raise ValueError("eval_set needs an eval_transform (e.g. ImageTransform.from_processor(p, train=False)).")
        if skip_args.precision == "fp16_reference":
            to_reference_fp16(model)
        # eval_set goes to Trainer too, which refuses an eval_strategy without one; `evaluate` scores it.
        kwargs.setdefault("eval_dataset", eval_set)
        super().__init__(model=model, args=args, train_dataset=_ImageIndices(len(train_set)), **kwargs)
        if self.accelerator.num_processes > 1:
            raise ValueError("SkipHFTrainer runs in one process; under `accelerate launch` use SkipTrainer.")
        self.model_accepts_loss_kwargs = False  # the loss is a batch mean: Trainer divides it for accumulation
        self.skip = SkipTrainer(model, skip_args, train_set, prompts, transform, accelerator=self.accelerator)
        self._steps_per_epoch = math.ceil(len(self.skip._batches(epoch=0)) / args.gradient_accumulation_steps)
        self.eval_set, self.eval_prompts, self.eval_transform = eval_set, eval_prompts or prompts, eval_transform
        self._step: SkipTuningStep | None = None
        self._cache, self._cache_key = None, None
        self._generator, self._generator_key = None, None

    def current_epoch(self) -> int:
        """The epoch Trainer is in (its `state.epoch` counts finished fractions of epochs)."""
        return math.floor((self.state.epoch or 0.0) + 1e-9)

    def get_train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_dataset, batch_sampler=_EpochBatches(self), collate_fn=self.data_collator)

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            self.optimizer = make_optimizer(self.model, self.skip.args)
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """`SkipTuningStep`'s loss on the cached states of the batch's images (`inputs["index"]`, shape `(B,)`)."""
        skip, device = self.skip, self.accelerator.device
        if self._step is None:  # the text cache and prototypes, once, on the trained model's device
            self._step = SkipTuningStep.from_prompts(
                self.model, skip.towers, skip.prompts, seeded_generator(skip.args.seed, -1), device
            )
        epoch = self.current_epoch()
        key = epoch if skip.args.cache_mode == "paper" else -1
        if key != self._cache_key:
            self._cache, self._cache_key = skip._image_cache(key), key
        # One token-drop generator per optimiser step, shared by its accumulated batches, as SkipTrainer's.
        index = self.state.global_step - epoch * self._steps_per_epoch
        if (epoch, index) != self._generator_key:
            self._generator, self._generator_key = seeded_generator(skip.args.seed, epoch, 0, index), (epoch, index)
        indices = inputs["index"].cpu()
        view = epoch % skip.args.views if skip.args.cache_mode == "views" else 0
        states = self._cache.get(indices, view, skip.compute_dtype).to(device)
        with self.accelerator.autocast():
            out = self._step(states, skip.labels[indices].to(device), 1.0, self._generator)
        return (out.loss, {"logits": out.logits}) if return_outputs else out.loss

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Accuracy of the full model (all layers, all classes, no cache) on `eval_set`, logged as
        `{metric_key_prefix}_accuracy`; Trainer's own evaluation when an `eval_dataset` is given."""
        if eval_dataset is not None or self.eval_set is None:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        was_training = self.model.training
        self.model.eval()
        scores = evaluate_accuracy(self.model, self.eval_set, self.eval_prompts, self.eval_transform)
        self.model.train(was_training)
        metrics = {f"{metric_key_prefix}_accuracy": scores["accuracy"]}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics
