"""Images, labels and class names for Skip Tuning: loaders, k-shot sampling, base/new splits, prompts, preprocessing.

Every loader returns an `ImageDataset`: class names, one item per image (a file path, a PIL image, or a row of an
array / HF dataset) and integer labels. Images are decoded lazily and always come back as RGB.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import os
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
DIGITS_CLASSES = [str(digit) for digit in range(10)]

# Per-dataset prompt templates of the CoOp family of papers (CoOp, CoCoOp, MaPLe, PromptSRC, Skip Tuning).
TEMPLATES: dict[str, str] = {
    "default": "a photo of a {}.",
    "imagenet": "a photo of a {}.",
    "imagenet_sketch": "a photo of a {}.",
    "imagenetv2": "a photo of a {}.",
    "imagenet_a": "a photo of a {}.",
    "imagenet_r": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
    "oxford_pets": "a photo of a {}, a type of pet.",
    "stanford_cars": "a photo of a {}.",
    "oxford_flowers": "a photo of a {}, a type of flower.",
    "food101": "a photo of {}, a type of food.",
    "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
    "sun397": "a photo of a {}.",
    "dtd": "{} texture.",
    "eurosat": "a centered satellite photo of {}.",
    "ucf101": "a photo of a person doing {}.",
    "fashion-mnist": "a photo of a {}, a type of clothing.",
    "digits": "a photo of the handwritten digit {}.",
}


class ImageSource(Protocol):
    """Where the items of an `ImageDataset` come from when they are not file paths or PIL images."""

    key: str  # identifies the source's content for `ImageDataset.fingerprint`

    def load(self, item: Any) -> PIL.Image.Image: ...


@dataclass
class ImageDataset:
    """A labelled image set.

    Args:
        class_names: name of each class; `labels` index into it. Names must be unique.
        items: one entry per image: a file path, a PIL image, or (with `source`) a key that `source.load` understands.
        labels: class index of each image.
        source: loads items that are not paths or PIL images (rows of an array or of an HF dataset).
    """

    class_names: list[str]
    items: list
    labels: list[int]
    source: ImageSource | None = field(default=None, repr=False)

    def __post_init__(self):
        self.class_names = [str(name) for name in self.class_names]
        self.labels = [int(label) for label in self.labels]
        seen = set()
        duplicates = sorted({name for name in self.class_names if name in seen or seen.add(name)})
        if duplicates:
            raise ValueError(f"Duplicate class names {duplicates}: every class needs its own name.")
        if len(self.items) != len(self.labels):
            raise ValueError(f"{len(self.items)} items but {len(self.labels)} labels: give one label per image.")
        bad = [label for label in self.labels if not 0 <= label < len(self.class_names)]
        if bad:
            raise ValueError(f"Labels {sorted(set(bad))[:10]} out of range for {len(self.class_names)} class names.")

    def __len__(self) -> int:
        return len(self.items)

    def image(self, index: int) -> PIL.Image.Image:
        """The image at `index`, converted to 8-bit RGB."""
        item = self.items[index]
        if self.source is not None:
            return to_rgb(self.source.load(item))
        if isinstance(item, PIL.Image.Image):
            return to_rgb(item)
        return read_image(item)

    def subset(self, indices: Sequence[int]) -> ImageDataset:
        """The images at `indices`, same classes."""
        indices = [int(i) for i in indices]
        return ImageDataset(
            list(self.class_names), [self.items[i] for i in indices], [self.labels[i] for i in indices], self.source
        )

    def class_counts(self) -> list[int]:
        """Number of images of each class."""
        counts = [0] * len(self.class_names)
        for label in self.labels:
            counts[label] += 1
        return counts

    def fingerprint(self) -> str:
        """A stable hash of the source, items, labels and class names (for reusing caches built from this set)."""
        digest = hashlib.sha256()
        digest.update(json.dumps(self.class_names).encode())
        digest.update(str(None if self.source is None else self.source.key).encode())
        for item, label in zip(self.items, self.labels, strict=True):
            if isinstance(item, PIL.Image.Image):
                digest.update(f"{item.mode}{item.size}".encode())
                digest.update(item.tobytes())
            else:
                digest.update(
                    os.fspath(item).encode() if isinstance(item, (str, os.PathLike)) else repr(item).encode()
                )
            digest.update(f":{label};".encode())
        return digest.hexdigest()[:16]


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """Converts any PIL image to 8-bit RGB.

    Transparent images are put on a white background. 16- and 32-bit integer images are scaled from the 16-bit range
    (0-65535) to 8 bits, float images from 0-1 when all values lie in it, else from 0-255.
    """
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode.startswith("I") or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            scale = 255.0 if values.size and 0.0 <= values.min() and values.max() <= 1.0 else 1.0
        else:
            scale = 255.0 / 65535.0
        grey = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
        return PIL.Image.fromarray(grey, mode="L").convert("RGB")
    return image.convert("RGB")


def read_image(path: str | os.PathLike) -> PIL.Image.Image:
    """Reads an image file as RGB (EXIF orientation applied); an unreadable file raises an error naming it."""
    try:
        with PIL.Image.open(path) as image:
            image.load()
            image = PIL.ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as err:
        raise OSError(f"Cannot read image file {os.fspath(path)!r}: {err}. Replace or remove the file.") from err
    return to_rgb(image)


def load_image_folder(path: str | os.PathLike) -> ImageDataset:
    """A folder with one sub-folder of images per class (searched recursively); class names are the sorted names."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"Image folder {os.fspath(path)!r} does not exist or is not a directory.")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise ValueError(
            f"No class sub-folders in {os.fspath(path)!r}: put the images of each class in its own folder."
        )
    items, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        files = sorted(
            p
            for p in class_dir.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
        )
        if not files:
            raise ValueError(
                f"Class {class_dir.name!r} has zero images in {os.fspath(class_dir)!r} "
                f"(looked for {', '.join(IMAGE_EXTENSIONS)}): add images or remove the folder."
            )
        items += [str(p) for p in files]
        labels += [label] * len(files)
    return ImageDataset([p.name for p in class_dirs], items, labels)


