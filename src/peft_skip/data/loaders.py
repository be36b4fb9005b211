"""Loaders that return an `ImageDataset`: image folders, Hugging Face `datasets`, and the `--dataset` spec of the CLI.

The built-in offline datasets (Fashion-MNIST, scikit-learn's digits) live in `builtin.py`.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import PIL.Image

from .builtin import load_digits, load_fashion_mnist
from .dataset import ImageDataset, read_image

# Table files `datasets` reads as rows (its builder for each extension).
DATA_FILE_BUILDERS = {".parquet": "parquet", ".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json"}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")


def load_image_folder(path: str | os.PathLike) -> ImageDataset:
    """A folder with one sub-folder of images per class (searched recursively); class names are the sorted names.

    Args:
        path (`str` or `os.PathLike`): The folder. Hidden entries and files without an image extension are skipped.
    """
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
class _HFSource:
    """The image column of a `datasets.Dataset` (decoded PIL images, paths, or `{"bytes", "path"}` dicts); relative
    paths are read from `root`."""

    dataset: Any
    column: str
    key: str
    root: str = ""

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
            return read_image(os.path.join(self.root, value["path"]))
        if isinstance(value, (str, os.PathLike)):
            return read_image(os.path.join(self.root, value))
        raise TypeError(
            f"Column {self.column!r} row {item} holds a {type(value).__name__}, not an image: pass the name of the "
            "image column with `--image_column`."
        )


def from_hf_dataset(
    dataset,
    image_column: str = "image",
    label_column: str = "label",
    class_names: list[str] | None = None,
    root: str = "",
) -> ImageDataset:
    """An `ImageDataset` over a `datasets.Dataset` with an image column and a label column.

    Class names come from `class_names`, else from the label column's `ClassLabel` feature, else (string labels) from
    the sorted label strings. Integer labels without either need `class_names`.

    Args:
        dataset (`datasets.Dataset`): The rows; images are read from it row by row, when asked for.
        image_column (`str`): Column of the images (PIL images, paths or `{"bytes", "path"}` dicts).
        label_column (`str`): Column of the labels: class indices or class names.
        class_names (`list[str]`, *optional*): Name of each class, overriding the dataset's own.
        root (`str`): Directory that relative image paths are read from (a table file's own directory).
    """
    missing = [c for c in (image_column, label_column) if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"Dataset has no column {missing} (columns: {dataset.column_names}): "
            "choose them with `--image_column` / `--label_column`."
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
            raise TypeError(f"Label column {label_column!r} mixes strings and integers: use one type for every label.")
        names = list(class_names) if class_names is not None else sorted(set(raw))
        index = {name: i for i, name in enumerate(names)}
        unknown = sorted(set(raw) - index.keys())
        if unknown:
            raise ValueError(f"Labels {unknown[:10]} are not in class_names {names}: add them to class_names.")
        labels = [index[label] for label in raw]
    else:
        if any(isinstance(label, str) for label in raw):
            raise TypeError(f"Label column {label_column!r} mixes strings and integers: use one type for every label.")
        names = list(class_names) if class_names is not None else feature_names
        if names is None:
            raise ValueError(
                f"Label column {label_column!r} holds integers without class names: pass `--class_names` "
                "(a file with one name per line, or a comma list; prompts are built from them)."
            )
        if feature_names is not None and len(names) != len(feature_names):
            raise ValueError(
                f"{len(names)} class_names given but the dataset's ClassLabel has {len(feature_names)}: "
                "give one name per class."
            )
        unlabelled = [row for row, label in enumerate(raw) if label < 0]
        if unlabelled:
            raise ValueError(
                f"{len(unlabelled)} rows (first: {unlabelled[0]}) have label {raw[unlabelled[0]]} (no label): "
                "use a labelled split."
            )
        labels = raw
    key = f"hf:{getattr(dataset, '_fingerprint', None) or id(dataset)}:{image_column}"
    source = _HFSource(dataset.select_columns([image_column]), image_column, key, root)
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
    directory written by `save_to_disk`.

    Args:
        name_or_path (`str`): Hub name, builder name, or directory written by `save_to_disk`.
        split (`str`): The split to load.
        image_column, label_column, class_names: as in `from_hf_dataset`.
        data_dir (`str`, *optional*): Data directory of a builder (`"imagefolder"`).
    """
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
                raise ValueError(f"Split {split!r} not in {name_or_path!r}: use one of its splits {list(loaded)}.")
            loaded = loaded[split]
        dataset = loaded
    else:
        dataset = datasets.load_dataset(name_or_path, data_dir=data_dir, split=split)
    return from_hf_dataset(dataset, image_column, label_column, class_names)


def load_data_file(path: str, split: str, **kwargs) -> ImageDataset:
    """A split from a Parquet, CSV, TSV or JSON (lines) file of rows with an image and a label column, read by
    `datasets`; `{split}` in `path` is replaced by the split's name. Image paths in the rows are relative to the file.

    Args:
        path (`str`): The file, e.g. `data/{split}.parquet`.
        split (`str`): The split; a path without `{split}` serves every split.
        kwargs: `image_column`, `label_column`, `class_names`, as in `from_hf_dataset`.
    """
    import datasets

    file = path.replace("{split}", split)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"Data file {file!r} does not exist (from --data {path!r}).")
    builder = DATA_FILE_BUILDERS[Path(file).suffix.lower()]
    options = {"delimiter": "\t"} if file.lower().endswith(".tsv") else {}
    rows = datasets.load_dataset(builder, data_files=file, split="train", **options)
    return from_hf_dataset(rows, root=os.path.dirname(os.path.abspath(file)), **kwargs)


