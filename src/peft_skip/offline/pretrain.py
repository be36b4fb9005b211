"""Contrastive pretraining of a small CLIP on the captioned world (`world.py`), on a CPU in minutes.

The result is a normal `CLIPModel` + `CLIPProcessor` directory (`AutoModel` / `AutoProcessor.from_pretrained` load it)
with real zero-shot ability on the world's downstream tasks (`world_tasks.py`): an offline stand-in for a pretrained
CLIP. The package ships one (`world_clip_path()`); rebuild it with

    python -m peft_skip.offline.pretrain --out src/peft_skip/assets/world-clip
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.world import IMAGE_SIZE, World, world_words
from .tokenizers import _clip_tokenizer, _corpus

# CLIP's image normalisation (as in `CLIPImageProcessor`'s defaults).
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
MAX_TEXT_LENGTH = 32


def world_clip_path() -> str:
    """Directory of the world CLIP shipped with the package (`AutoModel.from_pretrained` loads it)."""
    path = Path(__file__).parents[1] / "assets" / "world-clip"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"No world CLIP in {path}: rebuild it with `python -m peft_skip.offline.pretrain --out {path}`."
        )
    return str(path)


@dataclass
class PretrainConfig:
    """How to build and pretrain the world CLIP."""

    steps: int = field(default=400, metadata={"help": "Optimiser steps."})
    batch_size: int = field(default=256, metadata={"help": "Image-caption pairs per step (new pairs every step)."})
    learning_rate: float = field(
        default=1e-3, metadata={"help": "Peak AdamW learning rate (3e-3 collapses the features to colour only)."}
    )
    warmup_steps: int = field(default=50, metadata={"help": "Linear warm-up steps before the cosine decay to 0."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay of the matrices."})
    width: int = field(default=128, metadata={"help": "Hidden size of both towers (and of the projection)."})
    layers: int = field(default=6, metadata={"help": "Transformer layers of each tower."})
    heads: int = field(default=4, metadata={"help": "Attention heads of each tower."})
    mlp_ratio: int = field(default=4, metadata={"help": "MLP size as a multiple of the width."})
    patch_size: int = field(default=8, metadata={"help": "Side of the image patches (32x32 images)."})
    seed: int = field(default=0, metadata={"help": "Seeds the weights and the training pairs."})
    world_seed: int = field(default=0, metadata={"help": "Seed of the world (held-out combinations, item split)."})
    threads: int = field(default=1, metadata={"help": "torch intra-op threads; results are reproducible per count."})


DEFAULTS = PretrainConfig()


def build_tokenizer():
    """A CLIP BPE tokenizer whose vocabulary holds every word of the world and of the usual prompt templates."""
    # Not the package's templates: they follow the paper's recipe and may change, and the world CLIP's vocabulary must
    # not, or a rebuild would no longer be the shipped model (its prompt words cover the usual templates).
    tokenizer = _clip_tokenizer(_corpus(world_words(), templates=()), None)
    tokenizer.model_max_length = MAX_TEXT_LENGTH
    return tokenizer


def build_model(config: PretrainConfig, tokenizer):
    """A randomly initialised `CLIPModel` of `config`'s size for 32x32 images and `tokenizer`'s vocabulary."""
    from transformers import CLIPConfig, CLIPModel

    def encoder() -> dict:
        return dict(
            hidden_size=config.width,
            intermediate_size=config.width * config.mlp_ratio,
            num_hidden_layers=config.layers,
            num_attention_heads=config.heads,
        )

    special = {
        f"{name}_token_id": tokenizer.convert_tokens_to_ids(token)
        for name, token in [("bos", "<|startoftext|>"), ("eos", "<|endoftext|>"), ("pad", "<|endoftext|>")]
    }
    text = dict(encoder(), vocab_size=len(tokenizer), max_position_embeddings=MAX_TEXT_LENGTH, **special)
    vision = dict(encoder(), image_size=IMAGE_SIZE, patch_size=config.patch_size)
    torch.manual_seed(config.seed)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=config.width))


def build_processor(tokenizer):
    """`CLIPProcessor` for 32x32 images (resize and crop are no-ops at that size) and `tokenizer`."""
    from transformers import CLIPImageProcessor, CLIPProcessor

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=list(MEAN),
        image_std=list(STD),
    )
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def pixel_values(images: np.ndarray) -> torch.Tensor:
    """What the processor makes of uint8 images `(n, 32, 32, 3)`: normalised floats `(n, 3, 32, 32)`."""
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    return (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def _lr_factor(step: int, config: PretrainConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * progress))


def pretrain(config: PretrainConfig, out_dir: str | None = None, log=print):
    """Trains a CLIP on fresh world pairs every step with the symmetric contrastive loss of CLIP.

    Deterministic for a config and thread count: the weights come from `torch.manual_seed(seed)`, the pairs of step
    `s` from `np.random.default_rng([seed, s])`.

    Args:
        config (`PretrainConfig`): Sizes and schedule.
        out_dir (`str`, *optional*): Where to `save_pretrained` the model and its processor.
        log (`Callable`): Called with a progress line every 50 steps.

    Returns:
        The trained `CLIPModel` (in eval mode) and its `CLIPProcessor`.
    """
    torch.set_num_threads(config.threads)
    world = World(config.world_seed)
    processor = build_processor(build_tokenizer())
    model = build_model(config, processor.tokenizer)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, config))
    model.train()
    started, cpu_started = time.perf_counter(), time.process_time()
    for step in range(config.steps):
        images, captions = world.pretraining_batch(config.batch_size, np.random.default_rng([config.seed, step]))
        tokens = processor.tokenizer(captions, padding=True, return_tensors="pt")
        loss = model(**tokens, pixel_values=pixel_values(images), return_loss=True).loss
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))  # as CLIP: a temperature below 0.01 destabilises training
        if (step + 1) % 50 == 0 or step + 1 == config.steps:
            elapsed = f"{time.perf_counter() - started:.0f} s ({time.process_time() - cpu_started:.0f} s CPU)"
            log(f"step {step + 1}/{config.steps}  loss {loss.item():.3f}  {elapsed}")
    model.eval()
    if out_dir is not None:
        model.save_pretrained(out_dir)
        processor.save_pretrained(out_dir)
        Path(out_dir, "pretrain_config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
        Path(out_dir, "README.md").write_text(_card(config))
    return model, processor


def _card(config: PretrainConfig) -> str:
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in asdict(config).items() if v != getattr(DEFAULTS, k))
    return (
        "# World CLIP: a small CLIP pretrained offline on the captioned world of peft_skip\n\n"
        f"A `CLIPModel` ({config.layers} layers of width {config.width} per tower, 32x32 images, patch "
        f"{config.patch_size}) trained with CLIP's contrastive loss for {config.steps} steps of {config.batch_size} "
        "image-caption pairs of `peft_skip.data.world`, with a CLIP BPE tokenizer built offline. It classifies the "
        "world's tasks (`peft_skip.data.world_tasks`) zero-shot; see docs/world.md of peft-skip. Rebuild it with\n\n"
        f"    python -m peft_skip.offline.pretrain --out DIR {flags}\n"
    )


@dataclass
class PretrainOutput:
    out: str = field(metadata={"help": "Directory to save the model and processor to."})


def main(argv: list[str] | None = None) -> None:
    from transformers import HfArgumentParser

    parser = HfArgumentParser((PretrainConfig, PretrainOutput))
    parser.description = "Pretrain the world CLIP (peft_skip.data.world) on the CPU."
    config, output = parser.parse_args_into_dataclasses(argv)
    pretrain(config, output.out, log=lambda line: print(line, flush=True))


if __name__ == "__main__":
    main()
