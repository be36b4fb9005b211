"""Publishing files atomically: a directory, or each file of one, is written whole under a temporary name, synced,
then renamed into place, so a crash leaves the previous version or the new one, never a mix."""

from __future__ import annotations

import contextlib
import json
import os
import shutil

from ..tuner.adapter_files import CONFIG_NAME, STAGING_DIR, WEIGHTS_NAME, file_sha256

# Temporary files are named `.peft-skip-*` (after an output directory's manifest): peft-skip's even when a crash
# leaves one behind.
TMP_PREFIX = ".peft-skip-"


def finish_interrupted_publish(directory: str) -> None:
    """Completes a `publish_files` interrupted after the weights were moved: the staged config that belongs to them
    (same sha256) takes its place. Readers need not wait for this: `SkipConfig.from_pretrained` reads that config."""
    staged = os.path.join(directory, STAGING_DIR, CONFIG_NAME)
    weights = os.path.join(directory, WEIGHTS_NAME)
    if not (os.path.isfile(staged) and os.path.isfile(weights)):
        return
    try:
        with open(staged, encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError):  # a save killed while it wrote the staged config: nothing to complete
        return
    if isinstance(saved, dict) and saved.get("weights_sha256") == file_sha256(weights):
        os.replace(staged, os.path.join(directory, CONFIG_NAME))
        _fsync(directory)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: str, payload: dict) -> None:
    """Writes `payload` to the JSON file `path` whole, through a `TMP_PREFIX` sibling: a crash or a concurrent reader
    never sees half of it."""
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f"{TMP_PREFIX}{name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


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

    The weights go first and `adapter_config.json` last, so every file in `directory` is always whole. A crash
    between the two leaves the new weights next to the previous config; the config records its weights' sha256, so
    `SkipConfig.from_pretrained` then reads the new config still waiting in `tmp` (`STAGING_DIR`): the directory
    always reads as one whole adapter, the previous or the new one. The next save completes the move.
    """
    names = sorted(os.listdir(tmp), key=lambda name: name == CONFIG_NAME)
    for name in names:
        _fsync(os.path.join(tmp, name))
    os.makedirs(directory, exist_ok=True)
    for name in names:
        os.replace(os.path.join(tmp, name), os.path.join(directory, name))
    _fsync(directory)
    os.rmdir(tmp)
