"""A run's state on disk: per-epoch checkpoints, resuming from them, and publishing files atomically.

A checkpoint is a directory `checkpoints/epoch-NNNN` holding the adapter (deltas) and `trainer_state.pt` (optimiser,
scheduler and the run's identity), written whole under a temporary name and then renamed. No random state is saved:
every draw of a run is seeded by (seed, epoch, ...) keys, so an epoch draws the same numbers whether resumed or not.
Only plain tensors and numbers are saved, so loading needs no pickle (`torch.load(weights_only=True)`).

A new run into a used output directory first removes the earlier run's checkpoints (those it wrote: they hold a trainer
state), so it can neither prune its own nor resume another's. Files are published whole by `publishing.py`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil

import torch
from peft.utils import get_peft_model_state_dict, load_peft_weights, set_peft_model_state_dict
from safetensors import SafetensorError
from torch import nn

from ..tuner.adapter_files import STAGING_DIR, check_deltas_fit
from ..tuner.config import SkipConfig
from ..tuner.fingerprint import fingerprint_mismatch
from .finite import check_finite_deltas
from .output_dir import CARD_NAME, CHECKPOINTS_DIR, may_write
from .publishing import finish_interrupted_publish, publish, publish_files

logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.pt"


def _epoch_of(name: str) -> int | None:
    """The epoch of a complete checkpoint's directory name `epoch-N`, else `None`."""
    number = name.removeprefix("epoch-")
    return int(number) if name.startswith("epoch-") and number.isdigit() else None


def list_checkpoints(output_dir: str) -> list[str]:
    """The complete checkpoints in `output_dir`, oldest (fewest epochs) first."""
    root = os.path.join(output_dir, CHECKPOINTS_DIR)
    if not os.path.isdir(root):
        return []
    # Ours: named by epoch and holding the trainer state a checkpoint is written with (a folder name alone is not).
    names = [
        n
        for n in os.listdir(root)
        if _epoch_of(n) is not None and os.path.isfile(os.path.join(root, n, TRAINER_STATE))
    ]
    return [os.path.join(root, n) for n in sorted(names, key=_epoch_of)]


