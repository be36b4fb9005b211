"""Model directories with random weights that load like real checkpoints, for machines without the Hugging Face Hub.

`make_offline_model` writes a two-tower model of a real architecture (ViT-B/32, ViT-B/16 shapes, or a tiny one for
tests) with its family's processor and the tokenizer class the family's real checkpoints ship, trained offline on a
small corpus, so that every command and benchmark runs unchanged where no pretrained checkpoint can be downloaded.
Their accuracies mean nothing.
"""

from __future__ import annotations

import string
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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
# Attribute of the model config that marks random weights; saved with the config, so it travels with the directory.
RANDOM_WEIGHTS = "peft_skip_random_weights"
_ARCHS = {
    "vit-b-32": dict(text=(512, 2048, 12, 8), vision=(768, 3072, 12, 12), patch=32, image=224, projection=512),
    "vit-b-16": dict(text=(512, 2048, 12, 8), vision=(768, 3072, 12, 12), patch=16, image=224, projection=512),
    "tiny": dict(text=(32, 64, 4, 4), vision=(32, 64, 4, 4), patch=8, image=32, projection=16),
}


def _corpus(class_names: Sequence[str]) -> list[str]:
    """The texts the offline tokenizers learn their vocabulary from: prompt words, templates, digits, class prompts."""
    templates = [template.replace("{}", " ") for template in TEMPLATES.values()]
    return [_PROMPT_WORDS, *templates, " ".join("0123456789"), *build_prompts(class_names, "{}")]


def _words(tokenizer, texts: Sequence[str]) -> list[str]:
    """The distinct words of `texts` as the normalizer and pre-tokenizer of `tokenizer` (a `TokenizersBackend`) see
    them, sorted."""
    backend = tokenizer.backend_tokenizer
    normalize = backend.normalizer.normalize_str if backend.normalizer else str
    return sorted({word for text in texts for word, _ in backend.pre_tokenizer.pre_tokenize_str(normalize(text))})


def _sentencepiece(texts: Sequence[str], **special_ids: int) -> bytes:
    """A SentencePiece unigram model learned from `texts` (every character kept), with special pieces at
    `special_ids` (e.g. `eos_id=1`; -1 leaves one out). SentencePiece training is deterministic.

    Returns:
        The serialized model (the content of an `spiece.model` file).
    """
    import io

    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        vocab_size=100_000,
        hard_vocab_limit=False,
        character_coverage=1.0,
        minloglevel=2,
        **special_ids,
    )
    return model.getvalue()


def _merges(words: Sequence[str]) -> list[tuple[str, str]]:
    """BPE merges that build each word of `words` (lists of symbols) left to right, in order, without repeats.
    (tokenizers' BPE trainer breaks ties between equally frequent pairs differently from run to run.)"""
    merges = [("".join(word[:end]), word[end]) for word in words for end in range(1, len(word))]
    return list(dict.fromkeys(merges))


