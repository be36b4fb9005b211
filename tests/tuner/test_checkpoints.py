"""Saving, loading and uploading adapters: only deltas, only onto the right base model."""

import json
import os

import pytest
import torch
from conftest import image_batch, text_batch, tiny_clip
from peft import PeftConfig, PeftModel, get_peft_model
from safetensors.torch import load_file

import peft_skip  # noqa: F401
from peft_skip import SkipConfig


def _inputs(device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in {**text_batch(num=3), "pixel_values": image_batch(num=3)}.items()}


def _deep_numel(clip, skip_layers):
    total = 0
    for name, param in clip.named_parameters():
        for tower in ("vision_model", "text_model"):
            prefix = f"{tower}.encoder.layers."
            if name.startswith(prefix) and int(name[len(prefix) :].split(".")[0]) >= skip_layers:
                total += param.numel()
        if name.startswith(("vision_model.post_layernorm", "visual_projection", "text_model.final_layer_norm")):
            total += param.numel()
        if name.startswith("text_projection"):
            total += param.numel()
    return total


@pytest.fixture
def saved(tmp_path):
    clip = tiny_clip()
    clip.name_or_path = "tiny-clip"
    model = get_peft_model(clip, SkipConfig(skip_layers=2, init_weights=False))
    model.save_pretrained(tmp_path)
    return tmp_path, model


def test_files_hold_only_the_deep_deltas(saved):
    path, model = saved
    assert sorted(os.listdir(path)) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    tensors = load_file(path / "adapter_model.safetensors")
    for key in tensors:
        assert ".skip_delta." in key
        assert "embeddings" not in key and "logit_scale" not in key
        for tower in ("vision_model", "text_model"):
            if f"{tower}.encoder.layers." in key:
                assert int(key.split(f"{tower}.encoder.layers.")[1].split(".")[0]) >= 2, key
    clip = tiny_clip()
    assert sum(t.numel() for t in tensors.values()) == _deep_numel(clip, 2)
    payload = _deep_numel(clip, 2) * 4
    size = os.path.getsize(path / "adapter_model.safetensors")
    assert payload <= size < payload + 32_000  # the rest is the safetensors header


def test_load_round_trip_gives_the_same_logits(saved, device):
    path, model = saved
    expected = model.to(device)(**_inputs(device)).logits_per_image
    loaded = PeftModel.from_pretrained(tiny_clip().to(device), path)
    assert {p.device.type for p in loaded.parameters()} == {device.type}
    torch.testing.assert_close(loaded(**_inputs(device)).logits_per_image, expected)
    merged = loaded.merge_and_unload()
    torch.testing.assert_close(merged(**_inputs(device)).logits_per_image, expected)
    config = PeftConfig.from_pretrained(path)
    assert isinstance(config, SkipConfig) and config.skip_layers == 2


@pytest.mark.parametrize("dtype, atol", [("float16", 2e-3), ("bfloat16", 2e-2)])
def test_half_precision_storage(tmp_path, dtype, atol):
    model = get_peft_model(tiny_clip(), SkipConfig(skip_layers=2, init_weights=False, delta_dtype=dtype))
    model.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    assert all(t.dtype == getattr(torch, dtype) for t in tensors.values())
    payload = _deep_numel(tiny_clip(), 2) * 2
    assert payload <= os.path.getsize(tmp_path / "adapter_model.safetensors") < payload + 32_000
    loaded = PeftModel.from_pretrained(tiny_clip(), tmp_path)
    torch.testing.assert_close(
        loaded(**_inputs()).logits_per_image, model(**_inputs()).logits_per_image, atol=atol, rtol=0
    )


def test_config_records_base_model_and_fingerprint(saved):
    path, _ = saved
    config = json.loads((path / "adapter_config.json").read_text())
    assert config["peft_type"] == "SKIP"
    assert config["base_model_name_or_path"] == "tiny-clip"
    assert set(config["base_model_fingerprint"]) == {"structure", "probe"}


