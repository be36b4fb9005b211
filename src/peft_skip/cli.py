"""`peft-skip`: train, evaluate and zero-shot CLIP-family models with Skip Tuning from the command line.

Wiring only: every option is a field of a dataclass (`SkipConfig`, `SkipTrainingArguments`, `ModelArguments`,
`DataArguments`, `EvalArguments`, `OfflineModelArguments`, `RecipeArguments`), turned into flags by
`transformers.HfArgumentParser`.
`--config FILE` (JSON or YAML) sets any of them; flags given on the command line win. Every command works offline
with a local model directory; run `train` under `accelerate launch` for several processes or GPUs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import random
import sys
import typing
from collections.abc import Sequence

import torch
import transformers
import yaml
from transformers import HfArgumentParser

from .arguments import DataArguments, EvalArguments, ModelArguments
from .config import METHOD_FIELDS, SkipConfig
from .data import (
    DIGITS_CLASSES,
    FASHION_MNIST_CLASSES,
    ImageTransform,
    load_dataset_spec,
    sample_few_shot,
    split_base_new,
    subset_classes,
)
from .evaluation import evaluate_protocol, summary, tokenize_classes
from .offline import OfflineModelArguments, has_random_weights, make_offline_model
from .precision import to_reference_fp16
from .preflight import check_images_readable, check_launch
from .protocols import BenchmarkArguments, run_benchmark
from .recipes import RecipeArguments, reference_recipe
from .run_state import claim_output_dir
from .trainer import NonFiniteLossError, SkipTrainer, make_accelerator
from .training_args import SkipTrainingArguments

logger = logging.getLogger("peft_skip")


def _method_arguments() -> type:
    """The dataclass of `SkipConfig`'s method fields (not peft's bookkeeping), with their defaults and help."""
    hints = typing.get_type_hints(SkipConfig)
    fields = {f.name: f for f in dataclasses.fields(SkipConfig)}
    return dataclasses.make_dataclass(
        "SkipMethodArguments",
        [
            (name, hints[name], dataclasses.field(default=fields[name].default, metadata=fields[name].metadata))
            for name in METHOD_FIELDS
        ],
    )


def _load_model(model_args: ModelArguments, say):
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(model_args.model).eval()
    processor = AutoProcessor.from_pretrained(model_args.model)
    if has_random_weights(model):
        say(
            f"NOTE: {model_args.model} has RANDOM weights (no pretrained checkpoint can be downloaded here). The run "
            "checks the mechanics, speed and memory; its accuracies say nothing about Skip Tuning on a real CLIP."
        )
    return model, processor


def _test_set(data: DataArguments):
    test = load_dataset_spec(data.data, data.split, data_root=data.data_root)
    if data.test_limit and data.test_limit < len(test):
        test = test.subset(sorted(random.Random(0).sample(range(len(test)), data.test_limit)))
    return test


def _write_json(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2)


def train_command(model_args: ModelArguments, data: DataArguments, method, training: SkipTrainingArguments) -> int:
    check_launch()
    # An unusable or busy --out fails here, before the zero-shot evaluation and the first epoch.
    with claim_output_dir(training.output_dir, main_process=int(os.environ.get("RANK", "0")) == 0):
        return _train(model_args, data, method, training)


def _train(model_args: ModelArguments, data: DataArguments, method, training: SkipTrainingArguments) -> int:
    from peft import get_peft_model

    config = SkipConfig(**dataclasses.asdict(method))
    if training.disable_tqdm:
        transformers.utils.logging.disable_progress_bar()
    accelerator = make_accelerator(training.mixed_precision)
    say = accelerator.print
    recipe = training.recipe()
    template = data.template or (recipe.train_template if training.recipe_dataset else data.resolved_template())
    train_set = sample_few_shot(
        load_dataset_spec(data.data, "train", data_root=data.data_root), training.shots, training.seed
    )
    test = _test_set(data)
    base_new = split_base_new(train_set.class_names) if training.protocol == "base_to_new" else None
    if base_new is not None:
        train_set = subset_classes(train_set, base_new[0])
    check_images_readable(train_set)
    model, processor = _load_model(model_args, say)
    classes = len(train_set.class_names)
    say(f"{data.data}: {len(train_set)} training images ({training.shots} shots x {classes} classes)")

    if training.precision == "fp16_reference":
        to_reference_fp16(model)  # before the zero-shot evaluation, so that both accuracies use the same weights
    model.to(accelerator.device)
    eval_transform = ImageTransform.from_processor(processor, train=False)

    def evaluate() -> dict:
        tokenizer, batch_size = processor.tokenizer, data.per_device_eval_batch_size
        return evaluate_protocol(model, tokenizer, test, eval_transform, template, base_new, batch_size)

    model = get_peft_model(model, config)
    prompts = tokenize_classes(model, processor.tokenizer, train_set.class_names, template)
    transform = ImageTransform.from_processor(processor, train=True)
    trainer = SkipTrainer(model, training, train_set, prompts, transform, accelerator=accelerator)
    if training.resume_from_checkpoint:
        trainer.check_resume()  # another run's checkpoint is refused before the zero-shot evaluation
    with model.disable_adapter():
        zero_shot = evaluate()
    say(f"zero-shot accuracy (base model): {summary(zero_shot)}")
    try:
        with torch.autograd.set_detect_anomaly(training.detect_anomaly):
            result = trainer.train()
    except NonFiniteLossError as error:
        say(f"error: {error}")
        return 1
    say(
        f"image cache: {result.cache_bytes / 2**20:.1f} MiB per process, built in {result.cache_seconds:.1f} s in "
        f"total; training {result.train_seconds:.1f} s"
    )
    tuned = evaluate()
    say(f"zero-shot accuracy (base model): {summary(zero_shot)}")
    say(f"Skip Tuning accuracy:            {summary(tuned)}")
    if accelerator.is_main_process:
        metrics = {
            "model": model_args.model,
            "random_weights": has_random_weights(model.get_base_model()),
            "data": dataclasses.asdict(data) | {"template": template},
            "num_processes": accelerator.num_processes,
            "training_arguments": training.run_identity(),
            "skip_config": config.method_settings(),
            "zero_shot": zero_shot,
            "tuned": tuned,
            "cache_bytes_per_process": result.cache_bytes,
            "cache_seconds": result.cache_seconds,
            "train_seconds": result.train_seconds,
            "resumed_from_epoch": result.resumed_from_epoch,
            "history": result.history,
        }
        _write_json(os.path.join(training.output_dir, "metrics.json"), metrics)
        say(f"adapter and metrics.json written to {training.output_dir}")
    return 0


def eval_command(model_args: ModelArguments, data: DataArguments, eval_args: EvalArguments) -> int:
    accelerator = make_accelerator()
    model, processor = _load_model(model_args, accelerator.print)
    if eval_args.adapter is not None:
        from peft import PeftModel

        # Read with Skip Tuning's own checks: peft's reader would fail on a broken file without naming it.
        config = SkipConfig.from_pretrained(eval_args.adapter)
        model = PeftModel.from_pretrained(model, eval_args.adapter, config=config)
    model.to(accelerator.device)
    transform = ImageTransform.from_processor(processor, train=False)
    result = evaluate_protocol(
        model,
        processor.tokenizer,
        _test_set(data),
        transform,
        data.resolved_template(),
        batch_size=data.per_device_eval_batch_size,
    )
    result = {"model": model_args.model, "adapter": eval_args.adapter, **dataclasses.asdict(data), **result}
    accelerator.print(f"accuracy: {summary(result)}")
    if accelerator.is_main_process:
        if eval_args.output_dir:
            _write_json(os.path.join(eval_args.output_dir, "eval_results.json"), result)
        else:
            print(json.dumps(result, indent=2))
    return 0


def offline_model_command(args: OfflineModelArguments) -> int:
    class_names = list(FASHION_MNIST_CLASSES) + list(DIGITS_CLASSES)
    for spec in args.data or []:
        class_names += load_dataset_spec(spec, "train").class_names
    make_offline_model(args.output_dir, arch=args.arch, class_names=class_names, seed=args.seed, family=args.family)
    print(
        f"Wrote a {args.arch} {args.family} model with RANDOM weights to {args.output_dir} (no pretrained checkpoint "
        "can be downloaded here): use it to check mechanics, speed and memory, not accuracy."
    )
    return 0


def benchmark_command(args: BenchmarkArguments, method) -> int:
    try:
        run_benchmark(args, dataclasses.asdict(method))
    except NonFiniteLossError as error:
        print(f"error: {error}")
        return 1
    return 0


# The `peft-skip train` options a recipe sets, beside the method's (`SkipConfig`) and the prompt template.
_RECIPE_TRAIN_OPTIONS = (
    "protocol",
    "recipe_dataset",
    "num_train_epochs",
    "learning_rate",
    "vision_learning_rate",
    "warmup_epochs",
    "warmup_lr",
    "lr_scheduler_type",
    "batch_size",
    "optim",
    "momentum",
    "weight_decay",
    "sampler",
    "dataloader_drop_last",
    "precision",
)


def recipe_command(args: RecipeArguments) -> int:
    recipe = reference_recipe(args.protocol, args.dataset, strict=True)
    if not args.as_train_config:
        print(json.dumps(recipe.to_dict(), indent=2))
        return 0
    training = SkipTrainingArguments(output_dir="", protocol=args.protocol, recipe_dataset=args.dataset)
    options = {name: getattr(training, name) for name in _RECIPE_TRAIN_OPTIONS}
    method = {
        name: getattr(recipe, name)
        for name in ("skip_layers", "class_ratio", "max_classes", "class_decay", "token_drop")
    }
    print(json.dumps(options | method | {"template": recipe.train_template}, indent=2))
    return 0


def _commands() -> dict[str, tuple[list[type], typing.Callable, str]]:
    """Sub-command -> (its argument dataclasses, the function taking their instances, its help)."""
    return {
        "train": (
            [ModelArguments, DataArguments, _method_arguments(), SkipTrainingArguments],
            train_command,
            "Few-shot Skip Tuning: prints the zero-shot and tuned accuracy, writes the delta adapter, metrics.json "
            "and per-epoch checkpoints to --output_dir.",
        ),
        "eval": (
            [ModelArguments, DataArguments, EvalArguments],
            eval_command,
            "Accuracy (overall and per class) of the full model, with a Skip Tuning adapter if --adapter is given.",
        ),
        "benchmark": (
            [BenchmarkArguments, _method_arguments()],
            benchmark_command,
            "One of the paper's protocols on CoOp-layout data: trains and evaluates every (dataset, seed) cell, "
            "resumes where it stopped, writes results.json, results.md and results.png to --out.",
        ),
        "make-offline-model": (
            [OfflineModelArguments],
            offline_model_command,
            "Write a model directory with RANDOM weights (for machines that cannot download checkpoints).",
        ),
        "recipe": (
            [RecipeArguments],
            recipe_command,
            "Print the paper's training recipe for --protocol and --dataset as JSON (the values `train` uses for "
            "every option left unset; --as-train-config prints them as a `train --config` file).",
        ),
    }


def _build() -> tuple[argparse.ArgumentParser, dict[str, HfArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog="peft-skip",
        description="Skip Tuning (Wu et al., CVPR 2025) for CLIP-family models: train deep-layer deltas with layer "
        "and class skipping, evaluate them, or measure zero-shot accuracy. Works offline with a local model dir.",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=HfArgumentParser)
    parsers = {}
    for name, (types, _, help) in _commands().items():
        aliases = ["zero-shot"] if name == "eval" else []
        sub = commands.add_parser(name, dataclass_types=types, help=help, description=help, aliases=aliases)
        sub.add_argument("--config", default=None, help="JSON or YAML file of option values; flags given here win.")
        parsers.update(dict.fromkeys([name, *aliases], sub))
    return parser, parsers


def build_parser() -> argparse.ArgumentParser:
    """The `peft-skip` parser, one sub-command per entry of `_commands()`."""
    return _build()[0]


def _parse(argv: Sequence[str] | None) -> tuple[str, list]:
    """The sub-command and its argument dataclasses, built from the flags over the `--config` file's values."""
    parser, parsers = _build()
    namespace = parser.parse_args(argv)
    if namespace.config:
        with open(namespace.config, encoding="utf-8") as f:
            from_file = yaml.safe_load(f) or {}  # YAML reads JSON too
        sub = parsers[namespace.command]
        unknown = sorted(set(from_file) - {action.dest for action in sub._actions})
        if unknown:
            raise ValueError(
                f"{namespace.config} sets unknown options {unknown}; see `peft-skip {namespace.command} --help`."
            )
        sub.set_defaults(**from_file)
        namespace = parser.parse_args(argv)
    if namespace.command == "zero-shot" and namespace.adapter:
        raise ValueError("zero-shot evaluates the base model: drop --adapter, or use `peft-skip eval --adapter`.")
    command = "eval" if namespace.command == "zero-shot" else namespace.command
    instances = []
    for cls in _commands()[command][0]:
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        instances.append(cls(**{k: v for k, v in vars(namespace).items() if k in names}))
    return command, instances


def main(argv: Sequence[str] | None = None) -> int:
    main_process = int(os.environ.get("RANK", "0")) == 0
    logging.basicConfig(format="%(message)s")
    logger.setLevel(logging.INFO if main_process else logging.WARNING)
    command = next(iter(argv if argv is not None else sys.argv[1:]), "")
    try:
        command, arguments = _parse(argv)
        return _commands()[command][1](*arguments)
    except (ValueError, FileNotFoundError, OSError) as error:
        print(f"peft-skip {command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