@dataclass
class _ArraySource:
    """Rows of a uint8 array of shape (N, H, W) or (N, H, W, 3)."""

    images: np.ndarray
    key: str

    def load(self, item: int) -> PIL.Image.Image:
        return PIL.Image.fromarray(self.images[item])


@dataclass
class _HFSource:
    """The image column of a `datasets.Dataset` (decoded PIL images, paths, or `{"bytes", "path"}` dicts)."""

    dataset: Any
    column: str
    key: str

    def load(self, item: int) -> PIL.Image.Image:
        value = self.dataset[int(item)][self.column]
        if isinstance(value, PIL.Image.Image):
            return value
        if isinstance(value, dict) and value.get("bytes") is not None:
            try:
                with PIL.Image.open(io.BytesIO(value["bytes"])) as image:
                    image.load()
                    return image
            except (OSError, SyntaxError, ValueError) as err:
                raise OSError(f"Cannot decode image of row {item} (path {value.get('path')!r}): {err}") from err
        if isinstance(value, dict) and value.get("path"):
            return read_image(value["path"])
        if isinstance(value, (str, os.PathLike)):
            return read_image(value)
        raise TypeError(
            f"Column {self.column!r} row {item} holds a {type(value).__name__}, not an image: pass the name of the "
            "image column with `image_column`."
        )


