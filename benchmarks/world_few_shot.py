"""Few-shot Skip Tuning of the pretrained world CLIP on the world's downstream tasks: zero-shot vs tuned accuracy.

    PYTHONPATH=src python benchmarks/world_few_shot.py --shots 16 --out runs/world

Every accuracy here is that of a CLIP pretrained offline on the captioned world (`peft_skip.pretrain`), so unlike the
random-weight models elsewhere its zero-shot accuracy is real and Skip Tuning's gain over it means something.
`few_shot` is the one place that calls the trainer.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field, fields

import torch
from peft import get_peft_model
from transformers import AutoModel, AutoProcessor

from peft_skip import SkipConfig, SkipTrainer, SkipTrainingArguments, evaluate_accuracy, tokenize_classes
from peft_skip.data import ImageTransform, sample_few_shot, split_base_new, subset_classes
from peft_skip.data.world_tasks import TEMPLATE, WORLD_TASK_NAMES, load_world_task
from peft_skip.pretrain import world_clip_path


@dataclass
class WorldRun:
    """One few-shot run on a world task. The defaults are what works for the 6-layer world CLIP: the paper's SGD at
    lr 1e-5 barely moves it, SGD above 3e-3 or AdamW above 3e-4 wrecks it in the first epoch, and single-class
    batches of 4 learn slower than random batches of 8."""

    task: str = field(metadata={"help": "World task (peft_skip.data.world_tasks.WORLD_TASK_NAMES)."})
    shots: int = field(default=16, metadata={"help": "Training images per class."})
    skip_layers: int = field(default=3, metadata={"help": "ω: frozen shallow layers of each tower (of 6)."})
    class_ratio: float = field(default=0.5, metadata={"help": "CSkip: fraction of the classes always kept."})
    optimizer: str = field(
        default="adamw_torch", metadata={"help": "`adamw_torch` or `sgd` (momentum 0.9, the paper's)."}
    )
    learning_rate: float = field(default=3e-4, metadata={"help": "Peak learning rate (cosine schedule)."})
    epochs: int = field(default=10, metadata={"help": "Epochs over the few-shot set."})
    batch_size: int = field(default=8, metadata={"help": "Images per step (the paper's: 4)."})
    sampler: str = field(
        default="random", metadata={"help": "`random`, or `auto` (the paper's single-class batches)."}
    )
    warmup_epochs: int = field(default=0, metadata={"help": "Epochs at the constant `warmup_lr` first."})
    warmup_lr: float = field(default=1e-5, metadata={"help": "Learning rate of the warm-up epochs."})
    crop_scale: float = field(
        default=1.0, metadata={"help": "Smallest area of the random resized crop (1: flips only)."}
    )
    base_to_new: bool = field(default=False, metadata={"help": "Train on the base half, test base and new."})
    test_limit: int | None = field(default=None, metadata={"help": "Test on this many images per class at most."})
    seed: int = field(default=0, metadata={"help": "Seeds the shots and the training."})


def _limit(dataset, per_class: int | None):
    if per_class is None:
        return dataset
    seen = [0] * len(dataset.class_names)
    keep = []
    for i, label in enumerate(dataset.labels):
        if seen[label] < per_class:
            keep.append(i)
            seen[label] += 1
    return dataset.subset(keep)


def few_shot(run: WorldRun, output_dir: str, model_dir: str | None = None) -> dict:
    """Zero-shot accuracy, then `run.shots`-shot Skip Tuning and the tuned accuracy, on the test split.

    Returns:
        `dict`: `zero_shot` and `tuned` accuracies (`all`, or `base` / `new` for base-to-new), training seconds.
    """
    model_dir = model_dir or world_clip_path()
    model, processor = AutoModel.from_pretrained(model_dir).eval(), AutoProcessor.from_pretrained(model_dir)
    train = sample_few_shot(load_world_task(run.task, "train"), run.shots, run.seed)
    test = _limit(load_world_task(run.task, "test"), run.test_limit)
    splits = {"all": None}
    if run.base_to_new:
        base, new = split_base_new(train.class_names)
        train, splits = subset_classes(train, base), {"base": base, "new": new}
    eval_transform = ImageTransform.from_processor(processor, train=False)

    def accuracies() -> dict[str, float]:
        result = {}
        for name, classes in splits.items():
            part = test if classes is None else subset_classes(test, classes)
            prompts = tokenize_classes(model, processor.tokenizer, part.class_names, TEMPLATE)
            result[name] = evaluate_accuracy(model, part, prompts, eval_transform)["accuracy"]
        return result

    zero_shot = accuracies()
    model = get_peft_model(model, SkipConfig(skip_layers=run.skip_layers, class_ratio=run.class_ratio))
    args = SkipTrainingArguments(
        output_dir=output_dir,
        num_train_epochs=run.epochs,
        learning_rate=run.learning_rate,
        vision_learning_rate=run.learning_rate,
        optim=run.optimizer,
        sampler=run.sampler,
        batch_size=run.batch_size,
        warmup_epochs=run.warmup_epochs,
        warmup_lr=run.warmup_lr,
        lr_scheduler_type="cosine_per_step",
        crop_min_area=run.crop_scale,
        precision="fp32",
        seed=run.seed,
        disable_tqdm=True,
    )
    transform = ImageTransform.from_processor(processor, train=True, scale=(run.crop_scale, 1.0))
    started = time.perf_counter()
    prompts = tokenize_classes(model, processor.tokenizer, train.class_names, TEMPLATE)
    trained = SkipTrainer(model, args, train, prompts, transform).train()
    seconds = time.perf_counter() - started
    return {
        "zero_shot": zero_shot,
        "tuned": accuracies(),
        "chance": _chance(splits, test),
        "train_seconds": seconds,
        "history": trained.history,
    }


def _chance(splits: dict, test) -> dict[str, float]:
    return {name: 1 / len(classes or test.class_names) for name, classes in splits.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(WORLD_TASK_NAMES))
    parser.add_argument("--model", default=None, help="Model directory (default: the shipped world CLIP).")
    parser.add_argument("--out", default="runs/world")
    for f in fields(WorldRun)[1:]:
        kind = {"bool": bool, "int | None": int}.get(str(f.type), f.type)
        if kind is bool:
            parser.add_argument(f"--{f.name.replace('_', '-')}", action="store_true", help=f.metadata["help"])
        else:
            kind = {"int": int, "float": float, "str": str}.get(kind, kind)
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default, help=f.metadata["help"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {}
    for task in args.tasks:
        run = WorldRun(task, **{f.name: getattr(args, f.name) for f in fields(WorldRun)[1:]})
        results[task] = r = few_shot(run, os.path.join(args.out, task), args.model)
        line = "  ".join(
            f"{k}: {100 * r['zero_shot'][k]:.1f}% -> {100 * r['tuned'][k]:.1f}% (chance {100 * r['chance'][k]:.1f}%)"
            for k in r["zero_shot"]
        )
        print(f"{task:12s} {line}  [{r['train_seconds']:.0f} s]", flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
