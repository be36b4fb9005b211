"""Miniature copies of the 15 CoOp-layout datasets: the real folder and file names and split-file formats, four
classes each, a few tiny JPEGs per class. For tests and for trying the benchmark commands without the real data.

```python
root = write_coop_miniature(tmp_path)          # then load_coop_dataset("eurosat", root, "train")
```
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import PIL.Image

from peft_skip.data.coop import COOP_DATASETS
from peft_skip.data.coop_imagenet import IMAGENET_LAYOUTS
from peft_skip.data.coop_splits import SPLIT_FILE_LAYOUTS

# (folder or raw name on disk, class name as CoOp's split files give it); labels follow this order.
SPLIT_FILE_CLASSES = {
    # Caltech101: sorted folders (upper case first), BACKGROUND_Google and Faces_easy left out, four names shortened.
    "caltech101": [("Faces", "face"), ("Leopards", "leopard"), ("accordion", "accordion"), ("airplanes", "airplane")],
    "oxford_pets": [
        ("Abyssinian", "abyssinian"),
        ("american_bulldog", "american_bulldog"),
        ("american_pit_bull_terrier", "american_pit_bull_terrier"),
        ("basset_hound", "basset_hound"),
    ],
    # Stanford Cars: the model year moved to the front, as CoOp's split file has it.
    "stanford_cars": [
        ("", "2000 AM General Hummer SUV"),
        ("", "2012 Acura RL Sedan"),
        ("", "2012 Acura TL Sedan"),
        ("", "2008 Acura TL Type-S"),
    ],
    "oxford_flowers": [
        ("", "pink primrose"),
        ("", "hard-leaved pocket orchid"),
        ("", "canterbury bells"),
        ("", "sweet pea"),
    ],
    "food101": [(name, name) for name in ("apple_pie", "baby_back_ribs", "baklava", "beef_carpaccio")],
    # SUN397: indoor / outdoor style suffixes come first in CoOp's names.
    "sun397": [
        ("a/abbey", "abbey"),
        ("a/airplane_cabin", "airplane_cabin"),
        ("a/apartment_building/outdoor", "outdoor apartment_building"),
        ("b/bakery/shop", "shop bakery"),
    ],
    "dtd": [(name, name) for name in ("banded", "blotchy", "braided", "bubbly")],
    "eurosat": [
        ("AnnualCrop", "Annual Crop Land"),
        ("Forest", "Forest"),
        ("HerbaceousVegetation", "Herbaceous Vegetation Land"),
        ("Highway", "Highway or Road"),
    ],
    "ucf101": [(name, name) for name in ("Apply_Eye_Makeup", "Apply_Lipstick", "Archery", "Baby_Crawling")],
}
FGVC_VARIANTS = ["707-320", "727-200", "Cessna 172", "F-16A/B"]
IMAGENET_CLASSES = [
    ("n01440764", "tench"),
    ("n01443537", "goldfish"),
    ("n01484850", "great white shark"),
    ("n01491361", "tiger shark"),
]
# ImageNet-A and -R hold a subset of ImageNet's classes (200 of 1000 in the real sets).
SUBSET_WNIDS = {"imagenet_a": ["n01443537", "n01491361"], "imagenet_r": ["n01440764", "n01443537", "n01484850"]}


def _image(path: Path, seed: int, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = ((seed * 53) % 256, (seed * 97) % 256, (seed * 193) % 256)
    PIL.Image.new("RGB", (size, size), colour).save(path, format="JPEG")


def _relative_path(dataset: str, folder: str, split: str, serial: int) -> str:
    """A file name in the real data's style for the `serial`-th image of the dataset."""
    if dataset == "caltech101":
        return f"{folder}/image_{serial:04d}.jpg"
    if dataset == "oxford_pets":
        return f"{folder}_{serial}.jpg"
    if dataset == "stanford_cars":
        return f"{'cars_test' if split == 'test' else 'cars_train'}/{serial:05d}.jpg"
    if dataset == "oxford_flowers":
        return f"image_{serial:05d}.jpg"
    if dataset == "dtd":
        return f"{folder}/{folder}_{1000 + serial}.jpg"
    if dataset == "food101":
        return f"{folder}/{100000 + serial}.jpg"
    if dataset == "sun397":
        return f"{folder}/sun_a{serial:05d}.jpg"
    if dataset == "eurosat":
        return f"{folder}/{folder}_{serial}.jpg"
    camel = folder.replace("_", "")
    return f"{folder}/v_{camel}_g{serial // 7 + 1:02d}_c{serial % 7 + 1:02d}.jpg"  # ucf101: video group, clip


