"""A captioned image world, generated offline: coloured objects on patterned backgrounds, with their captions.

The world has 20 objects (10 Fashion-MNIST items, 10 drawn shapes), 10 colours, 3 sizes, 5 positions, 8 background
kinds and 2 styles. A scene picks one value of each; `World.render` draws scenes as 32x32 RGB
images (vectorised, in torch) and `World.captions` describes them in words through varied templates, so that a text
tower has to learn words rather than class ids. Everything is a function of the world's seed and of the numpy
generator passed in.

Pretraining sees only part of the world: a fifth of the (colour, object) combinations, three background kinds, the
outline style and every position but the middle are held out, and the Fashion-MNIST item instances of pretraining and
of the downstream tasks (`world_tasks.py`) are disjoint.
"""

from __future__ import annotations

import math
from functools import cached_property

import numpy as np
import torch
from torch.nn import functional as F

from .builtin import load_fashion_mnist

FASHION = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
SHAPES = ["circle", "square", "triangle", "star", "cross", "ring", "diamond", "heart", "hexagon", "crescent"]
OBJECTS = FASHION + SHAPES
COLOURS = {
    "red": (215, 35, 35),
    "orange": (245, 135, 25),
    "yellow": (240, 220, 40),
    "green": (40, 165, 55),
    "blue": (35, 75, 215),
    "purple": (135, 50, 185),
    "pink": (245, 125, 185),
    "brown": (125, 75, 35),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
COLOUR_NAMES = list(COLOURS)
SIZES = ["small", "medium", "large"]  # "medium" is never said
POSITIONS = ["in the middle", "on the left", "on the right", "at the top", "at the bottom"]
BACKGROUNDS = ["plain", "striped", "dotted", "noisy", "gradient", "checkered", "wavy", "grid"]
PRETRAIN_BACKGROUNDS = ["plain", "striped", "dotted", "noisy", "gradient"]
STYLES = ["solid", "outlined"]
IMAGE_SIZE = 32

# Object box side in pixels per size, and the centre offset of each position (small objects only move).
_SIZE_PIXELS = {"small": (12, 16), "medium": (18, 22), "large": (25, 30)}
_POSITION_OFFSETS = np.array([(0, 0), (-8, 0), (8, 0), (0, -8), (0, 8)], dtype=np.float32)
_TEMPLATES = [
    "a photo of {a} {desc}.",
    "{a} {desc} on {bg_a} {bg} background.",
    "a photo of {a} {desc} {pos}.",
    "{desc}, {bg} background.",
    "an image of {a} {obj} in {colour}.",
    "{bg_a} {bg} background with {a} {desc} {pos}.",
    "there is {a} {desc} in this picture.",
    "a picture of {a} {obj}.",
]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _shape_masks(size: int = 28, supersample: int = 2) -> np.ndarray:
    """The 10 drawn shapes as antialiased masks in [0, 1], shape `(10, size, size)`."""
    n = size * supersample
    v, u = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n), indexing="ij")  # v grows downwards
    r, theta = np.hypot(u, v), np.arctan2(v, u)
    tips = np.abs(2 * ((theta / (2 * np.pi) * 5 + 0.25) % 1) - 1)  # 1 at the 5 tips of the star, 0 between
    x, y = u * 1.25, -v * 1.25 + 0.25
    inside = [
        r < 0.85,
        np.maximum(np.abs(u), np.abs(v)) < 0.7,
        (v <= 0.7) & (np.abs(u) <= 0.9 * (v + 0.85) / 1.55),
        r < 0.38 + 0.52 * tips**2,
        ((np.abs(u) < 0.27) & (np.abs(v) < 0.85)) | ((np.abs(v) < 0.27) & (np.abs(u) < 0.85)),
        (r > 0.5) & (r < 0.85),
        np.abs(u) + np.abs(v) < 0.9,
        (x**2 + y**2 - 1) ** 3 - x**2 * y**3 < 0,
        np.maximum(np.abs(u) * 0.866 + np.abs(v) * 0.5, np.abs(v)) < 0.8,
        (r < 0.85) & (np.hypot(u - 0.38, v + 0.1) > 0.68),
    ]
    masks = np.stack(inside).astype(np.float32)
    return masks.reshape(len(inside), size, supersample, size, supersample).mean(axis=(2, 4))