def from_hf_dataset(
    dataset, image_column: str = "image", label_column: str = "label", class_names: list[str] | None = None
) -> ImageDataset:
    """An `ImageDataset` over a `datasets.Dataset` with an image column and a label column.

    Class names come from `class_names`, else from the label column's `ClassLabel` feature, else (string labels) from
    the sorted label strings. Integer labels without either need `class_names`.
    """
    missing = [c for c in (image_column, label_column) if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"Dataset has no column {missing} (columns: {dataset.column_names}): "
            "choose them with `image_column` / `label_column`."
        )
    raw = dataset[label_column]
    raw = list(raw) if not isinstance(raw, list) else raw
    feature = dataset.features[label_column]
    feature_names = getattr(feature, "names", None)
    for row, label in enumerate(raw):
        if isinstance(label, bool) or not isinstance(label, (int, str)):
            raise TypeError(
                f"Label column {label_column!r} row {row} holds {label!r} ({type(label).__name__}): labels must be "
                "class indices (int) or class names (str)."
            )
    if raw and isinstance(raw[0], str):
        if any(not isinstance(label, str) for label in raw):
            raise TypeError(f"Label column {label_column!r} mixes strings and integers.")
        names = list(class_names) if class_names is not None else sorted(set(raw))
        index = {name: i for i, name in enumerate(names)}
        unknown = sorted(set(raw) - index.keys())
        if unknown:
            raise ValueError(f"Labels {unknown[:10]} are not in class_names {names}.")
        labels = [index[label] for label in raw]
    else:
        if any(isinstance(label, str) for label in raw):
            raise TypeError(f"Label column {label_column!r} mixes strings and integers.")
        names = list(class_names) if class_names is not None else feature_names
        if names is None:
            raise ValueError(
                f"Label column {label_column!r} holds integers without class names: pass `class_names` "
                "(prompts are built from them)."
            )
        if feature_names is not None and len(names) != len(feature_names):
            raise ValueError(f"{len(names)} class_names given but the dataset's ClassLabel has {len(feature_names)}.")
        unlabelled = [row for row, label in enumerate(raw) if label < 0]
        if unlabelled:
            raise ValueError(
                f"{len(unlabelled)} rows (first: {unlabelled[0]}) have label {raw[unlabelled[0]]} (no label): "
                "use a labelled split."
            )
        labels = raw
    key = f"hf:{getattr(dataset, '_fingerprint', None) or id(dataset)}:{image_column}"
    source = _HFSource(dataset.select_columns([image_column]), image_column, key)
    return ImageDataset(names, list(range(len(labels))), labels, source)


def load_hf_dataset(
    name_or_path: str,
    split: str,
    image_column: str = "image",
    label_column: str = "label",
    class_names: list[str] | None = None,
    data_dir: str | None = None,
) -> ImageDataset:
    """A split of an HF `datasets` dataset: a hub name, a builder such as `"imagefolder"` (with `data_dir`), or a
    directory written by `save_to_disk`."""
    import datasets

    saved = Path(name_or_path)
    if (
        data_dir is None
        and saved.is_dir()
        and ((saved / "dataset_dict.json").exists() or (saved / "state.json").exists())
    ):
        loaded = datasets.load_from_disk(name_or_path)
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"Split {split!r} not in {name_or_path!r}; splits: {list(loaded)}.")
            loaded = loaded[split]
        dataset = loaded
    else:
        dataset = datasets.load_dataset(name_or_path, data_dir=data_dir, split=split)
    return from_hf_dataset(dataset, image_column, label_column, class_names)


