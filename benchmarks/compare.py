"""Skip Tuning against full fine-tuning, LoRA and CoOp: time, memory, checkpoint size and accuracy.

Every method trains the same model on the same batches of the same few-shot data with SGD (momentum 0.9; one
learning rate for all or one per method), each in its own process so that its peak memory is its own, and is scored
next to the untrained model (zero-shot): few-shot over all classes, or with `--base-to-new` on the base and the new
classes (`workload.py`). Writes `results.json`, `results.md` and `figure.png` to `--out`.

Models are built from the ViT-B/32 or ViT-B/16 CLIP shapes with random weights (or loaded from a name / directory),
images are Fashion-MNIST; accuracies of random-weight models measure nothing but the plumbing. With the world CLIP
pretrained here (`--arch src/peft_skip/assets/world-clip --data world:<task>`) accuracies are real.

    python benchmarks/compare.py --arch vit-b-16 --classes 100 --shots 16 --steps-per-epoch 2 --epochs 3

Each method process also measures the machine's matmul rate, so that every method's achieved FLOP/s (from the cost
model) is reported against it; `--mixed-precision bf16` adds a half-precision run of every method (`drift.py`).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
# Run from a checkout: this directory's helpers and the checkout's peft_skip come first.
sys.path[:0] = [HERE, os.path.join(os.path.dirname(HERE), "src")]

from cost import cache_flops, step_flops, tower_shapes  # noqa: E402
from drift import loss_drift, update_drift  # noqa: E402
from method_run import evaluate  # noqa: E402
from methods import METHODS, SKIP_VARIANTS, Method  # noqa: E402
from report import figure, markdown  # noqa: E402
from workload import build_workload, save_workload, training_images  # noqa: E402

OFFLINE_ARCHS = ("vit-b-32", "vit-b-16", "tiny")


def learning_rates(text: str) -> dict[str, float]:
    """`1e-3` or `1e-3,ft=1e-4,coop=2e-3`: the default learning rate and per-method ones."""
    rates = {}
    for part in text.split(","):
        method, _, value = part.rpartition("=")
        rates[method.strip() or "default"] = float(value)
    if "default" not in rates:
        raise argparse.ArgumentTypeError(f"{text!r} has no default learning rate: start it with one, e.g. 1e-3,{text}")
    return rates


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--arch",
        default="vit-b-16",
        help="vit-b-32 / vit-b-16 (CLIP shapes with random weights), tiny (tests), or a model name or directory.",
    )
    parser.add_argument(
        "--classes",
        type=int,
        default=100,
        help="Number of classes; beyond the 10 of fashion-mnist or digits, names are synthesised and images reused.",
    )
    parser.add_argument(
        "--data",
        default="fashion-mnist",
        help="fashion-mnist or digits (--classes of them), or world:<task> (all its classes; with --arch\n"
        "src/peft_skip/assets/world-clip, a CLIP pretrained here, so accuracies are real).",
    )
    parser.add_argument("--shots", type=int, default=16, help="Training images per class.")
    parser.add_argument("--epochs", type=int, default=3, help="Epochs; the first is a warm-up, the rest are timed.")
    parser.add_argument(
        "--steps-per-epoch",
        type=int,
        default=None,
        help="Time only this many steps per epoch and extrapolate to the full epoch (default: the full epoch).",
    )
    parser.add_argument("--methods", default="ft,lora,coop,skip", help=f"Comma-separated, from {','.join(METHODS)}.")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument(
        "--skip-layers", type=int, default=6, help="ω: frozen shallow layers of Skip Tuning and ablations."
    )
    parser.add_argument(
        "--class-ratio", type=float, default=0.5, help="CSkip: classes always kept (fraction or count)."
    )
    parser.add_argument("--max-classes", type=int, default=50, help="CSkip: upper bound on the classes always kept.")
    parser.add_argument("--class-decay", type=float, default=0.3, help="CSkip: λ of the rank keep probability.")
    parser.add_argument(
        "--lr",
        type=learning_rates,
        default="1e-5",
        help="SGD learning rate of every method, then per-method ones: 1e-3 or 1e-3,ft=1e-4,coop=2e-3.",
    )
    # float16: the reference's cache (its float16 model's dtype), as the trainer stores it under fp16_reference.
    parser.add_argument("--cache-dtype", default="float16", choices=("float32", "float16", "bfloat16"))
    parser.add_argument(
        "--test-images", type=int, default=100, help="Images per evaluation set at most (0: no accuracy)."
    )
    parser.add_argument(
        "--base-to-new",
        action="store_true",
        help="CoOp's base-to-new protocol: train on the first half of the classes, score base and new (and HM).",
    )
    parser.add_argument(
        "--eval-on",
        default="test",
        choices=("test", "held-out"),
        help="Score the test split, or the training images not drawn as shots (to choose learning rates).",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads per method process (default: torch's)."
    )
    parser.add_argument(
        "--clock",
        default="wall",
        choices=("wall", "cpu"),
        help="wall: elapsed time; cpu: the method process's CPU time (with --threads 1, robust to other jobs).",
    )
    parser.add_argument(
        "--mixed-precision",
        default="no",
        choices=("no", "bf16", "fp16"),
        help="Also run every method under autocast in this precision (fp16: GPU only, with loss scaling) and report\n"
        "its time, memory and drift from the fp32 run.",
    )
    parser.add_argument(
        "--ablate-offload",
        action="store_true",
        help="Also run each Skip Tuning method with its idle frozen weights kept on the device (the memory without\n"
        "peft_skip.training.offload).",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmark-results", help="Output directory.")
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in [*args.methods, *args.lr] if m not in (*METHODS, "default")]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {','.join(METHODS)}.")
    for name in ("classes", "shots", "epochs", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1.")
    if args.steps_per_epoch is not None and args.steps_per_epoch < 1:
        parser.error("--steps-per-epoch must be at least 1.")
    if args.mixed_precision == "fp16" and not args.device.startswith("cuda"):
        parser.error("--mixed-precision fp16 needs a CUDA device; use bf16 on the CPU.")
    return args


def prepare(args: argparse.Namespace, work_dir: str) -> dict:
    """Writes the model (for offline shapes) and the workload every method process reads, scores the untrained
    model (zero-shot); returns their facts."""
    from transformers import AutoProcessor, CLIPConfig, CLIPModel

    from peft_skip.offline import RANDOM_WEIGHTS, make_offline_model

    model_dir = args.arch
    if args.arch in OFFLINE_ARCHS:
        _, shots, _ = training_images(args.data, args.classes, args.shots, args.seed)
        model_dir = make_offline_model(os.path.join(work_dir, "model"), args.arch, shots.class_names, seed=args.seed)
    processor = AutoProcessor.from_pretrained(model_dir)
    workload, facts = build_workload(
        args.data,
        args.classes,
        args.shots,
        args.seed,
        processor,
        args.epochs,
        args.batch_size,
        args.steps_per_epoch,
        base_to_new=args.base_to_new,
        eval_on=args.eval_on,
        eval_images=args.test_images,
    )
    config = CLIPConfig.from_pretrained(model_dir)
    zero_shot = Method(CLIPModel.from_pretrained(model_dir).requires_grad_(False), workload, {})
    return {
        **facts,
        "model": model_dir,
        "workload": save_workload(workload, work_dir),
        "config": config,
        "random_weights": bool(getattr(config, RANDOM_WEIGHTS, False)),
        "zero_shot": evaluate(zero_shot, workload["eval_sets"]),
    }


def run_method(
    method: str, args: argparse.Namespace, facts: dict, work_dir: str, precision: str = "no", offload: bool = True
) -> dict:
    """Runs one method in a fresh Python process and returns its measurements.

    Args:
        method (`str`): One of `METHODS`.
        args (`argparse.Namespace`): The benchmark's settings.
        facts (`dict`): What `prepare` wrote.
        work_dir (`str`): Where the run's files go.
        precision (`str`): `no` (fp32), `bf16` or `fp16` (autocast).
        offload (`bool`): Skip Tuning methods take their idle frozen weights off the device while training.
    """
    label = method + ("" if offload else " (frozen kept)") + ("" if precision == "no" else f" {precision}")
    name = label.replace(" ", "-").replace("(", "").replace(")", "")
    spec = {
        "method": method,
        "model": facts["model"],
        "workload": facts["workload"],
        "device": args.device,
        "threads": args.threads,
        "clock": args.clock,
        "seed": args.seed,
        "lr": args.lr.get(method, args.lr["default"]),
        "skip_layers": args.skip_layers,
        "class_ratio": args.class_ratio,
        "max_classes": args.max_classes,
        "class_decay": args.class_decay,
        "cache_dtype": args.cache_dtype,
        "checkpoint_dir": os.path.join(work_dir, f"checkpoint-{name}"),
        "mixed_precision": precision,
        "offload": offload,
        "updates_file": os.path.join(work_dir, f"updates-{name}.safetensors")
        if args.mixed_precision != "no"
        else None,
    }
    spec_path = os.path.join(work_dir, f"spec-{name}.json")
    result_path = os.path.join(work_dir, f"result-{name}.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    script = os.path.join(HERE, "method_run.py")
    subprocess.run([sys.executable, script, spec_path, result_path], check=True)
    with open(result_path) as f:
        return {"label": label, **json.load(f), "offload": offload, "updates_file": spec["updates_file"]}


def add_drift(results: list[dict]) -> list[tuple[dict, dict]]:
    """Adds to every half-precision run its `drift` from the fp32 run of the same method; returns the pairs."""
    from safetensors.torch import load_file

    full = {r["method"]: r for r in results if r["mixed_precision"] == "no" and r["offload"]}
    pairs = []
    for half in results:
        if half["mixed_precision"] != "no":
            reference = full[half["method"]]
            half["drift"] = {
                "loss": loss_drift(reference["losses"], half["losses"]),
                "updates": update_drift(load_file(reference["updates_file"]), load_file(half["updates_file"])),
            }
            pairs.append((reference, half))
    return pairs


def add_cost_model(results: list[dict], args: argparse.Namespace, facts: dict) -> None:
    """Adds each method's predicted FLOPs per step and its predicted and measured time relative to `ft`."""
    vision, text = tower_shapes(facts["config"], facts["text_tokens"])
    for result in results:
        result["predicted_step_gflops"] = (
            step_flops(
                result["method"],
                vision,
                text,
                args.batch_size,
                facts["classes"],
                result["kept_classes"],
                args.skip_layers,
            )
            / 1e9
        )
        result["predicted_cache_gflops"] = (
            cache_flops(vision, facts["train_images"], args.skip_layers) / 1e9 if result["cache_seconds"] else 0.0
        )
    ft = next((r for r in results if r["label"] == "ft"), None)
    for result in results:
        if ft is not None:
            result["predicted_time_vs_ft"] = result["predicted_step_gflops"] / ft["predicted_step_gflops"]
            result["measured_time_vs_ft"] = result["epoch_seconds"] / ft["epoch_seconds"]
        result["achieved_gflops_per_second"] = result["predicted_step_gflops"] / result["step_seconds"]
        result["achieved_vs_matmul_peak"] = result["achieved_gflops_per_second"] / result["matmul_gflops_per_second"]


