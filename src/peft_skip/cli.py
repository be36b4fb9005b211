"""`peft-skip`: train, evaluate and zero-shot CLIP-family models with Skip Tuning from the command line.

Every command works offline with a local model directory (see `peft-skip make-offline-model`). Run `train` under
`accelerate launch` to use several processes or GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from .config import METHOD_FIELDS, SkipConfig
from .data import (
    DIGITS_CLASSES,
    FASHION_MNIST_CLASSES,
    TEMPLATES,
    ImageTransform,
    build_prompts,
    load_dataset_spec,
    sample_few_shot,
    split_base_new,
    subset_classes,
)
from .offline import OFFLINE_FAMILIES, make_offline_model
from .towers import get_towers
from .trainer import PRESETS, NonFiniteLossError, SkipTrainer, TrainingArguments, evaluate, make_accelerator

ACCURACY_NOTE = "accuracy computed directly (evaluate.load('accuracy') needs the Hugging Face Hub)"


def _random_weights(model_path: str) -> bool:
    """Whether `model_path` is a directory written by `make-offline-model` (random weights)."""
    card = Path(model_path, "README.md")
    return card.is_file() and "RANDOM weights" in card.read_text(encoding="utf-8").split("\n", 1)[0]


def _load(model_path: str):
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(model_path)
    processor = AutoProcessor.from_pretrained(model_path)
    if _random_weights(model_path):
        print(
            f"NOTE: {model_path} has RANDOM weights (no pretrained checkpoint can be downloaded here). The run checks "
            "the mechanics, speed and memory; its accuracies say nothing about Skip Tuning on a real CLIP.",
            flush=True,
        )
    return model.eval(), processor


def _template(args: argparse.Namespace) -> str:
    if args.template:
        return args.template
    return TEMPLATES.get(args.data, TEMPLATES["default"])


def _prompts(model, processor, class_names: Sequence[str], template: str) -> dict[str, torch.Tensor]:
    prompts = build_prompts(class_names, template)
    tokens = processor.tokenizer(prompts, return_tensors="pt", **get_towers(model).text.padding())
    return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}


def _test_set(args: argparse.Namespace):
    test = load_dataset_spec(args.data, args.split)
    if args.test_limit and args.test_limit < len(test):
        test = test.subset(sorted(random.Random(args.seed).sample(range(len(test)), args.test_limit)))
    return test


def _evaluate_classes(
    model, processor, dataset, classes: Sequence[int] | None, template: str, batch_size: int
) -> dict:
    """Accuracy on the images of `classes` (all classes if `None`), choosing among those classes only."""
    if classes is not None:
        dataset = subset_classes(dataset, classes)
    transform = ImageTransform.from_processor(processor, train=False)
    return evaluate(model, dataset, _prompts(model, processor, dataset.class_names, template), transform, batch_size)


def _harmonic_mean(a: float, b: float) -> float:
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def _evaluate_protocol(model, processor, test, base_new: tuple | None, template: str, batch_size: int) -> dict:
    """All-class accuracy, or for base-to-new the base and new accuracies and their harmonic mean."""
    if base_new is None:
        return _evaluate_classes(model, processor, test, None, template, batch_size)
    base = _evaluate_classes(model, processor, test, base_new[0], template, batch_size)
    new = _evaluate_classes(model, processor, test, base_new[1], template, batch_size)
    return {"base": base, "new": new, "harmonic_mean": _harmonic_mean(base["accuracy"], new["accuracy"])}


def _summary(result: dict) -> str:
    if "harmonic_mean" in result:
        return (
            f"base {100 * result['base']['accuracy']:.2f}%  new {100 * result['new']['accuracy']:.2f}%  "
            f"HM {100 * result['harmonic_mean']:.2f}%"
        )
    return f"{100 * result['accuracy']:.2f}% ({result['num_images']} images)"


def _write_json(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2)


def cmd_train(args: argparse.Namespace) -> int:
    from peft import get_peft_model

    accelerator = make_accelerator(args.mixed_precision)
    say = accelerator.print
    training = TrainingArguments(
        output_dir=args.out,
        preset=args.preset,
        epochs=args.epochs,
        lr=args.lr,
        warmup_epochs=args.warmup_epochs,
        warmup_lr=args.warmup_lr,
        batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        sampler=args.sampler,
        cache_mode=args.cache_mode,
        views=args.views,
        cache_dtype=args.cache_dtype,
        cache_dir=args.cache_dir,
        mixed_precision=args.mixed_precision,
        seed=args.seed,
        keep_checkpoints=args.keep_checkpoints,
        progress=not args.no_progress,
    )
    config = SkipConfig(
        skip_layers=args.skip_layers,
        vision_skip_layers=args.vision_skip_layers,
        text_skip_layers=args.text_skip_layers,
        class_ratio=args.class_ratio,
        max_classes=args.max_classes,
        class_decay=args.class_decay,
        token_drop=args.token_drop,
        delta_dtype=args.delta_dtype,
    )
    model, processor = _load(args.model)
    template = _template(args)
    train_set = sample_few_shot(load_dataset_spec(args.data, "train"), args.shots, args.seed)
    test = _test_set(args)
    base_new = split_base_new(train_set.class_names) if args.preset == "base_to_new" else None
    if base_new is not None:
        train_set = subset_classes(train_set, base_new[0])
    say(f"{args.data}: {len(train_set)} training images ({args.shots} shots x {len(train_set.class_names)} classes)")

    model.to(accelerator.device)
    zero_shot = _evaluate_protocol(model, processor, test, base_new, template, args.eval_batch_size)
    say(f"zero-shot accuracy (base model): {_summary(zero_shot)}")

    model = get_peft_model(model, config)
    trainer = SkipTrainer(
        model,
        training,
        train_set,
        _prompts(model, processor, train_set.class_names, template),
        ImageTransform.from_processor(processor, train=True),
        accelerator=accelerator,
    )
    try:
        with torch.autograd.set_detect_anomaly(args.detect_anomaly):
            result = trainer.train(resume=args.resume)
    except NonFiniteLossError as error:
        say(f"error: {error}")
        return 1
    say(
        f"image cache: {result.cache_bytes / 2**20:.1f} MiB per process, built in {result.cache_seconds:.1f} s in "
        f"total; training {result.train_seconds:.1f} s"
    )
    tuned = _evaluate_protocol(model, processor, test, base_new, template, args.eval_batch_size)
    say(f"zero-shot accuracy (base model): {_summary(zero_shot)}")
    say(f"Skip Tuning accuracy:            {_summary(tuned)}")
    if accelerator.is_main_process:
        _write_json(
            os.path.join(args.out, "metrics.json"),
            {
                "model": args.model,
                "random_weights": _random_weights(args.model),
                "data": args.data,
                "shots": args.shots,
                "seed": args.seed,
                "template": template,
                "num_processes": accelerator.num_processes,
                "training_arguments": {k: v for k, v in vars(training).items() if k != "progress"},
                "skip_config": {k: getattr(config, k) for k in METHOD_FIELDS},
                "zero_shot": zero_shot,
                "tuned": tuned,
                "cache_bytes_per_process": result.cache_bytes,
                "cache_seconds": result.cache_seconds,
                "train_seconds": result.train_seconds,
                "resumed_from_epoch": result.resumed_from_epoch,
                "history": result.history,
                "note": ACCURACY_NOTE,
            },
        )
        say(f"adapter and metrics.json written to {args.out}")
    return 0


def _eval_command(args: argparse.Namespace, adapter: str | None) -> int:
    accelerator = make_accelerator()
    model, processor = _load(args.model)
    if adapter is not None:
        from peft import PeftModel

        # Read with Skip Tuning's own checks: peft's reader would fail on a broken file without naming it.
        model = PeftModel.from_pretrained(model, adapter, config=SkipConfig.from_pretrained(adapter))
    model.to(accelerator.device)
    test = _test_set(args)
    result = _evaluate_classes(model, processor, test, None, _template(args), args.eval_batch_size)
    result = {"model": args.model, "adapter": adapter, "data": args.data, "split": args.split, **result}
    result["note"] = ACCURACY_NOTE
    accelerator.print(f"accuracy: {_summary(result)}")
    if accelerator.is_main_process:
        if args.out:
            _write_json(args.out, result)
        else:
            print(json.dumps(result, indent=2))
    return 0


def cmd_make_offline_model(args: argparse.Namespace) -> int:
    class_names = list(FASHION_MNIST_CLASSES) + list(DIGITS_CLASSES)
    for spec in args.data or []:
        class_names += load_dataset_spec(spec, "train").class_names
    make_offline_model(args.out_dir, arch=args.arch, class_names=class_names, seed=args.seed, family=args.family)
    print(
        f"Wrote a {args.arch} {args.family} model with RANDOM weights to {args.out_dir} (no pretrained checkpoint can "
        "be downloaded here): use it to check mechanics, speed and memory, not accuracy."
    )
    return 0


def _add_model_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="Model name on the Hub or a local directory (e.g. from `peft-skip make-offline-model`).",
    )
    parser.add_argument(
        "--data",
        required=True,
        help="Data set: 'fashion-mnist', 'digits', 'hf:<name>', "
        "'imagefolder:<dir>' or an image folder (one sub-folder per class, optionally under train/ and "
        "test/).",
    )
    parser.add_argument(
        "--template",
        default=None,
        help="Prompt template with one '{}' or a key of the built-in "
        f"templates ({', '.join(sorted(TEMPLATES))}); default: the data set's, else 'a photo of a {{}}.'",
    )
    parser.add_argument("--split", default="test", help="Split evaluated on (default: test).")
    parser.add_argument(
        "--test-limit",
        type=int,
        default=None,
        help="Evaluate on a random subset of this many images (seeded by --seed); default: the whole split.",
    )
    parser.add_argument("--eval-batch-size", type=int, default=64, help="Images per forward pass when evaluating.")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="Seeds the few-shot sample, the test subset, batches, augmentation and token drop.",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peft-skip",
        description="Skip Tuning (Wu et al., CVPR 2025) for CLIP-family models: train deep-layer deltas with layer "
        "and class skipping, evaluate them, or measure zero-shot accuracy. Works offline with a local model dir.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train",
        help="Few-shot Skip Tuning; writes the delta adapter, metrics.json and per-epoch checkpoints.",
        description="Few-shot Skip Tuning of a CLIP-family model. Prints the zero-shot and tuned accuracy and writes "
        "only the delta adapter (adapter_config.json, adapter_model.safetensors), metrics.json and per-epoch "
        "checkpoints to --out. Run under `accelerate launch` for several processes/GPUs (--batch-size is global).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_model_data(train)
    train.add_argument("--out", required=True, help="Output directory.")
    train.add_argument("--shots", type=int, default=16, help="Training images per class.")
    train.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="few_shot",
        help="The paper's hyper-parameters: "
        "few_shot (lr 1e-5, 40 epochs), base_to_new (lr 2e-5, 20 epochs, 1 warm-up epoch at 1e-6; "
        "trains on the first half of the classes, reports base, new and harmonic mean), "
        "cross_dataset (lr 1e-5, 20 epochs).",
    )
    train.add_argument("--epochs", type=int, default=None, help="Overrides the preset's number of epochs.")
    train.add_argument("--lr", type=float, default=None, help="Overrides the preset's peak learning rate (cosine).")
    train.add_argument("--warmup-epochs", type=int, default=None, help="Overrides the preset's warm-up epochs.")
    train.add_argument("--warmup-lr", type=float, default=None, help="Overrides the preset's constant warm-up lr.")
    train.add_argument("--batch-size", type=int, default=4, help="Global batch size (the paper's is 4).")
    train.add_argument("--gradient-accumulation-steps", type=int, default=1, help="Batches per optimiser step.")
    train.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd", help="sgd: momentum 0.9 (paper).")
    train.add_argument(
        "--weight-decay",
        type=float,
        default=5e-4,
        help="Weight decay of the tuned weights (the paper's 5e-4).",
    )
    train.add_argument(
        "--sampler",
        choices=["auto", "class", "random"],
        default="auto",
        help="class: every batch "
        "from one class; random: at random; auto: class when every class has >= 4 shots (reference).",
    )
    skip = train.add_argument_group("Skip Tuning (SkipConfig)")
    skip.add_argument("--skip-layers", type=int, default=6, help="ω: frozen, cached shallow layers of both towers.")
    skip.add_argument("--vision-skip-layers", type=int, default=None, help="ω of the image tower (overrides).")
    skip.add_argument("--text-skip-layers", type=int, default=None, help="ω of the text tower (overrides).")
    skip.add_argument(
        "--class-ratio",
        type=float,
        default=0.5,
        help="CSkip: classes always kept per step, a fraction (<= 1) or a count (> 1); 1 keeps all classes.",
    )
    skip.add_argument("--max-classes", type=int, default=50, help="CSkip: upper bound on the classes always kept.")
    skip.add_argument(
        "--class-decay", type=float, default=0.3, help="CSkip: λ of the keep probability of the remaining class ranks."
    )
    skip.add_argument(
        "--token-drop",
        type=float,
        default=0.0,
        help="Drop up to this fraction of cached image tokens per step (0: off).",
    )
    skip.add_argument(
        "--delta-dtype",
        choices=["float32", "float16", "bfloat16"],
        default="float32",
        help="Dtype of the saved deltas.",
    )
    cache = train.add_argument_group("image cache")
    cache.add_argument(
        "--cache-mode",
        choices=["paper", "views"],
        default="paper",
        help="paper: re-extract the "
        "cache every epoch with that epoch's augmentation; views: build --views augmented views once "
        "and train epoch e on view e %% views.",
    )
    cache.add_argument("--views", type=int, default=4, help="Augmented views of --cache-mode views.")
    cache.add_argument(
        "--cache-dtype",
        choices=["float32", "float16", "bfloat16"],
        default="float32",
        help="Storage dtype of the image cache.",
    )
    cache.add_argument("--cache-dir", default=None, help="Memory-map the image cache here instead of RAM.")
    train.add_argument(
        "--mixed-precision",
        choices=["no", "bf16", "fp16"],
        default="no",
        help="bf16 autocasts on "
        "CPU or GPU; fp16 needs a GPU. `accelerate launch --mixed_precision` is overridden by this.",
    )
    train.add_argument("--keep-checkpoints", type=int, default=1, help="Per-epoch checkpoints kept (latest).")
    train.add_argument(
        "--resume",
        action="store_true",
        help="Continue from the latest checkpoint in --out (same "
        "arguments); a resumed run ends where an uninterrupted one would.",
    )
    train.add_argument(
        "--detect-anomaly",
        action="store_true",
        help="Run autograd's anomaly detection: a NaN or infinity in the backward pass raises an error naming the "
        "operation that produced it (slow; for debugging a non-finite loss).",
    )
    train.add_argument("--no-progress", action="store_true", help="No progress bar.")
    train.set_defaults(func=cmd_train)

    evaluation = commands.add_parser(
        "eval",
        help="Accuracy (overall and per class) of a base model plus a Skip Tuning adapter.",
        description="Accuracy of the full model with the adapter applied (all layers, all classes, no cache).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_model_data(evaluation)
    evaluation.add_argument("--adapter", required=True, help="Adapter directory written by `peft-skip train`.")
    evaluation.add_argument("--out", default=None, help="Write the accuracy JSON here instead of printing it.")
    evaluation.set_defaults(func=lambda args: _eval_command(args, args.adapter))

    zero_shot = commands.add_parser(
        "zero-shot",
        help="Zero-shot accuracy (overall and per class) of a base model.",
        description="Zero-shot accuracy of a CLIP-family model with one prompt per class.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_model_data(zero_shot)
    zero_shot.add_argument("--out", default=None, help="Write the accuracy JSON here instead of printing it.")
    zero_shot.set_defaults(func=lambda args: _eval_command(args, None))

    offline = commands.add_parser(
        "make-offline-model",
        help="Write a model directory with RANDOM weights (for machines that cannot download checkpoints).",
        description="Writes a CLIP-family model (random weights, real architecture), its image processor and its "
        "family's tokenizer class, learned offline from the prompt words and the class names of fashion-mnist, digits "
        "and any --data.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    offline.add_argument("out_dir", help="Directory to write.")
    offline.add_argument(
        "--arch",
        choices=["vit-b-32", "vit-b-16", "tiny"],
        default="vit-b-32",
        help="Architecture (tiny: 4 layers of width 32, 32x32 images).",
    )
    offline.add_argument(
        "--family",
        choices=sorted(OFFLINE_FAMILIES),
        default="clip",
        help="Model family (`model_type`): its layout, image preprocessing and special tokens.",
    )
    offline.add_argument(
        "--data",
        action="append",
        default=None,
        help="Also put this data set's class names in the vocabulary (repeatable).",
    )
    offline.add_argument("--seed", type=int, default=0, help="Seed of the random weights.")
    offline.set_defaults(func=cmd_make_offline_model)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"peft-skip {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