def _write_split_file_dataset(root: Path, dataset: str, counts: dict[str, int], size: int) -> None:
    layout = SPLIT_FILE_LAYOUTS[dataset]
    folder = root / layout.folder
    image_dir = folder / layout.images if layout.images else folder
    split, serial = {}, 0
    for name, count in counts.items():
        entries = []
        for label, (raw, class_name) in enumerate(SPLIT_FILE_CLASSES[dataset]):
            for _ in range(count):
                serial += 1
                relative = _relative_path(dataset, raw, name, serial)
                _image(image_dir / relative, serial, size)
                entries.append([relative, label, class_name])
        split[name] = entries
    (folder / layout.split_file).write_text(json.dumps(split))
    if dataset == "caltech101":  # on disk in the real archive, absent from the split file
        for ignored in ("BACKGROUND_Google", "Faces_easy"):
            _image(image_dir / ignored / "image_0001.jpg", 0, size)
    if dataset == "oxford_flowers":
        names = {str(label + 1): name for label, (_, name) in enumerate(SPLIT_FILE_CLASSES[dataset])}
        (folder / "cat_to_name.json").write_text(json.dumps(names))


def _write_fgvc(root: Path, counts: dict[str, int], size: int) -> None:
    folder = root / "fgvc_aircraft"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "variants.txt").write_text("".join(f"{name}\n" for name in FGVC_VARIANTS))
    serial = 0
    for name, count in counts.items():
        lines = []
        for variant in FGVC_VARIANTS:
            for _ in range(count):
                serial += 1
                image_id = f"{1000000 + serial:07d}"
                _image(folder / "images" / f"{image_id}.jpg", serial, size)
                lines.append(f"{image_id} {variant}\n")
        (folder / f"images_variant_{name}.txt").write_text("".join(lines))


def _write_imagenet_family(root: Path, dataset: str, counts: dict[str, int], size: int) -> None:
    layout = IMAGENET_LAYOUTS[dataset]
    folder = root / layout.folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classnames.txt").write_text("".join(f"{wnid} {name}\n" for wnid, name in IMAGENET_CLASSES))
    wnids = SUBSET_WNIDS.get(dataset, [wnid for wnid, _ in IMAGENET_CLASSES])
    serial = 0
    for split, subdir in dict(layout.splits).items():
        if split == "test" and dataset == "imagenet":
            continue  # ImageNet's test split is its val folder
        for label, wnid in enumerate(wnids):
            class_dir = str(label) if layout.numbered else wnid
            for number in range(counts["train" if split == "train" else "test"]):
                serial += 1
                name = {"imagenet": f"{wnid}_{serial}.JPEG", "imagenetv2": f"{serial:040x}.jpeg"}.get(
                    dataset, f"{number}.jpg"
                )
                _image(folder / layout.images / subdir / class_dir / name, serial, size)
    if dataset in ("imagenet_a", "imagenet_r"):
        (folder / layout.images / "README.txt").write_text("The class folders are ImageNet wnids.\n")


def write_coop_miniature(
    root: str | os.PathLike,
    datasets: tuple[str, ...] = COOP_DATASETS,
    train: int = 6,
    val: int = 5,
    test: int = 2,
    size: int = 8,
) -> Path:
    """Writes miniature CoOp-layout datasets under `root` and returns `root`.

    Args:
        root: the DATA root to create.
        datasets: which of the 15 datasets to write.
        train, val, test: images per class in each split (ImageNet: `train` and `test` for its val folder; the shifted
            ImageNet sets: `test`).
        size: side of the square JPEGs, in pixels.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    counts = {"train": train, "val": val, "test": test}
    for dataset in datasets:
        if dataset in SPLIT_FILE_CLASSES:
            _write_split_file_dataset(root, dataset, counts, size)
        elif dataset == "fgvc_aircraft":
            _write_fgvc(root, counts, size)
        elif dataset in COOP_DATASETS:
            _write_imagenet_family(root, dataset, counts, size)
        else:
            raise ValueError(f"Unknown CoOp dataset {dataset!r}: choose from {', '.join(COOP_DATASETS)}.")
    return root
