"""The run's `Accelerate` `Accelerator`: mixed precision, the process group of a CPU launch, the trackers."""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator

from .tracking import logging_dir, tracker_names


def make_accelerator(
    mixed_precision: str = "no", report_to: str = "none", output_dir: str | None = None
) -> Accelerator:
    """The `Accelerator` of a run; create it before anything else touches Accelerate's state.

    Args:
        mixed_precision (`str`): `no`, `bf16` (autocast on CPU or GPU) or `fp16` (GPU only).
        report_to (`str`): The experiment trackers (`peft_skip.training.tracking.REPORT_TO`).
        output_dir (`str`, *optional*): The run's output directory; local trackers write under its `runs/`.
    """
    if mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("mixed_precision='fp16' needs a CUDA GPU; use 'bf16' (autocast on CPU) or 'no'.")
    # Started as several processes (torchrun, `accelerate launch` with MULTI_GPU) on a machine without CUDA,
    # Accelerate only joins them in a (gloo) process group when told to run on the CPU.
    cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    log_dir = logging_dir(output_dir) if output_dir is not None else None
    trackers = tracker_names(report_to) or None
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu, log_with=trackers, project_dir=log_dir)
