"""SigLIP and SigLIP 2: bidirectional text, last-token pooling, attention-pooling vision head."""

from __future__ import annotations

import torch

from .base import BidirectionalTextTower, Tower, _bidirectional_mask


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
