"""Tiny Skip Tuning runs shared by the trainer tests: image data sets with and without a fingerprint, augmentations,
prompts, a wrapped model, one training run and its deltas."""

from __future__ import annotations

import hashlib

import torch
from conftest import text_batch, tiny_clip
from peft import get_peft_model, get_peft_model_state_dict

from peft_skip import SkipConfig
from peft_skip.training.trainer import SkipTrainer
from peft_skip.training.training_args import SkipTrainingArguments

NUM_CLASSES = 3


class UnidentifiedImages:
    """A data set of random 32x32 images with the `ImageDataset` interface the trainer uses, but no fingerprint."""

    def __init__(self, per_class: int = 4, num_classes: int = NUM_CLASSES, seed: int = 0) -> None:
        self.class_names = [f"class {c}" for c in range(num_classes)]
        self.labels = [c for c in range(num_classes) for _ in range(per_class)]
        self.pixels = torch.randn(len(self.labels), 3, 32, 32, generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> torch.Tensor:
        return self.pixels[i]


class TensorImages(UnidentifiedImages):
    """The same, with the fingerprint that resuming and a cache directory need to tell data sets apart."""

    def fingerprint(self) -> str:
        return hashlib.sha256(self.pixels.numpy().tobytes() + bytes(self.labels)).hexdigest()[:16]


def identity(image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    return image


def jitter(image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A seeded augmentation: flip and noise, so that every epoch's cache differs."""
    if torch.rand((), generator=generator) < 0.5:
        image = image.flip(-1)
    return image + 0.1 * torch.randn(image.shape, generator=generator)


def prompts() -> dict[str, torch.Tensor]:
    return text_batch(NUM_CLASSES, seed=1)


def skip_model(seed: int = 0, **config) -> torch.nn.Module:
    config = {"skip_layers": 2, "class_ratio": 1.0, **config}
    return get_peft_model(tiny_clip(seed), SkipConfig(**config))


def train(model, tmp_path, data=None, transform=jitter, resume=False, accelerator=None, **args) -> SkipTrainer:
    args = {"num_train_epochs": 3, "learning_rate": 0.05, "precision": "fp32", "disable_tqdm": True, **args}
    args = SkipTrainingArguments(output_dir=str(tmp_path), **args)
    data = data or TensorImages()
    batch = text_batch(len(data.class_names), seed=1)
    trainer = SkipTrainer(model, args, data, batch, transform, accelerator)
    trainer.result = trainer.train(resume_from_checkpoint=resume)  # read by the tests
    return trainer


def deltas(model) -> dict[str, torch.Tensor]:
    return get_peft_model_state_dict(model)
