"""What both caches check and report: the layer range of a tower, its device, sizes for people."""

from __future__ import annotations

import torch

from ...towers import Tower


def _check_skip_layers(tower: Tower, skip_layers: int) -> None:
    if not 0 <= skip_layers <= tower.num_layers:
        raise ValueError(
            f"skip_layers must lie in [0, {tower.num_layers}] for the {tower.name} tower "
            f"({tower.num_layers} layers), got {skip_layers}."
        )


def _device_of(tower: Tower) -> torch.device:
    return next(tower.model.parameters()).device


def human_bytes(num_bytes: int) -> str:
    """`num_bytes` as a short human readable string, e.g. `"1.5 GB"`."""
    if num_bytes < 1024:
        return f"{num_bytes} B"
    size, unit = num_bytes / 1024, "KB"
    for bigger in ("MB", "GB", "TB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{size:.1f} {unit}"