def compare(args: argparse.Namespace, command: str) -> list[dict]:
    """Prepares the workload, runs every method in its own process and writes the results to `args.out`."""
    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="skip-bench-") as work_dir:
        start = time.perf_counter()
        # Prepared in a process of its own: Linux carries a parent's peak RSS into its children's `ru_maxrss`, so a
        # parent that built the model would put a floor under every method's peak memory.
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            facts = pool.apply(prepare, (args, work_dir))
        print(
            f"workload ready in {time.perf_counter() - start:.1f}s: {facts['timed_images']} timed images", flush=True
        )
        runs = [(method, "no", True) for method in args.methods]
        if args.ablate_offload:
            runs += [(method, "no", False) for method in args.methods if method in SKIP_VARIANTS]
        if args.mixed_precision != "no":
            runs += [(method, args.mixed_precision, True) for method in args.methods]
        results = []
        for method, precision, offload in runs:
            start = time.perf_counter()
            results.append(run_method(method, args, facts, work_dir, precision, offload))
            print(f"{results[-1]['label']}: done in {time.perf_counter() - start:.1f}s", flush=True)
        pairs = add_drift(results)
    add_cost_model(results, args, facts)
    for result in results:
        result["random_weights"] = facts["random_weights"]  # read by sweep.py: an accuracy worth plotting or not
    facts["model_name"] = args.arch
    report = markdown(results, facts, command, pairs)
    settings = {k: v for k, v in vars(args).items()}
    facts_out = {k: v for k, v in facts.items() if k not in ("config", "workload", "model")}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"command": command, "settings": settings, "facts": facts_out, "results": results}, f, indent=2)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(report)
    data = f"{facts['classes']} classes of {args.data}"
    title = (
        f"{os.path.basename(args.arch)}, {data}, {args.shots} shots, batch {args.batch_size}, {results[0]['device']}"
    )
    figure(results, os.path.join(args.out, "figure.png"), title, facts["random_weights"])
    print(report)
    return results


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    compare(args, "python benchmarks/compare.py " + " ".join(argv))


if __name__ == "__main__":
    main()