def is_table_spec(spec: str) -> bool:
    """Whether `spec` names rows that `from_hf_dataset` reads: `hf:`, `imagefolder:` or a table file."""
    return spec.startswith(("hf:", "imagefolder:")) or Path(spec).suffix.lower() in DATA_FILE_BUILDERS


# Datasets name their validation folder differently; either name finds it.
_SPLIT_ALIASES = {"val": ("val", "validation", "valid"), "validation": ("validation", "val", "valid")}


def load_dataset_spec(spec: str, split: str, data_root: str | os.PathLike | None = None, **kwargs) -> ImageDataset:
    """Loads a dataset from a short spec (the CLI's `--dataset`).

    Args:
        spec: `"fashion-mnist"`, `"digits"`, `"hf:<name or saved dir>"`, `"imagefolder:<dir>"` (HF's image folder
            builder), a `.parquet` / `.csv` / `.tsv` / `.json` / `.jsonl` file (`load_data_file`), a directory: an
            image folder (a sub-folder per class) or a folder with one such folder per split (`train/`, `test/`,
            `val/`), or a name of `peft_skip.data.coop.COOP_DATASETS` (read from `data_root`).
        split: `"train"`, `"test"`, ...
        data_root: the DATA root of the CoOp-layout datasets.
        kwargs: passed to the loader (`image_column`, `class_names`, `root`, ...).
    """
    from .coop import COOP_DATASETS, load_coop_dataset

    if spec in COOP_DATASETS:
        if data_root is None:
            raise ValueError(f"{spec!r} is a CoOp-layout dataset: give its DATA root (--data-root DIR).")
        return load_coop_dataset(spec, data_root, split)
    if spec in ("fashion-mnist", "fashion_mnist"):
        return load_fashion_mnist(split, **kwargs)
    if spec == "digits":
        return load_digits(split, **kwargs)
    if spec.startswith("world:"):
        from .world_tasks import load_world_task  # world tasks are built from the builtin data sets: loaded lazily

        return load_world_task(spec[len("world:") :], split, **kwargs)
    if spec.startswith("hf:"):
        return load_hf_dataset(spec[3:], split, **kwargs)
    if spec.startswith("imagefolder:"):
        return load_hf_dataset("imagefolder", split, data_dir=spec[len("imagefolder:") :], **kwargs)
    if Path(spec).suffix.lower() in DATA_FILE_BUILDERS:
        return load_data_file(spec, split, **kwargs)
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
        f"Unknown dataset {spec!r}: use 'fashion-mnist', 'digits', 'hf:<name>', 'imagefolder:<dir>', a .parquet, "
        ".csv or .json file, or an existing image folder."
    )
