"""Tiny synthetic images and class folders for the tests (solid colours or seeded noise, written under tmp_path)."""

from __future__ import annotations

import os

import numpy as np
import PIL.Image


def colour_image(colour, size=(12, 10)) -> PIL.Image.Image:
    return PIL.Image.new("RGB", size, colour)


def write_folder(root, counts: dict[str, int], size=(12, 10)) -> None:
    """One sub-folder per class with `count` solid-colour PNGs whose red channel encodes the image's number."""
    for c, (name, count) in enumerate(counts.items()):
        os.makedirs(root / name, exist_ok=True)
        for i in range(count):
            colour_image((10 * i, 20 * c, 7), size).save(root / name / f"img_{i:02d}.png")


def random_image(width=50, height=37, seed=0) -> PIL.Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return PIL.Image.fromarray(pixels)
