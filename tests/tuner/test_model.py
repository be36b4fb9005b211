import copy
import gc
import json
import warnings

import pytest
import torch
from conftest import image_batch, text_batch, tiny_clip
from peft import get_peft_model
from safetensors.torch import load_file
from transformers import CLIPModel

import peft_skip  # noqa: F401
from peft_skip import SkipConfig
from peft_skip.tuner.layer import SkipLayer


def _inputs(device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in {**text_batch(num=3), "pixel_values": image_batch(num=3)}.items()}


def _deep(name: str, vision_skip: int, text_skip: int) -> bool:
    for tower, skip in (("vision_model", vision_skip), ("text_model", text_skip)):
        prefix = f"{tower}.encoder.layers."
        if name.startswith(prefix):
            return int(name[len(prefix) :].split(".")[0]) >= skip
    return name.startswith(
        ("vision_model.post_layernorm", "visual_projection", "text_model.final_layer_norm", "text_projection")
    )


@pytest.mark.parametrize("vision_skip, text_skip", [(2, 2), (0, 3), (4, 1)])
def test_trainable_parameters_are_exactly_the_deep_ones(vision_skip, text_skip):
    clip = tiny_clip()
    expected = {n for n, _ in clip.named_parameters() if _deep(n, vision_skip, text_skip)}
    model = get_peft_model(clip, SkipConfig(vision_skip_layers=vision_skip, text_skip_layers=text_skip))
    trainable = {
        n.removeprefix("base_model.model.").replace(".skip_tuned.default", "")
        for n, p in model.named_parameters()
        if p.requires_grad
    }
    assert trainable == expected
    assert not model.base_model.model.logit_scale.requires_grad


def test_zero_deltas_give_the_base_model():
    clip = tiny_clip()
    reference = clip(**_inputs()).logits_per_image
    model = get_peft_model(clip, SkipConfig(skip_layers=1))
    torch.testing.assert_close(model(**_inputs()).logits_per_image, reference, rtol=0, atol=0)


@pytest.mark.parametrize("skip_layers", [0, 2])
def test_gradients_equal_full_fine_tuning(skip_layers, device):
    full = tiny_clip()
    model = get_peft_model(copy.deepcopy(full), SkipConfig(skip_layers=skip_layers, init_weights=False)).to(device)
    # Full fine-tuning starts from the same effective weights W0 + dW.
    full.load_state_dict(copy.deepcopy(model).merge_and_unload().state_dict())
    full.to(device)
    full(**_inputs(device), return_loss=True).loss.backward()
    model(**_inputs(device), return_loss=True).loss.backward()

    full_grads = dict(full.named_parameters())
    checked = 0
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        base_name = name.removeprefix("base_model.model.").replace(".skip_tuned.default", "")
        torch.testing.assert_close(param.grad, full_grads[base_name].grad, rtol=1e-5, atol=1e-6)
        checked += 1
    assert checked == sum(_deep(n, skip_layers, skip_layers) for n, _ in full.named_parameters())


def test_merge_unmerge_and_merge_and_unload(device):
    model = get_peft_model(tiny_clip(), SkipConfig(skip_layers=2, init_weights=False)).to(device)
    tuned = model(**_inputs(device)).logits_per_image
    with model.disable_adapter():
        base = model(**_inputs(device)).logits_per_image
    assert not torch.allclose(tuned, base)

    model.merge_adapter()
    torch.testing.assert_close(model(**_inputs(device)).logits_per_image, tuned)
    model.unmerge_adapter()
    with model.disable_adapter():
        torch.testing.assert_close(model(**_inputs(device)).logits_per_image, base)

    merged = model.merge_and_unload()
    assert type(merged) is CLIPModel
    assert not any(isinstance(m, SkipLayer) for m in merged.modules())
    torch.testing.assert_close(merged(**_inputs(device)).logits_per_image, tuned)


