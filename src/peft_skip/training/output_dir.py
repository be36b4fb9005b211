"""Output directories: one run at a time, and only what peft-skip wrote is ever replaced.

A manifest (`.peft-skip`) lists the names in an output directory that peft-skip wrote or reserved for a run; every
other file there is the user's: a directory holding such files is refused, or with `overwrite_output_dir` written
beside them, never replacing or emptying one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator

from ..tuner.adapter_files import CONFIG_NAME, STAGING_DIR, WEIGHTS_NAME
from .locks import file_lock
from .publishing import TMP_PREFIX, write_json

CHECKPOINTS_DIR = "checkpoints"
LOCK_FILE = ".lock"
# Lists the names in an output directory that peft-skip wrote (or reserved for a run); everything else is the user's.
MANIFEST = ".peft-skip"
CARD_NAME = "README.md"
TRACKING_DIR = "runs"  # local trackers' files (TensorBoard), as transformers' Trainer names it
# Every name a run (`train`, or `eval --out`) writes into its output directory.
OUTPUT_NAMES = (
    LOCK_FILE,
    MANIFEST,
    CONFIG_NAME,
    WEIGHTS_NAME,
    CARD_NAME,
    "metrics.json",
    "eval_results.json",
    CHECKPOINTS_DIR,
    STAGING_DIR,
    TRACKING_DIR,
)


def our_names(output_dir: str) -> set[str]:
    """The names in `output_dir` that peft-skip wrote or reserved for its runs (the manifest's)."""
    try:
        with open(os.path.join(output_dir, MANIFEST), encoding="utf-8") as f:
            names = json.load(f)["written"]
        return {name for name in names if isinstance(name, str)}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def may_write(output_dir: str, name: str) -> bool:
    """Whether `name` in `output_dir` is free or peft-skip's own: a user's file there (a README.md) is kept."""
    return not os.path.lexists(os.path.join(output_dir, name)) or name in our_names(output_dir)


def _claim_names(output_dir: str, overwrite: bool, names: tuple[str, ...]) -> None:
    """Refuses an output directory holding files peft-skip did not write (unless `overwrite`: then they are kept, and
    one at a name a run writes is still refused, but a README.md of the user's), then records the run's names."""
    ours = our_names(output_dir)
    foreign = sorted(name for name in set(os.listdir(output_dir)) - ours if not name.startswith(TMP_PREFIX))
    if foreign and not overwrite:
        listed = ", ".join(foreign[:4]) + (", ..." if len(foreign) > 4 else "")
        raise FileExistsError(
            f"--out {output_dir} holds files peft-skip did not write ({listed}); choose a new or empty directory, or "
            "pass --overwrite_output_dir to write beside them (they are kept)."
        )
    clashes = sorted(set(foreign) & (set(names) - {CARD_NAME}))
    if clashes:
        raise FileExistsError(
            f"--out {output_dir} holds {', '.join(clashes)}, which peft-skip did not write and would replace; move "
            "them away or choose another --out."
        )
    written = sorted(ours | (set(names) - set(foreign)))
    write_json(os.path.join(output_dir, MANIFEST), {"written": written})


def check_writable(directory: str, flag: str) -> None:
    """Creates `directory` if needed and checks that a file can be written there (before any expensive work).

    Raises:
        OSError: Naming `flag`, the directory and why.
    """
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        raise OSError(
            f"Cannot write to {flag} {directory} ({error.strerror or error}); choose a directory you can write to."
        ) from None


def check_out_apart(output_dir: str, inputs: dict[str, str | None]) -> None:
    """Refuses an output directory that is, lies inside or contains an input directory (the model, the data).

    Args:
        inputs (`dict`): Flag -> directory (entries that are no local directory are skipped).

    Raises:
        ValueError: Naming both directories.
    """
    out = os.path.realpath(output_dir)
    for flag, directory in inputs.items():
        if directory is None or not os.path.isdir(directory):
            continue
        given = os.path.realpath(directory)
        if os.path.commonpath([out, given]) in (out, given):
            raise ValueError(
                f"--out {output_dir} overlaps {flag} {directory}: a run would write into its own input. Choose an "
                "--out outside it."
            )


@contextlib.contextmanager
def claim_output_dir(
    output_dir: str, main_process: bool = True, overwrite: bool = False, names: tuple[str, ...] = OUTPUT_NAMES
) -> Iterator[None]:
    """Creates `output_dir` if needed, checks it is writable and ours, and holds its lock for the `with` block.

    Call it before any expensive work: an unusable, foreign or busy directory fails at once. Only the main process of
    a distributed run claims the directory (the others write nothing there).

    Args:
        overwrite (`bool`): Accept a directory holding files peft-skip did not write (they are kept).
        names (`tuple[str, ...]`): Every name the run writes there (`OUTPUT_NAMES`: a training's; a benchmark's
            differ), recorded in the manifest as peft-skip's.

    Raises:
        OSError: Naming the directory and the fix: it is a file, not writable, holds files of the user's, or is in
            use by another run.
    """
    if not main_process:
        yield
        return
    if os.path.islink(output_dir) and not os.path.exists(output_dir):
        raise NotADirectoryError(
            f"--out {output_dir} is a symbolic link to {os.readlink(output_dir)}, which does not exist; create that "
            "directory or give another --out."
        )
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise NotADirectoryError(f"--out {output_dir} is a file; give a directory (new or used by peft-skip).")
    check_writable(output_dir, "--out")
    _claim_names(output_dir, overwrite, names)
    with file_lock(os.path.join(output_dir, LOCK_FILE), f"the output directory {output_dir}"):
        yield
