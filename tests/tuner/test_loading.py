"""Every way peft and transformers offer to load an adapter either gives the trained model's outputs exactly or
raises an error saying what to do, leaving the caller's model as it was."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from conftest import image_batch, text_batch, tiny_clip
from peft import (
    AutoPeftModel,
    PeftModel,
    get_peft_model,
    get_peft_model_state_dict,
    inject_adapter_in_model,
    load_peft_weights,
    set_peft_model_state_dict,
)
from transformers import AutoModel, CLIPModel

import peft_skip  # noqa: F401
from peft_skip import SkipConfig
from peft_skip.training.run_state import finish_interrupted_publish, publish_files
from peft_skip.tuner.adapter_files import STAGING_DIR
from peft_skip.tuner.layer import SkipLayer


def _inputs():
    return {**text_batch(num=3), "pixel_values": image_batch(num=3)}


def _logits(model):
    with torch.no_grad():
        return model(**_inputs()).logits_per_image


def _trained(seed: int = 5):
    """A Skip Tuning model with non-zero deltas that no random initialisation reproduces."""
    model = get_peft_model(tiny_clip(), SkipConfig(skip_layers=2))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    return model


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """(adapter directory whose config names a saved base model directory, logits of the trained model)."""
    root = tmp_path_factory.mktemp("loading")
    tiny_clip().save_pretrained(root / "base")
    model = _trained()
    model.peft_config["default"].base_model_name_or_path = str(root / "base")
    model.save_pretrained(root / "adapter")
    return root / "adapter", _logits(model)


def _untouched(model) -> bool:
    return (
        not any(isinstance(m, SkipLayer) for m in model.modules())
        and not hasattr(model, "peft_config")
        and not getattr(model, "_hf_peft_config_loaded", False)
        and torch.equal(_logits(model), _logits(tiny_clip()))
    )


def _transformers_load_adapter(path, **kwargs):
    model = tiny_clip()
    model.load_adapter(str(path), **kwargs)
    return model


def _injected(path, low_cpu_mem_usage=False):
    """peft's low-level API: the tuner injected into the plain model, then the saved deltas set."""
    model = inject_adapter_in_model(SkipConfig.from_pretrained(path), tiny_clip(), low_cpu_mem_usage=low_cpu_mem_usage)
    set_peft_model_state_dict(model, load_peft_weights(str(path)), low_cpu_mem_usage=low_cpu_mem_usage)
    return model


def _second_adapter(path, **kwargs):
    model = PeftModel.from_pretrained(tiny_clip(), path, adapter_name="first")
    model.load_adapter(path, adapter_name="second", **kwargs)
    model.set_adapter("second")
    return model


@pytest.mark.parametrize(
    "load",
    [
        lambda path: PeftModel.from_pretrained(tiny_clip(), path),
        lambda path: PeftModel.from_pretrained(tiny_clip(), path, low_cpu_mem_usage=True),
        lambda path: PeftModel.from_pretrained(tiny_clip(), path, is_trainable=True),
        lambda path: PeftModel.from_pretrained(tiny_clip(), path, adapter_name="mine"),
        lambda path: PeftModel.from_pretrained(tiny_clip(), path, config=SkipConfig.from_pretrained(path)),
        lambda path: PeftModel.from_pretrained(tiny_clip(), path, autocast_adapter_dtype=False),
        lambda path: _second_adapter(path),
        lambda path: _second_adapter(path, low_cpu_mem_usage=True),
        lambda path: _second_adapter(path, is_trainable=True),
        lambda path: AutoPeftModel.from_pretrained(path),
        lambda path: AutoPeftModel.from_pretrained(path, low_cpu_mem_usage=True),
        lambda path: _transformers_load_adapter(path),
        lambda path: _transformers_load_adapter(path, low_cpu_mem_usage=True),
        lambda path: _transformers_load_adapter(path, adapter_name="mine"),
        lambda path: AutoModel.from_pretrained(str(path)),
        lambda path: CLIPModel.from_pretrained(str(path)),
        lambda path: _injected(path),
        lambda path: _injected(path, low_cpu_mem_usage=True),
    ],
    ids=[
        "from_pretrained",
        "low_cpu_mem_usage",
        "is_trainable",
        "adapter_name",
        "config",
        "no-autocast",
        "load_adapter",
        "load_adapter-low_cpu_mem_usage",
        "load_adapter-is_trainable",
        "AutoPeftModel",
        "AutoPeftModel-low_cpu_mem_usage",
        "transformers-load_adapter",
        "transformers-load_adapter-low_cpu_mem_usage",
        "transformers-load_adapter-adapter_name",
        "AutoModel.from_pretrained",
        "CLIPModel.from_pretrained",
        "inject_adapter_in_model",
        "inject_adapter_in_model-low_cpu_mem_usage",
    ],
)
def test_every_peft_and_transformers_path_loads_the_deltas_exactly(adapter, load):
    path, expected = adapter
    model = load(path)
    assert not any(p.is_meta for p in model.parameters())
    torch.testing.assert_close(_logits(model), expected, rtol=0, atol=1e-6)


def test_is_trainable_gives_trainable_deltas_only(adapter):
    path, _ = adapter
    model = PeftModel.from_pretrained(tiny_clip(), path, is_trainable=True)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".skip_tuned.default." in name for name in trainable)
    frozen = PeftModel.from_pretrained(tiny_clip(), path)
    assert not any(p.requires_grad for p in frozen.parameters())


def test_merge_and_unload_after_low_cpu_mem_usage_is_a_plain_model(adapter):
    path, expected = adapter
    merged = PeftModel.from_pretrained(tiny_clip(), path, low_cpu_mem_usage=True).merge_and_unload()
    assert isinstance(merged, CLIPModel) and not any(isinstance(m, SkipLayer) for m in merged.modules())
    torch.testing.assert_close(_logits(merged), expected, rtol=0, atol=1e-5)


