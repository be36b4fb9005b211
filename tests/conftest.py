"""Tiny two-tower models built from configs (random weights, no downloads)."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import CLIPConfig, CLIPModel

# Nothing can be downloaded here; never let a test wait on the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tests use tiny tensors, where several intra-op threads cost far more than they bring (also in subprocesses).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

VOCAB, BOS, EOS, PAD = 99, 97, 98, 0


def tiny_clip_config(attn_implementation: str = "sdpa", layers: int = 4) -> CLIPConfig:
    text = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        vocab_size=VOCAB,
        max_position_embeddings=16,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    )
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    config._attn_implementation = attn_implementation
    config.text_config._attn_implementation = attn_implementation
    config.vision_config._attn_implementation = attn_implementation
    return config


def tiny_clip(seed: int = 0, attn_implementation: str = "sdpa", layers: int = 4) -> CLIPModel:
    torch.manual_seed(seed)
    return CLIPModel(tiny_clip_config(attn_implementation, layers)).eval()


def text_batch(num: int = 5, length: int = 9, padded: bool = True, seed: int = 0) -> dict[str, torch.Tensor]:
    """Prompts `BOS w... EOS PAD...` of different lengths (or all full length when `padded` is False)."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.full((num, length), PAD)
    attention_mask = torch.zeros(num, length, dtype=torch.long)
    for i in range(num):
        n = length if not padded else int(torch.randint(3, length + 1, (1,), generator=generator))
        input_ids[i, :n] = torch.randint(1, BOS, (n,), generator=generator)
        input_ids[i, 0], input_ids[i, n - 1] = BOS, EOS
        attention_mask[i, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def image_batch(num: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(num, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def clip() -> CLIPModel:
    return tiny_clip()


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request) -> torch.device:
    """The device of a device-independent exactness test: the CPU, and CUDA (marked `gpu`) where there is one."""
    if request.param == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("no CUDA GPU here: `pytest -m gpu` runs these on one (benchmarks/gpu/run.sh)")
        # Exactness, not speed: TF32 would round float32 matmuls and convolutions to 10 mantissa bits.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return torch.device(request.param)


@pytest.fixture
def accelerator(device):
    """`accelerator(mixed_precision)`: a new `Accelerator` on `device`. Accelerate keeps one state per process that
    refuses another device or precision, so it is reset before each one and after the test."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    def make(mixed_precision: str = "no") -> Accelerator:
        AcceleratorState._reset_state(reset_partial_state=True)
        return Accelerator(cpu=device.type == "cpu", mixed_precision=mixed_precision)

    yield make
    AcceleratorState._reset_state(reset_partial_state=True)
