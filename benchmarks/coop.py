"""CoOp (Zhou et al., IJCV 2022) for the benchmark: learnable context vectors in front of every class name."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from peft_skip import get_towers


class PromptLearner(nn.Module):
    """`n_ctx` context vectors shared by all classes, placed between the start token and the class-name tokens.

    Every step runs the whole frozen text encoder for every class; only the context vectors get gradients.

    Args:
        model (`nn.Module`): A CLIP model (frozen by the caller).
        input_ids (`torch.Tensor`): Tokenised `"{class name}."` prompts with start and end tokens, shape `(C, L)`.
        attention_mask (`torch.Tensor`): Their padding mask, shape `(C, L)`.
        n_ctx (`int`): Number of context vectors (CoOp: 16).
        ctx (`nn.Parameter`, *optional*): Context vectors to share, shape `(n_ctx, D)` (default: new ones).
    """

    def __init__(
        self,
        model: nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        n_ctx: int = 16,
        ctx: nn.Parameter | None = None,
    ) -> None:
        super().__init__()
        self.text = get_towers(model).text
        self.embeddings = model.text_model.embeddings
        num_classes = input_ids.shape[0]
        self.n_ctx = n_ctx
        width = self.embeddings.token_embedding.embedding_dim
        self.ctx = nn.Parameter(torch.randn(n_ctx, width) * 0.02) if ctx is None else ctx
        # The start token fills the context slots of the ids: EOS pooling must not find an end token there.
        filler = input_ids[:, :1].expand(num_classes, n_ctx)
        self.register_buffer("input_ids", torch.cat([input_ids[:, :1], filler, input_ids[:, 1:]], dim=1))
        ones = attention_mask.new_ones(num_classes, n_ctx)
        self.register_buffer("attention_mask", torch.cat([attention_mask[:, :1], ones, attention_mask[:, 1:]], 1))

    def forward(self) -> torch.Tensor:
        """Normalised class features, shape `(C, projection_dim)`."""
        with torch.no_grad():
            tokens = self.embeddings.token_embedding(self.input_ids)
        ctx = self.ctx.to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([tokens[:, :1], ctx, tokens[:, 1 + self.n_ctx :]], dim=1)
        hidden = self.embeddings(inputs_embeds=tokens)
        hidden = self.text.run_layers(hidden, 0, self.text.num_layers, attention_mask=self.attention_mask)
        return F.normalize(self.text.pool(hidden, self.input_ids), dim=-1)
