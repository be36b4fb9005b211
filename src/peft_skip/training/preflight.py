"""Checks that run before any expensive work: images that cannot be read, classes that cannot train."""

from __future__ import annotations

import logging
import os
from collections import defaultdict

import PIL.Image
import torch

logger = logging.getLogger(__name__)


def check_images_readable(dataset) -> None:
    """Decodes every image of a (few-shot) training set once, JPEGs at reduced size, so that an unreadable file fails
    now rather than after the zero-shot evaluation.

    Args:
        dataset (`ImageDataset`): The training images.

    Raises:
        OSError: Naming the first file (or row) that cannot be read, and the fix.
    """
    for index, item in enumerate(dataset.items):
        if dataset.source is None and isinstance(item, (str, os.PathLike)):
            _decode_file(item)
        else:
            dataset.image(index)  # raises an error naming the row


def _decode_file(path: str | os.PathLike) -> None:
    try:
        with PIL.Image.open(path) as image:
            image.draft("RGB", (64, 64))  # JPEG: decode at 1/8 scale; the whole file is still read
            image.load()
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as error:
        raise OSError(f"Cannot read image file {os.fspath(path)!r}: {error}. Replace or remove the file.") from None


def check_launch() -> None:
    """Refuses `accelerate launch --cpu --num_processes N` (N > 1), which quietly starts a single process: Accelerate's
    `--cpu` selects its one-process launcher. The launcher's own command line (the parent process's) says what was
    asked for; without `/proc` nothing is checked.

    Raises:
        ValueError: Saying how to start several processes on the CPU.
    """
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("true", "1") or "WORLD_SIZE" in os.environ:
        return
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            launcher = [arg.decode(errors="replace") for arg in f.read().split(b"\0")]
    except OSError:
        return
    requested = None
    for flag, value in zip(launcher, launcher[1:] + [""], strict=True):
        if flag in ("--num_processes", "--num-processes"):
            requested = value
        elif flag.startswith(("--num_processes=", "--num-processes=")):
            requested = flag.partition("=")[2]
    if requested is not None and requested.isdigit() and int(requested) > 1:
        raise ValueError(
            f"`accelerate launch --cpu --num_processes {requested}` starts a single process. For {requested} CPU "
            f"processes, launch with `--multi_gpu --num_processes {requested}` without --cpu (peft-skip joins them "
            "over gloo on the CPU), e.g. `accelerate launch --config_file examples/accelerate_config.yaml`."
        )


def warn_if_untrainable(class_names: list[str], prompts: dict[str, torch.Tensor]) -> list[str]:
    """Warns about class sets that train nothing useful; returns the warnings.

    One class makes the contrastive loss 0 (the only prompt always wins). Classes whose prompts tokenise identically
    (names that differ only in case, spaces or underscores) are indistinguishable to the model.

    Args:
        class_names (`list[str]`): Name of each class.
        prompts (`dict[str, torch.Tensor]`): `input_ids` (and `attention_mask`) of each class's prompt, `(C, L)`.
    """
    warnings = []
    if len(class_names) < 2:
        warnings.append(
            f"Only one class ({class_names}): the loss is 0 and training learns nothing. Train on at least 2 classes."
        )
    groups = defaultdict(list)
    ids, mask = prompts["input_ids"], prompts.get("attention_mask")
    for c, name in enumerate(class_names):
        tokens = ids[c] if mask is None else ids[c][mask[c].bool()]
        groups[tuple(tokens.tolist())].append(name)
    for names in groups.values():
        if len(names) > 1:
            warnings.append(
                f"Classes {names} get identical prompts (their names differ only in case, spaces or underscores): "
                "the model cannot tell them apart. Rename or merge them."
            )
    for warning in warnings:
        logger.warning(f"WARNING: {warning}")
    return warnings
