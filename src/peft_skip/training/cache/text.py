"""The text cache: prompt states at layer ω of the text tower, built once (the prompts never change)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...towers import Tower
from .common import _check_skip_layers, _device_of


@dataclass
class TextCache:
    """Text states at layer ω for all class prompts.

    Attributes:
        hidden (`torch.Tensor`): Input of text layer ω, shape `(C, L, D_t)`.
        input_ids (`torch.Tensor`): Token ids (for pooling), shape `(C, L)`.
        attention_mask (`torch.Tensor`): Padding mask (for the deep layers' mask), shape `(C, L)`.
    """

    hidden: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def subset(self, classes: torch.Tensor) -> TextCache:
        """The cache of some classes only.

        Args:
            classes (`torch.Tensor`): Class indices, shape `(K',)`.
        """
        classes = classes.to(self.hidden.device)
        return TextCache(self.hidden[classes], self.input_ids[classes], self.attention_mask[classes])

    def to(self, device: torch.device | str) -> TextCache:
        return TextCache(self.hidden.to(device), self.input_ids.to(device), self.attention_mask.to(device))


@torch.no_grad()
def build_text_cache(
    tower: Tower,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    skip_layers: int,
    dtype: torch.dtype | None = None,
) -> TextCache:
    """Runs the text tower's embeddings and layers `[0, skip_layers)` on all prompts.

    The token dimension is trimmed to the longest prompt: the text tower is causal and pools at the end-of-text token,
    so the padding after the longest prompt never changes a pooled feature.

    Args:
        tower (`Tower`): The text tower.
        input_ids (`torch.Tensor`): Token ids of the prompts, shape `(C, L)`.
        attention_mask (`torch.Tensor`): Padding mask, 1 for real tokens, shape `(C, L)`.
        skip_layers (`int`): ω, the number of frozen shallow layers.
        dtype (`torch.dtype`, *optional*): Storage dtype of the states; the tower's dtype by default.
    """
    _check_skip_layers(tower, skip_layers)
    if input_ids.shape != attention_mask.shape or input_ids.ndim != 2:
        raise ValueError(
            f"input_ids and attention_mask must both have shape (C, L), got {tuple(input_ids.shape)} and "
            f"{tuple(attention_mask.shape)}."
        )
    real = attention_mask.bool().any(dim=0)
    if not real.any():
        raise ValueError("attention_mask has no real token (all zeros): every prompt is empty.")
    length = int(torch.nonzero(real).max()) + 1
    device = _device_of(tower)
    input_ids = input_ids[:, :length].to(device)
    attention_mask = attention_mask[:, :length].to(device)
    hidden = tower.run_layers(tower.embed(input_ids=input_ids), 0, skip_layers, attention_mask=attention_mask)
    return TextCache(hidden.to(dtype or hidden.dtype), input_ids, attention_mask)
