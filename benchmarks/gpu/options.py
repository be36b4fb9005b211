"""What helps Skip Tuning on a GPU, each measured alone on the same model, data and batches (`check.py`'s `options`).

- The image cache build (`ImageCache.build`): images per forward (`batch_size`), with and without bf16 autocast.
- The training step (`SkipTuningStep`: deep layers, CSkip, loss, SGD): eager attention against SDPA (which picks
  the flash kernel under half-precision autocast), bf16 / fp16 autocast, the cache kept on the device in float16
  (`ImageCache.to`) instead of copied from the host each step, and `torch.compile` of the step (with CUDA graphs,
  `mode="reduce-overhead"`, on a GPU).
Each step variant: median seconds of the timed steps after warm-up steps, peak memory, images/s, and its FLOP/s
(`cost.py`) against the matmul rate measured in its dtype.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from contextlib import nullcontext

import torch
from cost import step_flops, tower_shapes
from method_run import matmul_gflops, peak_memory_mb

HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}
# (name, attention, autocast, cache on the device in float16, torch.compile mode or None)
STEP_VARIANTS = [
    ("fp32, SDPA, cache on the host (the trainer's default)", "sdpa", None, False, None),
    ("fp32, eager attention", "eager", None, False, None),
    ("bf16 autocast, SDPA", "sdpa", "bf16", False, None),
    ("fp16 autocast, SDPA", "sdpa", "fp16", False, None),
    ("fp16 autocast, cache on the device (fp16)", "sdpa", "fp16", True, None),
    ("fp16 autocast, cache on the device, torch.compile", "sdpa", "fp16", True, "default"),
    ("fp16 autocast, cache on the device, torch.compile CUDA graphs", "sdpa", "fp16", True, "reduce-overhead"),
]


def arch(args: argparse.Namespace) -> str:
    return "tiny" if args.tiny else "vit-b-16"


def skip_layers(args: argparse.Namespace) -> int:
    return 2 if args.tiny else 6


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def cache_builds(model, pixels: torch.Tensor, device: torch.device, skip: int, batch_sizes: list[int]) -> list[dict]:
    """Images/s of building the float16 image cache of `pixels` `(n, 3, S, S)` per batch size, fp32 and bf16."""
    from peft_skip import get_towers
    from peft_skip.training.cache import ImageCache

    tower = get_towers(model).vision

    def build(batch_size: int) -> None:
        ImageCache.build(
            tower, lambda view, i: pixels[i], len(pixels), skip, dtype=torch.float16, batch_size=batch_size,
            progress=False,
        )  # fmt: skip

    build(batch_sizes[0])  # warm-up: kernels chosen, memory pools filled
    rows = []
    for autocast in (None, "bf16"):
        for batch_size in batch_sizes:
            context = torch.autocast(device.type, HALF[autocast]) if autocast else nullcontext()
            _sync(device)
            start = time.perf_counter()
            with context:
                build(batch_size)
            _sync(device)
            seconds = time.perf_counter() - start
            rows.append(
                {"batch_size": batch_size, "autocast": autocast or "no", "images_per_second": len(pixels) / seconds}
            )
    return rows


def step_variant(model_dir: str, variant: tuple, setup: dict, device: torch.device, tiny: bool) -> dict:
    """Times one step variant (see `STEP_VARIANTS`) on the batches of `setup`."""
    from peft import get_peft_model
    from transformers import CLIPModel

    from peft_skip import SkipConfig, get_towers
    from peft_skip.data.augmented import seeded_generator
    from peft_skip.training.loss import SkipTuningStep

    name, attention, autocast, on_device, compile_mode = variant
    clip = CLIPModel.from_pretrained(model_dir, attn_implementation=attention).to(device)
    model = get_peft_model(clip, SkipConfig(skip_layers=setup["skip"], class_ratio=0.5)).train()
    towers = get_towers(model)
    step = SkipTuningStep.from_prompts(model, towers, setup["prompts"], seeded_generator(0), device)
    cache = setup["cache16"].to(device) if on_device else setup["cache"]
    if compile_mode:
        # The eager backend rehearses the plumbing on the CPU, where inductor would first compile C++ for minutes.
        step = torch.compile(step, mode=None if tiny else compile_mode, backend="eager" if tiny else "inductor")
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-5, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=autocast == "fp16" and device.type == "cuda")
    generator, kept, seconds = seeded_generator(1), [], []
    warmup = setup["warmup"] * (3 if compile_mode else 1)  # compiling, and recompiling for new numbers of classes
    _reset_peak(device)
    for i, batch in enumerate(setup["batches"][: warmup + setup["steps"]]):
        _sync(device)
        start = time.perf_counter()
        states = cache.get(batch, 0).to(device)
        labels = setup["labels"][batch].to(device)
        with torch.autocast(device.type, HALF[autocast]) if autocast else nullcontext():
            out = step(states, labels, 1.0, generator)
        scaler.scale(out.loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        if i >= warmup:
            seconds.append(time.perf_counter() - start)
            kept.append(out.logits.shape[1])
    step_seconds = statistics.median(seconds)
    vision, text = tower_shapes(clip.config, setup["prompts"]["input_ids"].shape[1])
    batch_size = len(setup["batches"][0])
    flops = step_flops("skip", vision, text, batch_size, setup["classes"], statistics.mean(kept), setup["skip"])
    matmul = setup["matmul"][autocast or "fp32"]
    return {
        "variant": name,
        "step_seconds": step_seconds,
        "images_per_second": batch_size / step_seconds,
        "peak_memory_mb": peak_memory_mb(device),
        "achieved_gflops_per_second": flops / step_seconds / 1e9,
        "matmul_gflops_per_second": matmul,
        "achieved_vs_matmul": flops / step_seconds / 1e9 / matmul,
        "kept_classes": statistics.mean(kept),
    }


def measure(args: argparse.Namespace, work: str) -> dict:
    """The cache builds and every step variant on a 50-class cell of the ViT-B/16 shape (tiny: 6 classes, 4 layers)."""
    from transformers import AutoProcessor, CLIPModel

    from peft_skip import get_towers, tokenize_classes
    from peft_skip.offline import make_offline_model
    from peft_skip.training.batches import class_batches
    from peft_skip.training.cache import ImageCache

    device = torch.device(args.device)
    classes, shots = (6, 4) if args.tiny else (50, 16)
    warmup, steps = (1, 2) if args.tiny else (5, 30)
    skip = skip_layers(args)
    class_names = [f"class {c}" for c in range(classes)]
    model_dir = make_offline_model(os.path.join(work, "options-model"), arch(args), class_names)
    model = CLIPModel.from_pretrained(model_dir).to(device).requires_grad_(False)
    size = model.config.vision_config.image_size
    processor = AutoProcessor.from_pretrained(model_dir)
    labels = torch.arange(classes).repeat_interleave(shots)
    pixels = torch.randn(len(labels), 3, size, size, generator=torch.Generator().manual_seed(0))
    builds = cache_builds(model, pixels, device, skip, [4, 16] if args.tiny else [32, 128, 512])
    batches = class_batches(labels, 4, True, torch.Generator().manual_seed(0))
    used = torch.cat(batches[: 3 * warmup + steps]).unique()
    tower = get_towers(model).vision
    caches = {
        dtype: ImageCache.build(
            tower, lambda view, i: pixels[i], len(pixels), skip, dtype=dtype, indices=used, progress=False
        )
        for dtype in (torch.float32, torch.float16)
    }
    setup = {
        "skip": skip,
        "classes": classes,
        "prompts": tokenize_classes(model, processor.tokenizer, class_names, "a photo of a {}."),
        "cache": caches[torch.float32],
        "cache16": caches[torch.float16],
        "labels": labels,
        "batches": batches,
        "warmup": warmup,
        "steps": steps,
        "matmul": {
            name: matmul_gflops(time.perf_counter, device, dtype, seconds=0.3 if args.tiny else 1.0)
            for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16))
        },
    }
    del model
    rows = []
    for variant in STEP_VARIANTS:
        if variant[4] == "reduce-overhead" and device.type != "cuda":
            continue  # CUDA graphs need CUDA
        if time.perf_counter() > args.deadline:
            rows.append({"variant": variant[0], "error": "left out: the check's time budget was spent"})
            continue
        try:
            rows.append(step_variant(model_dir, variant, setup, device, args.tiny))
        except Exception as error:  # recorded; the other variants still run
            rows.append({"variant": variant[0], "error": f"{type(error).__name__}: {error}"[:300]})
        print(f"options: {rows[-1]}", flush=True)
        torch.compiler.reset()
    return {"classes": classes, "images": len(pixels), "cache_build": builds, "steps": rows, "matmul": setup["matmul"]}