def _clip_tokenizer(texts: Sequence[str], vocab_size: int | None):
    """CLIP's byte-level BPE with `</w>` word ends: the 256 bytes alone and at word end, then merges that build each
    word of `texts`; `<|startoftext|>` / `<|endoftext|>` take the last two ids (49406 / 49407 at the real size)."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges = _merges([[*word[:-1], word[-1] + "</w>"] for word in _words(CLIPTokenizer(), texts)])
    tokens = list(dict.fromkeys([*alphabet, *(a + "</w>" for a in alphabet), *("".join(pair) for pair in merges)]))
    vocab_size = vocab_size or len(tokens) + 2
    if len(tokens) + 2 > vocab_size:
        raise ValueError(f"{len(tokens)} BPE tokens do not fit a vocabulary of {vocab_size}.")
    vocab = {token: i for i, token in enumerate(tokens)}
    vocab.update({"<|startoftext|>": vocab_size - 2, "<|endoftext|>": vocab_size - 1})
    return CLIPTokenizer(vocab=vocab, merges=merges)


def _xlm_roberta_tokenizer(texts: Sequence[str], vocab_size: int | None):
    """XLM-R's SentencePiece unigram (also MetaCLIP 2's XLM-V), cased: `<s>` 0, `<pad>` 1, `</s>` 2, `<unk>` 3,
    `<mask>` last."""
    import sentencepiece
    from transformers import XLMRobertaTokenizer

    model = sentencepiece.SentencePieceProcessor(model_proto=_sentencepiece(texts, unk_id=0, bos_id=-1, eos_id=-1))
    pieces = [(model.id_to_piece(i), model.get_score(i)) for i in range(1, model.get_piece_size())]
    specials = [(token, 0.0) for token in ("<s>", "<pad>", "</s>", "<unk>")]
    return XLMRobertaTokenizer(vocab=[*specials, *pieces, ("<mask>", 0.0)])


def _bert_tokenizer(texts: Sequence[str], vocab_size: int | None):
    """BERT's lowercasing WordPiece (ChineseCLIP), special tokens at the ids of `bert-base-chinese`: `[PAD]` 0,
    `[UNK]` 100, `[CLS]` 101, `[SEP]` 102, `[MASK]` 103; every word of `texts` is one piece."""
    from transformers import BertTokenizer

    specials = ["[PAD]", *(f"[unused{i}]" for i in range(1, 100)), "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = _words(BertTokenizer(), texts)
    return BertTokenizer(vocab={token: i for i, token in enumerate([*specials, *words])})


def _siglip_tokenizer(texts: Sequence[str], vocab_size: int | None):
    """SigLIP's SentencePiece model (`spiece.model`): `<pad>` 0, `</s>` 1 (end and padding), `<unk>` 2, no
    beginning token; trained on lowercase text without punctuation, as `SiglipTokenizer` canonicalizes it."""
    from transformers import SiglipTokenizer

    canonical = [" ".join(text.lower().translate(str.maketrans("", "", string.punctuation)).split()) for text in texts]
    with tempfile.TemporaryDirectory() as tmp:
        model_file = Path(tmp, "spiece.model")
        model_file.write_bytes(_sentencepiece(canonical, pad_id=0, eos_id=1, unk_id=2, bos_id=-1))
        return SiglipTokenizer(vocab_file=str(model_file))


def _gemma_tokenizer(texts: Sequence[str], vocab_size: int | None):
    """Gemma's BPE with byte fallback, as SigLIP 2 ships it: `<pad>` 0, `<eos>` 1, `<bos>` 2, `<unk>` 3, `<mask>` 4,
    the 256 byte tokens, then pieces of lowercase words (`▁` marks a leading space); no `<bos>`, a closing `<eos>`,
    padding on the right."""
    from tokenizers import pre_tokenizers
    from transformers import GemmaTokenizer

    learner = GemmaTokenizer()
    # Gemma reads a whole text as one pre-token; pieces are learned within words, as in the real one.
    learner.backend_tokenizer.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    words = _words(learner, [text.lower() for text in texts])
    merges = _merges([list(word) for word in words])
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", *(f"<0x{byte:02X}>" for byte in range(256))]
    tokens = dict.fromkeys([*specials, *sorted({char for word in words for char in word}), *map("".join, merges)])
    return GemmaTokenizer(
        vocab={token: i for i, token in enumerate(tokens)},
        merges=merges,
        add_bos_token=False,
        add_eos_token=True,
        padding_side="right",
    )


@dataclass(frozen=True)
class _SpecialTokens:
    """A family's special tokens (`bos` is `None` where the tokenizer has none) and whether texts start with `bos`."""

    bos: str | None
    eos: str
    pad: str
    unk: str
    starts_with_bos: bool = True


@dataclass(frozen=True)
class _OfflineFamily:
    """One two-tower family: its transformers classes by name (imported when used), the builder of the tokenizer class
    its real checkpoints ship, `tokenizer(texts, vocab_size)` (only CLIP's places tokens by `vocab_size`), that
    tokenizer's special tokens, the real text vocabulary size (used for the full-size archs) and text length."""

    config: str
    model: str
    processor: str
    image_processor: str
    tokenizer: Callable
    tokens: _SpecialTokens
    vocab_size: int
    max_length: int