def test_loading_onto_another_base_model_fails_clearly(saved):
    path, _ = saved
    other = tiny_clip(seed=1)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match="another base model.*verify_base_model=False"):
        PeftModel.from_pretrained(other, path)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())

    config = PeftConfig.from_pretrained(path)
    config.verify_base_model = False
    PeftModel.from_pretrained(tiny_clip(seed=1), path, config=config)


def test_loading_onto_a_deeper_model_fails_clearly(saved):
    path, _ = saved
    with pytest.raises(ValueError, match="names or shapes differ"):
        PeftModel.from_pretrained(tiny_clip(layers=5), path)


def test_same_base_in_another_dtype_is_accepted(saved):
    path, _ = saved
    loaded = PeftModel.from_pretrained(tiny_clip().to(torch.bfloat16), path)
    assert loaded.peft_config["default"].skip_layers == 2


def test_model_card(saved):
    path, _ = saved
    card = (path / "README.md").read_text()
    assert "library_name: peft" in card
    assert "base_model: tiny-clip" in card
    assert "## Skip Tuning adapter" in card
    assert "| `skip_layers` | `2` |" in card
    assert "import peft_skip" in card and "PeftModel.from_pretrained" in card
    # Saving again does not repeat the section.
    _.save_pretrained(path)
    assert (path / "README.md").read_text().count("## Skip Tuning adapter") == 1


def test_push_to_hub_sends_the_adapter_files(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    sent = {}

    def create_repo(self, repo_id, **kwargs):
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_commit(self, repo_id, operations, **kwargs):
        for op in operations:
            with open(op.path_or_fileobj, "rb") as f:
                sent[op.path_in_repo] = f.read()
        sent["repo_id"] = repo_id

    load_card = huggingface_hub.ModelCard.load

    def no_card_yet(cls, repo_id_or_path, **kwargs):
        if os.path.exists(repo_id_or_path):
            return load_card(repo_id_or_path, **kwargs)
        raise EntryNotFoundError("no README.md in a new repository")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", create_commit)
    monkeypatch.setattr(huggingface_hub.ModelCard, "load", classmethod(no_card_yet))

    model = get_peft_model(tiny_clip(), SkipConfig(skip_layers=2))
    model.push_to_hub("someone/skip-adapter")
    assert sent["repo_id"] == "someone/skip-adapter"
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(sent)
    assert json.loads(sent["adapter_config.json"])["peft_type"] == "SKIP"
    assert all(".skip_delta." in key for key in _safetensors_keys(sent["adapter_model.safetensors"]))


def _safetensors_keys(blob: bytes) -> list[str]:
    header_size = int.from_bytes(blob[:8], "little")
    return [k for k in json.loads(blob[8 : 8 + header_size]) if k != "__metadata__"]


def _truncate(path, keep):
    blob = (path / "adapter_model.safetensors").read_bytes()
    (path / "adapter_model.safetensors").write_bytes(blob[:keep] if keep >= 0 else blob[:keep])


def _untouched(model):
    from peft_skip.tuner.layer import SkipLayer

    return not any(isinstance(m, SkipLayer) for m in model.modules()) and not hasattr(model, "peft_config")


@pytest.mark.parametrize("keep", [4, 100, -10])
def test_truncated_weights_fail_before_the_model_is_touched(saved, keep):
    path, _ = saved
    _truncate(path, keep)
    base = tiny_clip()
    with pytest.raises(ValueError, match="corrupt or truncated"):
        PeftModel.from_pretrained(base, path)
    assert _untouched(base)


def _edit_config(path, **fields) -> None:
    """Sets `fields` in the saved adapter_config.json."""
    config = json.loads((path / "adapter_config.json").read_text())
    (path / "adapter_config.json").write_text(json.dumps({**config, **fields}))


def test_unknown_config_field_is_refused(saved):
    path, _ = saved
    _edit_config(path, skip_layerz=3)
    base = tiny_clip()
    with pytest.raises(ValueError, match=r"does not know: \['skip_layerz'\]"):
        PeftModel.from_pretrained(base, path)
    assert _untouched(base)


def test_broken_config_json_names_the_file(saved):
    path, _ = saved
    config_file = path / "adapter_config.json"
    config_file.write_text(config_file.read_text()[:-20])
    with pytest.raises(ValueError, match=f"{config_file} is not valid JSON"):
        SkipConfig.from_pretrained(path)
    base = tiny_clip()
    with pytest.raises(ValueError, match="is not valid JSON"):
        PeftModel.from_pretrained(base, path, config=SkipConfig.from_pretrained(path))
    assert _untouched(base)


def test_another_methods_adapter_is_refused(tmp_path):
    from peft import LoraConfig

    get_peft_model(tiny_clip(), LoraConfig(target_modules=["q_proj"])).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="describes a LORA adapter, not a SKIP one"):
        SkipConfig.from_pretrained(tmp_path)


