"""The GPU check of issue 18 in one run: precision on the device, the paper's cost table, and what helps on a GPU.

    PYTHONPATH=src python3 benchmarks/gpu/check.py --out OUT                    # on the GPU (benchmarks/gpu/run.sh)
    PYTHONPATH=src python benchmarks/gpu/check.py --device cpu --tiny --out OUT  # the rehearsal here (a minute)

Sections, each timed and each recorded even when it fails (its error goes into the results, the next one runs):
- `precision`: `SkipTrainer` on the device in fp32, the paper's `fp16_reference`, and `mixed_precision` bf16 and fp16
  through Accelerate (its grad scaler); each run's drift from fp32 (epoch losses, deltas).
- `cost`: `compare.py` on the ViT-B/16 shape (random weights) on a base-to-new cell of 50 base classes, 16 shots,
  batch 4: Skip Tuning, CoOp, full fine-tuning and LoRA, in fp32 and fp16 autocast; the recipe's whole run is
  extrapolated from the timed steps, next to the paper's numbers.
- `options` (`options.py`): batched cache builds, eager attention against SDPA, autocast, the cache on the device in
  float16, `torch.compile` of the step.
Writes `results.json` and `results.md` to `--out` (and `compare.py`'s files to `--out/cost`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
BENCHMARKS = os.path.dirname(HERE)
sys.path[:0] = [HERE, BENCHMARKS, os.path.join(os.path.dirname(BENCHMARKS), "src")]

import options  # noqa: E402
from drift import loss_drift, update_drift  # noqa: E402
from method_run import peak_memory_mb  # noqa: E402

# The paper's base-to-new cost (one GPU, ViT-B/16; /work/shared/SKIP_TUNING.md): seconds and MB per method.
PAPER_B2N_COST = {"skip": (239, 404), "coop": (1186, 3204), "ft": (11023, 20310), "lora": (None, None)}
METHOD_NAMES = {"skip": "Skip Tuning", "coop": "CoOp", "ft": "full fine-tuning", "lora": "LoRA (r=2)"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="A 4-layer CLIP and a few steps: the CPU rehearsal.")
    parser.add_argument("--out", default="gpu-check")
    parser.add_argument(
        "--budget-seconds",
        type=float,
        default=330,
        help="Sections and step variants that would start after this many seconds are left out (recorded as such).",
    )
    # The cost table first: the most wanted, and on the CPU its processes' peak RSS would inherit the parent's.
    parser.add_argument("--sections", default="cost,precision,options")
    return parser.parse_args(argv)


def precision_runs(args: argparse.Namespace, work: str) -> dict:
    """Two epochs of `SkipTrainer` per precision on the same data and seed; drift of each from the fp32 run."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from peft import get_peft_model, get_peft_model_state_dict
    from transformers import AutoProcessor, CLIPModel

    from peft_skip import SkipConfig, SkipTrainer, SkipTrainingArguments, tokenize_classes
    from peft_skip.data import ImageTransform, load_digits, sample_few_shot
    from peft_skip.offline import make_offline_model

    train_set = sample_few_shot(load_digits("train"), 4, seed=0)
    model_dir = make_offline_model(os.path.join(work, "precision-model"), options.arch(args), train_set.class_names)
    processor = AutoProcessor.from_pretrained(model_dir)
    transform = ImageTransform.from_processor(processor, train=True)
    runs = {"fp32": ("fp32", "no"), "fp16_reference": ("fp16_reference", "no"), "bf16": ("fp32", "bf16")}
    if args.device.startswith("cuda"):
        runs["fp16"] = ("fp32", "fp16")
    results, updates = {}, {}
    for name, (precision, mixed) in runs.items():
        AcceleratorState._reset_state(reset_partial_state=True)
        accelerator = Accelerator(cpu=args.device == "cpu", mixed_precision=mixed)
        clip = CLIPModel.from_pretrained(model_dir)
        model = get_peft_model(clip, SkipConfig(skip_layers=options.skip_layers(args), class_ratio=0.5))
        prompts = tokenize_classes(model, processor.tokenizer, train_set.class_names, "a photo of a {}.")
        training = SkipTrainingArguments(
            output_dir=os.path.join(work, f"precision-{name}"),
            protocol="few_shot",
            num_train_epochs=2,
            precision=precision,
            mixed_precision=mixed,
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        if accelerator.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        trainer = SkipTrainer(model, training, train_set, prompts, transform, accelerator)
        result = trainer.train()
        updates[name] = {k: v.float().cpu() for k, v in get_peft_model_state_dict(model).items()}
        results[name] = {
            "device": str(accelerator.device),
            "epoch_losses": [row["loss"] for row in result.history],
            "train_seconds": result.train_seconds,
            "cache_seconds": result.cache_seconds,
            "peak_memory_mb": peak_memory_mb(accelerator.device),
            "grad_scaler": accelerator.scaler is not None,
        }
    AcceleratorState._reset_state(reset_partial_state=True)
    for name, run in results.items():
        if name != "fp32":
            run["loss_drift"] = loss_drift(results["fp32"]["epoch_losses"], run["epoch_losses"])
            run["update_drift"] = update_drift(updates["fp32"], updates[name])
    return {"model": options.arch(args), "images": len(train_set), "steps_per_epoch": len(train_set) // 4, **results}


def cost_table(args: argparse.Namespace, work: str) -> dict:
    """`compare.py` on a base-to-new cell, and each method's whole recipe extrapolated from its timed steps."""
    import compare

    from peft_skip.training.recipes import reference_recipe

    recipe = reference_recipe("base_to_new")
    if args.tiny:
        # One method (compare.py's own tests run the others) keeps the rehearsal short.
        shape = "--arch tiny --classes 12 --shots 4 --epochs 2 --steps-per-epoch 1 --skip-layers 2 --threads 1"
        shape += " --methods skip"
        half = "bf16"
    else:
        shape = "--arch vit-b-16 --classes 100 --shots 16 --epochs 3 --steps-per-epoch 20 --skip-layers 6"
        shape += " --methods skip,coop,ft,lora"
        half = "fp16"
    argv = [
        *shape.split(),
        *("--data", "digits", "--base-to-new", "--batch-size", str(recipe.batch_size), "--test-images", "0"),
        *("--mixed-precision", half, "--lr", "1e-5", "--device", args.device),
        *("--out", os.path.join(args.out, "cost")),
    ]
    results = compare.compare(compare.parse_args(argv), "python benchmarks/compare.py " + " ".join(argv))
    rows = []
    for r in results:
        # The paper's cache mode rebuilds the image cache every epoch.
        recipe_seconds = recipe.epochs * (r["epoch_seconds"] + r["cache_seconds"])
        rows.append(
            {
                "label": r["label"],
                "method": r["method"],
                "mixed_precision": r["mixed_precision"],
                "epoch_seconds": r["epoch_seconds"],
                "recipe_seconds": recipe_seconds,
                "cache_seconds": r["cache_seconds"],
                "peak_memory_mb": r["peak_memory_mb"],
                "images_per_second": r["images_per_second"],
                "step_seconds": r["step_seconds"],
                "achieved_gflops_per_second": r["achieved_gflops_per_second"],
                "matmul_gflops_per_second": r["matmul_gflops_per_second"],
                "achieved_vs_matmul_peak": r["achieved_vs_matmul_peak"],
                "drift": r.get("drift"),
            }
        )
    return {"argv": argv, "recipe_epochs": recipe.epochs, "batch_size": recipe.batch_size, "rows": rows}


SECTIONS = {"precision": precision_runs, "cost": cost_table, "options": options.measure}


def run_sections(args: argparse.Namespace) -> dict:
    """Every section in turn, each timed; one that fails records its error and the next one runs. The results are
    written after every section, so a run stopped at its time limit still reports what it finished."""
    report = {"device": _device_name(args.device), "tiny": args.tiny, "torch": torch.__version__, "sections": {}}
    report["tests"] = _tests_summary(os.path.join(args.out, "pytest.log"))
    start = time.perf_counter()
    args.deadline = start + args.budget_seconds  # read by `options`, which leaves out the variants after it
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        for name in args.sections.split(","):
            elapsed = time.perf_counter() - start
            if elapsed > args.budget_seconds:
                report["sections"][name] = {"left_out": f"{elapsed:.0f} s had passed (budget {args.budget_seconds})"}
                continue
            section_start = time.perf_counter()
            try:
                report["sections"][name] = SECTIONS[name](args, work)
            except Exception as error:  # recorded: the remaining sections still run and report
                traceback.print_exc()
                report["sections"][name] = {"error": f"{type(error).__name__}: {error}"}
            report["sections"][name]["seconds"] = time.perf_counter() - section_start
            report["seconds"] = time.perf_counter() - start
            write(report, args.out)
            print(f"{name}: {report['sections'][name]['seconds']:.1f} s", flush=True)
    return report


def _tests_summary(path: str) -> str | None:
    """The last line of run.sh's pytest log (`N passed, M skipped in S s`), if the tests ran."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return ([line.strip() for line in f if line.strip()] or [None])[-1]


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name(device) if device.startswith("cuda") else device


def markdown(report: dict) -> str:
    """The report as markdown: tests, precision drift, the cost table next to the paper's, the GPU options."""
    from report_gpu import cost_lines, options_lines, precision_lines

    lines = [
        f"# GPU check on {report['device']} (torch {report['torch']}){' - tiny rehearsal' if report['tiny'] else ''}"
    ]
    lines += ["", f"Whole check: {report['seconds']:.0f} s. `pytest -m gpu`: {report['tests'] or 'not run'}.", ""]
    for name, writer in (("precision", precision_lines), ("cost", cost_lines), ("options", options_lines)):
        section = report["sections"].get(name)
        if section is None:
            continue
        lines.append(f"## {name} ({section['seconds']:.0f} s)" if "seconds" in section else f"## {name}")
        if "error" in section or "left_out" in section:
            lines += ["", f"Not measured: {section.get('error') or 'left out, ' + section['left_out']}.", ""]
        else:
            lines += ["", *writer(section), ""]
    return "\n".join(lines) + "\n"


def write(report: dict, out: str) -> None:
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(markdown(report))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    report = run_sections(args)
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