def _split_rows(labels: np.ndarray, num_classes: int, parts: int, seed: int) -> list[list[np.ndarray]]:
    """Rows of each class, shuffled with `seed` and cut into `parts` disjoint pools: `[part][class] -> rows`."""
    rng = np.random.default_rng(seed)
    pools = [[None] * num_classes for _ in range(parts)]
    for c in range(num_classes):
        rows = rng.permutation(np.flatnonzero(labels == c))
        for p, chunk in enumerate(np.array_split(rows, parts)):
            pools[p][c] = chunk
    return pools


class World:
    """The objects, colours and backgrounds of the world, and how to draw and describe scenes of it.

    Args:
        seed (`int`): Decides the held-out (colour, object) combinations and the split of item instances.
        fashion_mnist_root (`str`): Folder of the Fashion-MNIST IDX files (Debian's `dataset-fashion-mnist`).
    """

    def __init__(self, seed: int = 0, fashion_mnist_root: str = "/usr/share/datasets/fashion-mnist") -> None:
        self.seed = seed
        self.fashion_mnist_root = fashion_mnist_root
        rng = np.random.default_rng([seed, 1])
        # Each object loses 2 of its 10 colours, each colour is lost by 4 objects: balanced, and seed-dependent.
        colour_perm, object_perm = rng.permutation(10), rng.permutation(len(OBJECTS))
        held = np.zeros((len(OBJECTS), len(COLOURS)), dtype=bool)
        for rank, obj in enumerate(object_perm):
            held[obj, colour_perm[[(3 * rank) % 10, (3 * rank + 5) % 10]]] = True
        self.held_out = held

    @cached_property
    def _bank(self) -> tuple[torch.Tensor, dict[str, list[np.ndarray]]]:
        """Every item instance as a (rows, 1, 28, 28) uint8 intensity, and each split's rows per object."""
        fashion_train = load_fashion_mnist("train", self.fashion_mnist_root)
        fashion_test = load_fashion_mnist("test", self.fashion_mnist_root)
        fm_images = np.concatenate([fashion_train.source.images, fashion_test.source.images])
        fm_labels = np.array(fashion_train.labels + fashion_test.labels)
        shapes = np.round(_shape_masks() * 255).astype(np.uint8)
        bank = np.concatenate([fm_images, shapes])
        # Pretraining, task training and task test images use disjoint item instances (shapes have one each).
        pools = {name: [] for name in ("pretrain", "train", "test")}
        for name, rows in zip(pools, _split_rows(fm_labels, len(FASHION), 3, self.seed), strict=True):
            pools[name] = [*rows, *(np.array([len(fm_images) + s]) for s in range(len(SHAPES)))]
        return torch.from_numpy(bank[:, None]), pools

    def sample(
        self, num: int, rng: np.random.Generator, split: str = "pretrain", seen_only: bool = True, **fixed
    ) -> dict[str, np.ndarray]:
        """Random scenes: an index array per attribute.

        Args:
            num (`int`): Number of scenes.
            rng (`np.random.Generator`): Source of every random choice.
            split (`str`): Item instances to draw from: `pretrain`, `train` or `test` (disjoint).
            seen_only (`bool`): Never draw a held-out (colour, object) combination.
            fixed: Per attribute (`object`, `colour`, `size`, `position`, `background`, `style`), a name to use for
                every scene or a list of names to draw from. By default every value is drawn, except the
                background (`PRETRAIN_BACKGROUNDS`) and the style (`solid`): pretraining's shift-free scenes.
        """
        choices = {
            "object": OBJECTS,
            "colour": COLOUR_NAMES,
            "size": SIZES,
            "position": POSITIONS,
            "background": BACKGROUNDS,
            "style": STYLES,
        }
        fixed = {"background": PRETRAIN_BACKGROUNDS, "style": "solid", "position": "in the middle", **fixed}
        scenes, allowed = {}, {}
        for name, names in choices.items():
            value = fixed.get(name, names)
            allowed[name] = np.array([names.index(v) for v in ([value] if isinstance(value, str) else value)])
            scenes[name] = allowed[name][rng.integers(len(allowed[name]), size=num)]
        if seen_only:
            if self.held_out[np.ix_(allowed["object"], allowed["colour"])].all(axis=1).any():
                raise ValueError("Every allowed colour of an allowed object is held out: pass seen_only=False.")
            while (bad := self.held_out[scenes["object"], scenes["colour"]]).any():
                scenes["colour"][bad] = allowed["colour"][rng.integers(len(allowed["colour"]), size=int(bad.sum()))]
        # Only small objects move away from the middle.
        scenes["position"][scenes["size"] != 0] = 0
        pools = self._bank[1][split]
        scenes["instance"] = np.array([pools[o][rng.integers(len(pools[o]))] for o in scenes["object"]])
        return scenes

    def render(self, scenes: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
        """Draws scenes.

        Args:
            scenes (`dict[str, np.ndarray]`): From `sample`.
            rng (`np.random.Generator`): Jitter of size, placement, rotation, colours and background patterns.

        Returns:
            `np.ndarray`: uint8 images, shape `(num, 32, 32, 3)`.
        """
        num, side = len(scenes["object"]), IMAGE_SIZE
        intensity = self._bank[0][torch.from_numpy(scenes["instance"])].float() / 255
        is_shape = scenes["object"] >= len(FASHION)
        low, high = np.array([_SIZE_PIXELS[s] for s in SIZES]).T[:, scenes["size"]]
        box = rng.uniform(low, high) * rng.uniform(0.9, 1.1, size=(2, num))  # (2, num): width, height in pixels
        centre = _POSITION_OFFSETS[scenes["position"]] + rng.uniform(-1, 1, size=(num, 2))
        angle = np.where(is_shape, rng.uniform(-0.2, 0.2, num), rng.uniform(-0.08, 0.08, num))
        cos, sin = np.cos(angle), np.sin(angle)
        half = box / side  # box half-size in [-1, 1] units
        cx, cy = centre[:, 0] / (side / 2), centre[:, 1] / (side / 2)
        # Output pixel x maps to the item's frame: rotate back around the centre, then stretch by the box.
        theta = np.stack(
            [
                np.stack([cos / half[0], sin / half[0], -(cos * cx + sin * cy) / half[0]], -1),
                np.stack([-sin / half[1], cos / half[1], -(-sin * cx + cos * cy) / half[1]], -1),
            ],
            1,
        )
        grid = F.affine_grid(torch.from_numpy(theta).float(), [num, 1, side, side], align_corners=False)
        shade = F.grid_sample(intensity, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        alpha = ((shade - 0.03) * 5).clamp(0, 1)
        outlined = torch.from_numpy(scenes["style"] == 1).view(-1, 1, 1, 1)
        eroded = -F.max_pool2d(-alpha, 7, 1, 3)
        alpha = torch.where(outlined, (alpha - eroded).clamp(0, 1), alpha)
        palette = np.array(list(COLOURS.values()), dtype=np.float32) / 255
        colour = np.clip(palette[scenes["colour"]] + rng.uniform(-0.08, 0.08, (num, 3)), 0, 1)
        colour = torch.from_numpy(colour.astype(np.float32)).view(num, 3, 1, 1)
        shading = torch.where(outlined, torch.ones_like(shade), 0.45 + 0.55 * shade.clamp(0, 1) ** 0.7)
        background = self._backgrounds(scenes, colour.view(num, 3).numpy(), rng)
        image = background * (1 - alpha) + colour * shading * alpha
        image = image + torch.from_numpy(rng.normal(0, 0.015, (num, 3, side, side)).astype(np.float32))
        return (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()

    @staticmethod
    def _backgrounds(scenes: dict[str, np.ndarray], colour: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        """Background images `(num, 3, 32, 32)` in [0, 1]: two low-saturation tones, dark behind light objects and
        light behind dark ones, mixed by the pattern of each scene's background kind."""
        num, side = len(colour), IMAGE_SIZE
        light_object = colour @ np.array([0.3, 0.59, 0.11]) > 0.5
        base = np.where(light_object, rng.uniform(0.08, 0.32, num), rng.uniform(0.68, 0.92, num))
        tones = base[:, None, None] + rng.uniform(-0.09, 0.09, (num, 2, 3))
        tones[:, 1] += np.where(light_object, 0.12, -0.12)[:, None]
        tones = torch.from_numpy(np.clip(tones, 0, 1).astype(np.float32))
        ys, xs = torch.meshgrid(
            torch.arange(side, dtype=torch.float32), torch.arange(side, dtype=torch.float32), indexing="ij"
        )
        ang = torch.from_numpy(rng.uniform(0, math.pi, num).astype(np.float32)).view(-1, 1, 1)
        period = torch.from_numpy(rng.uniform(5, 9, num).astype(np.float32)).view(-1, 1, 1)
        phase = torch.from_numpy(rng.uniform(0, 2 * math.pi, num).astype(np.float32)).view(-1, 1, 1)
        along = xs * torch.cos(ang) + ys * torch.sin(ang)
        across = -xs * torch.sin(ang) + ys * torch.cos(ang)
        coarse = torch.from_numpy(rng.uniform(0, 1, (num, 1, 6, 6)).astype(np.float32))
        u, v = (xs + phase * period / (2 * math.pi)) / period, ys / period
        patterns = [
            torch.zeros(num, side, side),
            (torch.sin(2 * math.pi * along / period + phase) > 0).float(),
            ((torch.frac(u) - 0.5) ** 2 + (torch.frac(v) - 0.5) ** 2 < 0.09).float(),
            F.interpolate(coarse, size=side, mode="bilinear", align_corners=False)[:, 0],
            ((along - along.amin((1, 2), keepdim=True)) / (side * 1.42)).clamp(0, 1),
            ((torch.floor(u) + torch.floor(v)) % 2).float(),
            (torch.sin(2 * math.pi * along / period + 2.0 * torch.sin(2 * math.pi * across / 11) + phase) > 0).float(),
            ((torch.frac(u) < 0.22) | (torch.frac(v) < 0.22)).float(),
        ]
        mix = torch.stack(patterns, 1)[torch.arange(num), torch.from_numpy(scenes["background"])].unsqueeze(1)
        return tones[:, 0, :, None, None] * (1 - mix) + tones[:, 1, :, None, None] * mix

    @staticmethod
    def captions(scenes: dict[str, np.ndarray], rng: np.random.Generator) -> list[str]:
        """One caption per scene from a random template; size (when not medium), colour and position are each
        sometimes left out."""
        num = len(scenes["object"])
        template = rng.integers(len(_TEMPLATES), size=num)
        say_size, say_colour = rng.random(num) < 0.6, rng.random(num) < 0.85
        captions = []
        for i in range(num):
            obj, colour = OBJECTS[scenes["object"][i]], COLOUR_NAMES[scenes["colour"][i]]
            size = SIZES[scenes["size"][i]] if say_size[i] and scenes["size"][i] != 1 else ""
            words = [size, colour if say_colour[i] else "", obj]
            if scenes["style"][i] == 1:
                words.insert(0, "outlined")
            desc = " ".join(w for w in words if w)
            bg = BACKGROUNDS[scenes["background"][i]]
            text = _TEMPLATES[template[i]].format(
                a=_article(desc),
                desc=desc,
                obj=obj,
                colour=colour,
                bg=bg,
                bg_a=_article(bg),
                pos=POSITIONS[scenes["position"][i]] if scenes["size"][i] == 0 else "",
            )
            captions.append(" ".join(text.replace(" .", ".").split()))
        return captions

    def pretraining_batch(self, num: int, rng: np.random.Generator, easy: float = 0.3) -> tuple[np.ndarray, list[str]]:
        """`num` pretraining images `(num, 32, 32, 3)` uint8 and their captions.

        Args:
            easy (`float`): Fraction of easy scenes: a medium or large object on a plain background. A small ViT learns
                colours in a few steps but shapes slowly; clean examples speed the shapes up.
        """
        num_easy = round(num * easy)
        parts = [
            self.sample(num_easy, rng, background="plain", size=["medium", "large"]),
            self.sample(num - num_easy, rng),
        ]
        scenes = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
        return self.render(scenes, rng), self.captions(scenes, rng)


def world_words() -> list[str]:
    """Every word the world's captions and task class names can use (for building a tokenizer)."""
    texts = [*OBJECTS, *COLOUR_NAMES, *SIZES, *POSITIONS, *BACKGROUNDS, *STYLES, "background"]
    texts += [t.format(a="a an", desc="", obj="", colour="", bg="", bg_a="", pos="") for t in _TEMPLATES]
    return texts
