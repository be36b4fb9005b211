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
import shutil
import sys
import typing
from collections.abc import Sequence

import transformers
import yaml
from transformers import HfArgumentParser

from ..data import (
    DIGITS_CLASSES,
    FASHION_MNIST_CLASSES,
    load_dataset_spec,
)
from ..offline import OfflineModelArguments, make_offline_model
from ..protocols.benchmark import BenchmarkArguments, run_benchmark
from ..training.finite import NonFiniteLossError
from ..training.output_dir import check_out_apart, claim_output_dir
from ..training.publishing import publish_files
from ..training.recipes import REFERENCE_DATASETS, RecipeArguments, reference_recipe
from ..training.training_args import SkipTrainingArguments
from ..tuner.adapter_files import STAGING_DIR
from ..tuner.config import METHOD_FIELDS, SkipConfig
from ..tuner.export import ExportArguments, export_lora
from .arguments import DataArguments, EvalArguments, LoggingArguments, ModelArguments
from .config_paths import resolve_config_paths
from .experiment import evaluate_saved, is_main_process, load_saved_adapter, train_and_evaluate

logger = logging.getLogger("peft_skip")


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


def recipe_train_config(protocol: str, dataset: str | None) -> dict:
    """The `peft-skip train --config` values of the paper's recipe: training options, method settings, template."""
    recipe = reference_recipe(protocol, dataset, strict=True)
    # The recipe's own precision, not this machine's default: the file says what the paper does.
    training = SkipTrainingArguments(
        output_dir="", protocol=protocol, recipe_dataset=dataset, precision=recipe.precision
    )
    options = {name: getattr(training, name) for name in _RECIPE_TRAIN_OPTIONS}
    method = {name: getattr(recipe, name) for name in ("skip_layers", "class_ratio", "max_classes", "class_decay")}
    drop = {"token_drop": recipe.token_drop, "token_drop_mode": recipe.token_drop_mode}
    return options | method | drop | {"image_decoding": recipe.image_decoding, "template": recipe.train_template}


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


def train_command(model_args: ModelArguments, data: DataArguments, method, training: SkipTrainingArguments) -> int:
    try:
        train_and_evaluate(model_args, data, SkipConfig(**dataclasses.asdict(method)), training)
    except NonFiniteLossError as error:
        if is_main_process():
            print(f"error: {error}")
        return 1
    return 0


def eval_command(model_args: ModelArguments, data: DataArguments, eval_args: EvalArguments) -> int:
    evaluate_saved(model_args, data, eval_args)
    return 0


def export_command(model_args: ModelArguments, args: ExportArguments) -> int:
    # Never over the Skip Tuning adapter it reads (the same file names) nor a user's directory; each file lands whole.
    check_out_apart(args.output_dir, {"--adapter": args.adapter, "--model": model_args.model})
    with claim_output_dir(args.output_dir):
        skip = load_saved_adapter(transformers.AutoModel.from_pretrained(model_args.model), args.adapter)
        staging = os.path.join(args.output_dir, STAGING_DIR)
        shutil.rmtree(staging, ignore_errors=True)
        report = export_lora(skip, staging, args.rank)
        publish_files(staging, args.output_dir)
    skip_bytes = os.path.getsize(os.path.join(args.adapter, "adapter_model.safetensors"))
    print(
        f"Wrote a rank-{args.rank} LoRA adapter to {args.output_dir}: {report['bytes'] / 2**20:.2f} MiB (the Skip "
        f"Tuning adapter: {skip_bytes / 2**20:.2f} MiB); {report['low_rank_modules']} Linear deltas as truncated SVDs "
        f"keeping {100 * report['energy']:.2f}% of their squared norm, {report['exact_modules']} other modules exact. "
        "Load it with plain peft: PeftModel.from_pretrained(base_model, output_dir)."
    )
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


def recipe_command(args: RecipeArguments) -> int:
    if args.as_train_config:
        print(json.dumps(recipe_train_config(args.protocol, args.dataset), indent=2))
    else:
        print(json.dumps(reference_recipe(args.protocol, args.dataset, strict=True).to_dict(), indent=2))
    return 0


