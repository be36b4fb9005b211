"""Stopping on non-finite numbers: a NaN or an infinity in a gradient, a weight or a delta is never saved."""

from __future__ import annotations

import math

import torch
from peft.utils import get_peft_model_state_dict
from torch import nn


class NonFiniteLossError(RuntimeError):
    """The loss, a gradient, a trained weight or an evaluation logit of the tuned model became NaN or infinite; the run
    stopped before saving its adapter, and the last good checkpoint was kept."""


def non_finite_error(what: str, output_dir: str, epoch: int, step: int | None = None) -> NonFiniteLossError:
    """The one-line error for a non-finite `what` in `epoch` (and optimiser `step`), both counted from 0."""
    from .run_state import list_checkpoints

    at = f"epoch {epoch + 1}" + ("" if step is None else f", step {step + 1}")
    last_good = list_checkpoints(output_dir)
    return NonFiniteLossError(
        f"Non-finite {what} at {at}; training stopped. Last good checkpoint: "
        f"{last_good[-1] if last_good else 'none (failed in epoch 1)'}. Lower the learning rate or use "
        "mixed_precision='no' (--detect-anomaly names the operation)."
    )


def has_non_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether any of `tensors` holds a NaN or an infinity (one reduction: the largest magnitude never overflows)."""
    return bool(tensors) and not torch.nn.utils.get_total_norm(tensors, norm_type=math.inf).isfinite()


def check_finite_deltas(model: nn.Module) -> None:
    """Refuses to save deltas holding a NaN or an infinity (finite weights can still overflow `delta_dtype`).

    Raises:
        FloatingPointError: Naming the first non-finite delta and what to try.
    """
    for key, delta in get_peft_model_state_dict(model).items():
        if not delta.isfinite().all():
            raise FloatingPointError(
                f"The delta {key} is not finite (NaN or infinity); nothing was saved. Use delta_dtype='float32' or "
                "a lower learning rate."
            )
