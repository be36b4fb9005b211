"""`export_lora` / `peft-skip export`: a Skip Tuning adapter as a LoRA adapter that plain peft loads."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
from conftest import image_batch, text_batch, tiny_clip
from peft import get_peft_model
from peft.utils import PeftWarning

from peft_skip import SkipConfig
from peft_skip.commands.cli import main
from peft_skip.tuner.export import export_lora, low_rank_factors

# Loads the LoRA adapter with transformers and peft alone, and writes the logits it gives.
PLAIN_PEFT = """
import sys, torch
from peft import PeftModel
from transformers import CLIPModel
model = PeftModel.from_pretrained(CLIPModel.from_pretrained(sys.argv[1]), sys.argv[2]).eval()
inputs = torch.load(sys.argv[3])
with torch.no_grad():
    logits = model(**inputs).logits_per_image
    # peft can merge every part of it (a LoRA bias needs a base bias to merge into).
    assert torch.allclose(model.merge_and_unload()(**inputs).logits_per_image, logits, atol=1e-5)
torch.save(logits, sys.argv[4])
assert not any(name.startswith("peft_skip") for name in sys.modules), "peft_skip was imported"
"""


@pytest.fixture
def trained(tmp_path):
    """A tiny CLIP saved as a model directory, and a Skip Tuning model on it with random deltas everywhere (Linear
    weights and biases, layer norms, the heads)."""
    base = tiny_clip()
    base.save_pretrained(tmp_path / "base")
    return str(tmp_path / "base"), get_peft_model(base, SkipConfig(skip_layers=2, init_weights=False)).eval()


def inputs() -> dict[str, torch.Tensor]:
    return {**text_batch(5), "pixel_values": image_batch(3)}


def merged_logits(model) -> torch.Tensor:
    with torch.no_grad():
        return copy.deepcopy(model).merge_and_unload()(**inputs()).logits_per_image


def plain_peft_logits(base_dir: str, lora_dir: str, tmp_path) -> torch.Tensor:
    torch.save(inputs(), tmp_path / "inputs.pt")
    # Run from the tests' directory: the source tree (and so peft_skip) is not on the path there.
    command = [sys.executable, "-c", PLAIN_PEFT, base_dir, lora_dir, str(tmp_path / "inputs.pt"), str(tmp_path / "o")]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    return torch.load(tmp_path / "o")


def test_full_rank_lora_gives_the_merged_skip_model_in_plain_peft(trained, tmp_path):
    base_dir, model = trained
    # Rank 48: every Linear of the tiny CLIP's layers (32 x 32, 64 x 32, 32 x 64) is kept whole, at rank 32.
    with warnings.catch_warnings():
        warnings.simplefilter("error", PeftWarning)  # none of peft's warnings about the adapter it builds
        report = export_lora(model, str(tmp_path / "lora"), rank=48)
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == config["lora_alpha"] == 48 and config["lora_bias"]
    assert config["rank_pattern"] == config["alpha_pattern"] and set(config["rank_pattern"].values()) == {32}
    # Per tower: 2 deep layers x 6 Linears; exact: 2 x 2 layer norms, the head's layer norm and the projection.
    assert report["low_rank_modules"] == 24 and report["exact_modules"] == 12
    assert report["energy"] == pytest.approx(1.0)
    expected = merged_logits(model)
    assert torch.allclose(plain_peft_logits(base_dir, str(tmp_path / "lora"), tmp_path), expected, atol=1e-5)
    assert not torch.allclose(expected, tiny_clip()(**inputs()).logits_per_image.detach(), atol=1e-3)


def test_truncated_rank_is_the_best_approximation_of_each_delta(trained, tmp_path):
    base_dir, model = trained
    report = export_lora(model, str(tmp_path / "lora"), rank=4)
    from peft import PeftModel

    lora = PeftModel.from_pretrained(tiny_clip(), str(tmp_path / "lora"))
    layer = model.base_model.model.vision_model.encoder.layers[3].mlp.fc1
    delta = layer.get_delta_weight("default")["weight"]
    loaded = lora.base_model.model.vision_model.encoder.layers[3].mlp.fc1
    low_rank = loaded.lora_B["default"].weight @ loaded.lora_A["default"].weight
    singular = torch.linalg.svdvals(delta.double())
    # Eckart-Young: the error of the best rank-4 approximation is the norm of the singular values left out.
    assert float((delta - low_rank).double().norm()) == pytest.approx(float(singular[4:].norm()), rel=1e-4)
    assert torch.allclose(loaded.lora_B["default"].bias, layer.get_delta_weight("default")["bias"])
    assert 0 < report["energy"] < 1
    # 24 Linears: r (in + out) + out values each; exact: 10 layer norms (2 x 32 values), 2 projections (16 x 32).
    linear_shapes = [(32, 32)] * 4 * 4 + [(64, 32), (32, 64)] * 4
    values = sum(4 * (o + i) + o for o, i in linear_shapes) + 10 * 2 * 32 + 2 * 16 * 32
    assert values * 4 < report["bytes"] < values * 4 + 20_000  # float32 plus the safetensors header


def test_low_rank_factors_keep_a_low_rank_matrix_exactly():
    generator = torch.Generator().manual_seed(0)
    delta = torch.randn(12, 3, generator=generator) @ torch.randn(3, 20, generator=generator)
    lora_a, lora_b, kept = low_rank_factors(delta, 3)
    assert lora_a.shape == (3, 20) and lora_b.shape == (12, 3) and kept == pytest.approx(1.0)
    assert torch.allclose(lora_b @ lora_a, delta, atol=1e-5)
    # A rank above the smaller dimension is capped at it.
    assert low_rank_factors(delta, 50)[0].shape == (12, 20)


def test_export_command(trained, tmp_path, capsys):
    base_dir, model = trained
    model.save_pretrained(tmp_path / "skip")
    argv = ["export", "--model", base_dir, "--adapter", str(tmp_path / "skip"), "--out", str(tmp_path / "lora")]
    assert main([*argv, "--rank", "32"]) == 0
    assert "Wrote a rank-32 LoRA adapter" in capsys.readouterr().out
    expected = merged_logits(model)
    assert torch.allclose(plain_peft_logits(base_dir, str(tmp_path / "lora"), tmp_path), expected, atol=1e-5)
    assert main([*argv, "--rank", "0"]) == 2
    assert "rank=0 is invalid" in capsys.readouterr().err
    assert main([*argv, "--rank", "16"]) == 0  # again into its own export: replaced whole
    assert not (tmp_path / "lora" / ".adapter.tmp").exists()


def test_export_never_writes_over_the_adapter_it_reads_or_a_users_directory(trained, tmp_path, capsys):
    base_dir, model = trained
    model.save_pretrained(tmp_path / "skip")
    skip_files = {p.name: p.read_bytes() for p in (tmp_path / "skip").iterdir()}
    argv = ["export", "--model", base_dir, "--adapter", str(tmp_path / "skip"), "--rank", "4", "--out"]
    assert main([*argv, str(tmp_path / "skip")]) == 2
    assert "overlaps --adapter" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (tmp_path / "skip").iterdir()} == skip_files
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "adapter_config.json").write_text("{}")
    assert main([*argv, str(tmp_path / "mine")]) == 2
    assert "holds files peft-skip did not write (adapter_config.json)" in capsys.readouterr().err
    assert (tmp_path / "mine" / "adapter_config.json").read_text() == "{}"


def test_a_merged_adapter_is_refused(trained, tmp_path):
    _, model = trained
    model.merge_adapter()
    with pytest.raises(ValueError, match="unmerge_adapter"):
        export_lora(model, str(tmp_path / "lora"), rank=4)