def _read_idx(path: Path) -> np.ndarray:
    """Reads an IDX file (the MNIST format), gzip-compressed or not."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{os.fspath(path)!r} is not an unsigned-byte IDX file.")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != math.prod(shape):
        raise ValueError(f"{os.fspath(path)!r} is truncated: expected {math.prod(shape)} values, got {array.size}.")
    return array.reshape(shape)


@lru_cache(maxsize=4)
def _fashion_mnist_arrays(root: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = {"train": "train", "test": "t10k"}[split]
    arrays = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        candidates = [Path(root) / f"{prefix}-{kind}{suffix}" for suffix in (".gz", "")]
        found = next((p for p in candidates if p.exists()), None)
        if found is None:
            raise FileNotFoundError(
                f"Fashion-MNIST file {candidates[0].name} not found in {root!r}. Install it with "
                "`apt-get install dataset-fashion-mnist` (files go to /usr/share/datasets/fashion-mnist) "
                "or pass `root`."
            )
        arrays.append(_read_idx(found))
    images, labels = arrays
    if len(images) != len(labels):
        raise ValueError(f"Fashion-MNIST {split}: {len(images)} images but {len(labels)} labels in {root!r}.")
    return images, labels


def load_fashion_mnist(split: str = "train", root: str = "/usr/share/datasets/fashion-mnist") -> ImageDataset:
    """Fashion-MNIST (10 classes, 28x28 grey) from the IDX files of Debian's `dataset-fashion-mnist`."""
    if split not in ("train", "test"):
        raise ValueError(f"Fashion-MNIST has splits 'train' and 'test', not {split!r}.")
    images, labels = _fashion_mnist_arrays(os.fspath(root), split)
    source = _ArraySource(images, key=f"fashion-mnist:{split}:{images.shape}")
    return ImageDataset(list(FASHION_MNIST_CLASSES), list(range(len(labels))), labels.tolist(), source)


def load_digits(split: str = "train", test_fraction: float = 0.3) -> ImageDataset:
    """scikit-learn's handwritten digits (1797 8x8 grey images, 10 classes), split per class with a fixed seed."""
    if split not in ("train", "test"):
        raise ValueError(f"digits has splits 'train' and 'test', not {split!r}.")
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    rng = np.random.default_rng(0)
    rows = []
    for digit in range(10):
        members = rng.permutation(np.flatnonzero(digits.target == digit))
        num_test = round(len(members) * test_fraction)
        rows += sorted((members[:num_test] if split == "test" else members[num_test:]).tolist())
    source = _ArraySource(images, key=f"sklearn-digits:{images.shape}")
    return ImageDataset(list(DIGITS_CLASSES), rows, digits.target[rows].tolist(), source)


_SPLIT_ALIASES = {"val": ("val", "validation", "valid"), "validation": ("validation", "val", "valid")}


def load_dataset_spec(spec: str, split: str, **kwargs) -> ImageDataset:
    """Loads a dataset from a short spec (the CLI's `--dataset`).

    Args:
        spec: `"fashion-mnist"`, `"digits"`, `"hf:<name or saved dir>"`, `"imagefolder:<dir>"` (HF's image folder
            builder), or a directory: an image folder (a sub-folder per class) or a folder with one such folder per
            split (`train/`, `test/`, `val/`); `"world:<task>"` is a task of the captioned world (`world_tasks.py`).
        split: `"train"`, `"test"`, ...
        kwargs: passed to the loader (`image_column`, `class_names`, `root`, ...).
    """
    if spec in ("fashion-mnist", "fashion_mnist"):
        return load_fashion_mnist(split, **kwargs)
    if spec == "digits":
        return load_digits(split, **kwargs)
    if spec.startswith("world:"):
        from .world_tasks import load_world_task  # world_tasks imports this module

        return load_world_task(spec[len("world:") :], split, **kwargs)
    if spec.startswith("hf:"):
        return load_hf_dataset(spec[3:], split, **kwargs)
    if spec.startswith("imagefolder:"):
        return load_hf_dataset("imagefolder", split, data_dir=spec[len("imagefolder:") :], **kwargs)
    root = Path(spec)
    if root.is_dir():
        split_names = {"train", "test", "val", "validation", "valid"}
        present = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name in split_names)
        if present:
            for name in _SPLIT_ALIASES.get(split, (split,)):
                if (root / name).is_dir():
                    return load_image_folder(root / name, **kwargs)
            raise ValueError(f"{spec!r} has split folders {present} but none for split {split!r}.")
        if split != "train":
            warnings.warn(
                f"{spec!r} has no train/ and test/ sub-folders: split {split!r} uses all of its images.", stacklevel=2
            )
        return load_image_folder(root, **kwargs)
    raise ValueError(
        f"Unknown dataset {spec!r}: use 'fashion-mnist', 'digits', 'hf:<name>', 'imagefolder:<dir>' or an existing "
        "image folder."
    )


