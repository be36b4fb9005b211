"""Class names into prompts: the per-dataset templates of the CoOp family of papers."""

from __future__ import annotations

import string
from collections.abc import Sequence

# Per-dataset prompt templates of the CoOp family of papers (CoOp, CoCoOp, MaPLe, PromptSRC, Skip Tuning).
TEMPLATES: dict[str, str] = {
    "default": "a photo of a {}.",
    "imagenet": "a photo of a {}.",
    "imagenet_sketch": "a photo of a {}.",
    "imagenetv2": "a photo of a {}.",
    "imagenet_a": "a photo of a {}.",
    "imagenet_r": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
    "oxford_pets": "a photo of a {}, a type of pet.",
    "stanford_cars": "a photo of a {}.",
    "oxford_flowers": "a photo of a {}, a type of flower.",
    "food101": "a photo of {}, a type of food.",
    "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
    "sun397": "a photo of a {}.",
    "dtd": "{} texture.",
    "eurosat": "a centered satellite photo of {}.",
    "ucf101": "a photo of a person doing {}.",
    "fashion-mnist": "a photo of a {}, a type of clothing.",
    "digits": "a photo of the handwritten digit {}.",
}


def build_prompts(class_names: Sequence[str], template: str = "a photo of a {}.") -> list[str]:
    """One prompt per class; underscores in class names read as spaces.

    Args:
        class_names (`Sequence[str]`): Name of each class.
        template (`str`): A key of `TEMPLATES` or a format string with exactly one `{}`.
    """
    template = TEMPLATES.get(template, template)
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template)]
    except ValueError as error:  # a stray '{' or '}'
        raise ValueError(
            f"Template {template!r} is not a valid format string ({error}); write a literal brace as '{{{{' or '}}}}'."
        ) from None
    fields = [field for field in fields if field[0] is not None]
    if fields != [("", "", None)]:
        raise ValueError(
            f"Template {template!r} must be a key of TEMPLATES ({sorted(TEMPLATES)}) "
            "or a string with exactly one '{}' (and no other '{...}'; write a literal brace as '{{' or '}}')."
        )
    return [template.format(" ".join(name.replace("_", " ").split())) for name in class_names]
