"""Model directories with random weights that load like real checkpoints, for machines without the Hugging Face Hub.

`make_offline_model` writes a two-tower model of a real architecture (ViT-B/32, ViT-B/16 shapes, or a tiny one for
tests) with its family's processor, so that every command and benchmark runs unchanged where no pretrained checkpoint
can be downloaded. Their accuracies mean nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .data import TEMPLATES, build_prompts

# Words of CoOp-style prompts and of common image descriptions; `make_offline_model` adds the class-name words.
_PROMPT_WORDS = """
a an the of in on at by with without and or for to from this that these those is are its it his her their one two
three photo photos picture image images drawing painting sketch rendering cartoon sculpture tattoo origami toy plushie
close up cropped bright dark blurry clean dirty good bad large small big little low high resolution quality jpeg
pixelated black white grey gray red green blue yellow orange purple pink brown type kind sort class category pet
flower food aircraft plane car texture satellite centered view aerial person doing clothing clothes garment shoe
animal bird dog cat object thing item handwritten digit number letter scene place style art video game embroidered
hard see rendition weird cool nice my our your someone something
"""
_ARCHS = {
    "vit-b-32": dict(text=(512, 2048, 12, 8), vision=(768, 3072, 12, 12), patch=32, image=224, projection=512),
    "vit-b-16": dict(text=(512, 2048, 12, 8), vision=(768, 3072, 12, 12), patch=16, image=224, projection=512),
    "tiny": dict(text=(32, 64, 4, 4), vision=(32, 64, 4, 4), patch=8, image=32, projection=16),
}
CLIP_VOCAB_SIZE = 49408


@dataclass(frozen=True)
class _SpecialTokens:
    """A family's special tokens; `bos` is `None` where its tokenizer adds none (SigLIP)."""

    bos: str | None
    eos: str
    pad: str
    unk: str


@dataclass(frozen=True)
class _OfflineFamily:
    """The transformers classes and tokens of one two-tower family, by name (imported when used)."""

    config: str
    model: str
    processor: str
    image_processor: str
    tokens: _SpecialTokens


_CLIP_TOKENS = _SpecialTokens("<|startoftext|>", "<|endoftext|>", "<|endoftext|>", "<|unk|>")
OFFLINE_FAMILIES = {
    "clip": _OfflineFamily("CLIPConfig", "CLIPModel", "CLIPProcessor", "CLIPImageProcessor", _CLIP_TOKENS),
    "metaclip_2": _OfflineFamily(
        "MetaClip2Config", "MetaClip2Model", "CLIPProcessor", "CLIPImageProcessor", _CLIP_TOKENS
    ),
    "siglip": _OfflineFamily(
        "SiglipConfig",
        "SiglipModel",
        "SiglipProcessor",
        "SiglipImageProcessor",
        _SpecialTokens(None, "</s>", "</s>", "<unk>"),
    ),
    "chinese_clip": _OfflineFamily(
        "ChineseCLIPConfig",
        "ChineseCLIPModel",
        "ChineseCLIPProcessor",
        "ChineseCLIPImageProcessor",
        _SpecialTokens("[CLS]", "[SEP]", "[PAD]", "[UNK]"),
    ),
    "altclip": _OfflineFamily(
        "AltCLIPConfig",
        "AltCLIPModel",
        "AltCLIPProcessor",
        "CLIPImageProcessor",
        _SpecialTokens("<s>", "</s>", "<pad>", "<unk>"),
    ),
}