def sample_few_shot(dataset: ImageDataset, shots: int, seed: int) -> ImageDataset:
    """`shots` images of each class, drawn without replacement with `seed` (same seed, same images).

    Raises:
        ValueError: a class has no images, or fewer than `shots`.
    """
    if shots < 1:
        raise ValueError(f"shots must be at least 1, got {shots}.")
    by_class: list[list[int]] = [[] for _ in dataset.class_names]
    for index, label in enumerate(dataset.labels):
        by_class[label].append(index)
    empty = [dataset.class_names[c] for c, members in enumerate(by_class) if not members]
    if empty:
        raise ValueError(f"Classes {empty} have zero images: drop them (subset_classes) or add images.")
    short = [(dataset.class_names[c], len(m)) for c, m in enumerate(by_class) if len(m) < shots]
    if short:
        details = ", ".join(f"{name!r} has {count}" for name, count in short)
        raise ValueError(f"{shots} shots asked but {details} images: lower shots or add images.")
    rng = random.Random(seed)
    chosen = [index for members in by_class for index in sorted(rng.sample(members, shots))]
    return dataset.subset(chosen)


def split_base_new(class_names: Sequence[str]) -> tuple[list[int], list[int]]:
    """Base-to-new protocol of CoOp / CoCoOp: the first ceil(C / 2) classes are base, the rest new."""
    num_classes = len(class_names)
    if num_classes < 2:
        raise ValueError(f"A base/new split needs at least 2 classes, got {num_classes}.")
    num_base = math.ceil(num_classes / 2)
    return list(range(num_base)), list(range(num_base, num_classes))


def subset_classes(dataset: ImageDataset, classes: Sequence[int]) -> ImageDataset:
    """The images of `classes` only, relabelled 0..k-1 in the order of `classes`, with those classes' names."""
    classes = [int(c) for c in classes]
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes {classes} has duplicates.")
    bad = [c for c in classes if not 0 <= c < len(dataset.class_names)]
    if bad:
        raise ValueError(f"classes {bad} out of range for {len(dataset.class_names)} classes.")
    new_label = {c: i for i, c in enumerate(classes)}
    keep = [i for i, label in enumerate(dataset.labels) if label in new_label]
    return ImageDataset(
        [dataset.class_names[c] for c in classes],
        [dataset.items[i] for i in keep],
        [new_label[dataset.labels[i]] for i in keep],
        dataset.source,
    )


def build_prompts(class_names: Sequence[str], template: str = "a photo of a {}.") -> list[str]:
    """One prompt per class: `template` (a key of `TEMPLATES` or a format string with one `{}`), underscores in
    class names read as spaces."""
    template = TEMPLATES.get(template, template)
    if template.count("{}") != 1:
        raise ValueError(
            f"Template {template!r} must be a key of TEMPLATES ({sorted(TEMPLATES)}) "
            "or a string with exactly one '{}'."
        )
    return [template.format(" ".join(name.replace("_", " ").split())) for name in class_names]


