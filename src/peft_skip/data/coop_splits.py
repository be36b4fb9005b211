"""The split-file datasets of CoOp's DATA layout: ten `split_zhou_<Name>.json` datasets and FGVC-Aircraft.

A split file holds `{"train": [...], "val": [...], "test": [...]}`, each entry `[relative_path, label, classname]`
with the path relative to the dataset's image folder. CoOp reads entries verbatim (its class-name clean-ups were
applied when the files were made); the clean-ups below are idempotent, so files made from raw folder names read the
same.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .dataset import ImageDataset

DATA_DOCS = "docs/reproducing.md#datasets"
SPLITS = ("train", "val", "test")


def data_error(kind: type[Exception], message: str) -> Exception:
    """A one-line error about the data layout that points to the set-up instructions."""
    return kind(f"{message}; see {DATA_DOCS}.")


@dataclass(frozen=True)
class SplitFileLayout:
    """Where a split-file dataset lives under the DATA root (CoOp's `dataset_dir`, `image_dir`, `split_path`)."""

    folder: str
    images: str
    split_file: str


SPLIT_FILE_LAYOUTS = {
    "caltech101": SplitFileLayout("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json"),
    "oxford_pets": SplitFileLayout("oxford_pets", "images", "split_zhou_OxfordPets.json"),
    # Stanford Cars' entries start with `cars_train/` or `cars_test/`: they are relative to the dataset folder.
    "stanford_cars": SplitFileLayout("stanford_cars", "", "split_zhou_StanfordCars.json"),
    "oxford_flowers": SplitFileLayout("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json"),
    "food101": SplitFileLayout("food-101", "images", "split_zhou_Food101.json"),
    "sun397": SplitFileLayout("sun397", "SUN397", "split_zhou_SUN397.json"),
    "dtd": SplitFileLayout("dtd", "images", "split_zhou_DescribableTextures.json"),
    "eurosat": SplitFileLayout("eurosat", "2750", "split_zhou_EuroSAT.json"),
    "ucf101": SplitFileLayout("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json"),
}
FGVC_FOLDER = "fgvc_aircraft"

# CoOp's readable names, applied when its split files were made (datasets/eurosat.py, datasets/caltech101.py).
EUROSAT_NAMES = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}
CALTECH_NAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}


def clean_class_name(dataset: str, name: str) -> str:
    """CoOp's class name for a raw one (unchanged when it is already clean).

    EuroSAT and Caltech101 folder names map to readable names; UCF101 CamelCase actions become `_`-joined words
    (`ApplyEyeMakeup` -> `Apply_Eye_Makeup`; prompts later read `_` as a space).
    """
    if dataset == "eurosat":
        return EUROSAT_NAMES.get(name, name)
    if dataset == "caltech101":
        return CALTECH_NAMES.get(name, name)
    if dataset == "ucf101" and "_" not in name and re.fullmatch(r"(?:[A-Z][^A-Z]*)+", name):
        return "_".join(re.findall(r"[A-Z][^A-Z]*", name))
    return name


def dataset_folder(root: str | os.PathLike, folder: str) -> Path:
    """`root/folder`, which must exist."""
    path = Path(root).expanduser() / folder
    if not Path(root).expanduser().is_dir():
        raise data_error(FileNotFoundError, f"DATA root {os.fspath(root)!r} does not exist")
    if not path.is_dir():
        raise data_error(FileNotFoundError, f"Dataset folder {os.fspath(path)!r} does not exist")
    return path


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}: choose one of {', '.join(SPLITS)}.")


def _class_names(entries: list[tuple[str, int, str]], source: str) -> list[str]:
    """Class names indexed by label, checked: labels 0..C-1, one name per label and one label per name."""
    names: dict[int, str] = {}
    for _, label, name in entries:
        if names.setdefault(label, name) != name:
            raise data_error(ValueError, f"{source}: label {label} is both {names[label]!r} and {name!r}")
    if not names:
        raise data_error(ValueError, f"{source} lists no images")
    if sorted(names) != list(range(len(names))):
        missing = sorted(set(range(max(names) + 1)) - set(names))[:5]
        raise data_error(ValueError, f"{source}: labels are not 0..{max(names)} (missing {missing})")
    class_names = [names[label] for label in range(len(names))]
    if len(set(class_names)) != len(class_names):
        raise data_error(ValueError, f"{source}: two labels share a class name")
    return class_names


