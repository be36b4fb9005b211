"""CLIP, and every family with CLIP's vision layout (ChineseCLIP, AltCLIP, MetaCLIP 2): their towers."""

from __future__ import annotations

import torch
from transformers.masking_utils import create_causal_mask

from .base import Tower


class CLIPVisionTower(Tower):
    name = "vision"
    layers_path = "vision_model.encoder.layers"
    embedding_paths = ("vision_model.embeddings", "vision_model.pre_layrnorm")
    head_paths = ("vision_model.post_layernorm", "visual_projection")
    class_tokens = 1

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        vision = self.model.vision_model
        return vision.pre_layrnorm(vision.embeddings(pixel_values.to(vision.embeddings.patch_embedding.weight.dtype)))

    def pool(
        self, hidden: torch.Tensor, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.model.visual_projection(self.model.vision_model.post_layernorm(hidden[:, 0]))


class CLIPTextTower(Tower):
    name = "text"
    layers_path = "text_model.encoder.layers"
    embedding_paths = ("text_model.embeddings",)
    head_paths = ("text_model.final_layer_norm", "text_projection")

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.text_model.embeddings(input_ids=input_ids)

    def _layer_mask(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[object, dict]:
        # The CLIP text encoder is causal: without this mask a slice of its layers would attend bidirectionally.
        # No cache, passed by position: transformers 5.24 renames the argument `past_key_values` to `cache`.
        mask = create_causal_mask(self.model.text_model.config, hidden, attention_mask, None)
        return mask, {"is_causal": True}

    def pool(
        self, hidden: torch.Tensor, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        text = self.model.text_model
        hidden = text.final_layer_norm(hidden)
        eos = self._eos_positions(input_ids.to(device=hidden.device, dtype=torch.int))
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), eos]
        return self.model.text_projection(pooled)

    def _eos_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        eos_token_id = self.model.text_model.eos_token_id
        if eos_token_id == 2:
            # Legacy CLIP configs: the end-of-text token has the largest id.
            return input_ids.argmax(dim=-1)
        return (input_ids == eos_token_id).int().argmax(dim=-1)


class MetaClip2TextTower(CLIPTextTower):
    def _eos_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        # Unlike CLIP, MetaCLIP 2 always pools at the first end-of-text token, even when its id is 2 (as it is in the
        # released checkpoints).
        return (input_ids == self.model.text_model.eos_token_id).int().argmax(dim=-1)
