"""The tuner layer: a frozen module plus one zero-initialised delta per parameter and adapter."""

from __future__ import annotations

import warnings

import torch
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F


# `nn.ParameterDict` keys may not contain dots, but the parameters of a wrapped module with submodules (e.g.
# `attention.out_proj.weight`) do. Attribute-style parameter names hold no "-", so the mapping is one-to-one.
def _delta_key(parameter_name: str) -> str:
    return parameter_name.replace(".", "-")


def _parameter_name(delta_key: str) -> str:
    return delta_key.replace("-", ".")


class SkipLayer(nn.Module, BaseTunerLayer):
    """Wraps a module of a deep layer so that it computes with `W0 + dW` for every parameter `W0` it holds.

    The deltas are the trainable parameters, so the gradient of a delta equals the gradient full fine-tuning
    would give its parameter, while `W0` stays untouched for `disable_adapter`, `unmerge` and other adapters.
    `nn.Linear` and `nn.LayerNorm` run through their functional form; any other module (e.g. an
    `nn.MultiheadAttention`, or an attention-pooling head holding one) gets deltas for all its parameters,
    its submodules' included, and runs through `torch.func.functional_call`.

    Args:
        base_layer (`nn.Module`): The module to wrap.
        adapter_name (`str`): Name of the first adapter.
        init_weights (`bool`): `True` for zero deltas (the model starts as the base model), `False` for small random
            deltas (for tests).
    """

    adapter_layer_names = ("skip_delta",)

    def __init__(self, base_layer: nn.Module, adapter_name: str, init_weights: bool = True) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.skip_delta = nn.ModuleDict()
        self.merged_adapters = []
        self.update_layer(adapter_name, init_weights)

    @staticmethod
    def delta_shapes(module: nn.Module) -> dict[str, torch.Size]:
        """Key and shape of each delta a `SkipLayer` around `module` holds."""
        return {_delta_key(name): param.shape for name, param in module.named_parameters()}

    def update_layer(self, adapter_name: str, init_weights: bool) -> None:
        """Adds zero (or small random) deltas for `adapter_name` and makes it the active adapter."""
        deltas = nn.ParameterDict()
        for name, param in self.base_layer.named_parameters():
            delta = torch.zeros_like(param)
            if not init_weights:
                nn.init.normal_(delta, std=0.02)
            deltas[_delta_key(name)] = nn.Parameter(delta)
        self.skip_delta[adapter_name] = deltas
        self.set_adapter(adapter_name)

    def _effective_parameters(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The base parameters plus the deltas of every active adapter, in the dtype `x` is computed in."""
        params = dict(self.base_layer.named_parameters())
        for adapter in self.active_adapters:
            if adapter not in self.skip_delta:
                continue
            for key, delta in self.skip_delta[adapter].items():
                name = _parameter_name(key)
                params[name] = params[name] + delta
        if torch.is_autocast_enabled(x.device.type):
            return params  # autocast picks the compute dtype per op
        # fp32 deltas on a half-precision base: compute in the input's dtype, keep fp32 master deltas.
        return {name: p.to(x.dtype) for name, p in params.items()}

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if self.merged or not any(a in self.skip_delta for a in self.active_adapters):
            return self.base_layer(x, *args, **kwargs)

        params = self._effective_parameters(x)
        base = self.base_layer
        if isinstance(base, nn.Linear):
            return F.linear(x, params["weight"], params.get("bias"))
        if isinstance(base, nn.LayerNorm):
            return F.layer_norm(x, base.normalized_shape, params.get("weight"), params.get("bias"), base.eps)
        return functional_call(base, params, (x, *args), kwargs)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Adds the deltas of `adapter_names` (default: the active adapters) into the base parameters.

        Args:
            safe_merge (`bool`): Check for non-finite values before writing into the base parameters.
            adapter_names (`list[str]`, *optional*): Adapters to merge.
        """
        adapter_names = check_adapters_to_merge(self, adapter_names)
        base_params = dict(self.base_layer.named_parameters())
        for adapter in adapter_names:
            if adapter not in self.skip_delta:
                continue
            for key, delta in self.skip_delta[adapter].items():
                param = base_params[_parameter_name(key)]
                merged = param.data + delta.data.to(param.dtype)
                if safe_merge and not torch.isfinite(merged).all():
                    raise ValueError(
                        f"NaNs or infinities in the merged weights of adapter {adapter!r}; the adapter seems broken."
                    )
                param.data = merged
            self.merged_adapters.append(adapter)

    def unmerge(self) -> None:
        """Subtracts the merged deltas from the base parameters again."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        base_params = dict(self.base_layer.named_parameters())
        while self.merged_adapters:
            adapter = self.merged_adapters.pop()
            for key, delta in self.skip_delta[adapter].items():
                param = base_params[_parameter_name(key)]
                param.data -= delta.data.to(param.dtype)

    def __repr__(self) -> str:
        return "skip." + super().__repr__()
