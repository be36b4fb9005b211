"""Downstream classification tasks of the captioned world, each shifted away from what pretraining saw.

`load_world_task(name, split)` returns an `ImageDataset` of rendered 32x32 images. Train and test images use disjoint
item instances, and neither shares one with pretraining. Class names are made of words the pretrained text tower
knows, so a pretrained world CLIP classifies them zero-shot with the prompt "a photo of a {}.".
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from .builtin import _ArraySource
from .dataset import ImageDataset
from .world import BACKGROUNDS, FASHION, PRETRAIN_BACKGROUNDS, SHAPES, World

TEMPLATE = "a photo of a {}."
SPLITS = ("train", "test")


@dataclass(frozen=True)
class WorldTask:
    """A classification task of the world.

    Args:
        shift (`str`): How the task differs from pretraining.
        classes (`tuple[dict, ...]`): Per class, the attributes it fixes (`World.sample`'s `fixed`).
        names (`tuple[str, ...]`): Class names, in label order.
        scene (`dict`): Attributes shared by every class (`World.sample`'s `fixed`); the rest are drawn at random.
        seen_only (`bool`): Draw only (colour, object) combinations that pretraining saw (where the class does not fix
            both).
        light (`tuple`, *optional*): RGB gains of a coloured light over the whole image (a shift pretraining never
            saw); `None` leaves the images as rendered.
        per_class (`dict`): Images per class of each split.
    """

    shift: str
    classes: tuple
    names: tuple
    scene: dict = field(default_factory=dict)
    seen_only: bool = True
    light: tuple | None = None
    per_class: dict = field(default_factory=lambda: {"train": 32, "test": 50})


def _combos(world: World, count: int) -> WorldTask:
    """`count` of the held-out (colour, object) combinations, in a seed-dependent order."""
    from .world import COLOUR_NAMES, OBJECTS

    pairs = [(c, o) for o, c in zip(*np.nonzero(world.held_out), strict=True)]
    rng = np.random.default_rng([world.seed, 2])
    chosen = [pairs[i] for i in rng.permutation(len(pairs))[:count]]
    return WorldTask(
        shift="colour-object combinations never seen in pretraining",
        classes=tuple({"colour": COLOUR_NAMES[c], "object": OBJECTS[o]} for c, o in chosen),
        names=tuple(f"{COLOUR_NAMES[c]} {OBJECTS[o]}" for c, o in chosen),
        seen_only=False,
    )


def _lighting(world: World) -> WorldTask:
    """Two shapes of each colour (the first shapes whose combination with it pretraining saw) under a warm light."""
    from .world import COLOUR_NAMES, OBJECTS

    classes = []
    for c, colour in enumerate(COLOUR_NAMES):
        seen = [shape for shape in SHAPES if not world.held_out[OBJECTS.index(shape), c]]
        classes += [{"colour": colour, "object": shape} for shape in seen[:2]]
    return WorldTask(
        shift="a warm coloured light over the whole image, never seen in pretraining",
        classes=tuple(classes),
        names=tuple(f"{fixed['colour']} {fixed['object']}" for fixed in classes),
        scene={"size": ["medium", "large"]},
        light=(1.0, 0.78, 0.45),
    )


_NEW_BACKGROUNDS = [b for b in BACKGROUNDS if b not in PRETRAIN_BACKGROUNDS]


def world_tasks(world: World) -> dict[str, WorldTask]:
    """The tasks of `world` by name."""
    items = FASHION + SHAPES
    return {
        "combos": _combos(world, 40),
        "backgrounds": WorldTask(
            shift=f"background kinds never seen in pretraining ({', '.join(_NEW_BACKGROUNDS)})",
            classes=tuple({"object": o} for o in items),
            names=tuple(items),
            scene={"background": _NEW_BACKGROUNDS, "size": ["medium", "large"]},
        ),
        "outlines": WorldTask(
            shift="objects drawn as outlines, a style never seen in pretraining",
            classes=tuple({"object": o} for o in items),
            names=tuple(items),
            scene={"style": "outlined", "size": ["medium", "large"]},
        ),
        "lighting": _lighting(world),
        "sizes": WorldTask(
            shift="size-shape classes: names composed of known words, small and large of the same shape",
            classes=tuple({"object": o, "size": s} for o in SHAPES for s in ("small", "large")),
            names=tuple(f"{s} {o}" for o in SHAPES for s in ("small", "large")),
        ),
    }


@lru_cache(maxsize=2)
def _world(seed: int) -> World:
    return World(seed)


@lru_cache(maxsize=16)
def _render_task(name: str, split: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    world = _world(seed)
    task = world_tasks(world)[name]
    rng = np.random.default_rng([seed, zlib.crc32(name.encode()), SPLITS.index(split)])
    images, labels = [], []
    for label, fixed in enumerate(task.classes):
        num = task.per_class[split]
        scenes = world.sample(num, rng, split, seen_only=task.seen_only, **{**task.scene, **fixed})
        rendered = world.render(scenes, rng)
        if task.light is not None:
            rendered = np.round(rendered * np.asarray(task.light, dtype=np.float32)).astype(np.uint8)
        images.append(rendered)
        labels += [label] * num
    return np.concatenate(images), np.array(labels)


def load_world_task(name: str, split: str = "train", seed: int = 0) -> ImageDataset:
    """A downstream task of the world (`WORLD_TASK_NAMES`) as an `ImageDataset` of 32x32 RGB images.

    Args:
        name (`str`): `combos`, `backgrounds`, `outlines`, `lighting` or `sizes`.
        split (`str`): `train` or `test`.
        seed (`int`): Seed of the world; the shipped world CLIP was pretrained on world 0.
    """
    if name not in WORLD_TASK_NAMES:
        raise ValueError(f"Unknown world task {name!r}; choose one of {list(WORLD_TASK_NAMES)}.")
    if split not in SPLITS:
        raise ValueError(f"World tasks have splits {SPLITS}, not {split!r}.")
    images, labels = _render_task(name, split, seed)
    names = world_tasks(_world(seed))[name].names
    source = _ArraySource(images, key=f"world:{seed}:{name}:{split}")
    return ImageDataset(list(names), list(range(len(labels))), labels.tolist(), source)


WORLD_TASK_NAMES = ("combos", "backgrounds", "outlines", "lighting", "sizes")