def test_tensors_of_the_wrong_shape_are_refused(saved):
    path, _ = saved
    _edit_config(path, skip_layers=1)  # the file holds layers 2..3 only
    base = tiny_clip()
    with pytest.raises(ValueError, match="do not fit this model: .* missing"):
        PeftModel.from_pretrained(base, path)
    assert _untouched(base)


def test_a_second_adapter_loads_next_to_the_first(saved):
    path, model = saved
    loaded = PeftModel.from_pretrained(tiny_clip(), path, adapter_name="first")
    loaded.load_adapter(path, adapter_name="second")
    loaded.set_adapter("second")
    torch.testing.assert_close(loaded(**_inputs()).logits_per_image, model(**_inputs()).logits_per_image)


@pytest.mark.parametrize(
    "fingerprint",
    [{"structure": "abc"}, {"structure": "abc", "probe": "x"}, "abc", {"structure": 1, "probe": [0.0] * 8}],
    ids=["probe-missing", "probe-not-a-list", "not-a-dict", "structure-not-a-string"],
)
def test_a_crafted_fingerprint_is_one_clear_error(saved, fingerprint):
    path, _ = saved
    _edit_config(path, base_model_fingerprint=fingerprint)
    with pytest.raises(ValueError, match="SkipConfig.base_model_fingerprint=.* is invalid"):
        PeftModel.from_pretrained(tiny_clip(), path)


def test_a_fingerprint_of_another_length_is_another_base_model(saved):
    path, model = saved
    probe = model.peft_config["default"].base_model_fingerprint
    _edit_config(path, base_model_fingerprint={**probe, "probe": probe["probe"][:3]})
    with pytest.raises(ValueError, match="saved fingerprint has 3 probes, not 8"):
        PeftModel.from_pretrained(tiny_clip(), path)


def test_non_finite_deltas_are_refused_before_the_model_is_touched(tmp_path):
    model = get_peft_model(tiny_clip(), SkipConfig(skip_layers=2))
    with torch.no_grad():
        next(p for p in model.parameters() if p.requires_grad)[0] = float("nan")
    model.save_pretrained(tmp_path)  # peft's own save: the trainer never writes such deltas
    base = tiny_clip()
    with pytest.raises(ValueError, match="holds non-finite values"):
        PeftModel.from_pretrained(base, tmp_path, config=SkipConfig.from_pretrained(tmp_path))
    assert _untouched(base)


def test_pickled_weights_are_refused_at_save_time(tmp_path):
    """`safe_serialization=False` would write a pickle that the checksum and the loader do not cover: refused, and
    the pickle removed."""
    model = get_peft_model(tiny_clip(), SkipConfig(skip_layers=2))
    with pytest.raises(ValueError, match="safetensors only"):
        model.save_pretrained(tmp_path, safe_serialization=False)
    assert not (tmp_path / "adapter_model.bin").exists() and not (tmp_path / "adapter_config.json").exists()
    (tmp_path / "adapter_config.json").write_text(json.dumps(SkipConfig(skip_layers=2).to_dict()))
    (tmp_path / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="holds adapter_model.bin"):
        SkipConfig.from_pretrained(str(tmp_path))
