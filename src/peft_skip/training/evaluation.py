"""Accuracy of the full model (all layers, all classes of the split, no cache; one prompt per class, or a prompt
ensemble: several templates whose text features are averaged per class).

Covers the protocols of this line of work: plain accuracy (few-shot, cross-dataset, domain generalisation) and
base-to-new (base accuracy among the base classes, new accuracy among the new ones, and their harmonic mean).
Wrap a call in `model.disable_adapter()` for the zero-shot accuracy of the base model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from torch import nn
from tqdm.auto import tqdm

from ..data import build_prompts, subset_classes
from ..data.workers import ordered_map
from ..towers import get_towers


def tokenize_classes(
    model: nn.Module, tokenizer, class_names: Sequence[str], template: str | Sequence[str]
) -> dict[str, torch.Tensor]:
    """One prompt per class and template, tokenised and padded as the model's text tower expects.

    Args:
        model (`nn.Module`): A supported model, plain or wrapped by peft.
        tokenizer: Its tokenizer.
        class_names (`Sequence[str]`): The classes, in label order.
        template (`str` or `Sequence[str]`): A key of `peft_skip.data.TEMPLATES` or a format string with one `{}`;
            or several of them (a prompt ensemble).

    Returns:
        `dict`: `input_ids` and `attention_mask`, each of shape `(T * C, L)` for T templates, template by template
        (`(C, L)` for one).
    """
    templates = [template] if isinstance(template, str) else list(template)
    prompts = [prompt for t in templates for prompt in build_prompts(class_names, t)]
    return get_towers(model).text.tokenize(tokenizer, prompts)


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module,
    dataset,
    prompts: dict[str, torch.Tensor],
    transform: Callable,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = False,
) -> dict:
    """Accuracy of the full model on `dataset`, choosing among all of its classes.

    Under `accelerate launch` every process classifies its shard of the images; all processes return the same result.

    Args:
        model (`nn.Module`): A supported model, plain or wrapped by peft.
        dataset: An `ImageDataset` (`len`, `image(i)`, `labels`, `class_names`).
        prompts (`dict[str, torch.Tensor]`): `input_ids` and `attention_mask` of one prompt per class, `(C, L)`, or
            of T prompts per class, `(T * C, L)` template by template (`tokenize_classes`): each class's normalised
            text features are averaged over its T prompts, then normalised again.
        transform (`Callable`): Evaluation transform `transform(pil_image)` -> `(3, S, S)`.
        batch_size (`int`): Images per forward pass.
        num_workers (`int`): Worker processes that read and transform the images ahead of the model (0: none).
        progress (`bool`): Show a progress bar over the batches (main process only).

    Returns:
        `dict`: `accuracy`, `per_class` (class name -> accuracy), `num_images`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} is invalid; expected an integer >= 1.")
    state = PartialState()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    towers = get_towers(model)
    classes = towers.text_features(prompts["input_ids"].to(device), prompts["attention_mask"].to(device))
    num_classes = len(dataset.class_names)
    if len(classes) % num_classes:
        raise ValueError(f"Got {len(classes)} prompts for {num_classes} classes; give T prompts per class.")
    if len(classes) > num_classes:  # a prompt ensemble
        classes = nn.functional.normalize(classes.view(-1, num_classes, classes.shape[-1]).mean(0), dim=-1)
    shard = range(state.process_index, len(dataset), state.num_processes)
    predictions = []
    batches = [(shard[start : start + batch_size],) for start in range(0, len(shard), batch_size)]
    pixels = ordered_map(_Pixels(dataset, transform), batches, num_workers, pin_memory=device.type == "cuda")
    bar = tqdm(pixels, total=len(batches), desc="evaluating", disable=not progress or not state.is_local_main_process)
    for (indices,), batch in zip(batches, bar, strict=True):
        images = towers.image_features(batch.to(device))
        logits = images @ classes.T.to(images.dtype)
        if not logits.isfinite().all():
            raise FloatingPointError(
                f"Non-finite logits for images {indices[0]}..{indices[-1]}: the model's weights or activations "
                "overflowed, so no accuracy is reported. Evaluate in float32, or retrain with a lower learning rate."
            )
        predictions.extend(zip(indices, logits.argmax(-1).tolist(), strict=True))
    model.train(was_training)
    if state.num_processes > 1:
        predictions = gather_object(predictions)
    predictions = [p for _, p in sorted(predictions)]
    return accuracy_report(predictions, list(dataset.labels), dataset.class_names)