def read_split_file(dataset: str, path: Path) -> dict[str, list[tuple[str, int, str]]]:
    """The entries of each split of a CoOp split file, validated and with clean class names."""
    if not path.is_file():
        raise data_error(FileNotFoundError, f"Split file {os.fspath(path)!r} is missing")
    try:
        split = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise data_error(ValueError, f"Split file {os.fspath(path)!r} is not valid JSON ({err})") from err
    if not isinstance(split, dict) or any(not isinstance(split.get(name), list) for name in SPLITS):
        raise data_error(ValueError, f"Split file {os.fspath(path)!r} needs lists 'train', 'val' and 'test'")
    out = {}
    for name in SPLITS:
        entries = []
        for index, entry in enumerate(split[name]):
            ok = isinstance(entry, (list, tuple)) and len(entry) == 3
            # Paths must stay inside the image folder: relative, no `..`.
            ok = ok and isinstance(entry[0], str) and entry[0] != "" and isinstance(entry[2], str)
            ok = ok and not os.path.isabs(entry[0]) and ".." not in Path(entry[0]).parts
            ok = ok and isinstance(entry[1], int) and not isinstance(entry[1], bool) and entry[1] >= 0
            if not ok:
                raise data_error(
                    ValueError,
                    f"Split file {os.fspath(path)!r}: {name}[{index}] = {json.dumps(entry)[:80]} is not "
                    "[relative_path, label, classname]",
                )
            entries.append((entry[0], entry[1], clean_class_name(dataset, entry[2])))
        out[name] = entries
    return out


def load_split_file_dataset(dataset: str, root: str | os.PathLike, split: str) -> ImageDataset:
    """One split of a `split_zhou_<Name>.json` dataset: items are absolute image paths, labels as in the file.

    The class names are those of all three splits together (CoOp takes them from the train split; the files agree).
    """
    _check_split(split)
    layout = SPLIT_FILE_LAYOUTS[dataset]
    folder = dataset_folder(root, layout.folder)
    split_path = folder / layout.split_file
    entries = read_split_file(dataset, split_path)
    class_names = _class_names([e for name in SPLITS for e in entries[name]], os.fspath(split_path))
    image_dir = folder / layout.images if layout.images else folder
    if not image_dir.is_dir():
        raise data_error(FileNotFoundError, f"Image folder {os.fspath(image_dir)!r} does not exist")
    items = [os.fspath(image_dir / path) for path, _, _ in entries[split]]
    # One cheap probe catches a wrong image folder now rather than at the first decode.
    if items and not os.path.isfile(items[0]):
        raise data_error(FileNotFoundError, f"Image {items[0]!r} listed in {os.fspath(split_path)!r} is missing")
    return ImageDataset(class_names, items, [label for _, label, _ in entries[split]])


def load_fgvc_aircraft(root: str | os.PathLike, split: str) -> ImageDataset:
    """FGVC-Aircraft (100 variants) from its own files: `variants.txt` gives the labels in order and
    `images_variant_<split>.txt` lines `<image id> <variant>`; images are `images/<image id>.jpg`."""
    _check_split(split)
    folder = dataset_folder(root, FGVC_FOLDER)
    variants_path = folder / "variants.txt"
    if not variants_path.is_file():
        raise data_error(FileNotFoundError, f"FGVC-Aircraft class file {os.fspath(variants_path)!r} is missing")
    class_names = [line.strip() for line in variants_path.read_text().splitlines() if line.strip()]
    label_of = {name: label for label, name in enumerate(class_names)}
    list_path = folder / f"images_variant_{split}.txt"
    if not list_path.is_file():
        raise data_error(FileNotFoundError, f"FGVC-Aircraft split file {os.fspath(list_path)!r} is missing")
    items, labels = [], []
    for number, line in enumerate(list_path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        image_id, _, variant = line.strip().partition(" ")
        if variant not in label_of:
            raise data_error(
                ValueError,
                f"{os.fspath(list_path)}:{number}: {line.strip()[:80]!r} is not '<image id> <variant>' with a variant "
                "of variants.txt",
            )
        items.append(os.fspath(folder / "images" / f"{image_id}.jpg"))
        labels.append(label_of[variant])
    if items and not os.path.isfile(items[0]):
        raise data_error(FileNotFoundError, f"Image {items[0]!r} listed in {os.fspath(list_path)!r} is missing")
    return ImageDataset(class_names, items, labels)