def test_transformers_loads_frozen_in_eval_mode_unless_trainable(adapter):
    path, _ = adapter
    frozen = AutoModel.from_pretrained(str(path))
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    trainable = _transformers_load_adapter(path, is_trainable=True)
    names = {name for name, p in trainable.named_parameters() if p.requires_grad}
    assert names and all(".skip_tuned.default." in name for name in names)


def test_transformers_add_adapter_creates_a_fresh_adapter_that_saves_and_loads_back(tmp_path):
    model = tiny_clip()
    model.add_adapter(SkipConfig(skip_layers=2))
    torch.testing.assert_close(_logits(model), _logits(tiny_clip()), rtol=0, atol=0)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(trainable) == len(get_peft_model_state_dict(model))
    with torch.no_grad():
        for param in trainable:
            param.add_(0.05)
    model.save_pretrained(tmp_path)  # transformers' save of an adapter: the deltas only
    expected = _logits(model)
    torch.testing.assert_close(_logits(PeftModel.from_pretrained(tiny_clip(), tmp_path)), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(_logits(_transformers_load_adapter(tmp_path)), expected, rtol=0, atol=1e-6)


def test_transformers_load_adapter_checks_the_base_model_first(adapter):
    path, _ = adapter
    model = tiny_clip(seed=1)
    with pytest.raises(ValueError, match="another base model"):
        model.load_adapter(str(path))
    assert not any(isinstance(m, SkipLayer) for m in model.modules()) and not hasattr(model, "peft_config")


def test_a_state_dict_that_does_not_fit_is_refused_before_the_model_is_touched(adapter):
    path, _ = adapter
    weights = load_peft_weights(str(path))
    weights.pop(sorted(weights)[0])
    model = tiny_clip()
    with pytest.raises(ValueError, match="1 missing"):
        model.load_adapter(peft_config=SkipConfig.from_pretrained(path), adapter_state_dict=weights)
    assert _untouched(model)


def test_a_second_adapter_for_another_base_is_refused(adapter, tmp_path):
    path, _ = adapter
    other = get_peft_model(tiny_clip(seed=1), SkipConfig(skip_layers=2))
    other.save_pretrained(tmp_path)
    model = PeftModel.from_pretrained(tiny_clip(), path)
    with pytest.raises(ValueError, match="another base model"):
        model.load_adapter(tmp_path, adapter_name="other")
    assert list(model.peft_config) == ["default"]
    assert not any("other" in name for name, _ in model.named_parameters())


def _copy(adapter, tmp_path):
    path = tmp_path / "adapter"
    shutil.copytree(adapter, path)
    return path


def test_missing_weights_are_refused_before_the_model_is_touched(adapter, tmp_path):
    path = _copy(adapter[0], tmp_path)
    os.remove(path / "adapter_model.safetensors")
    model = tiny_clip()
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors is missing"):
        PeftModel.from_pretrained(model, path)
    for flag in (True, False):
        with pytest.raises(FileNotFoundError):
            PeftModel.from_pretrained(model, path, low_cpu_mem_usage=flag)
        with pytest.raises(FileNotFoundError, match="adapter_model.safetensors is missing"):
            model.load_adapter(str(path), low_cpu_mem_usage=flag)
    assert _untouched(model)


def test_weights_from_another_save_are_refused(adapter, tmp_path):
    path = _copy(adapter[0], tmp_path)
    _trained(seed=6).save_pretrained(tmp_path / "other")
    shutil.copy(tmp_path / "other" / "adapter_model.safetensors", path / "adapter_model.safetensors")
    model = tiny_clip()
    with pytest.raises(ValueError, match="not the weights file saved with .*sha256 differs"):
        PeftModel.from_pretrained(model, path)
    with pytest.raises(ValueError, match="not the weights file saved with .*sha256 differs"):
        model.load_adapter(str(path))
    assert _untouched(model)


def test_a_publish_killed_between_its_renames_reads_as_the_new_adapter(adapter, tmp_path, monkeypatch):
    """Weights moved, config not yet: the directory reads as the whole new adapter, and the next save completes it."""
    path = _copy(adapter[0], tmp_path)
    newer = _trained(seed=7)
    newer.peft_config["default"].skip_layers = 2
    newer.save_pretrained(path / STAGING_DIR)
    real_replace = os.replace

    def killed_before_the_config(src, dst):
        if str(dst).endswith("adapter_config.json"):
            raise KeyboardInterrupt  # the process dies here
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_before_the_config)
    with pytest.raises(KeyboardInterrupt):
        publish_files(str(path / STAGING_DIR), str(path))
    monkeypatch.undo()
    old_config = json.loads((path / "adapter_config.json").read_text())
    assert (
        old_config["weights_sha256"]
        != json.loads((path / STAGING_DIR / "adapter_config.json").read_text())["weights_sha256"]
    )
    torch.testing.assert_close(_logits(PeftModel.from_pretrained(tiny_clip(), path)), _logits(newer))

    finish_interrupted_publish(str(path))
    assert not (path / STAGING_DIR / "adapter_config.json").exists()
    torch.testing.assert_close(_logits(PeftModel.from_pretrained(tiny_clip(), path)), _logits(newer))


def test_old_adapters_without_a_checksum_still_load(adapter, tmp_path):
    path = _copy(adapter[0], tmp_path)
    config = json.loads((path / "adapter_config.json").read_text())
    del config["weights_sha256"]
    (path / "adapter_config.json").write_text(json.dumps(config))
    torch.testing.assert_close(_logits(PeftModel.from_pretrained(tiny_clip(), path)), adapter[1], rtol=0, atol=1e-6)
