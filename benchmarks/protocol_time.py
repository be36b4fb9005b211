"""Expected time of the paper's protocols on one GPU, from the FLOP cost model (`cost.py`) and the image decode rate.

    python benchmarks/protocol_time.py --tflops 11 --decode 300 --text-tokens 20

Per cell: training = per epoch the image cache at layer ω (`cache_flops`) plus `shots x C / 4` Skip steps
(`step_flops("skip", ...)` with the expected number of classes CSkip keeps); evaluation = one full ViT-B/16 forward
per test image. Time = FLOPs / `--tflops` + images decoded / `--decode` (training decodes every training image once
per epoch, for the re-extracted cache; evaluation decodes every test image once). Class and test-image counts are
those of CoOp's split files.
"""

from __future__ import annotations

import argparse
import math

from cost import TowerShape, cache_flops, step_flops

# (classes, test images) of CoOp's splits.
DATASETS = {
    "imagenet": (1000, 50000),
    "caltech101": (100, 2465),
    "oxford_pets": (37, 3669),
    "stanford_cars": (196, 8041),
    "oxford_flowers": (102, 2463),
    "food101": (101, 30300),
    "fgvc_aircraft": (100, 3333),
    "sun397": (397, 19850),
    "dtd": (47, 1692),
    "eurosat": (10, 8100),
    "ucf101": (101, 3783),
    "imagenetv2": (1000, 10000),
    "imagenet_sketch": (1000, 50889),
    "imagenet_a": (200, 7500),
    "imagenet_r": (200, 30000),
}
TRAIN = list(DATASETS)[:11]
QUARTER = ("imagenet", "sun397", "food101")  # trained for a quarter of the epochs
VISION = TowerShape(197, 768, 3072, 12, embed_flops=2 * 196 * (3 * 16 * 16) * 768)  # ViT-B/16, 224 px


def kept_classes(num_classes: int, ratio: float = 0.5, max_top: int = 50, decay: float = 0.3) -> float:
    """Expected classes CSkip keeps: the top K plus the kept fraction of the tail (min-max normalised exp pdf)."""
    top = min(math.ceil(ratio * num_classes), max_top)
    tail = num_classes - top
    if tail < 2:
        return float(top + tail)
    low = math.exp(-5 / decay)
    return top + sum((math.exp(-5 * j / (tail - 1) / decay) - low) / (1 - low) for j in range(tail))


def cell(classes: int, shots: int, epochs: int, tokens: int, test_classes: int, test_images: int) -> dict:
    """FLOPs and decoded images of training on `classes` x `shots` images and testing on `test_images`."""
    text = TowerShape(tokens, 512, 2048, 12)
    images = shots * classes
    step = step_flops("skip", VISION, text, 4, classes, kept_classes(classes), 6)
    train = epochs * (cache_flops(VISION, images, 6) + images // 4 * step) if classes else 0.0
    test = test_images * (VISION.embed_flops + VISION.forward(0, 12)) + test_classes * text.forward(0, 12)
    return {"flops": train + test, "decoded": epochs * images + test_images}


def protocol(name: str, shots: int, tokens: int) -> list[dict]:
    """The cells of one seed of `name`."""
    epochs = {"base_to_new": 20, "few_shot": 40}.get(name, 20)
    if name in ("base_to_new", "few_shot"):
        return [
            cell(
                math.ceil(DATASETS[d][0] / 2) if name == "base_to_new" else DATASETS[d][0],
                shots,
                epochs // 4 if d in QUARTER else epochs,
                tokens,
                *DATASETS[d],
            )
            for d in TRAIN
        ]
    targets = TRAIN[1:] if name == "cross_dataset" else list(DATASETS)[11:]
    source = cell(1000, shots, 5, tokens, *DATASETS["imagenet"])
    return [source] + [cell(0, 0, 0, tokens, *DATASETS[d]) for d in targets]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tflops", type=float, default=11.0, help="Sustained TFLOP/s of the GPU on this workload.")
    parser.add_argument("--decode", type=float, default=300.0, help="Images decoded and transformed per second.")
    parser.add_argument("--text-tokens", type=int, default=20, help="Prompt length after trimming to the longest.")
    args = parser.parse_args()
    print("| protocol | shots | PFLOPs per seed | images decoded per seed | hours per seed | hours, 3 seeds |")
    print("|---|---|---|---|---|---|")
    rows = [("base_to_new", 16), ("cross_dataset", 16), ("domain_generalization", 16)]
    rows += [("few_shot", k) for k in (1, 2, 4, 8, 16)]
    for name, shots in rows:
        cells = protocol(name, shots, args.text_tokens)
        flops, decoded = sum(c["flops"] for c in cells), sum(c["decoded"] for c in cells)
        hours = (flops / (args.tflops * 1e12) + decoded / args.decode) / 3600
        print(f"| {name} | {shots} | {flops / 1e15:.1f} | {decoded:,} | {hours:.1f} | {3 * hours:.1f} |")


if __name__ == "__main__":
    main()
