"""Frozen weights off the device while training from the caches: which ones, bit-exact return, same training."""

from __future__ import annotations

import pytest
import torch
from conftest import image_batch, text_batch, tiny_clip
from families import FAMILIES, FAMILY_IDS, SKIP, family_inputs
from peft import get_peft_model, get_peft_model_state_dict
from torch import nn

from peft_skip import SkipConfig, get_towers
from peft_skip.training.cache import build_text_cache
from peft_skip.training.classes import ClassSelector
from peft_skip.training.loss import skip_tuning_loss
from peft_skip.training.offload import FrozenOffload, idle_parameters

PREFIX = "base_model.model."


def skip_model(**config) -> nn.Module:
    return get_peft_model(tiny_clip(), SkipConfig(**{"skip_layers": 2, "class_ratio": 1.0, **config}))


def test_idle_parameters_are_embeddings_shallow_layers_and_deep_bases():
    model = skip_model()
    idle = idle_parameters(model)
    shallow = ("embeddings.", "pre_layrnorm.", "encoder.layers.0.", "encoder.layers.1.")
    for name, param in model.named_parameters():
        local = name.removeprefix(PREFIX)
        expected = ".base_layer." in local or any(f"_model.{s}" in local for s in shallow)
        assert (name in idle) == expected, name
        assert not (expected and param.requires_grad), name
    # Without the caches the shallow layers run every step: only the deep bases are idle.
    assert set(idle_parameters(model, from_caches=False)) == {n for n in idle if ".base_layer." in n}


def test_bases_read_by_the_forward_are_not_idle():
    model = skip_model()
    model.base_model.merge_adapter()  # the forward now runs the (merged) base layers
    assert not any(".base_layer." in n for n in idle_parameters(model))
    model.base_model.unmerge_adapter()
    with model.disable_adapter():
        assert not any(".base_layer." in n for n in idle_parameters(model))


def test_a_parameter_tied_to_a_running_module_is_not_idle():
    clip = tiny_clip()
    clip.tied = nn.Module()  # a module outside the towers' shallow paths that shares the position embedding
    clip.tied.weight = clip.text_model.embeddings.position_embedding.weight
    model = get_peft_model(clip, SkipConfig(skip_layers=2))
    idle = idle_parameters(model)
    assert f"{PREFIX}text_model.embeddings.token_embedding.weight" in idle
    assert f"{PREFIX}text_model.embeddings.position_embedding.weight" not in idle
    assert f"{PREFIX}vision_model.embeddings.position_embedding.weight" in idle


def _step_inputs(model):
    """The caches of four images and three prompts, and everything else `skip_tuning_loss` takes."""
    towers = get_towers(model)
    text = text_batch(3, seed=1)
    with torch.no_grad():
        states = towers.vision.run_layers(towers.vision.embed(pixel_values=image_batch(4)), 0, 2)
        text_cache = build_text_cache(towers.text, text["input_ids"], text["attention_mask"], 2)
        prototypes = towers.text_features(text["input_ids"], text["attention_mask"])
    return towers, states, text_cache, prototypes


def _train(model, steps: int, offload: FrozenOffload | None) -> list[float]:
    towers, states, text_cache, prototypes = _step_inputs(model)
    config = model.peft_config["default"]
    selector = ClassSelector(3, 1.0, 50, 0.3, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5, momentum=0.9)
    losses = []
    with offload or torch.enable_grad():
        for _ in range(steps):
            out = skip_tuning_loss(
                towers, states, torch.tensor([0, 1, 2, 1]), text_cache, prototypes, selector, config
            )
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(out.loss.item())
    return losses


def test_training_with_offload_is_bit_exact_and_restores_the_model(tmp_path):
    reference, model = skip_model(), skip_model()
    frozen = {n: (p, p.detach().clone()) for n, p in model.named_parameters() if not p.requires_grad}
    offload = FrozenOffload(model, idle_parameters(model))
    assert offload.nbytes == sum(p.numel() * 4 for p in idle_parameters(model).values())

    assert _train(model, 3, offload) == _train(reference, 3, None)
    # Same deltas, saved and in memory, bit for bit; every frozen parameter is back: same object, same values.
    for key, value in get_peft_model_state_dict(reference).items():
        assert torch.equal(get_peft_model_state_dict(model)[key], value), key
    parameters = dict(model.named_parameters())
    for name, (param, value) in frozen.items():
        assert parameters[name] is param and param.device.type == "cpu" and torch.equal(param, value), name
    model.save_pretrained(tmp_path / "offloaded")
    reference.save_pretrained(tmp_path / "reference")
    files = [f.name for f in (tmp_path / "reference").iterdir()]
    for name in files:
        assert (tmp_path / "offloaded" / name).read_bytes() == (tmp_path / "reference" / name).read_bytes(), name

    # The base model and the merged model are those of the run without offload.
    images, text = image_batch(2), text_batch(3, seed=1)
    with torch.no_grad(), model.disable_adapter():
        assert torch.equal(
            model(pixel_values=images, **text).logits_per_image,
            tiny_clip()(pixel_values=images, **text).logits_per_image,
        )
    merged, expected = model.merge_and_unload(), reference.merge_and_unload()
    for (name, value), (_, reference_value) in zip(
        merged.state_dict().items(), expected.state_dict().items(), strict=True
    ):
        assert torch.equal(value, reference_value), name


