"""Guards on the ways an adapter can be loaded that Skip Tuning cannot honour.

Skip Tuning checkpoints hold deltas `W - W0`; the model trains the weights `W`. peft turns one into the other through
`SkipModel`'s state-dict hooks (`PeftModel.from_pretrained`, `PeftModel.load_adapter`, `AutoPeftModel`). transformers'
built-in adapter support (`model.load_adapter`, `model.add_adapter`, `AutoModel.from_pretrained(adapter_dir)`) and
peft's `inject_adapter_in_model` bypass those hooks: they would put the tuned copies in place and then load nothing
into them (the file's keys name deltas), returning the base model, or one with re-initialised weights, with only a log
line. Both create the tuner with a single config instead of `PeftModel`'s `{adapter_name: config}`; that is how they
are recognised, before the model is touched.
"""

from __future__ import annotations

from peft.config import PeftConfig
from torch import nn

INJECTION_REFUSED = (
    "Skip Tuning adapters are loaded and created through peft's PeftModel, not through transformers' built-in adapter "
    "support (model.load_adapter / add_adapter, AutoModel.from_pretrained(adapter_dir)) or inject_adapter_in_model, "
    "which would leave the saved deltas unapplied. Use `import peft_skip; PeftModel.from_pretrained(base_model, "
    "adapter_dir)`, `AutoPeftModel.from_pretrained(adapter_dir)` or `get_peft_model(base_model, SkipConfig(...))`."
)


def refuse_direct_injection(model: nn.Module, peft_config: PeftConfig | dict) -> None:
    """Raises unless the tuner is being created by `PeftModel` (which passes a dict of configs).

    Args:
        model (`nn.Module`): The model the adapter was to be injected into; left as it was.
        peft_config (`PeftConfig` or `dict`): What the tuner was created with.

    Raises:
        ValueError: Naming the peft entry points to use instead.
    """
    if not isinstance(peft_config, PeftConfig):
        return
    if not hasattr(model, "peft_config") and getattr(model, "_hf_peft_config_loaded", False):
        model._hf_peft_config_loaded = False  # `add_adapter` sets it before injecting: no adapter was loaded
    raise ValueError(INJECTION_REFUSED)