class _Pixels:
    """The transformed pixels `(b, 3, S, S)` of a batch of images of a data set."""

    def __init__(self, dataset, transform: Callable) -> None:
        self.dataset, self.transform = dataset, transform

    def __call__(self, indices: Sequence[int]) -> torch.Tensor:
        return torch.stack([self.transform(self.dataset.image(i)) for i in indices])


def accuracy_report(predictions: Sequence[int], references: Sequence[int], class_names: Sequence[str]) -> dict:
    """Overall and per-class accuracy: plain fractions of correct predictions.

    Args:
        predictions (`Sequence[int]`): Predicted class of each image.
        references (`Sequence[int]`): True class of each image.
        class_names (`Sequence[str]`): Names of the classes, in label order.
    """
    predictions, references = torch.as_tensor(predictions), torch.as_tensor(references)
    correct = predictions == references
    per_class = {}
    for c, name in enumerate(class_names):
        mask = references == c
        if mask.any():
            per_class[name] = correct[mask].double().mean().item()
    return {"accuracy": correct.double().mean().item(), "per_class": per_class, "num_images": len(references)}


def harmonic_mean(base: float, new: float) -> float:
    """HM of base and new accuracy, the headline number of base-to-new (0 if both are 0). The `base_new_accuracy`
    metric module restates it (it must stay self-contained); a test checks that the two agree."""
    return 0.0 if base + new == 0 else 2 * base * new / (base + new)


def evaluate_protocol(
    model: nn.Module,
    tokenizer,
    dataset,
    transform: Callable,
    template: str | Sequence[str],
    base_new: tuple[Sequence[str], Sequence[str]] | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = False,
) -> dict:
    """All-class accuracy, or for base-to-new the base and new accuracies and their harmonic mean.

    Args:
        model (`nn.Module`): A supported model, plain or wrapped by peft.
        tokenizer: Its tokenizer.
        dataset: The test `ImageDataset`.
        transform (`Callable`): Evaluation transform.
        template (`str` or `Sequence[str]`): Prompt template, or several averaged (see `tokenize_classes`).
        base_new (`tuple`, *optional*): Base and new class names; each group is tested on its own images, choosing
            among its own classes.
        batch_size (`int`): Images per forward pass.
        num_workers (`int`): Worker processes that read and transform the images (see `evaluate_accuracy`).
        progress (`bool`): Show a progress bar over the batches.
    """

    def accuracy(classes: Sequence[str] | None) -> dict:
        subset = dataset if classes is None else subset_classes(dataset, classes)
        prompts = tokenize_classes(model, tokenizer, subset.class_names, template)
        return evaluate_accuracy(model, subset, prompts, transform, batch_size, num_workers, progress)

    if base_new is None:
        return accuracy(None)
    base, new = accuracy(base_new[0]), accuracy(base_new[1])
    return {"base": base, "new": new, "harmonic_mean": harmonic_mean(base["accuracy"], new["accuracy"])}


def summary(result: dict) -> str:
    """One line for a result of `evaluate_protocol`."""
    if "harmonic_mean" in result:
        return (
            f"base {100 * result['base']['accuracy']:.2f}%  new {100 * result['new']['accuracy']:.2f}%  "
            f"HM {100 * result['harmonic_mean']:.2f}%"
        )
    return f"{100 * result['accuracy']:.2f}% ({result['num_images']} images)"
