"""Class names into prompts: one template per dataset (the Skip Tuning reference's for the paper's datasets)."""

from __future__ import annotations

import string
from collections.abc import Sequence

# One prompt template per dataset. The 15 datasets of the CoOp family use the Skip Tuning reference's own templates
# (`_CUSTOM_TEMPLATES` of Koorye/SkipTuning `trainers/baselines/ft_clip.py`; 11 of them differ from CoOp's); the
# offline datasets have their own.
TEMPLATES: dict[str, str] = {
    "default": "a photo of a {}.",
    "imagenet": "a photo of a {}.",
    "imagenetv2": "a photo of a {}.",
    "imagenet_sketch": "a sketch of a {}.",
    "imagenet_a": "a bad photo of a {}.",
    "imagenet_r": "a rendition of a {}.",
    "caltech101": "itap of a {}.",
    "dtd": "itap of a {}.",
    "eurosat": "a centered satellite photo of {}.",
    "fgvc_aircraft": "a bright photo of a {}, a type of aircraft.",
    "food101": "a photo of the nice {}.",
    "oxford_flowers": "a close-up photo of a {}.",
    "oxford_pets": "a bad photo of a {}, a type of pet.",
    "sun397": "a photo of a {}.",
    "stanford_cars": "a photo of the {}, a type of car.",
    "ucf101": "a photo of a {}, a type of sport.",
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
