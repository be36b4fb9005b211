"""The image cache's files on disk: the states' memory-mapped array, what it was built from, its completeness."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from .common import human_bytes

STATES_FILE = "states.npy"
META_FILE = "meta.json"
COMPLETE_FILE = "complete"
# numpy has no bfloat16: such states are stored as their raw 16-bit patterns.
NUMPY_STORAGE = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.int16}


def reuse_problem(path: Path, key: dict) -> str | None:
    """Why the cache at `path` cannot serve `key`, or `None` if it can."""
    if not path.exists():
        return "no cache there yet"
    if not (path / COMPLETE_FILE).exists() or not (path / META_FILE).exists():
        return "the cache there is incomplete (an interrupted build)"
    stored = json.loads((path / META_FILE).read_text())
    # Exact comparison, also of the weights' fingerprint: the states must be those the current model computes.
    differing = sorted(name for name in key if stored.get(name) != key[name])
    if differing:
        return f"it was built from other inputs ({', '.join(differing)} differ)"
    return None


def allocate_states(path: Path | None, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor | np.ndarray:
    if path is None:
        return torch.empty(shape, dtype=dtype)
    states = np.lib.format.open_memmap(path / STATES_FILE, mode="w+", dtype=NUMPY_STORAGE[dtype], shape=shape)
    # The file is sparse until written; on a full disk a write through the memory map is a SIGBUS, so the space is
    # reserved now, where a full disk is an ordinary error.
    size = os.path.getsize(path / STATES_FILE)
    try:
        with open(path / STATES_FILE, "r+b") as f:
            os.posix_fallocate(f.fileno(), 0, size)
    except OSError as error:
        del states
        shutil.rmtree(path, ignore_errors=True)
        raise OSError(
            f"Not enough disk space for the image cache at {path} ({human_bytes(size)} needed: {error.strerror}); "
            "free space, choose another --cache-dir, or leave it unset (in memory)."
        ) from None
    return states


def write_states(
    states: torch.Tensor | np.ndarray, view: int, rows: slice, hidden: torch.Tensor, dtype: torch.dtype
) -> None:
    if isinstance(states, torch.Tensor):
        states[view, rows] = hidden
    else:
        states[view, rows] = (hidden.view(torch.int16) if dtype == torch.bfloat16 else hidden).numpy()
