"""The Skip Tuning section of an adapter's model card (README.md)."""

from __future__ import annotations

from huggingface_hub import ModelCard

SECTION = "## Skip Tuning adapter"


def add_skip_section(card_path: str, base: str | None, settings: dict) -> None:
    """Adds (once) a section on the Skip Tuning config and how to load the adapter to a peft model card.

    Args:
        card_path (`str`): The README.md peft wrote.
        base (`str`, *optional*): Name or directory of the base model.
        settings (`dict`): The method's settings (`SkipConfig.method_settings()`).
    """
    card = ModelCard.load(card_path)
    if base and not card.data.base_model:
        card.data.base_model = base
    if SECTION in card.text:
        card.save(card_path)
        return
    base = base or "<base model name or directory>"
    rows = "\n".join(f"| `{key}` | `{value}` |" for key, value in settings.items())
    section = f"""
{SECTION}

Deltas of the deep layers of both towers, trained with Skip Tuning (Wu et al., CVPR 2025,
arXiv 2412.11509) using [peft-skip](https://pypi.org/project/peft-skip/). The file holds only the deltas of the
trained layers; the base model's weights are not included.

| setting | value |
|---|---|
{rows}

### How to load

```python
import peft_skip  # registers the SKIP peft type; import it before loading
from peft import PeftModel
from transformers import AutoModel

base = AutoModel.from_pretrained("{base}")
model = PeftModel.from_pretrained(base, "<this repository or directory>")
model = model.merge_and_unload()  # a plain model again: no inference overhead
```
"""
    card.text = card.text.rstrip("\n") + "\n" + section
    card.save(card_path)