_XLM_R_TOKENS = _SpecialTokens("<s>", "</s>", "<pad>", "<unk>")
OFFLINE_FAMILIES = {
    "clip": _OfflineFamily(
        "CLIPConfig",
        "CLIPModel",
        "CLIPProcessor",
        "CLIPImageProcessor",
        _clip_tokenizer,
        _SpecialTokens("<|startoftext|>", "<|endoftext|>", "<|endoftext|>", "<|endoftext|>"),
        49408,
        77,
    ),
    "metaclip_2": _OfflineFamily(
        "MetaClip2Config",
        "MetaClip2Model",
        "CLIPProcessor",
        "CLIPImageProcessor",
        _xlm_roberta_tokenizer,
        _XLM_R_TOKENS,
        901629,
        77,
    ),
    "siglip": _OfflineFamily(
        "SiglipConfig",
        "SiglipModel",
        "SiglipProcessor",
        "SiglipImageProcessor",
        _siglip_tokenizer,
        _SpecialTokens(None, "</s>", "</s>", "<unk>", starts_with_bos=False),
        32000,
        64,
    ),
    "siglip2": _OfflineFamily(
        "Siglip2Config",
        "Siglip2Model",
        "Siglip2Processor",
        "Siglip2ImageProcessor",
        _gemma_tokenizer,
        _SpecialTokens("<bos>", "<eos>", "<pad>", "<unk>", starts_with_bos=False),
        256000,
        64,
    ),
    "chinese_clip": _OfflineFamily(
        "ChineseCLIPConfig",
        "ChineseCLIPModel",
        "ChineseCLIPProcessor",
        "ChineseCLIPImageProcessor",
        _bert_tokenizer,
        _SpecialTokens("[CLS]", "[SEP]", "[PAD]", "[UNK]"),
        21128,
        77,
    ),
    "altclip": _OfflineFamily(
        "AltCLIPConfig",
        "AltCLIPModel",
        "AltCLIPProcessor",
        "CLIPImageProcessor",
        _xlm_roberta_tokenizer,
        _XLM_R_TOKENS,
        250002,
        77,
    ),
}


def _encoder(width: int, mlp: int, layers: int, heads: int) -> dict:
    """The sizes of a transformer encoder, as the keyword arguments of a transformers text or vision config."""
    return dict(hidden_size=width, intermediate_size=mlp, num_hidden_layers=layers, num_attention_heads=heads)


def _naflex_patches(family: _OfflineFamily) -> tuple[int, int]:
    """Patch size and patch count of a SigLIP 2 model. `Siglip2Processor`'s own NaFlex defaults (patch 16, up to 256
    patches, as the real checkpoints) override those saved with its image processor, so the model takes them
    whatever the arch's patch and image size."""
    import transformers

    kwargs = getattr(transformers, family.processor).images_kwargs
    return kwargs["patch_size"], kwargs["max_num_patches"]


def _model_config(family: str, arch: str, tokenizer):
    """The transformers config of an offline model of `family` with the sizes of `arch`.

    Args:
        family (`str`): A key of `OFFLINE_FAMILIES`.
        arch (`str`): `vit-b-32`, `vit-b-16` or `tiny`.
        tokenizer: The family's tokenizer; gives the special token ids (and the vocabulary size of `tiny`).
    """
    import transformers

    spec, classes = _ARCHS[arch], OFFLINE_FAMILIES[family]
    # SigLIP compares the towers' pooled states directly (no projection): the text tower takes the vision sizes, as
    # in the real checkpoints.
    projected = not family.startswith("siglip")
    ids = {
        f"{name}_token_id": tokenizer.convert_tokens_to_ids(token) if token is not None else None
        for name, token in [("bos", classes.tokens.bos), ("eos", classes.tokens.eos), ("pad", classes.tokens.pad)]
    }
    text_config = dict(
        _encoder(*spec["text" if projected else "vision"]),
        vocab_size=len(tokenizer) if arch == "tiny" else classes.vocab_size,
        max_position_embeddings=classes.max_length,
        **ids,
    )
    if family == "altclip":
        # RoBERTa position ids start after the padding id, so the table needs that many more rows.
        text_config.update(
            max_position_embeddings=classes.max_length + ids["pad_token_id"] + 1, project_dim=spec["text"][0]
        )
    vision_config = _encoder(*spec["vision"])
    if family == "siglip2":
        patch_size, num_patches = _naflex_patches(classes)
        vision_config.update(patch_size=patch_size, num_patches=num_patches)
    else:
        vision_config.update(patch_size=spec["patch"], image_size=spec["image"])
    extra = dict(projection_dim=spec["projection"]) if projected else {}
    return getattr(transformers, classes.config)(text_config=text_config, vision_config=vision_config, **extra)


