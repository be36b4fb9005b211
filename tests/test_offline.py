"""The offline model directories: they load like real checkpoints (tiny models, seconds)."""

from __future__ import annotations

import os

import pytest
import torch
from test_data import random_image
from transformers import AutoProcessor, AutoTokenizer, CLIPModel, CLIPProcessor

from peft_skip.data import FASHION_MNIST_CLASSES, build_prompts
from peft_skip.offline import make_offline_model


@pytest.fixture(scope="module")
def offline_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("offline")
    return make_offline_model(str(out), "tiny", class_names=FASHION_MNIST_CLASSES + ["golden_retriever"], seed=1)


def test_offline_model_round_trip(offline_dir):
    model = CLIPModel.from_pretrained(offline_dir)
    processor = CLIPProcessor.from_pretrained(offline_dir)
    assert type(AutoProcessor.from_pretrained(offline_dir)) is CLIPProcessor
    assert "RANDOM" in open(os.path.join(offline_dir, "README.md")).read()
    tokenizer = processor.tokenizer
    text = model.config.text_config
    assert text.max_position_embeddings == 77 and tokenizer.model_max_length == 77
    assert text.eos_token_id == tokenizer.eos_token_id == text.pad_token_id == tokenizer.pad_token_id
    assert text.bos_token_id == tokenizer.bos_token_id and text.eos_token_id != 2
    assert len(tokenizer) <= text.vocab_size

    prompts = build_prompts(FASHION_MNIST_CLASSES + ["golden_retriever"], "fashion-mnist")
    batch = processor(text=prompts, images=[random_image()] * 2, padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    lengths = mask.sum(-1)
    assert lengths.min() < ids.shape[1]  # prompts differ in length, so padding happened
    assert (ids[:, 0] == text.bos_token_id).all()
    assert (ids[torch.arange(len(ids)), lengths - 1] == text.eos_token_id).all()
    # exactly one EOS inside each prompt, so EOS pooling (first EOS) picks the end of the prompt
    assert (((ids == text.eos_token_id) & mask.bool()).sum(-1) == 1).all()
    unk = tokenizer.convert_tokens_to_ids("<|unk|>")
    assert not (ids == unk).any(), "prompt and class-name words are all in the vocabulary"
    assert tokenizer.convert_ids_to_tokens(ids[0, 1 : lengths[0] - 1].tolist())[:5] == ["a", "photo", "of", "a", "t"]
    assert tokenizer("An unseen WORD")["input_ids"][1:3] == [tokenizer.convert_tokens_to_ids("an"), unk]

    with torch.no_grad():
        out = model(**batch)
    assert out.logits_per_image.shape == (2, len(prompts))
    assert torch.isfinite(out.text_embeds).all()


def test_offline_model_is_seeded_and_loads_with_auto_tokenizer(offline_dir, tmp_path):
    again = make_offline_model(
        str(tmp_path / "again"), "tiny", class_names=FASHION_MNIST_CLASSES + ["golden_retriever"], seed=1
    )
    a, b = CLIPModel.from_pretrained(offline_dir), CLIPModel.from_pretrained(again)
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert (
        AutoTokenizer.from_pretrained(again)("a photo")["input_ids"]
        == AutoTokenizer.from_pretrained(offline_dir)("a photo")["input_ids"]
    )
    with pytest.raises(ValueError, match="Unknown arch"):
        make_offline_model(str(tmp_path / "x"), "vit-h-14")


def test_offline_vit_b_config_shapes():
    from peft_skip.offline import _ARCHS, CLIP_VOCAB_SIZE, _word_tokenizer

    assert _ARCHS["vit-b-16"]["patch"] == 16 and _ARCHS["vit-b-32"]["patch"] == 32
    tokenizer, vocab_size = _word_tokenizer(["cat"], CLIP_VOCAB_SIZE)
    bos, eos = tokenizer.token_to_id("<|startoftext|>"), tokenizer.token_to_id("<|endoftext|>")
    assert (vocab_size, bos, eos) == (49408, 49406, 49407)  # CLIP's own special-token ids
    assert tokenizer.encode("a cat").ids[-1] == 49407