def _held_bytes() -> int:
    """Bytes of all tensor storages alive in the process (each shared storage once)."""
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isinstance on torch's deprecated module attributes warns
        # Plain tensors only: fake or functional tensors (left by torch.compile elsewhere) have no storage to count.
        tensors = [obj for obj in gc.get_objects() if type(obj) in (torch.Tensor, torch.nn.Parameter)]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def test_merging_holds_no_third_copy_of_the_deep_weights():
    model = get_peft_model(tiny_clip(), SkipConfig(skip_layers=2, init_weights=False))
    inputs = _inputs()
    tuned = model(**inputs).logits_per_image
    deep = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if p.requires_grad)
    held = _held_bytes()  # each deep weight twice: W0 and the trained copy W
    model.merge_adapter()
    assert _held_bytes() == held
    torch.testing.assert_close(model(**inputs).logits_per_image, tuned, rtol=0, atol=0)
    model.unmerge_adapter()
    assert _held_bytes() == held
    merged = model.merge_and_unload()
    del model
    assert _held_bytes() == held - deep  # one copy left: the merged weights
    torch.testing.assert_close(merged(**inputs).logits_per_image, tuned, rtol=0, atol=0)


def test_save_after_merge_writes_the_trained_deltas(tmp_path):
    model = get_peft_model(tiny_clip(), SkipConfig(skip_layers=2, init_weights=False))
    model.save_pretrained(tmp_path / "unmerged")
    model.merge_adapter()
    model.save_pretrained(tmp_path / "merged")
    saved = [load_file(tmp_path / name / "adapter_model.safetensors") for name in ("unmerged", "merged")]
    assert saved[0].keys() == saved[1].keys()
    for key, delta in saved[0].items():
        assert delta.abs().max() > 0, key
        torch.testing.assert_close(saved[1][key], delta, rtol=0, atol=0)


def test_several_adapters_set_and_delete(device):
    model = get_peft_model(tiny_clip(), SkipConfig(skip_layers=2, init_weights=False), adapter_name="a").to(device)
    model.add_adapter("b", SkipConfig(skip_layers=3, init_weights=False))
    assert {p.device.type for p in model.parameters()} == {device.type}
    logits_a = model(**_inputs(device)).logits_per_image
    model.set_adapter("b")
    logits_b = model(**_inputs(device)).logits_per_image
    assert not torch.allclose(logits_a, logits_b)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".skip_tuned.b." in n for n in trainable)
    # Adapter b has no deltas in layer 2, adapter a does.
    layer2 = model.base_model.model.vision_model.encoder.layers[2].mlp.fc1
    assert set(layer2.skip_tuned) == {"a"}

    model.delete_adapter("a")
    assert set(model.peft_config) == {"b"}
    assert not any("skip_tuned.a." in n for n, _ in model.named_parameters())
    torch.testing.assert_close(model(**_inputs(device)).logits_per_image, logits_b)


def test_gradient_checkpointing_keeps_gradients():
    reference = get_peft_model(tiny_clip(), SkipConfig(skip_layers=1, init_weights=False))
    reference.train()
    checkpointed = copy.deepcopy(reference)
    checkpointed.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert checkpointed.base_model.model.vision_model.encoder.layers[2].gradient_checkpointing
    for model in (reference, checkpointed):
        model(**_inputs(), return_loss=True).loss.backward()
    for (name, a), (_, b) in zip(reference.named_parameters(), checkpointed.named_parameters(), strict=True):
        if a.requires_grad:
            torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_half_precision_base_keeps_fp32_deltas():
    model = get_peft_model(tiny_clip().to(torch.bfloat16), SkipConfig(skip_layers=2))
    deltas = [p for n, p in model.named_parameters() if "skip_tuned" in n]
    assert deltas and all(p.dtype == torch.float32 for p in deltas)
    inputs = _inputs()
    inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
    model(**inputs, return_loss=True).loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in deltas)


def test_a_base_from_a_relative_directory_is_recorded_by_its_absolute_path(tmp_path, monkeypatch):
    """So that the saved adapter's config and card name a base that loads from any directory."""
    tiny_clip().save_pretrained(tmp_path / "clip")
    monkeypatch.chdir(tmp_path)
    model = get_peft_model(CLIPModel.from_pretrained("./clip"), SkipConfig(skip_layers=2))
    model.save_pretrained("adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == str(tmp_path / "clip")
    assert str(tmp_path / "clip") in (tmp_path / "adapter" / "README.md").read_text()
