"""Few-shot sets of CoOp-layout datasets exactly as Dassl makes them, stored and reused per (shots, seed).

The draw is `splits.few_shot_indices` (Dassl's `DatasetBase.generate_fewshot_dataset`, the one `peft-skip train`
uses); the validation set then gets min(k, 4) per class from the same random stream (ImageNet's val is its test set
and is not sampled). `random.Random(seed)` gives Dassl's stream, so on the same split file the same images are chosen.

The chosen images are stored as JSON (`split_fewshot/shot_{k}-seed_{s}.json`, never a pickle) and reused, as CoOp
reuses its pickles, so every run of a seed trains on the same images.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from .coop import load_coop_dataset
from .coop_splits import data_error
from .dataset import ImageDataset
from .splits import few_shot_indices

FORMAT = "peft-skip/few-shot-v1"
# Datasets whose val split is their test set; Dassl samples only their train split.
UNSAMPLED_VAL = ("imagenet",)


def sample_train_val(
    train: ImageDataset, val: ImageDataset | None, shots: int, seed: int
) -> tuple[ImageDataset, ImageDataset | None]:
    """`shots` training images per class, then min(`shots`, 4) validation images per class from the same stream
    (`val` None: not sampled); the training draw is `splits.sample_few_shot`'s."""
    rng = random.Random(seed)
    train_few = train.subset(few_shot_indices(train.labels, shots, rng))
    val_few = None if val is None else val.subset(few_shot_indices(val.labels, min(shots, 4), rng))
    return train_few, val_few


def few_shot_file(directory: str | os.PathLike, shots: int, seed: int) -> Path:
    """Where the few-shot selection of (`shots`, `seed`) is stored under `directory`."""
    return Path(directory) / "split_fewshot" / f"shot_{shots}-seed_{seed}.json"


def _entries(dataset: ImageDataset, root: Path) -> list[list]:
    out = []
    for item, label in zip(dataset.items, dataset.labels, strict=True):
        path = Path(item)
        relative = path.relative_to(root) if path.is_relative_to(root) else path
        out.append([relative.as_posix(), label, dataset.class_names[label]])
    return out


def save_few_shot(path: str | os.PathLike, train: ImageDataset, val: ImageDataset | None, root, **meta) -> Path:
    """Writes a few-shot selection as JSON lists of `[path relative to root, label, classname]` (atomically)."""
    root = Path(root).expanduser().resolve()
    record = {"format": FORMAT, **meta, "train": _entries(train, root)}
    record["val"] = None if val is None else _entries(val, root)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(record, indent=1))
    os.replace(temporary, path)
    return path


def _select(entries, full: ImageDataset, root: Path, source: str, part: str) -> ImageDataset:
    """The items of `full` that `entries` name, in stored order; every entry must match an item and its label."""
    index = {os.path.normpath(item): i for i, item in enumerate(full.items)}
    chosen = []
    for number, entry in enumerate(entries):
        ok = isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str) and isinstance(entry[1], int)
        found = index.get(os.path.normpath(root / entry[0])) if ok else None
        if found is None or full.labels[found] != entry[1] or full.class_names[entry[1]] != entry[2]:
            raise data_error(
                ValueError,
                f"{source}: {part}[{number}] = {json.dumps(entry)[:80]} is not an image of the current split; "
                "delete the file to sample again",
            )
        chosen.append(found)
    return full.subset(chosen)


def load_few_shot(
    path: str | os.PathLike, train: ImageDataset, val: ImageDataset | None, root, **meta
) -> tuple[ImageDataset, ImageDataset | None]:
    """Reads a selection written by `save_few_shot`, checked against the full splits it was drawn from and `meta`."""
    source = os.fspath(path)
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise data_error(
            ValueError, f"Few-shot file {source!r} is unreadable ({err}); delete it to sample again"
        ) from err
    if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("train"), list):
        raise data_error(ValueError, f"Few-shot file {source!r} is not a {FORMAT} file; delete it to sample again")
    stale = {key: record.get(key) for key, value in meta.items() if record.get(key) != value}
    if stale:
        raise data_error(ValueError, f"Few-shot file {source!r} was made for {stale}, not {meta}; delete it")
    root = Path(root).expanduser().resolve()
    train_few = _select(record["train"], train, root, source, "train")
    if (record.get("val") is None) != (val is None):
        raise data_error(ValueError, f"Few-shot file {source!r} and the dataset disagree on a sampled val split")
    val_few = None if val is None else _select(record["val"], val, root, source, "val")
    return train_few, val_few


def coop_few_shot(
    name: str, root: str | os.PathLike, shots: int, seed: int, directory: str | os.PathLike
) -> tuple[ImageDataset, ImageDataset]:
    """The few-shot train and val sets of CoOp dataset `name` for (`shots`, `seed`), reused from `directory`.

    The first call samples as Dassl does and writes `few_shot_file(directory, shots, seed)`; later calls read it.
    ImageNet's val set (its test images) is returned whole, as in CoOp.
    """
    root = Path(root).expanduser().resolve()
    train = load_coop_dataset(name, root, "train")
    val = load_coop_dataset(name, root, "val")
    sampled_val = None if name in UNSAMPLED_VAL else val
    path = few_shot_file(directory, shots, seed)
    meta = {"dataset": name, "shots": shots, "seed": seed}
    if path.exists():
        train_few, val_few = load_few_shot(path, train, sampled_val, root, **meta)
    else:
        train_few, val_few = sample_train_val(train, sampled_val, shots, seed)
        save_few_shot(path, train_few, val_few, root, **meta)
    return train_few, val if val_few is None else val_few
