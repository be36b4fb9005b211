"""SkipHFTrainer: Skip Tuning's steps inside transformers.Trainer, equal to SkipTrainer's."""

from __future__ import annotations

import os

import pytest
import torch
from tiny_training import TensorImages, deltas, identity, jitter, prompts, skip_model
from transformers import TrainerCallback, TrainingArguments

from peft_skip import SkipHFTrainer, SkipTrainer, SkipTrainingArguments

SKIP = {"class_ratio": 0.5, "token_drop": 0.3}  # CSkip's tail and token drop: both draw from seeded generators


def skip_args(tmp_path, **args) -> SkipTrainingArguments:
    args = {"num_train_epochs": 2, "learning_rate": 0.05, "precision": "fp32", "disable_tqdm": True, **args}
    return SkipTrainingArguments(output_dir=str(tmp_path / "skip"), dataloader_num_workers=0, **args)


def hf_args(tmp_path, **args) -> TrainingArguments:
    args = {
        "num_train_epochs": 2,
        "per_device_train_batch_size": 4,
        "lr_scheduler_type": "constant",  # SkipTrainer's cosine starts at the full rate and is stepped per epoch
        "max_grad_norm": 0.0,  # SkipTrainer does not clip
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "use_cpu": True,
        "disable_tqdm": True,
        **args,
    }
    return TrainingArguments(output_dir=str(tmp_path / "hf"), **args)


def test_an_epoch_equals_skip_trainers(tmp_path):
    reference = skip_model(**SKIP)
    expected = SkipTrainer(reference, skip_args(tmp_path, num_train_epochs=1), TensorImages(), prompts(), jitter)
    history = expected.train().history

    model = skip_model(**SKIP)
    trainer = SkipHFTrainer(
        model, hf_args(tmp_path, num_train_epochs=1), TensorImages(), prompts(), jitter, skip_args(tmp_path)
    )
    trainer.train()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    assert len(losses) == 3  # 3 classes x 4 images, one class per batch of 4
    assert sum(losses) / len(losses) == pytest.approx(history[0]["loss"], rel=1e-5)
    assert any(d.abs().max() > 0 for d in deltas(reference).values())
    for name, delta in deltas(reference).items():
        torch.testing.assert_close(deltas(model)[name], delta, rtol=1e-5, atol=1e-7, msg=name)


class StepCounter(TrainerCallback):
    def __init__(self) -> None:
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


def test_trainer_flags_steps_evaluation_checkpoints_and_resume(tmp_path):
    """max_steps, eval_strategy, save_strategy and callbacks work as in any Trainer; resuming from a checkpoint ends
    where the uninterrupted run does."""
    data = TensorImages(per_class=8)  # 6 steps per epoch
    run = {"max_steps": 8, "eval_strategy": "steps", "eval_steps": 4, "save_strategy": "steps", "save_steps": 3}
    uninterrupted, counter = skip_model(**SKIP), StepCounter()
    trainer = SkipHFTrainer(
        uninterrupted, hf_args(tmp_path, **run), data, prompts(), jitter, skip_args(tmp_path),
        eval_set=TensorImages(per_class=2, seed=1), eval_transform=identity, callbacks=[counter],
    )  # fmt: skip
    trainer.train()
    assert counter.steps == 8 and trainer.state.global_step == 8 and trainer.current_epoch() == 1
    evaluations = [row for row in trainer.state.log_history if "eval_accuracy" in row]
    assert [row["step"] for row in evaluations] == [4, 8] and 0 <= evaluations[0]["eval_accuracy"] <= 1
    checkpoints = sorted(os.listdir(tmp_path / "hf"))
    assert checkpoints == ["checkpoint-3", "checkpoint-6", "checkpoint-8"]

    resumed = skip_model(**SKIP)
    args = hf_args(tmp_path, **{**run, "save_strategy": "no", "eval_strategy": "no"})
    trainer = SkipHFTrainer(resumed, args, data, prompts(), jitter, skip_args(tmp_path))
    trainer.train(resume_from_checkpoint=str(tmp_path / "hf" / "checkpoint-3"))
    assert trainer.state.global_step == 8
    for name, delta in deltas(uninterrupted).items():
        torch.testing.assert_close(deltas(resumed)[name], delta, rtol=1e-5, atol=1e-7, msg=name)


def test_mismatched_batch_sizes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="differs from args.per_device_train_batch_size=8"):
        SkipHFTrainer(
            skip_model(), hf_args(tmp_path, per_device_train_batch_size=8), TensorImages(), prompts(), jitter,
            skip_args(tmp_path),
        )  # fmt: skip