def _word_tokenizer(class_names: Sequence[str], vocab_size: int | None, special: _SpecialTokens = _CLIP_TOKENS):
    """A word-level `tokenizers.Tokenizer`: lowercase words, punctuation and single digits, wrapped in
    `special.bos ... special.eos`. BOS and EOS take the last two ids of `vocab_size` (CLIP's 49406 / 49407 for the real
    size), UNK and a separate PAD the ids after the words; unknown words map to UNK.

    Returns:
        The tokenizer and its vocabulary size.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("isolated"), pre_tokenizers.Digits(True)]
    )
    texts = [_PROMPT_WORDS, *TEMPLATES.values(), "0 1 2 3 4 5 6 7 8 9", *build_prompts(class_names, "{}")]
    words = sorted(
        {word for text in texts for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))}
        - {"{", "}"}
    )
    specials = list(dict.fromkeys([special.unk, special.pad, special.bos or special.eos, special.eos]))
    vocab_size = vocab_size or len(words) + len(specials)
    if len(words) + len(specials) > vocab_size:
        raise ValueError(f"{len(words)} words do not fit a vocabulary of {vocab_size}.")
    vocab = {word: i for i, word in enumerate(words)}
    vocab[special.unk] = len(words)
    if special.pad != special.eos:
        vocab[special.pad] = len(words) + 1
    if special.bos is not None:
        vocab[special.bos] = vocab_size - 2
    vocab[special.eos] = vocab_size - 1
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=special.unk))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    wrapped = [special.bos] if special.bos is not None else []
    tokenizer.post_processor = processors.TemplateProcessing(
        single=" ".join([*wrapped, "$A", special.eos]),
        special_tokens=[(token, vocab[token]) for token in [*wrapped, special.eos]],
    )
    return tokenizer, vocab_size


def make_offline_model(
    out_dir: str,
    arch: str = "vit-b-32",
    class_names: Sequence[str] | None = None,
    seed: int = 0,
    family: str = "clip",
) -> str:
    """Writes a two-tower checkpoint with random weights that loads like a real one, for machines without the hub.

    `AutoModel.from_pretrained(out_dir)` and `AutoProcessor.from_pretrained(out_dir)` load it. `family` is one of
    `OFFLINE_FAMILIES` ("clip", "metaclip_2", "siglip", "chinese_clip", "altclip"); the model has that family's layout
    with the sizes of `arch` ("vit-b-32", "vit-b-16", or "tiny": 4 layers of width 32, 32x32 images), the processor
    the family's image preprocessing and a word-level tokenizer, with the family's special tokens, over common prompt
    words and the words of `class_names` (other words become the unknown token). Accuracy numbers from it mean
    nothing.

    Returns:
        `out_dir`.
    """
    import transformers
    from transformers import PreTrainedTokenizerFast

    if arch not in _ARCHS:
        raise ValueError(f"Unknown arch {arch!r}; choose one of {sorted(_ARCHS)}.")
    if family not in OFFLINE_FAMILIES:
        raise ValueError(f"Unknown family {family!r}; choose one of {sorted(OFFLINE_FAMILIES)}.")
    spec, classes = _ARCHS[arch], OFFLINE_FAMILIES[family]
    special = classes.tokens
    tokenizer, vocab_size = _word_tokenizer(
        list(class_names or []), None if arch == "tiny" else CLIP_VOCAB_SIZE, special
    )
    fast_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=special.bos,
        eos_token=special.eos,
        pad_token=special.pad,
        unk_token=special.unk,
        model_max_length=77,
    )
    text_width, text_mlp, text_layers, text_heads = spec["text"]
    vision_width, vision_mlp, vision_layers, vision_heads = spec["vision"]
    text_config = dict(
        hidden_size=text_width,
        intermediate_size=text_mlp,
        num_hidden_layers=text_layers,
        num_attention_heads=text_heads,
        vocab_size=vocab_size,
        max_position_embeddings=77,
        bos_token_id=fast_tokenizer.bos_token_id,
        eos_token_id=fast_tokenizer.eos_token_id,
        pad_token_id=fast_tokenizer.pad_token_id,
    )
    if family == "altclip":
        # RoBERTa position ids start after the padding id, so the table needs that many more rows.
        text_config.update(max_position_embeddings=77 + fast_tokenizer.pad_token_id + 1, project_dim=text_width)
    vision_config = dict(
        hidden_size=vision_width,
        intermediate_size=vision_mlp,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads,
        image_size=spec["image"],
        patch_size=spec["patch"],
    )
    extra = {} if family == "siglip" else dict(projection_dim=spec["projection"])
    config = getattr(transformers, classes.config)(text_config=text_config, vision_config=vision_config, **extra)
    torch.manual_seed(seed)
    getattr(transformers, classes.model)(config).save_pretrained(out_dir)
    image_size = spec["image"]
    if family == "siglip":
        image_processor = transformers.SiglipImageProcessor(size={"height": image_size, "width": image_size})
    else:
        image_processor = getattr(transformers, classes.image_processor)(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        )
    processor = getattr(transformers, classes.processor)(image_processor=image_processor, tokenizer=fast_tokenizer)
    processor.save_pretrained(out_dir)
    Path(out_dir, "README.md").write_text(
        f"# Offline {family} ({arch}) with RANDOM weights\n\n"
        f"Written by `peft_skip.offline.make_offline_model(arch={arch!r}, seed={seed}, family={family!r})` for "
        "machines that cannot download pretrained checkpoints. The architecture matches the real model; the weights "
        "are random and the tokenizer is a small word-level one, so it measures speed, memory and mechanics only: its "
        "accuracy means nothing.\n"
    )
    return out_dir
