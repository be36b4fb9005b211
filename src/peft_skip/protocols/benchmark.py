"""`peft-skip benchmark`: the paper's protocols with one command, every (dataset, seed) cell trained and evaluated.

```
peft-skip benchmark --protocol base_to_new --root DATA --seeds 1,2,3 --model M --out OUT
```
A cell is one dataset and one seed. Base-to-new and few-shot train on the dataset itself (base-to-new on its base
classes, then test base and new); cross-dataset and domain generalisation train one ImageNet model per seed and test
it on ImageNet and on every target. Each training runs in `OUT/<train dataset>/seed<k>/` with the trainer's per-epoch
checkpoints, so an interrupted cell resumes where it stopped; a finished cell is recorded in `OUT/results.json`
(rewritten atomically after every cell) and never run again. `protocol_report.py` writes the tables and the figure.
"""

from __future__ import annotations

import gc
import os
import resource
import time
from dataclasses import dataclass, field
from typing import Literal

import torch

from ..data import ImageTransform, check_shots, short_classes, split_base_new, subset_classes
from ..data.coop import COOP_DATASETS, coop_folder, load_coop_dataset
from ..data.coop_fewshot import coop_few_shot
from ..data.coop_splits import dataset_folder
from ..offline import has_random_weights
from ..training.accelerator import make_accelerator
from ..training.evaluation import evaluate_protocol, tokenize_classes
from ..training.output_dir import LOCK_FILE, MANIFEST, claim_output_dir
from ..training.recipes import PROTOCOLS, TRAIN_DATASETS, reference_recipe
from ..training.trainer import SkipTrainer
from ..training.training_args import SkipTrainingArguments
from ..tuner.config import SkipConfig
from .report import RESULTS, RESULTS_FIGURE, RESULTS_STAGING, RESULTS_TABLE, load_results, write_results

# Every name a benchmark writes into its --out: the results and a directory per dataset.
BENCHMARK_NAMES = (LOCK_FILE, MANIFEST, RESULTS, RESULTS_TABLE, RESULTS_FIGURE, RESULTS_STAGING, *COOP_DATASETS)


def _arg(default, help: str, *aliases: str, **kwargs):
    return field(default=default, metadata={"help": help, **({"aliases": list(aliases)} if aliases else {})}, **kwargs)


@dataclass
class BenchmarkArguments:
    """What `peft-skip benchmark` runs: the protocol, data, model, seeds, and overrides of the reference recipe."""

    protocol: Literal["few_shot", "base_to_new", "cross_dataset", "domain_generalization"] = field(
        metadata={
            "help": "The paper's protocol: few_shot, base_to_new (train on the base half of the classes, test base, "
            "new and their harmonic mean), cross_dataset or domain_generalization (one ImageNet model per seed, "
            "tested on ImageNet and on every target)."
        }
    )
    model: str = field(metadata={"help": "Model name on the Hub or a local directory (the base CLIP)."})
    data_root: str = field(
        metadata={"help": "DATA root in CoOp's layout (docs/reproducing.md#datasets).", "aliases": ["--root"]}
    )
    output_dir: str = field(
        metadata={"help": "Where every cell's run, results.json, results.md and results.png go.", "aliases": ["--out"]}
    )
    datasets: str | None = _arg(
        None,
        "Comma-separated dataset names; default: the protocol's (the 11 training datasets; for cross_dataset and "
        "domain_generalization the targets, ImageNet being always tested as the source).",
    )
    seeds: str | None = _arg(None, "Comma-separated seeds, a cell per (dataset, seed) (default: the recipe's).")
    shots: int | None = _arg(
        None,
        "Training images per class (default: the recipe's largest, 16; the paper's few-shot also runs 1, 2, 4, 8).",
    )
    num_train_epochs: int | None = _arg(None, "Epochs of every cell (default: the reference recipe's).", "--epochs")
    learning_rate: float | None = _arg(None, "Peak learning rate (default: the reference recipe's).", "--lr")
    mixed_precision: Literal["no", "bf16", "fp16"] = _arg("no", "bf16 (CPU or GPU) or fp16 (GPU) autocast.")
    per_device_eval_batch_size: int | None = _arg(
        None, "Images per forward pass when evaluating (default: the recipe's, 100).", "--eval-batch-size"
    )
    disable_tqdm: bool = _arg(False, "No progress bars (the one line per cell stays).", "--no-progress")

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol={self.protocol!r} is invalid; expected one of {', '.join(PROTOCOLS)}.")
        if self.shots is None:
            self.shots = max(reference_recipe(self.protocol).shots)
        unknown = [name for name in self.dataset_names() if name not in COOP_DATASETS]
        if unknown:
            raise ValueError(f"Unknown datasets {unknown} in --datasets: choose from {', '.join(COOP_DATASETS)}.")
        try:
            self.seed_list()
        except ValueError:
            raise ValueError(
                f"--seeds {self.seeds!r} is invalid; give comma-separated integers such as 1,2,3."
            ) from None
        for name in ("shots", "num_train_epochs", "per_device_eval_batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} is invalid; expected >= 1.")

    def dataset_names(self) -> list[str]:
        if self.datasets is None:  # every training dataset, or what the protocol tests its one source model on
            recipe = reference_recipe(self.protocol)
            return list(TRAIN_DATASETS if recipe.train_dataset is None else recipe.eval_datasets)
        return list(dict.fromkeys(name.strip() for name in self.datasets.split(",") if name.strip()))

    def seed_list(self) -> list[int]:
        seeds = self.seeds.split(",") if self.seeds is not None else reference_recipe(self.protocol).seeds
        return list(dict.fromkeys(int(seed) for seed in seeds if str(seed).strip()))


