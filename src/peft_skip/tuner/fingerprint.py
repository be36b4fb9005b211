"""A cheap, dtype-robust fingerprint of named weights: deltas are never applied to base weights they were not trained
on, and an image cache is never reused for other weights. Generic: it knows no tuner names."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch

_SAMPLES_PER_TENSOR = 256
_PROBES = 8
# Relative distance under which two probes count as the same weights: loose enough for the same checkpoint in
# fp16/bf16/fp32, far below the distance between different checkpoints.
_TOLERANCE = 2e-2


@torch.no_grad()
def fingerprint(parameters: Iterable[tuple[str, torch.Tensor]]) -> dict:
    """Fingerprint of named weights (e.g. `model.named_parameters()`; the tuner gives its base weights' names).

    Returns:
        `dict`: `structure` (sha256 of the names and shapes) and `probe` (a few random projections of a strided
        sample of every tensor, in name order; robust to the storage dtype).
    """
    params = sorted(parameters, key=lambda item: item[0])
    structure = hashlib.sha256()
    samples = []
    for name, param in params:
        structure.update(f"{name}:{tuple(param.shape)};".encode())
        flat = param.detach().reshape(-1)
        stride = max(1, flat.numel() // _SAMPLES_PER_TENSOR)
        samples.append(flat[::stride][:_SAMPLES_PER_TENSOR].float().cpu())
    sample = torch.cat(samples).double()
    generator = torch.Generator().manual_seed(0)
    directions = torch.randn(_PROBES, sample.numel(), generator=generator, dtype=torch.float64)
    probe = (directions @ sample) / sample.numel() ** 0.5
    return {"structure": structure.hexdigest(), "probe": [round(float(v), 6) for v in probe]}


def fingerprint_mismatch(expected: dict, actual: dict) -> str | None:
    """Why two fingerprints differ, or `None` if they describe the same weights."""
    if expected["structure"] != actual["structure"]:
        return "the parameter names or shapes differ (another architecture or size)"
    if len(expected["probe"]) != len(actual["probe"]):
        return f"the saved fingerprint has {len(expected['probe'])} probes, not {len(actual['probe'])}"
    a = torch.tensor(expected["probe"], dtype=torch.float64)
    b = torch.tensor(actual["probe"], dtype=torch.float64)
    distance = float((a - b).norm() / (a.norm() + b.norm() + 1e-12))
    if distance > _TOLERANCE:
        return f"the weights differ (relative probe distance {distance:.3g} > {_TOLERANCE})"
    return None
