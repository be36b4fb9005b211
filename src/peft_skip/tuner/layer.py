"""The tuner layer: a frozen module plus, per adapter, a trainable copy of its parameters."""

from __future__ import annotations

import warnings

import torch
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

PREFIX = "skip_"  # peft's prefix of Skip Tuning's adapter attributes and state-dict keys
TUNED = "skip_tuned"  # the trained copies of the parameters, in the model
DELTA = "skip_delta"  # their differences to the base parameters, in checkpoints


# `nn.ParameterDict` keys may not contain dots, but the parameters of a wrapped module with submodules (e.g.
# `attention.out_proj.weight`) do. Attribute-style parameter names hold no "-", so the mapping is one-to-one.
def parameter_key(parameter_name: str) -> str:
    return parameter_name.replace(".", "-")


def parameter_name(key: str) -> str:
    return key.replace("-", ".")


def base_parameters(model: nn.Module, prefix: str = PREFIX) -> list[tuple[str, torch.Tensor]]:
    """The base model's parameters under their original names: the adapters' copies left out, `base_layer` unwrapped
    (what `fingerprint.fingerprint` identifies the base weights by)."""
    return [(n.replace(".base_layer.", "."), p) for n, p in model.named_parameters() if prefix not in n]


class SkipLayer(nn.Module, BaseTunerLayer):
    """Wraps a module of a deep layer; each adapter trains its own copy `W` of the module's parameters `W0`.

    The forward computes with `W` directly, so a step costs what full fine-tuning of the module costs and `W` gets
    exactly the gradient full fine-tuning would give `W0`. `W0` stays untouched for `disable_adapter`, `unmerge`
    and other adapters; checkpoints hold only the deltas `W - W0` (see `SkipModel`). `nn.Linear` and `nn.LayerNorm`
    run through their functional form; any other module (e.g. an `nn.MultiheadAttention`, or an attention-pooling
    head holding one) gets copies of all its parameters, its submodules' included, and runs through
    `torch.func.functional_call`.

    Args:
        base_layer (`nn.Module`): The module to wrap.
        adapter_name (`str`): Name of the first adapter.
        init_weights (`bool`): `True` starts the copy at `W0` (the model starts as the base model); `False` adds small
            random deltas (for tests).
    """

    adapter_layer_names = (TUNED,)

    def __init__(self, base_layer: nn.Module, adapter_name: str, init_weights: bool = True) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.skip_tuned = nn.ModuleDict()
        self.merged_adapters = []
        self._unmerged_base: dict[str, torch.Tensor] = {}
        self.update_layer(adapter_name, init_weights)

    @staticmethod
    def delta_shapes(module: nn.Module) -> dict[str, torch.Size]:
        """Key and shape of each delta a `SkipLayer` around `module` saves."""
        return {parameter_key(name): param.shape for name, param in module.named_parameters()}

    def update_layer(self, adapter_name: str, init_weights: bool) -> None:
        """Adds a trainable copy of the base parameters for `adapter_name` and makes it the active adapter."""
        tuned = nn.ParameterDict()
        for name, param in self.base_layer.named_parameters():
            copy = param.detach().clone()
            if not init_weights:
                copy += torch.randn_like(copy) * 0.02
            tuned[parameter_key(name)] = nn.Parameter(copy)
        self.skip_tuned[adapter_name] = tuned
        self.set_adapter(adapter_name)

    def _compute_parameters(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The parameters to compute with: one adapter's copy, or `W0` plus the deltas of several adapters."""
        adapters = [a for a in self.active_adapters if a in self.skip_tuned]
        if len(adapters) == 1:
            params = {parameter_name(k): w for k, w in self.skip_tuned[adapters[0]].items()}
        else:
            params = dict(self.base_layer.named_parameters())
            for adapter in adapters:
                for key, tuned in self.skip_tuned[adapter].items():
                    name = parameter_name(key)
                    params[name] = params[name] + (tuned - self.base_layer.get_parameter(name).detach())
        if torch.is_autocast_enabled(x.device.type):
            return params  # autocast picks the compute dtype per op
        # fp32 copies on a half-precision base: compute in the input's dtype, keep fp32 master weights.
        return {name: p.to(x.dtype) for name, p in params.items()}

    def reads_base_layer(self) -> bool:
        """Whether the forward reads the base parameters `W0`: when merged, disabled, or not exactly one adapter of
        this layer is active (one adapter computes with its copy `W` alone)."""
        active = [a for a in self.active_adapters if a in self.skip_tuned]
        return self.merged or self.disable_adapters or len(active) != 1

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if self.merged or not any(a in self.skip_tuned for a in self.active_adapters):
            return self.base_layer(x, *args, **kwargs)

        params = self._compute_parameters(x)
        base = self.base_layer
        if isinstance(base, nn.Linear):
            return F.linear(x, params["weight"], params.get("bias"))
        if isinstance(base, nn.LayerNorm):
            return F.layer_norm(x, base.normalized_shape, params.get("weight"), params.get("bias"), base.eps)
        return functional_call(base, params, (x, *args), kwargs)

    @torch.no_grad()
    def get_delta_weight(self, adapter_name: str) -> dict[str, torch.Tensor]:
        """The deltas `W - W0` of an adapter, keyed like its parameters, in float32 (exact for float16 weights, so that
        `W0 + delta` gives `W` back)."""
        base = self._unmerged_base or {n: p for n, p in self.base_layer.named_parameters()}
        return {
            key: tuned.float() - base[parameter_name(key)].float()
            for key, tuned in self.skip_tuned[adapter_name].items()
        }

    @torch.no_grad()
    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Makes the base parameters compute what `adapter_names` (default: the active adapters) compute.

        Merging one adapter into the unmerged module points each base parameter at that adapter's copy `W` (cast to
        the base's dtype if they differ): no new tensor, and merged outputs equal the adapter's exactly. Merging
        several adds their deltas to `W0` as the forward of several active adapters does. `W0` is kept for `unmerge`.

        Args:
            safe_merge (`bool`): Check for non-finite values before writing into the base parameters.
            adapter_names (`list[str]`, *optional*): Adapters to merge.
        """
        adapter_names = [a for a in check_adapters_to_merge(self, adapter_names) if a in self.skip_tuned]
        if not adapter_names:
            return
        base_params = dict(self.base_layer.named_parameters())
        if not self.merged and len(adapter_names) == 1:
            tuned = self.skip_tuned[adapter_names[0]]
            merged = {name: tuned[parameter_key(name)].data.to(p.dtype) for name, p in base_params.items()}
        else:
            deltas = [self.get_delta_weight(adapter) for adapter in adapter_names]
            merged = {
                name: (p.data + sum(d[parameter_key(name)] for d in deltas)).to(p.dtype)
                for name, p in base_params.items()
            }
        if safe_merge and not all(torch.isfinite(w).all() for w in merged.values()):
            raise ValueError(
                f"NaNs or infinities in the merged weights of adapters {adapter_names}; an adapter seems broken."
            )
        if not self._unmerged_base:
            self._unmerged_base = {name: param.data for name, param in base_params.items()}
        for name, param in base_params.items():
            param.data = merged[name]
        self.merged_adapters.extend(adapter_names)

    def unmerge(self) -> None:
        """Restores the base parameters as they were before merging."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        for name, param in self.base_layer.named_parameters():
            param.data = self._unmerged_base[name]
        self._unmerged_base = {}
        self.merged_adapters.clear()

    def __repr__(self) -> str:
        return "skip." + super().__repr__()