def test_inside_the_block_idle_weights_hold_nothing_and_reads_fail():
    model = skip_model()
    offload = FrozenOffload(model, idle_parameters(model))
    embedding = model.get_submodule(f"{PREFIX}text_model.embeddings.token_embedding")
    original, shape = embedding.weight, embedding.weight.shape
    with offload:
        assert embedding.weight.device.type == "meta" and embedding.weight.shape == shape
        assert original.numel() == 0  # the values are gone from memory, not only hidden
        with pytest.raises((RuntimeError, NotImplementedError)):
            get_towers(model).text_features(**text_batch(2))
    assert embedding.weight is original and original.numel() > 0
    with pytest.raises(ValueError, match="trained parameters"):
        FrozenOffload(model, dict(model.named_parameters()))


def test_a_block_can_be_entered_again_and_the_restored_weights_are_private():
    model = skip_model()
    offload = FrozenOffload(model, idle_parameters(model))
    weight = model.get_submodule(f"{PREFIX}vision_model.embeddings.patch_embedding").weight
    value = weight.detach().clone()
    for _ in range(3):
        with offload:
            pass
        assert torch.equal(weight, value)
    with torch.no_grad():
        weight.add_(1.0)  # a change after the block is the model's own (copy-on-write, never written back)
    with offload:
        pass
    assert torch.equal(weight, value)


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_shallow_paths_cover_what_the_shallow_pass_reads(family):
    """Each family's `shallow_module_paths` name every weight `embed` and the shallow layers read, and the deep
    pass from the caches reads none of them: both run with the other weights off the device, unchanged."""
    model = get_peft_model(family.build("sdpa"), SkipConfig(skip_layers=SKIP))
    towers = get_towers(model)
    images, text = family_inputs(family)
    runs = []
    if images is not None:
        inputs = {k: v for k, v in images.items() if k != "pixel_attention_mask"}
        runs.append((towers.vision, inputs, images.get("pixel_attention_mask"), {}))
    if text is not None:
        ids = text["input_ids"]
        runs.append((towers.text, {"input_ids": ids}, text["attention_mask"], {"input_ids": ids}))
    shallow_of = {t.name: [PREFIX + p for p in t.shallow_module_paths(SKIP)] for t, *_ in runs}
    for tower, inputs, mask, pool_kwargs in runs:
        with torch.no_grad():
            states = tower.run_layers(tower.embed(**inputs), 0, SKIP, attention_mask=mask)
            expected = tower.pool(tower.run_layers(states, SKIP, tower.num_layers, attention_mask=mask), **pool_kwargs)
        others = {
            n: p
            for n, p in model.named_parameters()
            if not p.requires_grad and not any(n.startswith(s + ".") for s in shallow_of[tower.name])
        }
        with torch.no_grad(), FrozenOffload(model, others):
            torch.testing.assert_close(tower.run_layers(tower.embed(**inputs), 0, SKIP, attention_mask=mask), states)
        with FrozenOffload(model, idle_parameters(model)):
            hidden = tower.run_layers(states, SKIP, tower.num_layers, attention_mask=mask)
            features = tower.pool(hidden, **pool_kwargs)
            features.sum().backward()
        torch.testing.assert_close(features.detach(), expected, rtol=0, atol=0)


@pytest.mark.parametrize("cache_mode", ["paper", "views"])
def test_trainer_takes_idle_weights_off_during_the_steps_only(tmp_path, monkeypatch, cache_mode):
    from tiny_training import train

    from peft_skip.training.trainer import SkipTrainer

    seen = []
    optimizer_step = SkipTrainer._optimizer_step

    def recording_step(trainer, *args):
        embedding = trainer.model.get_submodule(f"{PREFIX}vision_model.embeddings.patch_embedding")
        seen.append(embedding.weight.device.type)
        return optimizer_step(trainer, *args)

    monkeypatch.setattr(SkipTrainer, "_optimizer_step", recording_step)
    offloaded, kept = skip_model(), skip_model()
    train(offloaded, tmp_path / "offloaded", cache_mode=cache_mode, views=2)
    assert seen and set(seen) == {"meta"}
    seen.clear()
    train(kept, tmp_path / "kept", cache_mode=cache_mode, views=2, offload_frozen=False)
    assert set(seen) == {"cpu"}
    # The same run: the same adapter and checkpoint bytes; the model is whole again after training.
    for name in ("adapter_model.safetensors", "checkpoints/epoch-0003/adapter_model.safetensors"):
        assert (tmp_path / "offloaded" / name).read_bytes() == (tmp_path / "kept" / name).read_bytes(), name
    assert all(p.device.type == "cpu" and p.numel() for p in offloaded.parameters())


def test_a_checkpoint_memory_map_is_let_go(tmp_path):
    """transformers maps the checkpoint into memory; once the idle weights are off, nothing may view the file any
    more, or the pages read so far (all of them, after the caches) stay resident."""
    from transformers import CLIPModel

    tiny_clip().save_pretrained(tmp_path / "clip")
    loaded = CLIPModel.from_pretrained(tmp_path / "clip")
    model = get_peft_model(loaded, SkipConfig(skip_layers=2))

    def mapped() -> bool:
        with open("/proc/self/maps") as maps:
            return str(tmp_path / "clip") in maps.read()

    assert mapped()
    scale = loaded.logit_scale.detach().clone()
    with FrozenOffload(model, idle_parameters(model)):
        assert not mapped()
        assert torch.equal(loaded.logit_scale, scale)  # a weight the step reads, now in memory of its own
    assert not mapped()
