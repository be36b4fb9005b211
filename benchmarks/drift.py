"""Half precision against fp32 in the benchmark: time, memory, and how far the losses and updates drift.

`compare.py --mixed-precision bf16` runs every method twice on the same batches, in fp32 and under autocast, and
writes each run's updates (the change of every trained weight: Skip Tuning's deltas, LoRA's `B A`, FT's
`W - W0`, CoOp's context) next to its losses; this module compares the two runs of each method.
"""

from __future__ import annotations

import torch


def update_drift(reference: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> float:
    """`||U_other - U_ref|| / ||U_ref||` over all updated weights together (0: the same updates).

    Args:
        reference (`dict[str, torch.Tensor]`): Updates of the fp32 run, by weight name.
        other (`dict[str, torch.Tensor]`): Updates of the half-precision run, the same names.
    """
    if reference.keys() != other.keys():
        raise ValueError(f"The runs updated different weights: {sorted(reference.keys() ^ other.keys())[:3]}.")
    difference = sum(float((other[k].double() - reference[k].double()).pow(2).sum()) for k in reference)
    norm = sum(float(reference[k].double().pow(2).sum()) for k in reference)
    return (difference / norm) ** 0.5 if norm > 0 else float("inf") * (difference > 0)


def loss_drift(reference: list[float], other: list[float]) -> float:
    """Largest relative difference of the per-step losses of two runs on the same batches."""
    if len(reference) != len(other):
        raise ValueError(f"The runs took {len(reference)} and {len(other)} steps; compare the same steps.")
    return max(abs(b - a) / abs(a) for a, b in zip(reference, other, strict=True))


def precision_table(pairs: list[tuple[dict, dict]], precision: str) -> list[str]:
    """Markdown rows comparing each method's fp32 run with its `precision` run.

    Args:
        pairs (`list[tuple[dict, dict]]`): (fp32 result, half-precision result) per method, with `drift` added to
            the second.
        precision (`str`): `bf16` or `fp16`.
    """
    lines = [
        f"| method | step fp32 (s) | step {precision} (s) | time {precision} / fp32 | peak fp32 (MB) | "
        f"peak {precision} (MB) | memory {precision} / fp32 | loss drift (max over steps) | update drift |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for full, half in pairs:
        drift = half["drift"]
        lines.append(
            f"| {full['method']} | {full['step_seconds']:.3g} | {half['step_seconds']:.3g} | "
            f"{half['step_seconds'] / full['step_seconds']:.3f} | {full['peak_memory_mb']:.0f} | "
            f"{half['peak_memory_mb']:.0f} | {half['peak_memory_mb'] / full['peak_memory_mb']:.3f} | "
            f"{drift['loss']:.2e} | {drift['updates']:.2e} |"
        )
    return lines
