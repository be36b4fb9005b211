"""Trains a tiny model; run by `test_trainer.py` under `accelerate launch` with 2 CPU processes and in-process."""

from __future__ import annotations

import os
import sys

import torch
from tiny_training import TensorImages, deltas, jitter, prompts, skip_model

from peft_skip import SkipTrainer, SkipTrainingArguments


def run(output_dir: str) -> dict[str, torch.Tensor]:
    """Two epochs, global batch 4, cache views; returns the deltas (saved by the main process to deltas.pt)."""
    model = skip_model()
    args = SkipTrainingArguments(
        output_dir=output_dir,
        num_train_epochs=2,
        learning_rate=0.05,
        precision="fp32",
        cache_mode="views",
        views=2,
        disable_tqdm=True,
    )
    trainer = SkipTrainer(model, args, TensorImages(per_class=5), prompts(), jitter)
    trainer.train()
    result = deltas(model)
    if trainer.accelerator.is_main_process:
        torch.save(
            {"num_processes": trainer.accelerator.num_processes, "deltas": result},
            os.path.join(output_dir, "deltas.pt"),
        )
    return result


if __name__ == "__main__":
    run(sys.argv[1])
