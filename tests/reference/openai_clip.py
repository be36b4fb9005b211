"""OpenAI's CLIP ViT in the module layout the authors' Skip Tuning code trains, for the oracle tests only.

Rebuilt from reading `clip/model.py` of Koorye/SkipTuning (OpenAI's CLIP as vendored there): sequence-first
(`(L, N, D)`) residual blocks around `nn.MultiheadAttention` with fused `in_proj` weights, QuickGELU, layer norms that
compute in float32 and return their input's dtype, projections as bare matrices applied with `x @ proj`, and the
`convert_weights` rule of its float16 mode. `from_transformers` maps a transformers `CLIPModel`'s weights into it.
Never shipped with the package: this is the judge, not the implementation.
"""

from __future__ import annotations

import torch
from torch import nn


class LayerNorm(nn.LayerNorm):
    """OpenAI's fp16-safe layer norm: computes in float32 on its float32 weights, returns the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Block(nn.Module):
    """One residual attention block over `(L, N, D)` inputs, optionally with an additive causal mask."""

    def __init__(self, width: int, heads: int, mlp_width: int, causal_length: int | None = None) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, mlp_width))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(mlp_width, width))
        self.ln_2 = LayerNorm(width)
        mask = None
        if causal_length is not None:
            mask = torch.full((causal_length, causal_length), float("-inf")).triu(1)
        self.register_buffer("attn_mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = None if self.attn_mask is None else self.attn_mask.to(x.dtype)
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_width: int, causal_length: int | None = None) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(Block(width, heads, mlp_width, causal_length) for _ in range(layers))


class VisionTransformer(nn.Module):
    def __init__(self, width, layers, heads, mlp_width, patch_size, grid, output_dim) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(grid * grid + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, mlp_width)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, output_dim))


class OpenAICLIP(nn.Module):
    """The parameters and modules of OpenAI's `CLIP` (ViT image tower); the trainer wrappers run them."""

    def __init__(self, vision: dict, text: dict, embed_dim: int) -> None:
        super().__init__()
        self.visual = VisionTransformer(output_dim=embed_dim, **vision)
        width, length = text["width"], text["context_length"]
        self.context_length = length
        self.token_embedding = nn.Embedding(text["vocab_size"], width)
        self.positional_embedding = nn.Parameter(torch.zeros(length, width))
        self.transformer = Transformer(width, text["layers"], text["heads"], text["mlp_width"], causal_length=length)
        self.ln_final = LayerNorm(width)
        self.text_projection = nn.Parameter(torch.zeros(width, embed_dim))
        self.logit_scale = nn.Parameter(torch.zeros(()))

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    @classmethod
    def from_transformers(cls, model) -> OpenAICLIP:
        """The same weights as the transformers `CLIPModel` `model`, in OpenAI's modules (float32)."""
        config = model.config
        v, t = config.vision_config, config.text_config
        vision = dict(
            width=v.hidden_size,
            layers=v.num_hidden_layers,
            heads=v.num_attention_heads,
            mlp_width=v.intermediate_size,
            patch_size=v.patch_size,
            grid=v.image_size // v.patch_size,
        )
        text = dict(
            width=t.hidden_size,
            layers=t.num_hidden_layers,
            heads=t.num_attention_heads,
            mlp_width=t.intermediate_size,
            vocab_size=t.vocab_size,
            context_length=t.max_position_embeddings,
        )
        clip = cls(vision, text, config.projection_dim)
        state = {k: v.detach().float() for k, v in model.state_dict().items()}
        clip.load_state_dict(openai_state_dict(state), strict=True)
        return clip


def _layer_names(hf: str, openai: str) -> dict[str, str]:
    """transformers -> OpenAI names of one layer's parameters (q/k/v are fused apart)."""
    names = {
        "self_attn.out_proj": "attn.out_proj",
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
    }
    return {f"{hf}.{a}.{p}": f"{openai}.{b}.{p}" for a, b in names.items() for p in ("weight", "bias")}


def openai_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Maps a transformers CLIP state dict (or any part of it: weights, gradients) to OpenAI's names and layouts.

    q, k and v projections become one `in_proj` (stacked in that order) where all three are present; the vision and
    text projections are transposed into the bare matrices OpenAI applies as `x @ proj`. Keys without an OpenAI
    counterpart (position ids) are left out.
    """
    fixed = {
        "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
        "vision_model.embeddings.class_embedding": "visual.class_embedding",
        "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
        "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
        "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
        "vision_model.post_layernorm.weight": "visual.ln_post.weight",
        "vision_model.post_layernorm.bias": "visual.ln_post.bias",
        "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
        "text_model.embeddings.position_embedding.weight": "positional_embedding",
        "text_model.final_layer_norm.weight": "ln_final.weight",
        "text_model.final_layer_norm.bias": "ln_final.bias",
        "logit_scale": "logit_scale",
    }
    layer_prefixes = {
        "vision_model.encoder.layers": "visual.transformer.resblocks",
        "text_model.encoder.layers": "transformer.resblocks",
    }
    out = {fixed[k]: v for k, v in state.items() if k in fixed}
    projections = {"visual_projection.weight": "visual.proj", "text_projection.weight": "text_projection"}
    for projection, name in projections.items():
        if projection in state:
            out[name] = state[projection].T
    for hf_prefix, openai_prefix in layer_prefixes.items():
        indices = {int(k[len(hf_prefix) + 1 :].split(".")[0]) for k in state if k.startswith(hf_prefix + ".")}
        for i in sorted(indices):
            hf, openai = f"{hf_prefix}.{i}", f"{openai_prefix}.{i}"
            out |= {b: state[a] for a, b in _layer_names(hf, openai).items() if a in state}
            for p in ("weight", "bias"):
                qkv = [f"{hf}.self_attn.{x}_proj.{p}" for x in "qkv"]
                if all(k in state for k in qkv):
                    out[f"{openai}.attn.in_proj_{p}"] = torch.cat([state[k] for k in qkv])
    return out


def convert_weights_to_fp16(clip: nn.Module) -> nn.Module:
    """OpenAI's `convert_weights`: linear and convolution weights and biases, the attention's fused input projection,
    and the two projection matrices become float16; layer norms, embeddings and the temperature stay float32."""
    for module in clip.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.weight.data = module.weight.data.half()
            if module.bias is not None:
                module.bias.data = module.bias.data.half()
        if isinstance(module, nn.MultiheadAttention):
            module.in_proj_weight.data = module.in_proj_weight.data.half()
            module.in_proj_bias.data = module.in_proj_bias.data.half()
        for name in ("proj", "text_projection"):
            if isinstance(getattr(module, name, None), nn.Parameter):
                getattr(module, name).data = getattr(module, name).data.half()
    return clip
