"""Prompts from class names and the per-dataset templates."""

from __future__ import annotations

import pytest

from peft_skip.data import (
    TEMPLATES,
    build_prompts,
)


def test_build_prompts():
    assert build_prompts(["golden_retriever", "cat"]) == ["a photo of a golden retriever.", "a photo of a cat."]
    assert build_prompts(["pug"], "oxford_pets") == ["a bad photo of a pug, a type of pet."]
    assert build_prompts(["Coat"], "fashion-mnist") == ["a photo of a Coat, a type of clothing."]
    assert build_prompts(["banded"], "{} texture.") == ["banded texture."]
    assert TEMPLATES["eurosat"].count("{}") == 1
    with pytest.raises(ValueError, match="exactly one"):
        build_prompts(["x"], "no placeholder")
