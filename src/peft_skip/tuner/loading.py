"""transformers' adapter loading (`model.load_adapter`, `AutoModel.from_pretrained(adapter_dir)`) for Skip Tuning.

transformers injects the tuner, then copies the file's tensors into the model's parameters by name; the only
conversions it applies to adapter keys are renamings (`build_peft_weight_mapping` keeps nothing else for these
models). A Skip Tuning file holds deltas `W - W0` while the model holds the tuned weights `W`, so no renaming can
load it: each value must be added to its base weight. For a Skip Tuning adapter, `load_adapter` therefore loads as
peft does, through `set_peft_model_state_dict`, which applies `SkipModel`'s remapping (`W0 + delta`); every other
adapter goes to transformers' own code unchanged. `add_adapter` and peft's `inject_adapter_in_model` need nothing:
they create a fresh adapter, which starts at the base weights.
"""

from __future__ import annotations

import functools
import inspect
import json

from peft import PeftConfig, inject_adapter_in_model, set_peft_model_state_dict
from peft.utils import load_peft_weights
from torch import nn
from transformers.integrations import PeftAdapterMixin
from transformers.utils import find_adapter_config_file
from transformers.utils.loading_report import LoadStateDictInfo

from .config import SkipConfig

PEFT_TYPE = "SKIP"
_SAVED_PREFIX = "base_model.model."  # of every key in an adapter file
# The download settings of `from_pretrained` that also apply to the adapter's files.
_DOWNLOAD_KEYS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision", "subfolder")


def _is_skip_adapter(peft_model_id: str | None, peft_config: PeftConfig | None, download: dict) -> bool:
    if peft_config is not None:
        return getattr(peft_config, "peft_type", None) == PEFT_TYPE
    if peft_model_id is None:
        return False
    config_file = find_adapter_config_file(peft_model_id, **download)
    if config_file is None:
        return False
    with open(config_file, encoding="utf-8") as f:
        return json.load(f).get("peft_type") == PEFT_TYPE


def load_skip_adapter(
    model: nn.Module,
    peft_model_id: str | None,
    adapter_name: str,
    config: PeftConfig | None = None,
    state_dict: dict | None = None,
    low_cpu_mem_usage: bool = False,
    is_trainable: bool = False,
    download: dict | None = None,
) -> LoadStateDictInfo:
    """Loads a Skip Tuning adapter into a transformers model in place, as `PeftModel.load_adapter` would.

    The config and the weights are read (and checked: fields, checksum) first, then the tuner checks the base model
    (fingerprint, the deltas' names and shapes), so a refused adapter leaves the model as it was.

    Args:
        model (`nn.Module`): A transformers model of a supported family.
        peft_model_id (`str`, *optional*): Adapter directory or Hub id; not needed if `config` and `state_dict` are.
        adapter_name (`str`): Name of the new adapter.
        config (`PeftConfig`, *optional*): The adapter's config, instead of reading it from `peft_model_id`.
        state_dict (`dict`, *optional*): The saved deltas, instead of reading them from `peft_model_id`.
        low_cpu_mem_usage (`bool`): Create the tuned weights empty and fill them from the deltas.
        is_trainable (`bool`): Leave the adapter trainable; otherwise it is frozen and the model put in eval mode.
        download (`dict`, *optional*): Hub download settings (`revision`, `token`, ...).
    """
    download = download or {}
    if adapter_name in getattr(model, "peft_config", {}):
        raise ValueError(f"Adapter with name {adapter_name} already exists. Please use a different name.")
    if config is None:
        config = SkipConfig.from_pretrained(peft_model_id, **download)  # with its checks, unlike PeftConfig's
    if state_dict is None:
        state_dict = load_peft_weights(peft_model_id, **download)
    # Checked against the model before it is touched; keys saved from a model without `PeftModel` lack the prefix.
    config.saved_delta_shapes = {
        key if key.startswith(_SAVED_PREFIX) else _SAVED_PREFIX + key: tuple(value.shape)
        for key, value in state_dict.items()
    }
    config.inference_mode = not is_trainable
    inject_adapter_in_model(config, model, adapter_name, low_cpu_mem_usage=low_cpu_mem_usage)
    model._hf_peft_config_loaded = True
    result = set_peft_model_state_dict(model, state_dict, adapter_name, low_cpu_mem_usage=low_cpu_mem_usage)
    if config.inference_mode:
        model.eval()
    return LoadStateDictInfo(
        missing_keys=set(),
        unexpected_keys=set(result.unexpected_keys),
        mismatched_keys=set(),
        error_msgs=[],
        conversion_errors={},
        skipped_pp_keys=set(),
    )


def route_skip_adapters_through_peft() -> None:
    """Makes transformers' `load_adapter` (behind `from_pretrained(adapter_dir)` too) load Skip Tuning adapters with
    `load_skip_adapter`; idempotent."""
    original = PeftAdapterMixin.load_adapter
    if getattr(original, "_loads_skip_adapters", False):
        return
    signature = inspect.signature(original)

    @functools.wraps(original)
    def load_adapter(self, *args, **kwargs):
        call = signature.bind(self, *args, **kwargs)
        call.apply_defaults()
        given = call.arguments
        load_config = given.get("load_config")
        download = {**getattr(load_config, "download_kwargs", {}), **(given.get("adapter_kwargs") or {})}
        if given.get("local_files_only"):
            download["local_files_only"] = True
        download = {key: value for key, value in download.items() if key in _DOWNLOAD_KEYS}
        peft_model_id = given["peft_model_id"] or getattr(load_config, "pretrained_model_name_or_path", None)
        if not _is_skip_adapter(peft_model_id, given["peft_config"], download):
            return original(self, *args, **kwargs)
        if given.get("hotswap") is True:
            raise ValueError("Hotswapping is only supported for LoRA adapters; load a Skip Tuning adapter without it.")
        return load_skip_adapter(
            self,
            peft_model_id,
            given["adapter_name"] or "default",
            config=given["peft_config"],
            state_dict=given["adapter_state_dict"],
            low_cpu_mem_usage=given["low_cpu_mem_usage"],
            is_trainable=given["is_trainable"],
            download=download,
        )

    load_adapter._loads_skip_adapters = True
    PeftAdapterMixin.load_adapter = load_adapter
