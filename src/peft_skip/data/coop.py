"""The 15 datasets of the CoOp family of papers, read from CoOp's DATA layout (one folder per dataset under a root).

```python
train = load_coop_dataset("caltech101", "/data", "train")   # ImageDataset: absolute paths, labels, class names
```
The layout, the split files and where to get them: docs/reproducing.md#datasets (CoOp's DATASETS.md).
"""

from __future__ import annotations

import os

from .coop_imagenet import IMAGENET_LAYOUTS, load_imagenet_family
from .coop_splits import FGVC_FOLDER, SPLIT_FILE_LAYOUTS, load_fgvc_aircraft, load_split_file_dataset
from .dataset import ImageDataset

# In the order of the papers' tables: the 11 datasets trained on (base-to-new, few-shot; ImageNet also for
# cross-dataset), then ImageNet's test-only shifts (domain generalisation).
TRAIN_DATASETS = (
    "imagenet",
    "caltech101",
    "oxford_pets",
    "stanford_cars",
    "oxford_flowers",
    "food101",
    "fgvc_aircraft",
    "sun397",
    "dtd",
    "eurosat",
    "ucf101",
)
DOMAIN_SHIFT_DATASETS = ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")
COOP_DATASETS = TRAIN_DATASETS + DOMAIN_SHIFT_DATASETS


def coop_folder(name: str) -> str:
    """The folder of dataset `name` under the DATA root (e.g. `caltech-101`, `imagenet-adversarial`)."""
    _check_name(name)
    if name in SPLIT_FILE_LAYOUTS:
        return SPLIT_FILE_LAYOUTS[name].folder
    if name == "fgvc_aircraft":
        return FGVC_FOLDER
    return IMAGENET_LAYOUTS[name].folder


def coop_splits(name: str) -> tuple[str, ...]:
    """The splits dataset `name` has: `train`, `val`, `test`, or only `test` for the four shifted ImageNet sets."""
    _check_name(name)
    if name in IMAGENET_LAYOUTS:
        return tuple(split for split, _ in IMAGENET_LAYOUTS[name].splits)
    return ("train", "val", "test")


def load_coop_dataset(name: str, root: str | os.PathLike, split: str) -> ImageDataset:
    """One split of a CoOp-layout dataset.

    Args:
        name: one of `COOP_DATASETS`.
        root: the DATA root that holds CoOp's dataset folders.
        split: `"train"`, `"val"` or `"test"` (ImageNet's `val` and `test` are both its val images; the shifted
            ImageNet sets have only `test`).

    Returns:
        An `ImageDataset` whose items are absolute image paths (decoded when read), with CoOp's labels and class names.

    Raises:
        FileNotFoundError: a missing root, dataset folder, split file or image folder (one line naming it).
        ValueError: an unknown name or split, or a malformed split entry (one line naming the file and entry).
    """
    _check_name(name)
    if name in SPLIT_FILE_LAYOUTS:
        return load_split_file_dataset(name, root, split)
    if name == "fgvc_aircraft":
        return load_fgvc_aircraft(root, split)
    return load_imagenet_family(name, root, split)


def _check_name(name: str) -> None:
    if name not in COOP_DATASETS:
        raise ValueError(f"Unknown CoOp dataset {name!r}: choose one of {', '.join(COOP_DATASETS)}.")