def _image_processor(family: str, arch: str):
    """The family's image processor for images of `arch`'s size (SigLIP 2: its NaFlex patches)."""
    import transformers

    classes, image_size = OFFLINE_FAMILIES[family], _ARCHS[arch]["image"]
    image_processor_class = getattr(transformers, classes.image_processor)
    if family == "siglip2":
        patch_size, num_patches = _naflex_patches(classes)
        return image_processor_class(patch_size=patch_size, max_num_patches=num_patches)
    if family == "siglip":
        return image_processor_class(size={"height": image_size, "width": image_size})
    return image_processor_class(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )


def make_offline_model(
    out_dir: str,
    arch: str = "vit-b-32",
    class_names: Sequence[str] | None = None,
    seed: int = 0,
    family: str = "clip",
) -> str:
    """Writes a two-tower checkpoint with random weights that loads like a real one, for machines without the hub.

    `AutoModel.from_pretrained(out_dir)` and `AutoProcessor.from_pretrained(out_dir)` load it. `family` is one of
    `OFFLINE_FAMILIES` ("clip", "metaclip_2", "siglip", "siglip2", "chinese_clip", "altclip"); the model has that
    family's layout with the sizes of `arch` ("vit-b-32", "vit-b-16", or "tiny": 4 layers of width 32, 32x32 images),
    the processor the family's image preprocessing and the tokenizer class of the family's real checkpoints (CLIP's
    byte-level BPE, XLM-R's unigram, SigLIP's SentencePiece, Gemma's BPE, BERT's WordPiece) with its special tokens
    and their ids, trained here on common prompt words, the prompt templates, digits and the words of `class_names`,
    so that these tokenize without the unknown token. The full-size archs have the real text vocabulary size (CLIP's
    special tokens at its ids 49406 / 49407), the tiny one only the tokenizer's. Accuracy numbers from it mean
    nothing.

    Returns:
        `out_dir`.
    """
    import transformers

    if arch not in _ARCHS:
        raise ValueError(f"Unknown arch {arch!r}; choose one of {sorted(_ARCHS)}.")
    if family not in OFFLINE_FAMILIES:
        raise ValueError(f"Unknown family {family!r}; choose one of {sorted(OFFLINE_FAMILIES)}.")
    classes = OFFLINE_FAMILIES[family]
    tokenizer = classes.tokenizer(_corpus(list(class_names or [])), None if arch == "tiny" else classes.vocab_size)
    tokenizer.model_max_length = classes.max_length
    config = _model_config(family, arch, tokenizer)
    setattr(config, RANDOM_WEIGHTS, True)  # saved in config.json, read back by `has_random_weights`
    torch.manual_seed(seed)
    getattr(transformers, classes.model)(config).save_pretrained(out_dir)
    processor_class = getattr(transformers, classes.processor)
    processor = processor_class(image_processor=_image_processor(family, arch), tokenizer=tokenizer)
    processor.save_pretrained(out_dir)
    Path(out_dir, "README.md").write_text(
        f"# Offline {family} ({arch}) with RANDOM weights\n\n"
        f"Written by `peft_skip.offline.make_offline_model(arch={arch!r}, seed={seed}, family={family!r})` for "
        "machines that cannot download pretrained checkpoints. The architecture, the tokenizer class and its special "
        f"tokens match the real model; the weights are random and the tokenizer's vocabulary ({len(tokenizer)} "
        "tokens) was learned from a few prompt and class-name words, so it measures speed, memory and mechanics only: "
        "its accuracy means nothing.\n"
    )
    return out_dir


def has_random_weights(model) -> bool:
    """Whether `model` was loaded from a directory written by `make_offline_model` (random weights)."""
    return bool(getattr(model.config, RANDOM_WEIGHTS, False))


@dataclass
class OfflineModelArguments:
    output_dir: str = field(metadata={"help": "Directory to write.", "aliases": ["--out"]})
    arch: str = field(
        default="vit-b-32",
        metadata={"help": "Architecture (tiny: 4 layers of width 32, 32x32 images).", "choices": sorted(_ARCHS)},
    )
    family: str = field(
        default="clip",
        metadata={
            "help": "Model family (`model_type`): its layout, image preprocessing and special tokens.",
            "choices": sorted(OFFLINE_FAMILIES),
        },
    )
    data: list[str] | None = field(
        default=None, metadata={"help": "Also put these data sets' class names in the tokenizer's vocabulary."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the random weights."})
