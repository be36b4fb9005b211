"""The supported model families as tiny random-weight models built from configs, with inputs to feed them: shared
by the tests of the towers, the trainer and the offload."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from conftest import BOS, EOS, PAD, VOCAB, image_batch, text_batch, tiny_clip_config
from transformers import (
    AltCLIPConfig,
    AltCLIPModel,
    ChineseCLIPConfig,
    ChineseCLIPModel,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    MetaClip2Config,
    MetaClip2Model,
    MetaClip2TextConfig,
    MetaClip2TextModelWithProjection,
    MetaClip2VisionConfig,
    MetaClip2VisionModelWithProjection,
    Siglip2Config,
    Siglip2Model,
    SiglipConfig,
    SiglipModel,
)

LAYERS, SKIP = 4, 2
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS, num_attention_heads=4, vocab_size=VOCAB)
CLIP_TEXT = dict(TEXT, max_position_embeddings=16, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS, num_attention_heads=4)
CLIP_VISION = dict(VISION, image_size=32, patch_size=8)


def _siglip2_images(num: int = 3, padded: bool = True, seed: int = 0) -> dict[str, torch.Tensor]:
    """NaFlex inputs: up to 16 patches of 4x4 pixels; with `padded`, some images have fewer (e.g. 2x4) patches."""
    shapes = [(4, 4), (2, 4), (4, 2), (3, 3)][:num] if padded else [(4, 4)] * num
    pixel_values = torch.randn(num, 16, 3 * 4 * 4, generator=torch.Generator().manual_seed(seed))
    mask = torch.zeros(num, 16, dtype=torch.long)
    for i, (h, w) in enumerate(shapes):
        mask[i, : h * w] = 1
    pixel_values = pixel_values * mask[..., None]
    return {"pixel_values": pixel_values, "pixel_attention_mask": mask, "spatial_shapes": torch.tensor(shapes)}


@dataclass
class Family:
    """How to build a tiny model of a family and feed and read it."""

    name: str
    build: Callable[[str], torch.nn.Module]  # attn_implementation -> model
    images: Callable[[bool], dict[str, torch.Tensor]] | None = None  # padded -> vision inputs
    has_text: bool = True
    standalone: bool = False  # a single-tower `*WithProjection` model

    def image_features(self, model: torch.nn.Module, images: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.standalone:
            return model(**images).image_embeds
        return model.get_image_features(**images).pooler_output

    def text_features(self, model: torch.nn.Module, text: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.standalone:
            return model(**text).text_embeds
        return model.get_text_features(**text).pooler_output


def _configured(config, attn_implementation: str):
    for sub in (config, getattr(config, "text_config", None), getattr(config, "vision_config", None)):
        if sub is not None:
            sub._attn_implementation = attn_implementation
    return config


def _build(model_cls, config_fn):
    def build(attn_implementation: str) -> torch.nn.Module:
        torch.manual_seed(0)
        return model_cls(_configured(config_fn(), attn_implementation)).eval()

    return build


def _clip_images(padded: bool) -> dict[str, torch.Tensor]:
    return {"pixel_values": image_batch()}


FAMILIES = [
    Family("clip", lambda attn: _build(CLIPModel, lambda: tiny_clip_config(attn))(attn), _clip_images),
    Family(
        "metaclip_2",
        _build(MetaClip2Model, lambda: MetaClip2Config(text_config=CLIP_TEXT, vision_config=CLIP_VISION)),
        _clip_images,
    ),
    Family(
        "siglip",
        _build(
            SiglipModel,
            lambda: SiglipConfig(text_config=CLIP_TEXT, vision_config=CLIP_VISION),
        ),
        _clip_images,
    ),
    Family(
        "siglip2",
        _build(
            Siglip2Model,
            lambda: Siglip2Config(
                text_config=CLIP_TEXT,
                vision_config=dict(VISION, patch_size=4, num_patches=16),
            ),
        ),
        lambda padded: _siglip2_images(padded=padded),
    ),
    Family(
        "chinese_clip",
        _build(
            ChineseCLIPModel,
            lambda: ChineseCLIPConfig(
                text_config=dict(TEXT, max_position_embeddings=16, pad_token_id=PAD),
                vision_config=CLIP_VISION,
                projection_dim=16,
            ),
        ),
        _clip_images,
    ),
    Family(
        "altclip",
        _build(
            AltCLIPModel,
            lambda: AltCLIPConfig(
                text_config=dict(TEXT, max_position_embeddings=16, pad_token_id=PAD, project_dim=24),
                vision_config=CLIP_VISION,
                projection_dim=16,
            ),
        ),
        _clip_images,
    ),
    Family(
        "clip_vision_model",
        _build(CLIPVisionModelWithProjection, lambda: CLIPVisionConfig(**CLIP_VISION, projection_dim=16)),
        _clip_images,
        has_text=False,
        standalone=True,
    ),
    Family(
        "clip_text_model",
        _build(CLIPTextModelWithProjection, lambda: CLIPTextConfig(**CLIP_TEXT, projection_dim=16)),
        standalone=True,
    ),
    Family(
        "metaclip_2_vision_model",
        _build(MetaClip2VisionModelWithProjection, lambda: MetaClip2VisionConfig(**CLIP_VISION, projection_dim=16)),
        _clip_images,
        has_text=False,
        standalone=True,
    ),
    Family(
        "metaclip_2_text_model",
        _build(MetaClip2TextModelWithProjection, lambda: MetaClip2TextConfig(**CLIP_TEXT, projection_dim=16)),
        standalone=True,
    ),
]
FAMILY_IDS = [f.name for f in FAMILIES]


def family_inputs(family: Family, padded: bool = True) -> tuple[dict | None, dict | None]:
    images = family.images(padded) if family.images is not None else None
    # Seed 1 gives prompts of lengths 3, 6, 9 and 5.
    text = text_batch(num=4, padded=padded, seed=1) if family.has_text else None
    return images, text
