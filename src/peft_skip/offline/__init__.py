"""Model directories with random weights that load like real checkpoints, for machines without the Hugging Face Hub.

`make_offline_model` writes a two-tower model of a real architecture (ViT-B/32, ViT-B/16 shapes, or a tiny one for
tests) with its family's processor and the tokenizer class the family's real checkpoints ship, trained offline on a
small corpus, so that every command and benchmark runs unchanged where no pretrained checkpoint can be downloaded.
Their accuracies mean nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .tokenizers import (
    _bert_tokenizer,
    _clip_tokenizer,
    _corpus,
    _gemma_tokenizer,
    _siglip_tokenizer,
    _xlm_roberta_tokenizer,
)

# Attribute of the model config that marks random weights; saved with the config, so it travels with the directory.
RANDOM_WEIGHTS = "peft_skip_random_weights"
_ARCHS = {
    "vit-b-32": dict(text=(512, 2048, 12, 8), vision=(768, 3072, 12, 12), patch=32, image=224, projection=512),
    "vit-b-16": dict(text=(512, 2048, 12, 8), vision=(768, 3072, 12, 12), patch=16, image=224, projection=512),
    "tiny": dict(text=(32, 64, 4, 4), vision=(32, 64, 4, 4), patch=8, image=32, projection=16),
}


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

    processor = getattr(transformers, family.processor)
    # transformers 5.17-5.20 keep these defaults in the processor's kwargs type, 5.23 on the class.
    kwargs = getattr(processor, "images_kwargs", None) or processor.valid_processor_kwargs._defaults["images_kwargs"]
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
    _check_replaceable(Path(out_dir))
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


def _check_replaceable(out_dir: Path) -> None:
    """Refuses to write over a directory that holds anything but an offline model (a real checkpoint, say).

    Raises:
        FileExistsError: Naming the directory.
    """
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    try:
        ours = json.loads((out_dir / "config.json").read_text()).get(RANDOM_WEIGHTS) is True
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise FileExistsError(
            f"--out {out_dir} is not empty and holds no offline model of peft-skip's (a real model's weights would be "
            "replaced); choose a new or empty directory."
        )


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
