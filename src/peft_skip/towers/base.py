"""`Tower`: one encoder of a two-tower model, cut into the steps LSkip needs (see the package's docstring)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers.masking_utils import create_bidirectional_mask

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
    # Leading tokens that summarise the input (CLIP's class token): per-image token drop never drops them.
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


class BidirectionalTextTower(Tower):
    """A text tower at `text_model` whose layers see only the padding mask (SigLIP, BERT-style towers)."""

    name = "text"
    embedding_paths = ("text_model.embeddings",)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.text_model.embeddings(input_ids=input_ids)

    def _layer_mask(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[object, dict]:
        return _bidirectional_mask(self.model.text_model.config, hidden, attention_mask)
