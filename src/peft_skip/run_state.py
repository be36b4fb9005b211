"""A run's state on disk: per-epoch checkpoints, resuming from them, and publishing files atomically.

A checkpoint is a directory `checkpoints/epoch-NNNN` holding the adapter (deltas) and `trainer_state.pt` (optimiser,
scheduler, random number generators, and the run's identity), written whole under a temporary name and then renamed.
Only plain tensors and numbers are saved, so loading needs no pickle (`torch.load(weights_only=True)`).
"""

from __future__ import annotations

import os
import random
import shutil

import numpy as np
import torch
from peft.utils import load_peft_weights, set_peft_model_state_dict
from torch import nn

from .adapter_files import CONFIG_NAME

CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE = "trainer_state.pt"


def list_checkpoints(output_dir: str) -> list[str]:
    """The complete checkpoints in `output_dir`, oldest first."""
    root = os.path.join(output_dir, CHECKPOINTS_DIR)
    if not os.path.isdir(root):
        return []
    names = sorted(n for n in os.listdir(root) if n.startswith("epoch-") and not n.endswith(".tmp"))
    return [os.path.join(root, n) for n in names]


def save_checkpoint(
    model: nn.Module,
    output_dir: str,
    epoch: int,
    identity: dict,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    keep: int,
) -> None:
    """Writes the checkpoint of `epoch` completed epochs and keeps only the `keep` latest.

    Args:
        model (`nn.Module`): The `PeftModel` being trained.
        output_dir (`str`): The run's output directory.
        epoch (`int`): Number of completed epochs.
        identity (`dict`): Everything that changes the run's result; `load_checkpoint` compares it.
        optimizer, scheduler: Their states are saved.
        keep (`int`): Number of most recent checkpoints kept.
    """
    final = os.path.join(output_dir, CHECKPOINTS_DIR, f"epoch-{epoch:04d}")
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    state = {
        "epoch": epoch,
        "identity": identity,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": _rng_state(),
    }
    torch.save(state, os.path.join(tmp, TRAINER_STATE))
    # Published last, whole and on disk, so an interrupted save never looks like a complete checkpoint.
    publish(tmp, final)
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old)


def load_checkpoint(
    model: nn.Module,
    output_dir: str,
    identity: dict,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device | str,
) -> int:
    """Restores the latest checkpoint of the same run; returns the number of epochs it completed (0 if none).

    Raises:
        ValueError: The checkpoint belongs to another run (its identity differs): names what differs.
    """
    checkpoints = list_checkpoints(output_dir)
    if not checkpoints:
        return 0
    path = checkpoints[-1]
    state = torch.load(os.path.join(path, TRAINER_STATE), weights_only=True)
    saved = state["identity"]
    changed = {
        k: (saved.get(k), identity.get(k))
        for k in sorted(saved.keys() | identity.keys())
        if saved.get(k) != identity.get(k)
    }
    if changed:
        raise ValueError(
            f"Cannot resume from {path}: the run differs from the saved one (saved, now): {changed}. "
            "Resume with the same settings or use a new output directory."
        )
    set_peft_model_state_dict(model, load_peft_weights(path, device=str(device)))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _restore_rng(state["rng"])
    return state["epoch"]


def save_adapter(model: nn.Module, output_dir: str) -> None:
    """Saves the adapter into `output_dir`, each file replaced whole (see `publish_files`)."""
    tmp = os.path.join(output_dir, ".adapter.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    publish_files(tmp, output_dir)


def _rng_state() -> dict:
    numpy_rng = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": (torch.from_numpy(numpy_rng[1].astype(np.int64)), *numpy_rng[2:]),
        "python": random.getstate(),
    }


def _restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    keys, *position = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), *position))
    random.setstate(state["python"])


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(tmp: str, final: str) -> None:
    """Moves the complete directory `tmp` to `final` once its files are on disk.

    A crash before the rename leaves `final` as it was (and a stale `tmp`, ignored and overwritten by the next save);
    a crash after it leaves the new `final`. An existing `final` (a checkpoint of an earlier run in the same
    directory) is first renamed to `<final>.old.tmp`, which nothing reads, then removed.
    """
    for name in os.listdir(tmp):
        _fsync(os.path.join(tmp, name))
    _fsync(tmp)
    old = final + ".old.tmp"
    if os.path.exists(final):
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync(os.path.dirname(os.path.abspath(final)))
    shutil.rmtree(old, ignore_errors=True)


def publish_files(tmp: str, directory: str) -> None:
    """Moves every file of the complete directory `tmp` into `directory`, one atomic rename each, then removes `tmp`.

    The weights go first and `adapter_config.json` last, so every file in `directory` is always whole: a crash
    leaves the previous adapter, the new one, or (in the instant between two renames) new weights next to the
    previous config - still loadable, and replaced by the next save.
    """
    names = sorted(os.listdir(tmp), key=lambda name: name == CONFIG_NAME)
    for name in names:
        _fsync(os.path.join(tmp, name))
    os.makedirs(directory, exist_ok=True)
    for name in names:
        os.replace(os.path.join(tmp, name), os.path.join(directory, name))
    _fsync(directory)
    os.rmdir(tmp)
