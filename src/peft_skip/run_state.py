"""A run's state on disk: per-epoch checkpoints, resuming from them, and publishing files atomically.

A checkpoint is a directory `checkpoints/epoch-NNNN` holding the adapter (deltas) and `trainer_state.pt` (optimiser,
scheduler and the run's identity), written whole under a temporary name and then renamed. No random state is saved:
every draw of a run is seeded by (seed, epoch, ...) keys, so an epoch draws the same numbers whether resumed or not.
Only plain tensors and numbers are saved, so loading needs no pickle (`torch.load(weights_only=True)`).

One run at a time writes to an output directory (`claim_output_dir`); a new run into a used one first removes the
earlier run's checkpoints, so it can neither prune its own nor resume another's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator

import torch
from peft.utils import load_peft_weights, set_peft_model_state_dict
from torch import nn

from .adapter_files import CONFIG_NAME, STAGING_DIR, WEIGHTS_NAME, file_sha256
from .locks import file_lock

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE = "trainer_state.pt"
LOCK_FILE = ".lock"


def _epoch_of(name: str) -> int | None:
    """The epoch of a complete checkpoint's directory name `epoch-N`, else `None`."""
    number = name.removeprefix("epoch-")
    return int(number) if name.startswith("epoch-") and number.isdigit() else None


def list_checkpoints(output_dir: str) -> list[str]:
    """The complete checkpoints in `output_dir`, oldest (fewest epochs) first."""
    root = os.path.join(output_dir, CHECKPOINTS_DIR)
    if not os.path.isdir(root):
        return []
    names = sorted((n for n in os.listdir(root) if _epoch_of(n) is not None), key=_epoch_of)
    return [os.path.join(root, n) for n in names]


@contextlib.contextmanager
def claim_output_dir(output_dir: str, main_process: bool = True) -> Iterator[None]:
    """Creates `output_dir` if needed, checks it is writable and holds its lock for the `with` block.

    Call it before any expensive work: an unusable or busy directory fails at once. Only the main process of a
    distributed run claims the directory (the others write nothing there).

    Raises:
        OSError: Naming the directory and the fix: it is a file, not writable, or in use by another run.
    """
    if not main_process:
        yield
        return
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise NotADirectoryError(f"--out {output_dir} is a file; give a directory (new or used by peft-skip).")
    try:
        os.makedirs(output_dir, exist_ok=True)
        with tempfile.TemporaryFile(dir=output_dir):
            pass
    except OSError as error:
        raise OSError(
            f"Cannot write to --out {output_dir} ({error.strerror or error}); choose a directory you can write to."
        ) from None
    with file_lock(os.path.join(output_dir, LOCK_FILE), f"the output directory {output_dir}"):
        yield


def start_new_run(output_dir: str) -> None:
    """Removes the checkpoints an earlier run left in `output_dir`, so that they are neither kept nor resumed."""
    old = list_checkpoints(output_dir)
    if old:
        logger.info(
            f"Removing {len(old)} checkpoint(s) of an earlier run in {output_dir} (pass --resume to continue it)."
        )
    shutil.rmtree(os.path.join(output_dir, CHECKPOINTS_DIR), ignore_errors=True)


def run_identity(args, config, train_set, prompts: dict[str, torch.Tensor]) -> dict:
    """Everything that changes a run's result, for `--resume` to compare.

    Args:
        args (`SkipTrainingArguments`): Every training setting but those with `compare=False`.
        config (`SkipConfig`): The method's settings and the fingerprint of the base model's weights.
        train_set: The training images: their contents, the few-shot sample, labels and class names
            (`train_set.fingerprint()`).
        prompts (`dict[str, torch.Tensor]`): The tokenised prompts (template and class names).
    """
    # No fingerprint: `SkipTrainer` refuses to resume such a run, so its identity needs none.
    data = train_set.fingerprint() if hasattr(train_set, "fingerprint") else None
    digest = hashlib.sha256()
    for name in sorted(prompts):
        digest.update(name.encode() + prompts[name].cpu().to(torch.int64).numpy().tobytes())
    identity = {f"training.{name}": value for name, value in args.run_identity().items()}
    identity |= {f"method.{name}": value for name, value in config.method_settings().items()}
    identity |= {"base model weights": config.base_model_fingerprint, "data": data, "prompts": digest.hexdigest()}
    return json.loads(json.dumps(identity))  # compared as saved


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


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
    state = {
        "epoch": epoch,
        "identity": identity,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
    }
    try:
        model.save_pretrained(tmp)
        torch.save(state, os.path.join(tmp, TRAINER_STATE))
        # Published last, whole and on disk, so an interrupted save never looks like a complete checkpoint.
        publish(tmp, final)
    except (OSError, RuntimeError) as error:  # torch.save reports a full disk as a RuntimeError
        previous = list_checkpoints(output_dir)
        kept = f"{previous[-1]} is kept" if previous else "no earlier checkpoint exists"
        raise OSError(
            f"Could not write checkpoint {final} ({error}); {kept}. Free disk space and rerun with --resume."
        ) from error
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
    state = _read_state(path, identity)
    set_peft_model_state_dict(model, load_peft_weights(path, device=str(device)))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return state["epoch"]


def check_resumable(output_dir: str, identity: dict) -> None:
    """Raises now, before any expensive work, what `load_checkpoint` would raise: the latest checkpoint in
    `output_dir` is damaged or belongs to another run. Nothing to check without checkpoints."""
    checkpoints = list_checkpoints(output_dir)
    if checkpoints:
        _read_state(checkpoints[-1], identity)


def _read_state(path: str, identity: dict) -> dict:
    """The trainer state of the checkpoint at `path`, after checking it belongs to the run of `identity`."""
    try:
        state = torch.load(os.path.join(path, TRAINER_STATE), weights_only=True)
        saved = state["identity"]
    except Exception as error:  # truncated or corrupt: torch raises several types
        raise ValueError(
            f"{os.path.join(path, TRAINER_STATE)} is missing, truncated or corrupt ({type(error).__name__}); delete "
            f"{path} to resume from an earlier checkpoint, or start again without --resume."
        ) from None
    changed = [k for k in sorted(saved.keys() | identity.keys()) if saved.get(k) != identity.get(k)]
    if changed:
        details = "; ".join(f"{k}: saved {_short(saved.get(k))}, now {_short(identity.get(k))}" for k in changed)
        raise ValueError(
            f"Cannot resume from {path}: it is another run ({details}). Resume with the same model, data and "
            "settings, or start a new run without --resume (or into another --out)."
        )
    return state


def save_adapter(model: nn.Module, output_dir: str) -> None:
    """Saves the adapter into `output_dir`, each file replaced whole (see `publish_files`)."""
    tmp = os.path.join(output_dir, STAGING_DIR)
    finish_interrupted_publish(output_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    publish_files(tmp, output_dir)


def finish_interrupted_publish(directory: str) -> None:
    """Completes a `publish_files` interrupted after the weights were moved: the staged config that belongs to them
    (same sha256) takes its place. Readers need not wait for this: `SkipConfig.from_pretrained` reads that config."""
    staged = os.path.join(directory, STAGING_DIR, CONFIG_NAME)
    weights = os.path.join(directory, WEIGHTS_NAME)
    if not (os.path.isfile(staged) and os.path.isfile(weights)):
        return
    with open(staged, encoding="utf-8") as f:
        belongs = json.load(f).get("weights_sha256") == file_sha256(weights)
    if belongs:
        os.replace(staged, os.path.join(directory, CONFIG_NAME))
        _fsync(directory)


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
