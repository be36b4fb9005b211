"""One benchmark method in one process: `python benchmarks/method_run.py SPEC.json RESULT.json`.

`compare.py` writes the workload (model directory, tokenised prompts, the pixels of the timed images, the batches of
every epoch, the evaluation sets) once and starts this script once per method, so every method's peak memory is its
own. It trains the method, times it, measures its peak memory and scores it (`evaluate`).
"""

from __future__ import annotations

import json
import math
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
# Run from a checkout: this directory's helpers and the checkout's peft_skip come first.
sys.path[:0] = [HERE, os.path.join(os.path.dirname(HERE), "src")]

from methods import Method, make_method  # noqa: E402


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated on CUDA, else the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # Linux reports KiB


def matmul_gflops(clock: Callable[[], float], device: torch.device, dtype: torch.dtype, seconds: float = 1.0) -> float:
    """The machine's matmul rate in this process: GFLOP/s of `(788, 768) @ (768, 3072)` products (four ViT-B/16
    images through an MLP matmul), in `dtype`, by `clock`; the best of three rounds of `seconds / 3`."""
    a = torch.randn(788, 768, device=device).to(dtype)
    b = torch.randn(768, 3072, device=device).to(dtype)
    flops = 2 * a.shape[0] * a.shape[1] * b.shape[1]
    best = 0.0
    for _ in range(3):
        count, start = 0, clock()
        while count < 2 or clock() - start < seconds / 3:
            a @ b
            count += 1
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        best = max(best, count * flops / (clock() - start) / 1e9)
    return best


@torch.no_grad()
def accuracy(method: Method, pixels: torch.Tensor, labels: torch.Tensor, batch_size: int = 32) -> float | None:
    """Top-1 accuracy of the full model (all layers, no cache) among the classes the method scores.

    Args:
        method (`Method`): The trained (or untouched) method.
        pixels (`torch.Tensor`): Images, shape `(N, 3, S, S)`.
        labels (`torch.Tensor`): Their classes, shape `(N,)`.
        batch_size (`int`): Images per forward.
    """
    if len(labels) == 0:
        return None
    method.model.eval()
    classes = method.class_features()
    correct = 0
    for start in range(0, len(labels), batch_size):
        images = method.image_features(pixels[start : start + batch_size])
        correct += int((images @ classes.T).argmax(-1).eq(labels[start : start + batch_size]).sum())
    return correct / len(labels)


def evaluate(method: Method, eval_sets: dict[str, dict]) -> dict[str, float | None]:
    """Accuracy on every evaluation set among its own classes (`all`, or `base` and `new`), and for base-to-new
    their harmonic mean `hm`."""
    from peft_skip.training.evaluation import harmonic_mean

    accuracies = {}
    for name, images in eval_sets.items():
        method.use_classes(images["prompts"], images["name_prompts"])
        accuracies[name] = accuracy(method, images["pixels"], images["labels"])
    if accuracies.keys() == {"base", "new"} and None not in accuracies.values():
        accuracies["hm"] = harmonic_mean(accuracies["base"], accuracies["new"])
    return accuracies


def headline(accuracies: dict[str, float | None]) -> float | None:
    """The one accuracy of a run: over all classes, or the harmonic mean of base and new."""
    return accuracies.get("hm", accuracies.get("all"))


def load_workload(path: str, device: torch.device) -> dict:
    """`workload.pt` with every tensor on `device`."""

    def to(value):
        if isinstance(value, torch.Tensor):
            return value.to(device)
        if isinstance(value, dict):
            return {k: to(v) for k, v in value.items()}
        if isinstance(value, list):
            return [to(v) for v in value]
        return value

    workload = torch.load(path, weights_only=False)
    return {k: v if k == "batches" else to(v) for k, v in workload.items()}


def run(spec: dict) -> dict:
    """Trains `spec["method"]` on the workload for the timed steps and measures it."""
    from transformers import CLIPModel

    torch.manual_seed(spec["seed"])
    device = torch.device(spec["device"])
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    baseline_mb = peak_memory_mb(torch.device("cpu"))
    workload = load_workload(spec["workload"], device)
    model = CLIPModel.from_pretrained(spec["model"]).to(device).requires_grad_(False)
    full_model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    method = make_method(model, workload, spec)
    method.model.train()
    trainable = method.trainable_parameters()
    optimizer = torch.optim.SGD(trainable, lr=spec["lr"], momentum=0.9, weight_decay=5e-4)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    sync()
    clock = time.process_time if spec["clock"] == "cpu" else time.perf_counter
    start = clock()
    image_cache_seconds = method.build_cache(clock)
    sync()
    setup_seconds = clock() - start - (image_cache_seconds or 0.0)

    precision = spec.get("mixed_precision", "no")
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    peak_gflops = matmul_gflops(clock, device, half or torch.float32)
    # fp16 gradients need loss scaling; a disabled scaler passes everything through.
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    wall_seconds, cpu_seconds, losses = [], [], []
    with method.offload():
        for batches in workload["batches"]:
            start, start_cpu = time.perf_counter(), time.process_time()
            for positions in batches:
                with torch.autocast(device.type, dtype=half, enabled=half is not None):
                    loss = method.loss(positions.to(device))
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.item())
            sync()
            wall_seconds.append(time.perf_counter() - start)
            cpu_seconds.append(time.process_time() - start_cpu)
        peak_mb = peak_memory_mb(device)

    steps = len(workload["batches"][0])
    # CPU time of this process is what a single-threaded run costs, whatever else the machine runs meanwhile.
    epoch_seconds = cpu_seconds if spec["clock"] == "cpu" else wall_seconds
    timed = epoch_seconds[1:] if len(epoch_seconds) > 1 else epoch_seconds
    step_seconds = statistics.median(timed) / steps
    full_steps = workload["full_steps_per_epoch"]
    checkpoint_bytes = method.save(spec["checkpoint_dir"])
    if spec.get("updates_file"):
        from safetensors.torch import save_file

        save_file(method.updates(), spec["updates_file"])
    cached_images = len(workload["train_pixels"])
    accuracies = evaluate(method, workload["eval_sets"])
    return {
        "method": spec["method"],
        "mixed_precision": precision,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "epoch_seconds": step_seconds * full_steps,
        "step_seconds": step_seconds,
        "clock": spec["clock"],
        "measured_epoch_wall_seconds": wall_seconds,
        "measured_epoch_cpu_seconds": cpu_seconds,
        "timed_steps_per_epoch": steps,
        "full_steps_per_epoch": full_steps,
        # The image cache is built for the timed images only: its time is scaled to the whole training set.
        "cache_seconds": 0.0
        if image_cache_seconds is None
        else setup_seconds + image_cache_seconds * workload["num_train_images"] / cached_images,
        "images_per_second": workload["batch_size"] / step_seconds,
        "peak_memory_mb": peak_mb,
        "baseline_memory_mb": baseline_mb,
        "trainable_params": sum(p.numel() for p in trainable),
        "checkpoint_bytes": checkpoint_bytes,
        "full_model_bytes": full_model_bytes,
        "kept_classes": statistics.mean(method.kept_classes),
        "matmul_gflops_per_second": peak_gflops,
        "losses": losses,
        "final_loss": losses[-1],
        "losses_finite": all(math.isfinite(x) for x in losses),
        "lr": spec["lr"],
        "accuracies": accuracies,
        "accuracy": headline(accuracies),
    }


def main() -> None:
    spec_path, result_path = sys.argv[1:3]
    with open(spec_path) as f:
        spec = json.load(f)
    result = run(spec)
    with open(result_path, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
