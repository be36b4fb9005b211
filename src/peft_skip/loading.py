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

INJECTION_REFUSED = (
    "Skip Tuning adapters are loaded and created through peft's PeftModel, not through transformers' built-in adapter "
    "support (model.load_adapter / add_adapter, AutoModel.from_pretrained(adapter_dir)) or inject_adapter_in_model, "
    "which would leave the saved deltas unapplied. Use `import peft_skip; PeftModel.from_pretrained(base_model, "
    "adapter_dir)`, `AutoPeftModel.from_pretrained(adapter_dir)` or `get_peft_model(base_model, SkipConfig(...))`."
)


def refuse_direct_injection(peft_config: PeftConfig | dict) -> None:
    """Raises unless the tuner is being created by `PeftModel` (which passes a dict of configs).

    Raises:
        ValueError: Naming the peft entry points to use instead.
    """
    if isinstance(peft_config, PeftConfig):
        raise ValueError(INJECTION_REFUSED)