def _commands() -> dict[str, tuple[list[type], typing.Callable, str]]:
    """Sub-command -> (its argument dataclasses, the function taking their instances, its help)."""
    return {
        "train": (
            [ModelArguments, DataArguments, _method_arguments(), SkipTrainingArguments, LoggingArguments],
            train_command,
            "Few-shot Skip Tuning: prints the zero-shot and tuned accuracy, writes the delta adapter, metrics.json "
            "and per-epoch checkpoints to --output_dir.",
        ),
        "eval": (
            [ModelArguments, DataArguments, EvalArguments, LoggingArguments],
            eval_command,
            "Accuracy (overall and per class; base, new and HM with --protocol base_to_new) of the full model, with a "
            "Skip Tuning adapter if --adapter is given.",
        ),
        "benchmark": (
            [BenchmarkArguments, _method_arguments()],
            benchmark_command,
            "One of the paper's protocols on CoOp-layout data: trains and evaluates every (dataset, seed) cell, "
            "resumes where it stopped, writes results.json, results.md and results.png to --out.",
        ),
        "export": (
            [ModelArguments, ExportArguments],
            export_command,
            "Write a Skip Tuning adapter as a small LoRA adapter that plain peft loads: a truncated SVD of rank "
            "--rank of every Linear's delta, biases and layer norms exact (docs/config_and_checkpoints.md).",
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


def _read_config_file(path: str) -> dict:
    """The option values of a `--config` file (YAML reads JSON too), or one line saying what is wrong with it."""
    try:
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f) or {}
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise ValueError(f"{path} is not valid YAML or JSON{line}: {getattr(error, 'problem', error)}.") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold option: value pairs, not a {type(values).__name__}.")
    return values


def _as_flag(action: argparse.Action, value, config_file: str):
    """`value` of a `--config` file checked and converted exactly as the same value given as a flag would be."""
    if value is None:
        return None
    convert = action.type or str
    many = isinstance(value, list) and action.nargs in ("+", "*")
    try:
        if isinstance(value, (dict, list)) and not many:
            raise ValueError
        converted = [convert(str(v)) for v in value] if many else convert(str(value))
    except (ValueError, TypeError, argparse.ArgumentTypeError):
        raise ValueError(
            f"{config_file}: {action.dest}: {value!r} is invalid; give what --{action.dest} takes on the command line "
            f"({getattr(convert, '__name__', 'a value')})."
        ) from None
    bad = [v for v in (converted if many else [converted]) if action.choices and v not in action.choices]
    if bad:
        raise ValueError(
            f"{config_file}: {action.dest}: {bad[0]!r} is invalid; expected one of {list(action.choices)}."
        )
    return converted


def _parse(argv: Sequence[str] | None) -> tuple[str, list]:
    """The sub-command and its argument dataclasses, built from the flags over the `--config` file's values."""
    parser, parsers = _build()
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if a in parsers), None)
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("--config")
    config_file = config.parse_known_args(argv)[0].config
    if command is not None and config_file:
        from_file = _read_config_file(config_file)
        sub = parsers[command]
        # A key is a field's name or any of its flags without the dashes (`epochs`, `num-train-epochs`).
        dests = {o.lstrip("-").replace("-", "_"): a.dest for a in sub._actions for o in [a.dest, *a.option_strings]}
        unknown = sorted(key for key in from_file if key.replace("-", "_") not in dests)
        if unknown:
            raise ValueError(f"{config_file} sets unknown options {unknown}; see `peft-skip {command} --help`.")
        from_file = {dests[key.replace("-", "_")]: value for key, value in from_file.items()}
        actions = {action.dest: action for action in sub._actions}
        from_file = {dest: _as_flag(actions[dest], value, config_file) for dest, value in from_file.items()}
        from_file = resolve_config_paths(from_file, config_file)
        sub.set_defaults(**from_file)
        for action in sub._actions:
            action.required = action.required and action.dest not in from_file
    namespace = parser.parse_args(argv)
    if namespace.command == "zero-shot" and namespace.adapter:
        raise ValueError("zero-shot evaluates the base model: drop --adapter, or use `peft-skip eval --adapter`.")
    command = "eval" if namespace.command == "zero-shot" else namespace.command
    if command == "train" and namespace.recipe_dataset is None and namespace.data in REFERENCE_DATASETS:
        namespace.recipe_dataset = namespace.data  # the paper's recipe differs per data set (epochs, template)
    instances = []
    for cls in _commands()[command][0]:
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        instances.append(cls(**{k: v for k, v in vars(namespace).items() if k in names}))
    for logging_arguments in (a for a in instances if isinstance(a, LoggingArguments)):
        logging_arguments.apply()  # before the command runs; the command itself does not take them
    return command, [a for a in instances if not isinstance(a, LoggingArguments)]


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(format="%(message)s")
    logger.setLevel(logging.INFO if is_main_process() else logging.WARNING)
    command = next(iter(argv if argv is not None else sys.argv[1:]), "")
    try:
        command, arguments = _parse(argv)
        return _commands()[command][1](*arguments)
    except (ValueError, FileNotFoundError, OSError, FloatingPointError) as error:
        print(f"peft-skip {command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