class ImageTransform:
    """CLIP preprocessing of a PIL image into a normalised (3, S, S) float tensor, with optional train augmentation.

    Eval: resize the shortest side to S, center crop S x S (or, with `crop=False`, resize straight to S x S). Train:
    random resized crop (area `scale`, aspect ratio 3/4 to 4/3) to S x S, then a random horizontal flip. Both
    normalise with `mean` and `std` after scaling to [0, 1].

    Args:
        image_size: S, the side of the output.
        mean, std: per-channel normalisation (3 values each).
        train: whether to augment.
        scale: range of the crop's area, as a fraction of the image's, for the random resized crop.
        seed: seeds this transform's own generator, used when `__call__` gets none.
        crop: eval only: center crop after resizing the shortest side (CLIP) or resize to a square (SigLIP).
        ratio: range of the crop's aspect ratio (width / height) for the random resized crop.
        resample: PIL resampling filter of every resize (CLIP's and SigLIP's processors use bicubic).
    """

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool,
        scale: tuple[float, float] = (0.08, 1.0),
        seed: int | None = None,
        crop: bool = True,
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        resample: int = PIL.Image.BICUBIC,
    ):
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values each, got {list(mean)} and {list(std)}.")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}.")
        self.image_size = int(image_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.train = train
        self.scale = scale
        self.ratio = ratio
        self.crop = crop
        self.resample = resample
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    @classmethod
    def from_processor(cls, processor, train: bool, **kwargs) -> ImageTransform:
        """Reads output size, resampling, mean and std from an image processor (or a processor holding one).

        A NaFlex processor (SigLIP 2) has no fixed size: the images become the largest square grid of its
        `patch_size` patches that `max_num_patches` allows, resized without crop.
        """
        image_processor = getattr(processor, "image_processor", processor)
        if getattr(image_processor, "max_num_patches", None):
            image_size = image_processor.patch_size * math.isqrt(image_processor.max_num_patches)
            kwargs.setdefault("crop", False)
        else:
            crop_size = image_processor.crop_size if getattr(image_processor, "do_center_crop", False) else None
            size = crop_size or image_processor.size
            image_size = size.get("height") or size.get("shortest_edge")
            if not image_size:
                raise ValueError(f"Cannot read an image size from {type(image_processor).__name__} size {size}.")
            kwargs.setdefault("crop", crop_size is not None)
        if getattr(image_processor, "resample", None) is not None:
            kwargs.setdefault("resample", int(image_processor.resample))
        return cls(image_size, image_processor.image_mean, image_processor.image_std, train, **kwargs)

    def __call__(self, image: PIL.Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        """Returns the (3, S, S) float32 tensor of `image`; `generator` (else this transform's own, else torch's
        global one) drives the augmentation."""
        image = to_rgb(image)
        size = self.image_size
        if self.train:
            generator = generator if generator is not None else self.generator
            left, top, width, height = self._random_crop_box(image.width, image.height, generator)
            image = image.resize((size, size), self.resample, box=(left, top, left + width, top + height))
            if torch.rand((), generator=generator) < 0.5:
                image = image.transpose(PIL.Image.FLIP_LEFT_RIGHT)
        elif self.crop:
            short, long = min(image.size), max(image.size)
            resized_long = int(size * long / short)
            new_size = (size, resized_long) if image.width <= image.height else (resized_long, size)
            image = image.resize(new_size, self.resample)
            left, top = (image.width - size) // 2, (image.height - size) // 2
            image = image.crop((left, top, left + size, top + size))
        else:
            image = image.resize((size, size), self.resample)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (pixels - self.mean) / self.std

    def _random_crop_box(
        self, width: int, height: int, generator: torch.Generator | None
    ) -> tuple[int, int, int, int]:
        """(left, top, width, height) of a crop with area in `scale` and aspect ratio in `ratio`, tried 10 times,
        else the largest center crop with a ratio in range."""
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            u = torch.rand(4, generator=generator).tolist()
            target_area = area * (self.scale[0] + u[0] * (self.scale[1] - self.scale[0]))
            aspect = math.exp(log_ratio[0] + u[1] * (log_ratio[1] - log_ratio[0]))
            crop_w = round(math.sqrt(target_area * aspect))
            crop_h = round(math.sqrt(target_area / aspect))
            if 0 < crop_w <= width and 0 < crop_h <= height:
                left = min(int(u[2] * (width - crop_w + 1)), width - crop_w)
                top = min(int(u[3] * (height - crop_h + 1)), height - crop_h)
                return left, top, crop_w, crop_h
        image_ratio = width / height
        if image_ratio < self.ratio[0]:
            crop_w, crop_h = width, round(width / self.ratio[0])
        elif image_ratio > self.ratio[1]:
            crop_w, crop_h = round(height * self.ratio[1]), height
        else:
            crop_w, crop_h = width, height
        return (width - crop_w) // 2, (height - crop_h) // 2, crop_w, crop_h
