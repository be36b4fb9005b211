"""Model families: the one place that knows each family's module names.

A `Tower` is one encoder of a two-tower vision-language model, cut into the three steps LSkip needs:
`embed` (everything before the first layer), `run_layers` (any slice [start, end) of the layer stack, with the
attention mask the full forward would use) and `pool` (everything after the last layer, down to the projected,
unnormalised feature). Running `embed`, then `run_layers(0, N)`, then `pool` equals the model's own forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from peft import PeftModel
from torch import nn
from transformers.masking_utils import create_causal_mask

DOCS_ADDING_A_FAMILY = "docs/supported_models.md#adding-a-family"


class Tower:
    """One encoder of a two-tower model.

    Args:
        model (`nn.Module`): The transformers model that holds the tower (e.g. a `CLIPModel`).
    """

    name: str
    layers_path: str
    # Modules after the last layer; they are trained along with the deep layers.
    head_paths: tuple[str, ...]

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.get_submodule(self.layers_path)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def deep_module_paths(self, skip_layers: int) -> list[str]:
        """Paths of the modules that are trained when the first `skip_layers` layers are frozen."""
        layers = [f"{self.layers_path}.{i}" for i in range(skip_layers, self.num_layers)]
        return layers + list(self.head_paths)

    def embed(self, **inputs: torch.Tensor) -> torch.Tensor:
        """Hidden states before layer 0, shape `(batch, tokens, hidden)`."""
        raise NotImplementedError

    def run_layers(
        self, hidden: torch.Tensor, start: int, end: int, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Runs layers `[start, end)`.

        Args:
            hidden (`torch.Tensor`): Input of layer `start`, shape `(batch, tokens, hidden)`.
            start (`int`): First layer to run.
            end (`int`): One past the last layer to run.
            attention_mask (`torch.Tensor`, *optional*): Padding mask of the inputs, shape `(batch, tokens)`.

        Returns:
            `torch.Tensor`: Output of layer `end - 1`, shape `(batch, tokens, hidden)`.
        """
        mask, kwargs = self._layer_mask(hidden, attention_mask)
        for layer in self.layers[start:end]:
            hidden = layer(hidden, mask, **kwargs)
        return hidden

    def _layer_mask(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[object, dict]:
        """The mask (and extra keyword arguments) the model's own forward passes to every layer."""
        return None, {}

    def pool(self, hidden: torch.Tensor, input_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Projected features `(batch, projection_dim)`, not normalised, from the last layer's output."""
        raise NotImplementedError


class CLIPVisionTower(Tower):
    name = "vision"
    layers_path = "vision_model.encoder.layers"
    head_paths = ("vision_model.post_layernorm", "visual_projection")

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        vision = self.model.vision_model
        return vision.pre_layrnorm(vision.embeddings(pixel_values.to(vision.embeddings.patch_embedding.weight.dtype)))

    def pool(self, hidden: torch.Tensor, input_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.visual_projection(self.model.vision_model.post_layernorm(hidden[:, 0]))


class CLIPTextTower(Tower):
    name = "text"
    layers_path = "text_model.encoder.layers"
    head_paths = ("text_model.final_layer_norm", "text_projection")

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.text_model.embeddings(input_ids=input_ids)

    def _layer_mask(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[object, dict]:
        # The CLIP text encoder is causal: without this mask a slice of its layers would attend bidirectionally.
        mask = create_causal_mask(
            config=self.model.text_model.config,
            inputs_embeds=hidden,
            attention_mask=attention_mask,
            past_key_values=None,
        )
        return mask, {"is_causal": True}

    def pool(self, hidden: torch.Tensor, input_ids: torch.Tensor | None = None) -> torch.Tensor:
        text = self.model.text_model
        hidden = text.final_layer_norm(hidden)
        if text.eos_token_id == 2:
            # Legacy configs: the end-of-text token has the largest id.
            eos = input_ids.to(torch.int).argmax(dim=-1)
        else:
            eos = (input_ids.to(torch.int) == text.eos_token_id).int().argmax(dim=-1)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), eos.to(hidden.device)]
        return self.model.text_projection(pooled)


@dataclass
class Towers:
    """Both towers of a model plus its learned temperature."""

    vision: Tower
    text: Tower
    logit_scale: nn.Parameter


_FAMILIES: dict[str, tuple[type[Tower], type[Tower]]] = {
    "clip": (CLIPVisionTower, CLIPTextTower),
    "metaclip_2": (CLIPVisionTower, CLIPTextTower),
}


def get_towers(model: nn.Module) -> Towers:
    """The towers of a supported model (plain or wrapped by peft).

    Raises:
        TypeError: If the model's family is not supported.
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
    return Towers(vision=vision_cls(model), text=text_cls(model), logit_scale=model.logit_scale)
