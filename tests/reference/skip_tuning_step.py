"""The authors' Skip Tuning training step, rebuilt on `OpenAICLIP` for the oracle tests only.

Written from reading `trainers/skip_tuning.py` (`SkipCustomCLIP`, `SkipTuning`), `trainers/baselines/ft_clip.py`,
`trainers/_base_/` (`BaseTrainer.build_model`, `build_optimizer`, `build_lr_scheduler`) of Koorye/SkipTuning and
Dassl's `ConstantWarmupScheduler`:

- The shallow passes run without gradients: the image cache is the output of blocks `[0, ω)` after the patch,
  class and position embeddings and `ln_pre`, sequence-first `(T, N, D)`, in the model's dtype; the text cache the
  output of blocks `[0, ω)` on token + position embeddings of every class's prompt, `(L, C, D)`.
- Token drop draws `r = uniform(0, DROP_RATIO)` and drops `ceil(T * r)` positions of `randperm(T)`, the same for
  the whole batch; position 0, the class token, is a candidate like any other.
- The deep image pass runs blocks `[ω, N)`, `ln_post` on the first remaining token and `@ proj`; the deep text
  pass blocks `[ω, N)`, `ln_final` cast back to the model's dtype, the row at `argmax` of the token ids,
  `@ text_projection`.
- Class selection (no gradients) as `select_classes`: the top `K` always, then a keep-mask over ranks drawn once, the
  labels remapped with `one_hot(labels)[:, kept].argmax(1)`.
- The loss is the cross-entropy of `logit_scale.exp() * cos` in the model's dtype (float16 logits in fp16 mode).
- The trained parameters are blocks `[ω, N)` of both towers, `ln_post`, `proj`, `ln_final` and `text_projection`;
  SGD with the staged lr puts the image encoder's at `NEW_LR` and the text encoder's at `LR`; the schedule is a
  constant warm-up around `CosineAnnealingLR(MAX_EPOCH)`, stepped after each epoch's last batch.

The reference draws from Python's `random` and torch's global generator; every draw is a parameter here, so that a
test can feed both implementations the same numbers.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import torch
from reference.openai_clip import OpenAICLIP
from torch.nn import functional as F


def _run(blocks, x: torch.Tensor, start: int, end: int) -> torch.Tensor:
    for block in blocks[start:end]:
        x = block(x)
    return x


class ReferenceSkipTuning:
    """The authors' `SkipCustomCLIP` in training, with its state after `before_train`.

    Args:
        clip (`OpenAICLIP`): The model, float32 or converted to float16 (`convert_weights_to_fp16`).
        tokens (`torch.Tensor`): Prompt token ids of every class, padded with 0 to the context length, shape `(C, L)`.
        start_layer (`int`): ω (`START_LAYER`).
        top_ratio, max_top, lam, drop_ratio: `TOP_RATIO`, `MAX_TOP`, `LAMBDA`, `DROP_RATIO`.
    """

    def __init__(
        self,
        clip: OpenAICLIP,
        tokens: torch.Tensor,
        start_layer: int,
        top_ratio: float = 0.5,
        max_top: int = 50,
        lam: float = 0.3,
        drop_ratio: float = 0.0,
    ) -> None:
        self.clip, self.tokens, self.start = clip, tokens, start_layer
        self.num_classes = tokens.shape[0]
        self.top_ratio, self.max_top, self.lam, self.drop_ratio = top_ratio, max_top, lam, drop_ratio
        self.reserve_mask = None
        clip.requires_grad_(False)
        for param in self.trainable().values():
            param.requires_grad_(True)
        with torch.no_grad():
            self.text_states = self.text_shallow()
            features = self.text_deep(self.text_states, tokens)
            self.class_prototypes = features / features.norm(dim=-1, keepdim=True)

    def trainable(self) -> dict:
        """The parameters the reference trains, by their OpenAI names."""
        depth = len(self.clip.transformer.resblocks)
        prefixes = [f"transformer.resblocks.{i}." for i in range(self.start, depth)]
        prefixes += [f"visual.transformer.resblocks.{i}." for i in range(self.start, depth)]
        heads = ("ln_final.", "text_projection", "visual.ln_post.", "visual.proj")
        return {n: p for n, p in self.clip.named_parameters() if n.startswith(tuple(prefixes) + heads)}

    @torch.no_grad()
    def image_shallow(self, pixels: torch.Tensor) -> torch.Tensor:
        """Image states after block ω - 1, shape `(T, N, D)`."""
        visual = self.clip.visual
        x = visual.conv1(pixels.to(self.clip.dtype))
        x = x.flatten(2).permute(0, 2, 1)
        cls = visual.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
        x = visual.ln_pre(x).permute(1, 0, 2)
        return _run(visual.transformer.resblocks, x, 0, self.start)

    def text_shallow(self) -> torch.Tensor:
        """Prompt states after block ω - 1, shape `(L, C, D)`."""
        x = self.clip.token_embedding(self.tokens).to(self.clip.dtype)
        x = (x + self.clip.positional_embedding.to(self.clip.dtype)).permute(1, 0, 2)
        return _run(self.clip.transformer.resblocks, x, 0, self.start)

    def image_deep(self, x: torch.Tensor) -> torch.Tensor:
        visual = self.clip.visual
        x = _run(visual.transformer.resblocks, x, self.start, None).permute(1, 0, 2)
        return visual.ln_post(x[:, 0, :]) @ visual.proj

    def text_deep(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        x = _run(self.clip.transformer.resblocks, x, self.start, None).permute(1, 0, 2)
        x = self.clip.ln_final(x).to(self.clip.dtype)
        return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ self.clip.text_projection

    def drop_tokens(
        self, x: torch.Tensor, uniform: Callable = random.uniform, randperm: Callable = torch.randperm
    ) -> torch.Tensor:
        ratio = uniform(0.0, self.drop_ratio)
        dropped = randperm(x.shape[0])[: math.ceil(x.shape[0] * ratio)]
        keep = torch.ones(x.shape[0], dtype=torch.bool)
        keep[dropped] = False
        return x[keep]

    def num_tops(self) -> int:
        c = self.num_classes
        tops = math.ceil(self.top_ratio * c) if self.top_ratio <= 1 else math.ceil(min(self.top_ratio, c))
        return min(tops, self.max_top)

    @torch.no_grad()
    def select_classes(
        self, image_features: torch.Tensor, labels: torch.Tensor, rand_like: Callable = torch.rand_like
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Kept class indices (ascending) and the remapped labels."""
        tops = self.num_tops()
        if self.top_ratio == 1 or tops == self.num_classes:
            return torch.arange(self.num_classes), labels
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        similarity = image_features @ self.class_prototypes.t()
        similarity[torch.arange(similarity.shape[0]), labels] = 1e4
        ranks = similarity.max(dim=0).values.sort(descending=True).indices
        if self.reserve_mask is None:
            x = torch.linspace(0.0, 5.0, self.num_classes - tops, dtype=torch.float64)
            pdf = torch.exp(-x / self.lam) / self.lam  # scipy's expon.pdf(x, scale=lam)
            pdf = (pdf - pdf.min()) / (pdf.max() - pdf.min())  # 0/0 = NaN for a single rank
            ratios = torch.cat([torch.ones(tops, dtype=torch.float64), pdf])
            self.reserve_mask = rand_like(ratios) < ratios
        kept = ranks[self.reserve_mask].sort().values
        return kept, F.one_hot(labels, self.num_classes)[:, kept].argmax(dim=1)

    def forward(self, image_states: torch.Tensor, labels: torch.Tensor, **draws) -> tuple:
        """Loss, logits, kept classes and remapped labels of one batch of cached states `(T, B, D)`.

        Args:
            draws: `uniform`, `randperm` (token drop) and `rand_like` (the keep-mask), else the global generators.
        """
        drop = {k: draws[k] for k in ("uniform", "randperm") if k in draws}
        x = self.drop_tokens(image_states.to(self.clip.dtype), **drop) if self.drop_ratio else image_states
        image_features = self.image_deep(x.to(self.clip.dtype))
        select = {"rand_like": draws["rand_like"]} if "rand_like" in draws else {}
        kept, labels = self.select_classes(image_features, labels, **select)
        text_features = self.text_deep(self.text_states[:, kept], self.tokens[kept])
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        logits = self.clip.logit_scale.exp() * image_features @ text_features.t()
        return F.cross_entropy(logits, labels), logits, kept, labels

    def optimizer(self, lr: float, new_lr: float, momentum: float = 0.9, weight_decay: float = 5e-4):
        """SGD with the staged lr: the image encoder's parameters at `new_lr`, the text encoder's at `lr`."""
        params = self.trainable()
        base = [p for n, p in params.items() if not n.startswith("visual.")]
        new = [p for n, p in params.items() if n.startswith("visual.")]
        groups = [{"params": base, "lr": lr}, {"params": new, "lr": new_lr}]
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)


class DasslSchedule:
    """Dassl's `ConstantWarmupScheduler` around torch's `CosineAnnealingLR(max_epoch)`, with `WARMUP_RECOUNT`: call
    `step()` after every epoch."""

    def __init__(self, optimizer, max_epoch: int, warmup_epochs: int, warmup_lr: float | None) -> None:
        self.optimizer, self.warmup_epochs, self.warmup_lr = optimizer, warmup_epochs, warmup_lr
        self.cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max_epoch)
        self.epoch = 0
        self._set(self.warmup_lr if warmup_epochs > 0 else None)

    def _set(self, lr: float | None) -> None:
        rates = [lr] * len(self.optimizer.param_groups) if lr is not None else self.cosine.get_last_lr()
        for group, rate in zip(self.optimizer.param_groups, rates, strict=True):
            group["lr"] = rate

    def step(self) -> None:
        if self.epoch >= self.warmup_epochs:
            self.cosine.step()
        self.epoch += 1
        if self.epoch <= self.warmup_epochs:
            self._set(self.warmup_lr if self.epoch < self.warmup_epochs else None)
