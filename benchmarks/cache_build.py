"""The image cache build against the model alone: is reading and augmenting the images ever the bottleneck?

Times, on the same images and in the same process, (a) the pure no-grad forward of the embeddings and layers
[0, ω) of the vision tower on pixels decoded and augmented beforehand, and (b) `SkipTrainer`'s cache build, which
reads, decodes and augments every image itself (its data loader's workers: `--workers`). Both run with the torch
threads of the machine, by wall clock, alternating, best of `--repeats`. Checks that every worker count builds the
same states. Writes `results.json` and `results.md` to `--out`.

    python benchmarks/cache_build.py --arch vit-b-16 --images 64 --workers 0,2 --out cache-build
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(os.path.dirname(HERE), "src")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="vit-b-16", help="vit-b-32 / vit-b-16 (random weights) or tiny.")
    parser.add_argument("--images", type=int, default=64, help="Training images cached.")
    parser.add_argument("--image-size", default="500x375", help="WxH of the synthetic JPEGs (ImageNet's typical).")
    parser.add_argument("--skip-layers", type=int, default=6)
    parser.add_argument("--workers", default="0,2", help="Comma-separated data loader worker counts to time.")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's).")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="cache-build-results")
    args = parser.parse_args(argv)
    args.workers = [int(w) for w in args.workers.split(",")]
    args.image_size = tuple(int(v) for v in args.image_size.split("x"))
    return args


def write_jpegs(root: str, count: int, size: tuple[int, int], classes: int = 4) -> None:
    """`count` photo-like JPEGs (smooth colour fields plus noise, quality 90), spread over `classes` folders."""
    import PIL.Image

    rng = np.random.default_rng(0)
    width, height = size
    y, x = np.mgrid[0:height, 0:width] / max(size)
    for i in range(count):
        folder = os.path.join(root, f"class{i % classes}")
        os.makedirs(folder, exist_ok=True)
        a, b, c = rng.uniform(1, 8, 3)
        field = np.stack([np.sin(a * x + i), np.cos(b * y), np.sin(c * (x + y))], axis=-1)
        pixels = np.clip(127 + 100 * field + rng.normal(0, 12, field.shape), 0, 255).astype(np.uint8)
        PIL.Image.fromarray(pixels).save(os.path.join(folder, f"{i:05d}.jpg"), quality=90)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from peft import get_peft_model
    from transformers import AutoProcessor, CLIPModel

    import peft_skip.training.cache.image
    from peft_skip import SkipConfig, get_towers
    from peft_skip.data import ImageTransform, load_image_folder
    from peft_skip.data.augmented import AugmentedImages
    from peft_skip.offline import make_offline_model
    from peft_skip.training.trainer import SkipTrainer
    from peft_skip.training.training_args import SkipTrainingArguments

    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cache-build-") as work:
        write_jpegs(os.path.join(work, "images"), args.images, args.image_size)
        train_set = load_image_folder(os.path.join(work, "images"))
        model_dir = make_offline_model(os.path.join(work, "model"), args.arch, train_set.class_names)
        processor = AutoProcessor.from_pretrained(model_dir)
        transform = ImageTransform.from_processor(processor, train=True)
        model = get_peft_model(CLIPModel.from_pretrained(model_dir), SkipConfig(skip_layers=args.skip_layers))
        model.requires_grad_(False).to(args.device)
        device = torch.device(args.device)

        def sync() -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        vision = get_towers(model).vision
        prompts = {"input_ids": torch.zeros(len(train_set.class_names), 2, dtype=torch.long)}
        prompts["attention_mask"] = torch.ones_like(prompts["input_ids"])

        # (a) The same pixels the build computes (pass 0 of the paper's cache mode), decoded before timing.
        pixels = AugmentedImages(train_set, transform, seed=0, key=0)(0, torch.arange(len(train_set)))

        @torch.no_grad()
        def pure_forward() -> float:
            sync()
            start = time.perf_counter()
            for batch in pixels.split(32):
                hidden = vision.embed(**vision.image_inputs(batch.to(device)))
                vision.run_layers(hidden, 0, args.skip_layers).cpu()  # as the build: states back to memory
            sync()
            return time.perf_counter() - start

        def build(workers: int) -> tuple[float, torch.Tensor]:
            training = SkipTrainingArguments(
                output_dir=os.path.join(work, "run"), dataloader_num_workers=workers, disable_tqdm=True
            )
            trainer = SkipTrainer(model, training, train_set, prompts, transform)
            waited.append(0.0)
            start = time.perf_counter()
            cache = trainer._image_cache(0)
            return time.perf_counter() - start, cache.get(torch.arange(len(train_set)), 0)

        # The time the build's loop waits for its next batch of pixels: what the data path costs the model.
        waited = []
        ordered_map = peft_skip.training.cache.image.ordered_map

        def timed_map(*args, **kwargs):
            pixels = ordered_map(*args, **kwargs)
            while True:
                start = time.perf_counter()
                batch = next(pixels, None)
                waited[-1] += time.perf_counter() - start
                if batch is None:
                    return
                yield batch

        peft_skip.training.cache.image.ordered_map = timed_map

        seconds = {"pure forward": [], **{f"build, {w} workers": [] for w in args.workers}}
        reference, waits = None, {}
        for _ in range(args.repeats):
            seconds["pure forward"].append(pure_forward())
            for w in args.workers:
                elapsed, states = build(w)
                seconds[f"build, {w} workers"].append(elapsed)
                waits.setdefault(f"build, {w} workers", []).append(waited[-1] / elapsed)
                if reference is None:
                    reference = states
                if not torch.equal(states, reference):
                    raise AssertionError(f"{w} workers built other states than {args.workers[0]} workers.")
                print(f"{w} workers: {args.images / elapsed:.2f} images/s", flush=True)

    pure = args.images / min(seconds["pure forward"])
    pure_median = args.images / statistics.median(seconds["pure forward"])
    rows = []
    for name, runs in seconds.items():
        rate, median = args.images / min(runs), args.images / statistics.median(runs)
        rows.append(
            {
                "run": name,
                "seconds": runs,
                "images_per_second": rate,
                "vs_pure_forward": rate / pure,
                "median_images_per_second": median,
                "median_vs_pure_forward": median / pure_median,
                "waiting_for_images": waits.get(name),
            }
        )
    command = "python benchmarks/cache_build.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        f"`{command}`",
        "",
        "| run | images/s (best run) | / pure forward (best) | images/s (median) | / pure forward (median) | "
        "seconds per run | waiting for images (share of the build, per run) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        runs = ", ".join(f"{s:.1f}" for s in row["seconds"])
        lines.append(
            f"| {row['run']} | {row['images_per_second']:.2f} | {row['vs_pure_forward']:.3f} | "
            f"{row['median_images_per_second']:.2f} | {row['median_vs_pure_forward']:.3f} | {runs} | "
            + (", ".join(f"{w:.1%}" for w in row["waiting_for_images"]) if row["waiting_for_images"] else "-")
            + " |"
        )
    width, height = args.image_size
    lines += [
        "",
        f"- {args.arch} with random weights, vision embeddings + layers [0, {args.skip_layers}), batches of 32, "
        f"{args.device}, {torch.get_num_threads()} torch threads, {os.cpu_count()} CPU cores, wall clock",
        f"- {args.images} synthetic {width}x{height} JPEGs (quality 90) read from disk, random resized crop + flip to "
        f"{pixels.shape[-1]} px; every worker count built bit-identical states",
    ]
    report = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"command": command, "settings": vars(args), "results": rows}, f, indent=2)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(report)
    print(report)


if __name__ == "__main__":
    main()