@dataclass(frozen=True)
class Cell:
    """One entry of the protocol's table: `dataset` tested with the model trained on `train_dataset` with `seed`."""

    dataset: str
    seed: int
    train_dataset: str


def plan_cells(args: BenchmarkArguments) -> list[Cell]:
    """Every cell of the run, grouped so that the cells sharing a training come one after the other."""
    source = reference_recipe(args.protocol).train_dataset
    if source is None:  # few-shot and base-to-new: a model per dataset
        for name in args.dataset_names():
            reference_recipe(args.protocol, name)  # a test-only dataset fails here, with the reason
        return [Cell(name, seed, name) for name in args.dataset_names() for seed in args.seed_list()]
    targets = [name for name in args.dataset_names() if name != source]
    return [Cell(name, seed, source) for seed in args.seed_list() for name in [source, *targets]]


def cell_training_arguments(
    args: BenchmarkArguments, dataset: str, seed: int, output_dir: str
) -> SkipTrainingArguments:
    """How the cell trained on `dataset` with `seed` trains: the reference recipe, with the run's overrides.

    The only place a cell's `SkipTrainingArguments` are made. Checkpoints are always resumed: a finished training
    trains no further epoch, an interrupted one continues.
    """
    recipe = reference_recipe(args.protocol, dataset)
    epochs = args.num_train_epochs
    return SkipTrainingArguments(
        output_dir=output_dir,
        protocol=args.protocol,
        recipe_dataset=dataset,
        shots=args.shots,
        num_train_epochs=epochs,
        learning_rate=args.learning_rate,
        # A run shortened with --epochs keeps at least one epoch after the warm-up.
        warmup_epochs=None if epochs is None else min(recipe.warmup_epochs, epochs - 1),
        mixed_precision=args.mixed_precision,
        seed=seed,
        resume_from_checkpoint=True,
        disable_tqdm=args.disable_tqdm,
    )


def _peak_memory() -> tuple[float, str]:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_max_rss"  # KiB on Linux


def _train(args: BenchmarkArguments, method: dict, dataset: str, seed: int, accelerator):
    """Trains (or resumes) the model of `dataset` and `seed`; returns it, its processor, the base/new classes, the
    training result and the short classes (kept whole with fewer than `shots` images)."""
    from peft import get_peft_model
    from transformers import AutoModel, AutoProcessor

    recipe = reference_recipe(args.protocol, dataset)
    directory = os.path.join(args.output_dir, dataset)
    train, _ = coop_few_shot(dataset, args.data_root, args.shots, seed, directory)
    base_new = split_base_new(train) if recipe.train_classes == "base" else None
    if base_new is not None:
        train = subset_classes(train, base_new[0])
    train = train.with_decoding(recipe.image_decoding)
    processor = AutoProcessor.from_pretrained(args.model)
    model = get_peft_model(AutoModel.from_pretrained(args.model).eval(), SkipConfig(**method))
    prompts = tokenize_classes(model, processor.tokenizer, train.class_names, recipe.train_template)
    training = cell_training_arguments(args, dataset, seed, os.path.join(directory, f"seed{seed}"))
    transform = ImageTransform.from_processor(processor, train=True, scale=(training.crop_min_area, 1.0))
    result = SkipTrainer(model, training, train, prompts, transform, accelerator=accelerator).train()
    return model, processor, base_new, result, short_classes(train, args.shots)


