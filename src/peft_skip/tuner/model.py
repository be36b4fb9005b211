"""SkipModel: the peft tuner that puts deltas on the deep layers of both towers."""

from __future__ import annotations

import os

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils import PeftType, register_peft_method
from torch import nn

from ..towers import get_towers
from .adapter_files import check_deltas_fit
from .config import SkipConfig
from .fingerprint import fingerprint, fingerprint_mismatch
from .layer import DELTA, PREFIX, TUNED, SkipLayer, base_parameters, parameter_name
from .loading import route_skip_adapters_through_peft


class SkipModel(BaseTuner):
    """Skip Tuning (Wu et al., CVPR 2025): fine-tunes layers ω..N-1 of both towers and what follows them in place.

    Every module with parameters in those layers (and in the vision / text heads) is wrapped in a `SkipLayer`
    holding a trainable copy of its parameters; everything else, `logit_scale` included, is frozen. No module is
    added to the forward pass, so after `merge_and_unload` the model is a plain transformers model.

    Args:
        model (`nn.Module`): A supported two-tower model, e.g. a `transformers.CLIPModel`.
        config (`SkipConfig`): The configuration.
        adapter_name (`str`): Name of the adapter, `"default"` by default.

    Example:
        ```py
        >>> import peft_skip  # registers the method with peft
        >>> from peft import get_peft_model
        >>> model = get_peft_model(clip, peft_skip.SkipConfig(skip_layers=6))
        >>> model.print_trainable_parameters()
        ```
    """

    prefix: str = PREFIX
    tuner_layer_cls = SkipLayer
    target_module_mapping: dict = {}

    def _prepare_adapter_config(self, peft_config: SkipConfig, model_config: dict) -> SkipConfig:
        # A base loaded from a relative directory is recorded by its absolute path, so that the saved adapter (its
        # config and card) names a base that loads from any directory; Hub ids stay as they are.
        base = peft_config.base_model_name_or_path
        if base and not os.path.isabs(base) and os.path.isdir(base):
            peft_config.base_model_name_or_path = os.path.abspath(base)
        return peft_config

    def inject_adapter(self, model: nn.Module, adapter_name: str, *args, **kwargs) -> None:
        # Checked here rather than in `_pre_injection_hook`, which `PeftModel.load_adapter` (a second adapter) skips.
        self._check_adapter(model, self.peft_config[adapter_name], adapter_name)
        super().inject_adapter(model, adapter_name, *args, **kwargs)

    def _check_adapter(self, model: nn.Module, config: SkipConfig, adapter_name: str) -> None:
        # Every check runs before the first module is replaced, so a refused adapter leaves the model untouched.
        actual = fingerprint(base_parameters(model, self.prefix))
        if config.base_model_fingerprint is None:
            config.base_model_fingerprint = actual
        else:
            reason = fingerprint_mismatch(config.base_model_fingerprint, actual)
            if reason is not None and config.verify_base_model:
                raise ValueError(
                    f"Adapter {adapter_name!r} was trained on another base model than the one given "
                    f"(base_model_name_or_path={config.base_model_name_or_path!r}): {reason}. Load it onto the "
                    "base model it was trained on, or set `verify_base_model=False` in its config to apply it anyway."
                )
        saved_shapes = config.saved_delta_shapes
        if saved_shapes is not None:
            expected = {
                f"base_model.model.{path}.{DELTA}.{name}": tuple(shape)
                for path, module in self._target_modules(model, config).items()
                for name, shape in SkipLayer.delta_shapes(module).items()
            }
            check_deltas_fit(saved_shapes, expected)

    def _target_modules(self, model: nn.Module, config: SkipConfig) -> dict[str, nn.Module]:
        """The modules that get deltas, by path.

        Under a deep path, the outermost modules with parameters of their own get deltas for all their parameters,
        their submodules' included; modules without are containers and are descended into. A module with parameters
        and submodules is wrapped whole because its forward may read its submodules' parameters directly:
        `nn.MultiheadAttention` passes `out_proj.weight` to `F.multi_head_attention_forward`, which would bypass a
        wrapped `out_proj`. A module wrapped for an earlier adapter is a target too (it gets the new deltas).
        """
        towers = get_towers(model)
        paths = []
        for tower in (towers.vision, towers.text):
            if tower is None:
                continue
            skip = config.tower_skip_layers(tower.name)
            if skip > tower.num_layers:
                field = f"{tower.name}_skip_layers" if skip != config.skip_layers else "skip_layers"
                raise ValueError(
                    f"SkipConfig.{field}={skip} is out of range for this model's {tower.name} tower; expected an "
                    f"integer in [0, {tower.num_layers}]."
                )
            paths.extend(tower.deep_module_paths(skip))
        targets = {}
        for path in paths:
            for name, module in model.get_submodule(path).named_modules(prefix=path):
                if any(name.startswith(wrapped + ".") for wrapped in targets):
                    continue  # inside a module that is wrapped whole
                if isinstance(module, BaseTunerLayer):
                    targets[name] = module.get_base_layer()
                elif _has_own_parameters(module):
                    targets[name] = module
        return targets

    def _prepare_model(self, peft_config: SkipConfig, model: nn.Module) -> None:
        self._targets = set(self._target_modules(model, peft_config))

    def _check_target_module_exists(self, peft_config: SkipConfig, key: str) -> bool:
        return key in self._targets

    def _create_and_replace(
        self,
        peft_config: SkipConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **kwargs,
    ) -> None:
        if isinstance(target, SkipLayer):
            target.update_layer(adapter_name, peft_config.init_weights)
            return
        new_module = SkipLayer(target, adapter_name, init_weights=peft_config.init_weights)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def _replace_module(self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module) -> None:
        if isinstance(new_module, SkipLayer):
            super()._replace_module(parent, child_name, new_module, child)
            return
        # Unloading puts the untouched base module back; peft's default would copy a `weight` onto it, which a
        # wrapped non-leaf module (e.g. an attention-pooling head) does not have.
        setattr(parent, child_name, new_module)

    # Checkpoints hold deltas `W - W0` (small after fp16/bf16 rounding, and meaningful on their own) under
    # `<module>.skip_delta.<parameter>`; the model trains the copies `W` under `<module>.skip_tuned.<adapter>.<...>`.

    @classmethod
    def _get_adapter_state_dict(cls, model, config, adapter_name, state_dict, unwanted_adapter_names):
        dtype = getattr(torch, config.delta_dtype)
        deltas = {}
        for name, module in model.named_modules():
            if isinstance(module, SkipLayer) and adapter_name in module.skip_tuned:
                for key, delta in module.get_delta_weight(adapter_name).items():
                    deltas[f"{name}.{DELTA}.{adapter_name}.{key}"] = delta.to(dtype)
        return deltas

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        return super()._remove_adapter_name_from_key(key, adapter_name).replace(f".{TUNED}.", f".{DELTA}.")

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
        remapped = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
        weights = {}
        for key, value in remapped.items():
            module_name, found, rest = key.partition(f".{TUNED}.")
            if not found:
                weights[key] = value
                continue
            layer = model.get_submodule(module_name)
            parameter = rest.partition(".")[2]
            tuned = layer.skip_tuned[adapter_name][parameter]
            base = layer.base_layer.get_parameter(parameter_name(parameter))
            # With `low_cpu_mem_usage=True` the copies are empty (meta) until loaded: compute on the base's device.
            device = base.device if tuned.is_meta else tuned.device
            # Added in float32: exact for float16 weights and float32 deltas (a resumed run goes on from the same `W`).
            weights[key] = (base.detach().to(device).float() + value.to(device).float()).to(tuned.dtype)
        return weights


def _has_own_parameters(module: nn.Module) -> bool:
    return next(module.parameters(recurse=False), None) is not None


def _add_peft_type(name: str) -> None:
    """Adds `name` to peft's `PeftType` enum, which peft offers no public way to extend."""
    if name in PeftType.__members__:
        return
    member = str.__new__(PeftType, name)
    member._name_ = name
    member._value_ = name
    type.__setattr__(PeftType, name, member)
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    PeftType._member_names_.append(name)


def register() -> None:
    """Registers Skip Tuning with peft as peft type `SKIP`, and with transformers' `load_adapter` (idempotent).

    `import peft_skip` calls it after `versions.check_versions()`: both patches are made for tested versions only.
    """
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    _add_peft_type("SKIP")
    if PeftType.SKIP not in PEFT_TYPE_TO_CONFIG_MAPPING:
        register_peft_method(name="skip", config_cls=SkipConfig, model_cls=SkipModel, prefix=PREFIX)
    route_skip_adapters_through_peft()
