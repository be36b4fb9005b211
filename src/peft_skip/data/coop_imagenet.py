"""ImageNet and its four shifted test sets in CoOp's DATA layout.

Every one of them reads class names from its own copy of CoOp's `classnames.txt` (lines `<wnid> <class name>`, in
label order). ImageNet labels its class folders in sorted order and uses its `val` images as the test set (CoOp).
ImageNet-V2 names folders `0`..`999` by label. ImageNet-Sketch, -A and -R label their folders in sorted order, so -A
and -R (200 folders each) get 200 labels, with the names of those ImageNet classes.

Image files are listed sorted by name; CoOp keeps `os.listdir` order, which depends on the file system (see
`peft_skip.training.recipes`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .coop_splits import data_error, dataset_folder
from .dataset import ImageDataset


@dataclass(frozen=True)
class FolderLayout:
    """Where an ImageNet-family dataset lives under the DATA root."""

    folder: str
    images: str
    # Which splits exist, each mapped to its image folder under `images`. The shifted sets are test-only.
    splits: tuple[tuple[str, str], ...] = (("test", ""),)
    numbered: bool = False  # class folders named by label (ImageNet-V2) rather than by wnid


IMAGENET_LAYOUTS = {
    "imagenet": FolderLayout("imagenet", "images", (("train", "train"), ("val", "val"), ("test", "val"))),
    "imagenetv2": FolderLayout("imagenetv2", "imagenetv2-matched-frequency-format-val", numbered=True),
    "imagenet_sketch": FolderLayout("imagenet-sketch", "images"),
    "imagenet_a": FolderLayout("imagenet-adversarial", "imagenet-a"),
    "imagenet_r": FolderLayout("imagenet-rendition", "imagenet-r"),
}


def read_classnames(path: Path) -> dict[str, str]:
    """CoOp's `classnames.txt`: wnid -> class name, in file order."""
    if not path.is_file():
        raise data_error(FileNotFoundError, f"Class name file {os.fspath(path)!r} is missing")
    names: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        wnid, _, name = line.strip().partition(" ")
        if not name.strip() or wnid in names:
            problem = "repeats a wnid" if wnid in names else "is not '<wnid> <class name>'"
            raise data_error(ValueError, f"{os.fspath(path)}:{number}: {line.strip()[:80]!r} {problem}")
        names[wnid] = name.strip()
    if not names:
        raise data_error(ValueError, f"Class name file {os.fspath(path)!r} is empty")
    return names


def _subfolders(path: Path) -> list[str]:
    """Sorted non-hidden sub-folders (files such as ImageNet-A's README.txt are skipped, as CoOp does)."""
    if not path.is_dir():
        raise data_error(FileNotFoundError, f"Image folder {os.fspath(path)!r} does not exist")
    return sorted(entry.name for entry in os.scandir(path) if entry.is_dir() and not entry.name.startswith("."))


def _images(path: Path) -> list[str]:
    """Absolute paths of the non-hidden files of one class folder, sorted."""
    if not path.is_dir():
        raise data_error(FileNotFoundError, f"Class folder {os.fspath(path)!r} does not exist")
    return sorted(
        os.fspath(path / entry.name)
        for entry in os.scandir(path)
        if entry.is_file() and not entry.name.startswith(".")
    )


def load_imagenet_family(dataset: str, root: str | os.PathLike, split: str) -> ImageDataset:
    """One split of ImageNet (`train`, `val` = `test`) or of a test-only shifted set (`test`).

    Args:
        dataset: `"imagenet"`, `"imagenetv2"`, `"imagenet_sketch"`, `"imagenet_a"` or `"imagenet_r"`.
        root: the DATA root holding CoOp's folders.
        split: the split to read.
    """
    layout = IMAGENET_LAYOUTS[dataset]
    splits = dict(layout.splits)
    if split not in splits:
        raise ValueError(f"{dataset} has no split {split!r}: choose one of {', '.join(splits)}.")
    folder = dataset_folder(root, layout.folder)
    classnames = read_classnames(folder / "classnames.txt")
    image_dir = folder / layout.images / splits[split]
    if layout.numbered:
        # ImageNet-V2: folder `i` holds class i of classnames.txt (CoOp walks range(1000); we walk the listed classes).
        class_names = list(classnames.values())
        folders = [str(label) for label in range(len(class_names))]
    else:
        folders = _subfolders(image_dir)
        if not folders:
            raise data_error(FileNotFoundError, f"Image folder {os.fspath(image_dir)!r} has no class folders")
        unknown = [name for name in folders if name not in classnames]
        if unknown:
            raise data_error(
                ValueError,
                f"Class folders {unknown[:5]} of {os.fspath(image_dir)!r} are not in {folder / 'classnames.txt'}",
            )
        if dataset == "imagenet" and split != "train" and (folder / layout.images / "train").is_dir():
            # Labels come from the sorted folders of each split; the splits must agree or labels would shift.
            train_folders = _subfolders(folder / layout.images / "train")
            if train_folders != folders:
                raise data_error(
                    ValueError, f"ImageNet's train and val folders hold different classes under {folder / 'images'}"
                )
        class_names = [classnames[name] for name in folders]
    if len(set(class_names)) != len(class_names):
        raise data_error(ValueError, f"{folder / 'classnames.txt'} gives two classes the same name")
    items, labels = [], []
    for label, name in enumerate(folders):
        files = _images(image_dir / name)
        items += files
        labels += [label] * len(files)
    return ImageDataset(class_names, items, labels)
