"""Model families: the one place that knows each family's module names.

A `Tower` is one encoder of a two-tower vision-language model, cut into the three steps LSkip needs:
`embed` (everything before the first layer), `run_layers` (any slice [start, end) of the layer stack, with the
attention mask the full forward would use) and `pool` (everything after the last layer, down to the projected,
unnormalised feature). Running `embed`, then `run_layers(0, N)`, then `pool` equals the model's own forward.

A family is one vision and one text `Tower` subclass registered in `_FAMILIES` under its `config.model_type`; see
docs/supported_models.md for the families and how to add one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from peft import PeftModel
from torch import nn
from torch.nn import functional as F

from .base import DOCS_ADDING_A_FAMILY, Tower
from .bert import AltCLIPTextTower, ChineseCLIPTextTower
from .clip import CLIPTextTower, CLIPVisionTower, MetaClip2TextTower
from .siglip import Siglip2VisionTower, SiglipTextTower, SiglipVisionTower

__all__ = ["DOCS_ADDING_A_FAMILY", "Tower", "Towers", "get_towers"]


@dataclass
class Towers:
    """The towers of a model plus its learned temperature (and bias, for sigmoid-loss families).

    Args:
        vision (`Tower`, *optional*): The image tower; `None` for a text-only model.
        text (`Tower`, *optional*): The text tower; `None` for a vision-only model.
        logit_scale (`nn.Parameter`, *optional*): Log of the logit scale; `None` for single-tower models.
        logit_bias (`nn.Parameter`, *optional*): Bias added to the scaled logits (SigLIP families), else `None`.
    """

    vision: Tower | None
    text: Tower | None
    logit_scale: nn.Parameter | None
    logit_bias: nn.Parameter | None = None

    # The full model's features (all layers, no cache): the only place that reads the model's feature outputs.

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Normalised text features of the full model, shape `(C, d)`.

        Args:
            input_ids (`torch.Tensor`): Token ids, shape `(C, L)`.
            attention_mask (`torch.Tensor`): Padding mask, shape `(C, L)`.
        """
        output = self.text.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return F.normalize(_pooled(output), dim=-1)

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalised image features of the full model, shape `(B, d)`.

        Args:
            pixel_values (`torch.Tensor`): Normalised images, shape `(B, 3, H, W)`.
        """
        output = self.vision.model.get_image_features(**self.vision.image_inputs(pixel_values))
        return F.normalize(_pooled(output), dim=-1)


def _pooled(output) -> torch.Tensor:
    # transformers 5 returns a model output whose `pooler_output` holds the projected features.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


# config.model_type -> (vision tower, text tower); `None` where the model has no such tower.
_FAMILIES: dict[str, tuple[type[Tower] | None, type[Tower] | None]] = {
    "clip": (CLIPVisionTower, CLIPTextTower),
    "clip_vision_model": (CLIPVisionTower, None),
    "clip_text_model": (None, CLIPTextTower),
    "metaclip_2": (CLIPVisionTower, MetaClip2TextTower),
    "metaclip_2_vision_model": (CLIPVisionTower, None),
    "metaclip_2_text_model": (None, MetaClip2TextTower),
    "siglip": (SiglipVisionTower, SiglipTextTower),
    "siglip2": (Siglip2VisionTower, SiglipTextTower),
    "chinese_clip": (CLIPVisionTower, ChineseCLIPTextTower),
    "altclip": (CLIPVisionTower, AltCLIPTextTower),
}


def get_towers(model: nn.Module) -> Towers:
    """The towers of a supported model (plain or wrapped by peft).

    Raises:
        TypeError: If the model's family is not supported, or the model lacks a module its towers need.
    """
    if isinstance(model, PeftModel):
        model = model.get_base_model()
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in _FAMILIES:
        raise TypeError(
            f"Skip Tuning does not support {type(model).__name__} (model_type={model_type!r}). Supported "
            f"model_types: {', '.join(sorted(_FAMILIES))}. See {DOCS_ADDING_A_FAMILY} to add a family."
        )
    vision_cls, text_cls = _FAMILIES[model_type]
    return Towers(
        vision=vision_cls(model) if vision_cls is not None else None,
        text=text_cls(model) if text_cls is not None else None,
        logit_scale=getattr(model, "logit_scale", None),
        logit_bias=getattr(model, "logit_bias", None),
    )