def _evaluate(args: BenchmarkArguments, model, processor, cell: Cell, base_new) -> dict:
    recipe = reference_recipe(args.protocol, cell.dataset)
    test = load_coop_dataset(cell.dataset, args.data_root, "test").with_decoding(recipe.image_decoding)
    transform = ImageTransform.from_processor(processor, train=False)
    tokenizer, batch_size = processor.tokenizer, args.per_device_eval_batch_size or recipe.test_batch_size
    result = evaluate_protocol(model, tokenizer, test, transform, recipe.template, base_new, batch_size)
    if base_new is None:
        return {"accuracy": 100 * result["accuracy"], "num_images": result["num_images"]}
    return {
        "base": 100 * result["base"]["accuracy"],
        "new": 100 * result["new"]["accuracy"],
        "hm": 100 * result["harmonic_mean"],
        "num_images": result["base"]["num_images"] + result["new"]["num_images"],
    }


def _summary(record: dict) -> str:
    if "hm" in record:
        return f"base {record['base']:.2f}  new {record['new']:.2f}  HM {record['hm']:.2f}"
    return f"accuracy {record['accuracy']:.2f}"


def run_benchmark(args: BenchmarkArguments, method: dict) -> dict:
    """Runs every cell not finished yet and returns the results (also in `output_dir`: results.json / .md / .png).

    Args:
        args (`BenchmarkArguments`): The protocol, data, model, seeds and overrides.
        method (`dict`): `SkipConfig` method settings (skip_layers, class_ratio, ...).
    """
    SkipConfig(**method)  # a bad setting fails before any data is read
    cells = plan_cells(args)
    for name in dict.fromkeys(n for cell in cells for n in (cell.dataset, cell.train_dataset)):
        dataset_folder(args.data_root, coop_folder(name))  # missing data fails before any training
    for name in dict.fromkeys(cell.train_dataset for cell in cells):
        check_shots(load_coop_dataset(name, args.data_root, "train"), args.shots)  # so do shots it cannot give
    settings = {
        "model": args.model,
        "shots": args.shots,
        "num_train_epochs": args.num_train_epochs,
        "learning_rate": args.learning_rate,
        "mixed_precision": args.mixed_precision,
        "skip_config": method,
    }
    # One at a time (results.json is shared), and never into a directory of the user's.
    with claim_output_dir(args.output_dir, names=BENCHMARK_NAMES):
        return _run_cells(args, method, cells, settings)


def _run_cells(args: BenchmarkArguments, method: dict, cells: list[Cell], settings: dict) -> dict:
    results = load_results(args.output_dir, args.protocol, settings)
    done = {(r["dataset"], r["seed"]) for r in results["cells"]}
    accelerator = make_accelerator(args.mixed_precision)
    say, main = accelerator.print, accelerator.is_main_process
    groups: dict[tuple[str, int], list[Cell]] = {}
    for cell in cells:
        groups.setdefault((cell.train_dataset, cell.seed), []).append(cell)
    number = 0
    for (train_dataset, seed), group in groups.items():
        for cell in group:
            if (cell.dataset, cell.seed) in done:
                number += 1
                say(f"[{number}/{len(cells)}] {args.protocol} {cell.dataset} seed {seed}: done earlier, skipped")
        todo = [cell for cell in group if (cell.dataset, cell.seed) not in done]
        if not todo:
            continue
        started = time.perf_counter()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        model, processor, base_new, trained, short = _train(args, method, train_dataset, seed, accelerator)
        if has_random_weights(model.get_base_model()) and not results.get("random_weights"):
            results["random_weights"] = True
            say(f"NOTE: {args.model} has RANDOM weights: the accuracies below check the mechanics, nothing more.")
        for cell in todo:
            record = {"dataset": cell.dataset, "seed": seed, "train_dataset": train_dataset}
            record |= _evaluate(args, model, processor, cell, base_new)
            memory, measure = _peak_memory()
            record |= {
                "seconds": time.perf_counter() - started,
                "train_seconds": trained.train_seconds if cell is todo[0] else 0.0,
                "resumed_from_epoch": trained.resumed_from_epoch,
                "epochs": len(trained.history),
                "short_classes": short,
                "peak_memory_mb": memory,
                "memory_measure": measure,
                "num_processes": accelerator.num_processes,
            }
            results["cells"].append(record)
            if main:
                write_results(args.output_dir, results)
            accelerator.wait_for_everyone()
            number += 1
            say(
                f"[{number}/{len(cells)}] {args.protocol} {cell.dataset} seed {seed}: {_summary(record)} "
                f"({record['seconds']:.1f} s, {memory:.0f} MB)"
            )
            started = time.perf_counter()  # the cells after the first only evaluate
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if main:
        os.makedirs(args.output_dir, exist_ok=True)
        write_results(args.output_dir, results)
        from .report import write_figure

        figure = write_figure(args.output_dir, results)
        say(f"results: {os.path.join(args.output_dir, 'results.md')}" + (f", figure: {figure}" if figure else ""))
    return results
