"""FLOP cost model of one training step per method (SKIP_TUNING.md, "Cost model").

Counts the matmul FLOPs of each transformer layer for the actual token counts (q/k/v/out projections, the two MLP
matmuls, and the two attention matmuls) and the patch embedding; backward of a trained part costs 2x its forward,
backward through a frozen part (LoRA, CoOp) 1x (input gradients only).
"""

from __future__ import annotations

from dataclasses import dataclass


def layer_flops(tokens: int, hidden: int, intermediate: int) -> float:
    """Forward FLOPs of one pre-norm transformer layer on one sequence of `tokens` tokens."""
    projections = 8 * tokens * hidden * hidden  # q, k, v, out: 4 matmuls of 2 * T * D * D
    mlp = 4 * tokens * hidden * intermediate  # fc1 and fc2
    attention = 4 * tokens * tokens * hidden  # Q K^T and A V
    return projections + mlp + attention


@dataclass(frozen=True)
class TowerShape:
    """Token count and widths of one tower, for one image or one prompt."""

    tokens: int
    hidden: int
    intermediate: int
    layers: int
    embed_flops: float = 0.0  # the patch embedding (vision) - the token lookup (text) is free

    def forward(self, start: int, end: int) -> float:
        """Forward FLOPs of layers `[start, end)`."""
        return (end - start) * layer_flops(self.tokens, self.hidden, self.intermediate)


def tower_shapes(config, text_tokens: int) -> tuple[TowerShape, TowerShape]:
    """Vision and text `TowerShape` of a `CLIPConfig` whose prompts are padded to `text_tokens` tokens."""
    v, t = config.vision_config, config.text_config
    patches = (v.image_size // v.patch_size) ** 2
    patch_embed = 2 * patches * (v.num_channels * v.patch_size**2) * v.hidden_size
    vision = TowerShape(patches + 1, v.hidden_size, v.intermediate_size, v.num_hidden_layers, patch_embed)
    text = TowerShape(text_tokens, t.hidden_size, t.intermediate_size, t.num_hidden_layers)
    return vision, text


def step_flops(
    method: str,
    vision: TowerShape,
    text: TowerShape,
    batch_size: int,
    num_classes: int,
    kept_classes: float,
    skip_layers: int,
    context_tokens: int = 16,
) -> float:
    """Predicted FLOPs of one training step (forward + backward) of `method`.

    Args:
        method (`str`): One of `ft`, `lora`, `coop`, `skip`, `deep`, `deep+lskip`, `deep+cskip`.
        vision (`TowerShape`): Shape of the image tower.
        text (`TowerShape`): Shape of the text tower (tokens: the padded prompt length).
        batch_size (`int`): Images per step.
        num_classes (`int`): Number of classes `C`.
        kept_classes (`float`): Mean number of classes `K'` CSkip keeps per step.
        skip_layers (`int`): ω, frozen shallow layers (the same for both towers).
        context_tokens (`int`): CoOp's learnable context length.
    """
    n, w = vision.layers, skip_layers
    v_full, t_full = vision.embed_flops + vision.forward(0, n), text.forward(0, text.layers)
    v_shallow, t_shallow = vision.embed_flops + vision.forward(0, w), text.forward(0, w)
    v_deep, t_deep = vision.forward(w, n), text.forward(w, text.layers)
    if method == "ft":
        return 3 * (batch_size * v_full + num_classes * t_full)
    if method == "lora":
        return 2 * (batch_size * v_full + num_classes * t_full)
    if method == "coop":
        coop_text = TowerShape(text.tokens + context_tokens, text.hidden, text.intermediate, text.layers)
        return batch_size * v_full + 2 * num_classes * coop_text.forward(0, text.layers)
    if method == "skip":
        return 3 * (batch_size * v_deep + kept_classes * t_deep)
    if method == "deep":
        return batch_size * (v_shallow + 3 * v_deep) + num_classes * (t_shallow + 3 * t_deep)
    if method == "deep+lskip":
        return 3 * (batch_size * v_deep + num_classes * t_deep)
    if method == "deep+cskip":
        return batch_size * (v_shallow + 3 * v_deep) + kept_classes * (t_shallow + 3 * t_deep)
    raise ValueError(f"No cost model for method {method!r}.")


def cache_flops(vision: TowerShape, num_images: int, skip_layers: int) -> float:
    """FLOPs of building the image cache at layer ω once for `num_images` images."""
    return num_images * (vision.embed_flops + vision.forward(0, skip_layers))
