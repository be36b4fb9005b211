"""The reference's float16 training (`precision="fp16_reference"`) on a transformers model.

The reference loads CLIP with OpenAI's `convert_weights`: every weight is float16 but the layer norms' (and the
learned temperature); a layer norm computes in float32 on its float32 weights and returns float16 (CLIP's
`LayerNorm`). Forward, backward and the SGD update then run in float16 on those weights themselves: no float32 master
copy, no loss scaling, so an update smaller than half a float16 step of a weight is lost, as in the reference.
`to_reference_fp16` gives a transformers model (plain, or wrapped by peft with its trained copies) the same dtypes
and layer-norm arithmetic.
"""

from __future__ import annotations

import torch
from torch import nn

from ..towers import get_towers
from ..tuner.layer import SkipLayer

# The dtype activations (and the cached states fed to the deep layers) have under each `precision`.
COMPUTE_DTYPES = {"fp32": torch.float32, "fp16_reference": torch.float16}
_UPCAST = "_peft_skip_float32_layer_norm"  # marks a layer norm whose hooks are already registered


def to_reference_fp16(model: nn.Module) -> nn.Module:
    """Converts `model` in place: float16 weights, float32 layer norms that return float16. Calling it again (e.g.
    after `get_peft_model` added trained copies) converts only what is new.

    Args:
        model (`nn.Module`): A supported two-tower model, plain or a `PeftModel`.

    Returns:
        `nn.Module`: `model`.
    """
    towers = get_towers(model)
    # CLIP's temperature stays float32, as in the reference: a 0-dim tensor does not promote float16 activations.
    # SigLIP's temperature and bias have shape (1,) and would, so they follow the weights.
    float32 = {id(p) for p in (towers.logit_scale, towers.logit_bias) if p is not None and p.dim() == 0}
    # A wrapped composite module (SigLIP's attention-pooling head) computes with its copies cast to its input's dtype,
    # so the layer norms inside it run in float16 like the rest of it.
    composite = {
        id(inner)
        for module in model.modules()
        if isinstance(module, SkipLayer) and not isinstance(module.base_layer, nn.LayerNorm)
        for inner in module.base_layer.modules()
    }
    for module in model.modules():
        if _is_layer_norm(module) and id(module) not in composite:
            float32.update(id(p) for p in module.parameters())
            if not getattr(module, _UPCAST, False):
                module.register_forward_pre_hook(_input_to_float32)
                module.register_forward_hook(_output_to_float16)
                setattr(module, _UPCAST, True)
    for param in model.parameters():
        if param.is_floating_point() and id(param) not in float32:
            param.data = param.data.to(torch.float16)
    for buffer in model.buffers():
        if buffer.is_floating_point():
            buffer.data = buffer.data.to(torch.float16)
    return model


def _is_layer_norm(module: nn.Module) -> bool:
    """A layer norm, or Skip Tuning's wrapper around one (which computes with its trained copy)."""
    return isinstance(module, nn.LayerNorm) or (
        isinstance(module, SkipLayer) and isinstance(module.base_layer, nn.LayerNorm)
    )


def _input_to_float32(module: nn.Module, args: tuple) -> tuple:
    # To the dtype of the weights it computes with: float32, but float16 inside a wrapped composite module (whose
    # copies `functional_call` swaps in), which may wrap a layer norm after this hook was registered.
    norm = module.base_layer if isinstance(module, SkipLayer) else module
    dtype = norm.weight.dtype if norm.weight is not None else torch.float32
    return (args[0].to(dtype), *args[1:])


def _output_to_float16(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return output.to(torch.float16)
