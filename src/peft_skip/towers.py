"""Model families: the one place that knows each family's module names.

A `Tower` is one encoder of a two-tower vision-language model, cut into the three steps LSkip needs:
`embed` (everything before the first layer), `run_layers` (any slice [start, end) of the layer stack, with the
attention mask the full forward would use) and `pool` (everything after the last layer, down to the projected,
unnormalised feature). Running `embed`, then `run_layers(0, N)`, then `pool` equals the model's own forward.

A family is one vision and one text `Tower` subclass registered in `_FAMILIES` under its `config.model_type`; see
docs/supported_models.md for the families and how to add one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from peft import PeftModel
from torch import nn
from torch.nn import functional as F
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask

DOCS_ADDING_A_FAMILY = "docs/supported_models.md#adding-a-family"


class Tower:
    """One encoder of a two-tower model.

    Subclasses set `layers_path`, `embedding_paths` and `head_paths` and implement `embed` and `pool`; `_layer_mask`
    when the layers take an attention mask.

    Args:
        model (`nn.Module`): The transformers model that holds the tower (e.g. a `CLIPModel`).

    Raises:
        TypeError: If the model lacks a module this tower needs (e.g. a vision model without projection).
    """

    name: str
    layers_path: str
    # Modules `embed` runs (before the first layer); frozen, idle while training from the caches.
    embedding_paths: tuple[str, ...]
    # Modules after the last layer; they are trained along with the deep layers.
    head_paths: tuple[str, ...]
    # Leading tokens that summarise the input (CLIP's class token): token drop never drops them.
    class_tokens: int = 0

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        for path in (self.layers_path, *self.embedding_paths, *self.head_paths):
            try:
                model.get_submodule(path)
            except AttributeError:
                raise TypeError(
                    f"{type(model).__name__} has no module {path!r}, which the {self.name} tower of Skip Tuning "
                    f"needs ({type(self).__name__}). Use the model class with projection (e.g. "
                    f"CLIPVisionModelWithProjection rather than CLIPVisionModel); see {DOCS_ADDING_A_FAMILY}."
                ) from None

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

    def shallow_module_paths(self, skip_layers: int) -> list[str]:
        """Paths of the frozen modules that run before layer `skip_layers`: the embeddings and the shallow layers."""
        return list(self.embedding_paths) + [f"{self.layers_path}.{i}" for i in range(skip_layers)]

    def layer_and_head_parameters(self) -> list[nn.Parameter]:
        """Every parameter of the tower's layers and head: the frozen ones and, once peft wraps them, the trained
        copies (how the optimiser tells the towers apart)."""
        modules = [self.layers, *(self.model.get_submodule(path) for path in self.head_paths)]
        return [param for module in modules for param in module.parameters()]

    def padding(self) -> dict:
        """Keyword arguments for the tokenizer that pad prompts the way this (text) tower expects."""
        return {"padding": True}

    def tokenize(self, tokenizer, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token ids and attention mask of `texts`, padded as this (text) tower expects, each of shape `(C, L)`.

        Args:
            tokenizer: The model's tokenizer (e.g. `processor.tokenizer`).
            texts (`Sequence[str]`): One prompt per class.
        """
        tokens = tokenizer(list(texts), return_tensors="pt", **self.padding())
        return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}

    def image_inputs(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """The keyword inputs of `embed` (and of the model's `get_image_features`) for a batch of images.

        Args:
            pixel_values (`torch.Tensor`): Normalised images, shape `(batch, channels, height, width)`.
        """
        return {"pixel_values": pixel_values}

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
            attention_mask (`torch.Tensor`, *optional*): Padding mask of the inputs, shape `(batch, tokens)`, 1 for
                tokens to attend to.

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

    def pool(
        self, hidden: torch.Tensor, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Projected features, not normalised, from the last layer's output.

        Args:
            hidden (`torch.Tensor`): Output of the last layer, shape `(batch, tokens, hidden)`.
            input_ids (`torch.Tensor`, *optional*): Token ids `(batch, tokens)`; text towers that pool at the
                end-of-text token need them.
            attention_mask (`torch.Tensor`, *optional*): Padding mask `(batch, tokens)`; towers whose head attends
                over the tokens need it when there is padding.

        Returns:
            `torch.Tensor`: Shape `(batch, projection_dim)`.
        """
        raise NotImplementedError


def _bidirectional_mask(config, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[object, dict]:
    """The padding-only mask of the bidirectional encoders, built by the helper their forward uses."""
    return create_bidirectional_mask(config=config, inputs_embeds=hidden, attention_mask=attention_mask), {}


# CLIP, and every family with CLIP's vision layout: ChineseCLIP, AltCLIP, MetaCLIP 2.


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
        mask = create_causal_mask(
            config=self.model.text_model.config,
            inputs_embeds=hidden,
            attention_mask=attention_mask,
            past_key_values=None,
        )
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


# SigLIP and SigLIP 2: bidirectional text, last-token pooling, attention-pooling vision head.


class SiglipVisionTower(Tower):
    name = "vision"
    layers_path = "vision_model.encoder.layers"
    embedding_paths = ("vision_model.embeddings",)
    head_paths = ("vision_model.post_layernorm", "vision_model.head")

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        embeddings = self.model.vision_model.embeddings
        return embeddings(pixel_values.to(embeddings.patch_embedding.weight.dtype))

    def pool(
        self, hidden: torch.Tensor, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        vision = self.model.vision_model
        return vision.head(vision.post_layernorm(hidden))


class BidirectionalTextTower(Tower):
    """A text tower at `text_model` whose layers see only the padding mask (SigLIP, BERT-style towers)."""

    name = "text"
    embedding_paths = ("text_model.embeddings",)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.text_model.embeddings(input_ids=input_ids)

    def _layer_mask(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[object, dict]:
        return _bidirectional_mask(self.model.text_model.config, hidden, attention_mask)


class SiglipTextTower(BidirectionalTextTower):
    layers_path = "text_model.encoder.layers"
    head_paths = ("text_model.final_layer_norm", "text_model.head")

    def padding(self) -> dict:
        # SigLIP pools the last position, so prompts are padded as in its training: to the full text length.
        return {"padding": "max_length", "max_length": self.model.text_model.config.max_position_embeddings}

    def pool(
        self, hidden: torch.Tensor, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        text = self.model.text_model
        # SigLIP pools the last position, padding or not (its tokenizers pad to max_length).
        return text.head(text.final_layer_norm(hidden[:, -1]))


class Siglip2VisionTower(SiglipVisionTower):
    """SigLIP 2 (NaFlex) vision tower: patchified inputs of varying resolution, padded to a common patch count.

    `attention_mask` of `run_layers` and `pool` is the processor's `pixel_attention_mask` `(batch, patches)`.
    """

    def image_inputs(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """NaFlex inputs of same-sized images: each is one full grid of patches, so none is padding and no mask
        is needed. The patches are laid out as the SigLIP 2 image processor lays them out.

        Args:
            pixel_values (`torch.Tensor`): Normalised images, shape `(batch, channels, height, width)`; height and
                width must be multiples of the patch size.

        Returns:
            `dict`: `pixel_values` `(batch, patches, patch_size**2 * channels)` and `spatial_shapes` `(batch, 2)`.
        """
        patch = self.model.vision_model.embeddings.patch_size
        batch, channels, height, width = pixel_values.shape
        if height % patch or width % patch:
            raise ValueError(
                f"SigLIP 2 images must be a whole number of {patch}x{patch} patches, got {height}x{width} pixels; "
                f"resize them to multiples of {patch}."
            )
        rows, cols = height // patch, width // patch
        patches = pixel_values.reshape(batch, channels, rows, patch, cols, patch).permute(0, 2, 4, 3, 5, 1)
        spatial_shapes = torch.tensor([[rows, cols]], device=pixel_values.device).expand(batch, 2)
        return {"pixel_values": patches.reshape(batch, rows * cols, -1), "spatial_shapes": spatial_shapes}

    def embed(self, pixel_values: torch.Tensor, spatial_shapes: torch.Tensor) -> torch.Tensor:
        """Patch embeddings of `pixel_values` `(batch, patches, channels * patch_size**2)`, with position
        embeddings resized to `spatial_shapes` `(batch, 2)`."""
        return self.model.vision_model.embeddings(pixel_values, spatial_shapes)

    def _layer_mask(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[object, dict]:
        return _bidirectional_mask(self.model.vision_model.config, hidden, attention_mask)

    def pool(
        self, hidden: torch.Tensor, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        vision = self.model.vision_model
        return vision.head(vision.post_layernorm(hidden), attention_mask)


# ChineseCLIP (BERT text tower) and AltCLIP (XLM-R text tower): bidirectional text, first-token pooling.


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