def start_new_run(output_dir: str) -> None:
    """Removes the checkpoints an earlier run left in `output_dir`, so that they are neither kept nor resumed."""
    old = list_checkpoints(output_dir)
    if old:
        logger.info(
            f"Removing {len(old)} checkpoint(s) of an earlier run in {output_dir} (pass --resume to continue it)."
        )
    for path in old:
        shutil.rmtree(path)
    root = os.path.join(output_dir, CHECKPOINTS_DIR)
    for name in os.listdir(root) if os.path.isdir(root) else []:
        if name.endswith(".tmp") and os.path.isfile(os.path.join(root, name, "adapter_config.json")):
            shutil.rmtree(os.path.join(root, name))  # an interrupted save of ours
    with contextlib.suppress(OSError):
        os.rmdir(root)  # only when nothing of the user's is in it


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
    history: list[dict],
) -> None:
    """Writes the checkpoint of `epoch` completed epochs and keeps only the `keep` latest.

    Args:
        model (`nn.Module`): The `PeftModel` being trained.
        output_dir (`str`): The run's output directory.
        epoch (`int`): Number of completed epochs.
        identity (`dict`): Everything that changes the run's result; `load_checkpoint` compares it.
        optimizer, scheduler: Their states are saved.
        keep (`int`): Number of most recent checkpoints kept.
        history (`list[dict]`): One row per completed epoch, so that a resumed run reports the whole run's.
    """
    check_finite_deltas(model)
    final = os.path.join(output_dir, CHECKPOINTS_DIR, f"epoch-{epoch:04d}")
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    state = {
        "epoch": epoch,
        "identity": identity,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "history": history,
        # The trained weights themselves: base + saved delta is not always bit-equal to them in float32, and Adam
        # turns such a rounding difference on a near-zero gradient into a whole step of lr.
        "tuned": {name: p.detach() for name, p in model.named_parameters() if p.requires_grad},
    }
    try:
        model.save_pretrained(tmp)
        torch.save(state, os.path.join(tmp, TRAINER_STATE))
        # Published last, whole and on disk, so an interrupted save never looks like a complete checkpoint.
        publish(tmp, final)
    except (OSError, RuntimeError, SafetensorError) as error:  # torch.save reports a full disk as a RuntimeError
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
) -> tuple[int, list[dict]]:
    """Restores the latest checkpoint of the same run exactly; returns the number of epochs it completed and their
    history rows (0 and `[]` if none).

    Raises:
        ValueError: The checkpoint belongs to another run (its identity differs): names what differs.
    """
    checkpoints = list_checkpoints(output_dir)
    if not checkpoints:
        return 0, []
    path = checkpoints[-1]
    state = _read_state(path, identity, model)
    set_peft_model_state_dict(model, load_peft_weights(path, device=str(device)))
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.get("tuned", {}).items():
            parameters[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return state["epoch"], state.get("history", [])


def check_resumable(output_dir: str, identity: dict, model: nn.Module) -> None:
    """Raises now, before any expensive work, what `load_checkpoint` would raise: the latest checkpoint in
    `output_dir` is damaged or belongs to another run. Nothing to check without checkpoints."""
    checkpoints = list_checkpoints(output_dir)
    if checkpoints:
        _read_state(checkpoints[-1], identity, model)


def _check_adapter_of(path: str, model: nn.Module) -> None:
    """The checks `PeftModel.from_pretrained` applies to the checkpoint's adapter: whole files of one save, known
    fields, finite deltas (`SkipConfig.from_pretrained`), the base model's fingerprint, the tensors' shapes."""
    try:
        saved = SkipConfig.from_pretrained(path)
    except (ValueError, OSError) as error:
        raise ValueError(f"Cannot resume from {path}: {error}") from None
    current = model.peft_config[model.active_adapter].base_model_fingerprint
    reason = fingerprint_mismatch(saved.base_model_fingerprint, current) if saved.base_model_fingerprint else None
    if reason is None and saved.base_model_fingerprint is None:
        reason = "it records no base-model fingerprint"
    if reason is not None:
        raise ValueError(f"Cannot resume from {path}: its adapter is for another base model ({reason}).")
    try:
        check_deltas_fit(
            saved.saved_delta_shapes, {k: tuple(v.shape) for k, v in get_peft_model_state_dict(model).items()}
        )
    except ValueError as error:
        raise ValueError(f"Cannot resume from {path}: {error}") from None


def _read_state(path: str, identity: dict, model: nn.Module) -> dict:
    """The trainer state of the checkpoint at `path`, after checking it belongs to the run of `identity` and that its
    adapter loads onto `model` with every check of `PeftModel.from_pretrained`."""
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
    _check_adapter_of(path, model)
    return state


def save_adapter(model: nn.Module, output_dir: str) -> None:
    """Saves the adapter into `output_dir`, each file replaced whole (see `publish_files`)."""
    check_finite_deltas(model)
    tmp = os.path.join(output_dir, STAGING_DIR)
    finish_interrupted_publish(output_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        if not may_write(output_dir, CARD_NAME):
            logger.info(f"{output_dir}/{CARD_NAME} is not peft-skip's: kept, the model card is not written.")
            os.remove(os.path.join(tmp, CARD_NAME))
        publish_files(tmp, output_dir)
    except (OSError, RuntimeError, SafetensorError) as error:  # safetensors reports a full disk as its own error
        shutil.rmtree(tmp, ignore_errors=True)
        checkpoints = list_checkpoints(output_dir)
        resume = f"; {checkpoints[-1]} is kept: free disk space and rerun with --resume" if checkpoints else ""
        raise OSError(
            f"Could not write the adapter to {output_dir} ({error}); nothing there was replaced{resume}."
        ) from error
