"""ChineseCLIP (BERT text tower) and AltCLIP (XLM-R text tower): bidirectional text, first-token pooling."""

from __future__ import annotations

import torch

from .base import BidirectionalTextTower, Tower, _bidirectional_mask


class ChineseCLIPTextTower(BidirectionalTextTower):
    layers_path = "text_model.encoder.layer"
    head_paths = ("text_projection",)

    def pool(
        self, hidden: torch.Tensor, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        # `ChineseCLIPModel` projects the [CLS] state directly; the BERT pooler is not part of it.
        return self.model.text_projection(hidden[:, 0])


class AltCLIPTextTower(Tower):
    name = "text"
    layers_path = "text_model.roberta.encoder.layers"
    embedding_paths = ("text_model.roberta.embeddings",)
    head_paths = ("text_model.pre_LN", "text_model.transformation", "text_projection")

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        # Position ids are derived from `input_ids` (padding positions keep the padding index), as in the model.
        return self.model.text_model.roberta.embeddings(input_ids=input_ids)

    def _layer_mask(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[object, dict]:
        return _bidirectional_mask(self.model.text_model.roberta.config, hidden, attention_mask)

    def pool(
        self, hidden: torch.Tensor, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        text = self.model.text_model
        return self.model.text_projection(text.transformation(text.pre_LN(hidden[:, 0])))
