"""Pretraining the world CLIP: a tiny run is deterministic and saves a directory the Auto classes load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoProcessor, CLIPModel

from peft_skip.data.world import World
from peft_skip.offline.pretrain import PretrainConfig, pixel_values, pretrain, world_clip_path

TINY = PretrainConfig(steps=3, batch_size=16, width=32, layers=2, heads=2, warmup_steps=1)


def test_tiny_pretraining_is_deterministic_and_loads(tmp_path):
    first, _ = pretrain(TINY, str(tmp_path / "a"), log=lambda line: None)
    second, _ = pretrain(TINY, str(tmp_path / "b"), log=lambda line: None)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    initial = CLIPModel(first.config)
    assert not torch.equal(initial.text_projection.weight, first.text_projection.weight)

    model = AutoModel.from_pretrained(tmp_path / "a")
    processor = AutoProcessor.from_pretrained(tmp_path / "a")
    assert isinstance(model, CLIPModel)
    assert json.loads(Path(tmp_path / "a" / "pretrain_config.json").read_text())["steps"] == 3
    images, captions = World(0).pretraining_batch(2, np.random.default_rng(0))
    inputs = processor(text=captions, images=list(images), return_tensors="pt", padding=True)
    # The processor prepares images exactly as pretraining did.
    assert torch.allclose(inputs["pixel_values"], pixel_values(images), atol=1e-5)
    decoded = processor.tokenizer.batch_decode(inputs["input_ids"], skip_special_tokens=True)
    assert [" ".join(d.replace(" .", ".").replace(" ,", ",").split()) for d in decoded] == captions
    with torch.no_grad():
        assert model(**inputs).logits_per_image.shape == (2, 2)


def test_shipped_world_clip_loads():
    model = AutoModel.from_pretrained(world_clip_path())
    processor = AutoProcessor.from_pretrained(world_clip_path())
    assert model.config.vision_config.image_size == 32
    assert processor.tokenizer("a photo of a red sneaker.")["input_ids"][0] == processor.tokenizer.bos_token_id


def test_rebuilt_tokenizer_is_the_shipped_one():
    """`python -m peft_skip.offline.pretrain` rebuilds the shipped model only if it rebuilds its tokenizer: a change to
    the offline tokenizers or to the prompt words that moves a single id fails here, not silently in a rebuild."""
    from peft_skip.offline.pretrain import build_tokenizer

    shipped = json.loads((Path(world_clip_path()) / "tokenizer.json").read_text())["model"]
    rebuilt = json.loads(build_tokenizer().backend_tokenizer.to_str())["model"]
    assert rebuilt["vocab"] == shipped["vocab"] and rebuilt["merges"] == shipped["merges"]


def test_command_line_sets_every_pretraining_field(tmp_path):
    from peft_skip.offline.pretrain import main

    main(
        ["--steps", "1", "--batch-size", "4", "--width", "32", "--layers", "1", "--heads", "2", "--out", str(tmp_path)]
    )
    saved = json.loads((tmp_path / "pretrain_config.json").read_text())
    assert saved["steps"] == 1 and saved["width"] == 32 and saved["learning_rate"] == PretrainConfig().learning_rate
    assert AutoModel.from_pretrained(tmp_path).config.text_config.hidden_size == 32
