"""The offline model directories: they load like real checkpoints (tiny models, seconds)."""

from __future__ import annotations

import os

import pytest
import torch
from synthetic_images import random_image
from transformers import AutoModel, AutoProcessor, AutoTokenizer, CLIPModel, CLIPProcessor

from peft_skip.data import FASHION_MNIST_CLASSES, TEMPLATES, build_prompts
from peft_skip.offline import OFFLINE_FAMILIES, make_offline_model


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
    pieces = tokenizer.convert_ids_to_tokens(ids[0, 1 : lengths[0] - 1].tolist())
    assert pieces[:5] == ["a</w>", "photo</w>", "of</w>", "a</w>", "t</w>"]  # learned words are single BPE tokens
    assert tokenizer.tokenize("An unseen WORD")[0] == "an</w>" and len(tokenizer.tokenize("unseen")) > 1

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
    assert (
        open(os.path.join(again, "tokenizer.json")).read() == open(os.path.join(offline_dir, "tokenizer.json")).read()
    )
    with pytest.raises(ValueError, match="Unknown arch"):
        make_offline_model(str(tmp_path / "x"), "vit-h-14")


def test_offline_vit_b_config_shapes():
    from peft_skip.offline import _ARCHS, _clip_tokenizer, _corpus

    assert _ARCHS["vit-b-16"]["patch"] == 16 and _ARCHS["vit-b-32"]["patch"] == 32
    assert OFFLINE_FAMILIES["clip"].vocab_size == 49408
    tokenizer = _clip_tokenizer(_corpus(["cat"]), 49408)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (49406, 49407, 49407)
    ids = tokenizer("a cat")["input_ids"]
    assert (
        ids[0] == 49406 and ids[-1] == 49407 and "".join(tokenizer.convert_ids_to_tokens(ids[1:-1])) == "a</w>cat</w>"
    )


# The tokenizer class AutoTokenizer loads for the real checkpoints in transformers >= 5.20 (SigLIP 2's Hub files name
# GemmaTokenizer, which transformers replaces by its lowercasing Siglip2Tokenizer; the offline model names that class,
# so that transformers < 5.20 lowercases too), and whether it lowercases.
REAL_TOKENIZERS = {
    "clip": ("CLIPTokenizer", True),
    "metaclip_2": ("XLMRobertaTokenizer", False),
    "siglip": ("SiglipTokenizer", True),
    "siglip2": ("Siglip2Tokenizer", True),
    "chinese_clip": ("BertTokenizer", True),
    "altclip": ("XLMRobertaTokenizer", False),
}
CLASSES = FASHION_MNIST_CLASSES + ["golden_retriever", *"0123456789"]


@pytest.fixture(scope="module", params=sorted(OFFLINE_FAMILIES))
def family_dir(request, tmp_path_factory):
    out = str(tmp_path_factory.mktemp(request.param))
    return request.param, make_offline_model(out, "tiny", class_names=CLASSES, seed=0, family=request.param)


def test_every_family_has_its_real_tokenizer(family_dir):
    family, model_dir = family_dir
    assert set(REAL_TOKENIZERS) == set(OFFLINE_FAMILIES)
    tokenizer, processor = AutoTokenizer.from_pretrained(model_dir), AutoProcessor.from_pretrained(model_dir)
    tokenizer_class, lowercases = REAL_TOKENIZERS[family]
    assert type(tokenizer).__name__ == type(processor.tokenizer).__name__ == tokenizer_class
    assert (tokenizer.tokenize("A Photo") == tokenizer.tokenize("a photo")) == lowercases

    special = OFFLINE_FAMILIES[family].tokens
    for template in TEMPLATES:
        for prompt in build_prompts(CLASSES, template):
            assert special.unk not in tokenizer.tokenize(prompt), prompt
    ids = tokenizer(["a photo of a T-shirt/top.", "a 7"], padding=True)["input_ids"]
    pad, eos = tokenizer.convert_tokens_to_ids([special.pad, special.eos])
    assert tokenizer.convert_ids_to_tokens(ids[0][-1]) == special.eos and ids[0].count(eos) == 1
    assert ids[1][-1] == pad and ids[1].index(eos) < len(ids[1]) - 1  # padded on the right
    if special.starts_with_bos:
        assert [ids[0][0], ids[1][0]] == tokenizer.convert_tokens_to_ids([special.bos] * 2)
    elif special.bos is not None:
        assert tokenizer.convert_tokens_to_ids(special.bos) not in ids[0] + ids[1]

    text = AutoModel.from_pretrained(model_dir).config.text_config
    assert text.pad_token_id == pad == tokenizer.pad_token_id and text.eos_token_id == eos
    assert text.bos_token_id == (tokenizer.convert_tokens_to_ids(special.bos) if special.bos else None)
    assert text.vocab_size == len(tokenizer) and tokenizer.model_max_length == OFFLINE_FAMILIES[family].max_length


def test_every_family_runs_on_its_processor_output(family_dir):
    family, model_dir = family_dir
    model, processor = AutoModel.from_pretrained(model_dir), AutoProcessor.from_pretrained(model_dir)
    prompts = build_prompts(["cat", "Ankle boot", "7"])
    batch = processor(text=prompts, images=[random_image()] * 2, padding="max_length", return_tensors="pt")
    assert batch["input_ids"].shape == (3, OFFLINE_FAMILIES[family].max_length)
    with torch.no_grad():
        out = model(**batch)
    assert out.logits_per_image.shape == (2, 3) and torch.isfinite(out.logits_per_image).all()
    if family == "siglip2":
        assert batch["pixel_attention_mask"].shape == (2, model.config.vision_config.num_patches)


@pytest.mark.parametrize("family", sorted(OFFLINE_FAMILIES))
def test_full_size_towers_meet_in_one_feature_space(family):
    """The ViT-B/16 configs give image and text features of one size (SigLIP, without projection, needs equal tower
    widths). Built with one layer per tower and a vocabulary cut to the ids in use, to stay fast."""
    import transformers

    from peft_skip.offline import _ARCHS, _corpus, _model_config
    from peft_skip.towers import get_towers

    classes = OFFLINE_FAMILIES[family]
    tokenizer = classes.tokenizer(_corpus(["cat"]), classes.vocab_size)
    config = _model_config(family, "vit-b-16", tokenizer)
    assert config.vision_config.hidden_size == _ARCHS["vit-b-16"]["vision"][0]
    assert config.text_config.vocab_size == classes.vocab_size
    for sub in (config.text_config, config.vision_config):
        sub.num_hidden_layers = 1
    config.text_config.vocab_size = min(classes.vocab_size, 50_000)  # every id the tokenizer uses is below it
    model = getattr(transformers, classes.model)(config).eval()
    ids = tokenizer(["a photo of a cat."], padding="max_length", return_tensors="pt")
    size = 16 * 16 if family == "siglip2" else 224
    with torch.no_grad():
        text = model.get_text_features(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"])
        image = model.get_image_features(**get_towers(model).vision.image_inputs(torch.zeros(1, 3, size, size)))
    assert text.pooler_output.shape == image.pooler_output.shape
