"""One Skip Tuning step from the caches: token drop, deep image pass, CSkip, deep text pass, loss (the paper's 5-9)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from ..towers import Towers
from ..tuner.config import SkipConfig, TokenDropMode
from .cache import TextCache, build_text_cache
from .classes import ClassSelector


class StepOutput(NamedTuple):
    loss: torch.Tensor  # mean cross-entropy over the batch
    logits: torch.Tensor  # (B, K') over the kept classes
    targets: torch.Tensor  # (B,) positions of the labels among the kept classes


def drop_tokens(
    hidden: torch.Tensor,
    max_ratio: float,
    generator: torch.Generator | None = None,
    class_tokens: int = 1,
    mode: TokenDropMode = "reference",
) -> torch.Tensor:
    """Drops a random fraction `r ~ U(0, max_ratio)` of the image tokens.

    `"reference"` (the authors' `drop_tokens`): `ceil(r * T)` of all `T` tokens are dropped, the same ones for the
    whole batch, the class token among the candidates (the deep layers then pool whichever token comes first).
    `"per_image"`: `floor(r * (T - class_tokens))` tokens after the class token(s) are dropped, a subset of its own for
    each image; the class tokens are always kept. Both keep the remaining tokens in their original order.

    Args:
        hidden (`torch.Tensor`): Image states, class tokens first, shape `(B, T, D)`.
        max_ratio (`float`): Largest fraction of the tokens to drop, in `[0, 1)`; 0 drops none.
        generator (`torch.Generator`, *optional*): Source of randomness (on the CPU).
        class_tokens (`int`): `"per_image"` only: leading tokens always kept (1 for CLIP, 0 for SigLIP).
        mode (`str`): `"reference"` or `"per_image"`.

    Returns:
        `torch.Tensor`: Shape `(B, T', D)`, the same `T'` for every image.
    """
    if not 0 <= max_ratio < 1:
        raise ValueError(f"max_ratio must lie in [0, 1), got {max_ratio}.")
    if mode not in ("reference", "per_image"):
        raise ValueError(f"mode must be 'reference' or 'per_image', got {mode!r}.")
    if max_ratio == 0:
        return hidden
    batch, tokens, _ = hidden.shape
    ratio = float(torch.rand((), generator=generator)) * max_ratio
    if mode == "reference":
        keep = torch.ones(tokens, dtype=torch.bool)
        keep[torch.randperm(tokens, generator=generator)[: math.ceil(tokens * ratio)]] = False
        return hidden[:, keep.to(hidden.device)]
    others = tokens - class_tokens
    kept = others - int(ratio * others)
    order = torch.rand(batch, others, generator=generator).argsort(dim=1)[:, :kept].sort(dim=1).values + class_tokens
    leading = torch.arange(class_tokens).expand(batch, class_tokens)
    order = torch.cat([leading, order], dim=1).to(hidden.device)
    return hidden.gather(1, order.unsqueeze(-1).expand(-1, -1, hidden.shape[2]))


def skip_tuning_loss(
    towers: Towers,
    image_states: torch.Tensor,
    labels: torch.Tensor,
    text_cache: TextCache,
    prototypes: torch.Tensor,
    selector: ClassSelector,
    config: SkipConfig,
    generator: torch.Generator | None = None,
) -> StepOutput:
    """One Skip Tuning step from cached states (the paper's steps 5-9).

    Args:
        towers (`Towers`): The towers of the model being trained.
        image_states (`torch.Tensor`): Cached image states at layer ω_v, shape `(B, T, D_v)`.
        labels (`torch.Tensor`): Class indices, shape `(B,)`.
        text_cache (`TextCache`): Cached prompt states at layer ω_t of all `C` classes.
        prototypes (`torch.Tensor`): Normalised zero-shot text features of the pre-trained model, shape `(C, d)`.
        selector (`ClassSelector`): CSkip: which classes the text tower runs for.
        config (`SkipConfig`): Gives ω of both towers and the token drop ratio.
        generator (`torch.Generator`, *optional*): Randomness of the token drop.
    """
    vision, text = towers.vision, towers.text
    image_states = drop_tokens(image_states, config.token_drop, generator, vision.class_tokens, config.token_drop_mode)
    hidden = vision.run_layers(image_states, config.tower_skip_layers("vision"), vision.num_layers)
    image_features = F.normalize(vision.pool(hidden), dim=-1)
    with torch.no_grad():
        kept, targets = selector.select(image_features.detach().float(), prototypes, labels)
    prompts = text_cache if selector.keeps_all else text_cache.subset(kept)
    hidden = text.run_layers(
        prompts.hidden, config.tower_skip_layers("text"), text.num_layers, attention_mask=prompts.attention_mask
    )
    text_features = F.normalize(text.pool(hidden, prompts.input_ids), dim=-1)
    logits = towers.logit_scale.exp() * image_features @ text_features.T
    if towers.logit_bias is not None:  # SigLIP families
        logits = logits + towers.logit_bias
    return StepOutput(F.cross_entropy(logits.float(), targets), logits, targets)


class SkipTuningStep(nn.Module):
    """The model plus what a step needs, so that Accelerate wraps one forward per step (DDP, autocast).

    Args:
        model (`nn.Module`): The `PeftModel` being trained.
        towers (`Towers`): Its towers.
        text_cache (`TextCache`): Cached prompt states at layer ω_t of all classes.
        prototypes (`torch.Tensor`): Normalised zero-shot text features, shape `(C, d)`.
        selector (`ClassSelector`): CSkip.
    """

    def __init__(
        self,
        model: nn.Module,
        towers: Towers,
        text_cache: TextCache,
        prototypes: torch.Tensor,
        selector: ClassSelector,
    ) -> None:
        super().__init__()
        self.model = model
        self.towers = towers
        self.text_cache = text_cache
        self.prototypes = prototypes
        self.selector = selector

    @classmethod
    @torch.no_grad()
    def from_prompts(
        cls,
        model: nn.Module,
        towers: Towers,
        prompts: dict[str, torch.Tensor],
        generator: torch.Generator,
        device: torch.device | str,
    ) -> SkipTuningStep:
        """The step of `model`: the text cache of the prompts, the prototypes and CSkip's selector.

        Args:
            model (`nn.Module`): The `PeftModel` being trained; its active adapter's `SkipConfig` gives ω and CSkip.
            towers (`Towers`): Its towers.
            prompts (`dict[str, torch.Tensor]`): `input_ids` and `attention_mask` of every class, shape `(C, L)`.
            generator (`torch.Generator`): Randomness of CSkip's kept tail.
            device (`torch.device` or `str`): Where the caches live.
        """
        config = model.peft_config[model.active_adapter]
        input_ids, attention_mask = prompts["input_ids"].to(device), prompts["attention_mask"].to(device)
        text_cache = build_text_cache(towers.text, input_ids, attention_mask, config.tower_skip_layers("text"))
        # Prototypes come from the pre-trained model, also when resuming with non-zero deltas.
        with model.disable_adapter():
            prototypes = towers.text_features(input_ids, attention_mask).float()
        selector = ClassSelector(
            len(input_ids), config.class_ratio, config.max_classes, config.class_decay, generator=generator
        )
        return cls(model, towers, text_cache, prototypes, selector)

    def forward(
        self, image_states: torch.Tensor, labels: torch.Tensor, scale: float, generator: torch.Generator
    ) -> StepOutput:
        """The step's loss times `scale` (so that DDP's average over processes is the mean over the whole group).

        Args:
            image_states (`torch.Tensor`): This process's cached image states, shape `(b, T, D_v)`; `b` may be 0.
            labels (`torch.Tensor`): Their classes, shape `(b,)`.
            scale (`float`): Factor of the loss.
            generator (`torch.Generator`): Randomness of the token drop.
        """
        if image_states.shape[0] == 0:
            # None of this batch is in this process's shard; DDP still needs every trainable parameter in the graph.
            zero = sum(p.sum() for p in self.model.parameters() if p.requires_grad) * 0.0
            return StepOutput(zero, image_states.new_zeros(0, 1), labels)
        config = self.model.peft_config[self.model.active_adapter]
        out = skip_tuning_loss(
            self.towers, image_states, labels, self.text_cache, self.prototypes, self.selector, config, generator
        )
        return out._replace(loss=out.loss * scale)
