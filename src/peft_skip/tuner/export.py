"""Small adapters: a Skip Tuning adapter as a LoRA adapter that plain peft loads (`peft-skip export --rank R`).

Each tuned `nn.Linear`'s weight delta `ΔW` (out × in) becomes its truncated SVD at rank `r`: `lora_B = U_r S_r^½`
(out × r) and `lora_A = S_r^½ V_rᵀ` (r × in), with `lora_alpha = r` so that LoRA's scale is 1 and `lora_B lora_A` is
the best rank-`r` approximation of `ΔW`. What has no low-rank form is kept exactly: the bias deltas as the bias of
`lora_B` (`lora_bias=True`), and every other tuned module as a full copy of its tuned weights in `modules_to_save`:
layer norms (`2 D` values each), SigLIP's attention-pooling head, and the Linears without a bias (CLIP's two
projections), into which peft could not merge a LoRA bias. A rank at or above a module's smaller
dimension keeps that module exact (`rank_pattern`), so such an adapter gives the merged Skip Tuning model's outputs.
The LoRA adapter carries no base-model fingerprint: peft loads it onto any model with these module names and shapes.
"""

from __future__ import annotations

import copy
import os
import re
import warnings
from dataclasses import dataclass, field

import torch
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from torch import nn

from .config import SkipConfig
from .layer import SkipLayer, parameter_name


@dataclass
class ExportArguments:
    """`peft-skip export`: which Skip Tuning adapter to write as a LoRA adapter of which rank, and where."""

    adapter: str = field(metadata={"help": "Skip Tuning adapter directory (from `peft-skip train`)."})
    rank: int = field(
        metadata={
            "help": "LoRA rank r of every Linear's delta (truncated SVD); a rank at or above a Linear's smaller "
            "dimension keeps it exact."
        }
    )
    output_dir: str = field(metadata={"help": "Where the LoRA adapter is written.", "aliases": ["--out"]})

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"rank={self.rank} is invalid; expected >= 1.")


def low_rank_factors(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The rank-`rank` truncated SVD of a weight delta as LoRA's factors.

    Args:
        delta (`torch.Tensor`): The delta `ΔW`, shape `(out, in)`.
        rank (`int`): The rank kept; at most `min(out, in)` is used.

    Returns:
        `tuple`: `lora_A` `(r, in)`, `lora_B` `(out, r)` with `lora_B @ lora_A` the best rank-`r` approximation of
        `ΔW`, and the fraction of `ΔW`'s squared Frobenius norm it keeps (1 for a zero delta).
    """
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    r = min(rank, s.numel())
    root = s[:r].sqrt()
    total = float(s.square().sum())
    kept = float(s[:r].square().sum()) / total if total > 0 else 1.0
    return (root[:, None] * vh[:r]).to(delta.dtype), (u[:, :r] * root).to(delta.dtype), kept


def export_lora(model: PeftModel, output_dir: str, rank: int) -> dict:
    """Writes the active Skip Tuning adapter of `model` to `output_dir` as a LoRA adapter (see the module's docs).

    Args:
        model (`PeftModel`): A model with a Skip Tuning adapter, not merged; left as it is.
        output_dir (`str`): Where `adapter_config.json` and `adapter_model.safetensors` go.
        rank (`int`): LoRA rank of every Linear's delta.

    Returns:
        `dict`: `rank`, `low_rank_modules` and `exact_modules` (counts), `energy` (the fraction of the Linear weight
        deltas' squared Frobenius norm kept) and `bytes` (the size of the weights file).
    """
    adapter = model.active_adapter
    if not isinstance(model.peft_config[adapter], SkipConfig):
        raise ValueError(f"Adapter {adapter!r} is not a Skip Tuning adapter; export_lora writes those as LoRA.")
    layers = {
        name: module
        for name, module in model.get_base_model().named_modules()
        if isinstance(module, SkipLayer) and adapter in module.skip_tuned
    }
    if any(layer.merged for layer in layers.values()):
        raise ValueError("The adapter is merged into the model: `model.unmerge_adapter()` first, then export it.")
    weights, ranks, exact, kept, total = {}, {}, [], 0.0, 0.0
    for name, layer in layers.items():
        delta, key = layer.get_delta_weight(adapter), f"base_model.model.{name}"
        # peft cannot merge a LoRA bias into a Linear without one: those (CLIP's projections) are kept exact.
        if isinstance(layer.base_layer, nn.Linear) and layer.base_layer.bias is not None:
            lora_a, lora_b, energy = low_rank_factors(delta["weight"], rank)
            weights |= {
                f"{key}.lora_A.weight": lora_a,
                f"{key}.lora_B.weight": lora_b,
                f"{key}.lora_B.bias": delta["bias"],
            }
            ranks[name] = lora_a.shape[0]
            norm = float(delta["weight"].double().square().sum())
            kept, total = kept + energy * norm, total + norm
        else:
            base = dict(layer.base_layer.named_parameters())
            for k, value in delta.items():
                weights[f"{key}.{parameter_name(k)}"] = base[parameter_name(k)].detach().float() + value
            exact.append(name)
    config = LoraConfig(
        r=rank,
        lora_alpha=rank,
        target_modules=sorted(ranks),
        modules_to_save=sorted(exact) or None,
        lora_bias=True,
        # peft matches these keys as regular expressions: escaped, each names exactly one module.
        rank_pattern={re.escape(name): r for name, r in ranks.items() if r != rank},
        alpha_pattern={re.escape(name): r for name, r in ranks.items() if r != rank},
        base_model_name_or_path=model.peft_config[adapter].base_model_name_or_path,
    )
    # The LoRA model is built by peft on an adapter-free copy of the base model, so that peft writes its own format.
    lora = get_peft_model(copy.deepcopy(model).unload(), config)
    loaded = set_peft_model_state_dict(lora, {k: v.float() for k, v in weights.items()})
    if loaded.unexpected_keys:
        raise RuntimeError(f"peft did not take the LoRA weights {loaded.unexpected_keys[:3]}...")
    with warnings.catch_warnings():
        # peft takes a 1-D lora_B tensor for an unsharded ZeRO-3 / FSDP one; here it is lora_B's bias.
        warnings.filterwarnings("ignore", message=".*LoRA tensor\\(s\\) have invalid shape", category=UserWarning)
        lora.save_pretrained(output_dir)
    return {
        "rank": rank,
        "low_rank_modules": len(ranks),
        "exact_modules": len(exact),
        "energy": kept / total if total > 0 else 1.0,
        "bytes": os.path.getsize(os.path.join(output_dir, "adapter_model.safetensors")),
    }
