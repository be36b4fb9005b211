"""Every supported family: the cut into embed / run_layers / pool is exact, and the peft wrapper trains the right
parameters of it. Tiny random-weight models built from configs."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import EOS, text_batch
from families import CLIP_TEXT, CLIP_VISION, FAMILIES, FAMILY_IDS, SKIP, TEXT, Family, family_inputs
from peft import PeftModel, get_peft_model, inject_adapter_in_model, load_peft_weights, set_peft_model_state_dict
from synthetic_images import random_image
from torch.nn import functional as F
from transformers import (
    BertConfig,
    BertModel,
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    MetaClip2Config,
    MetaClip2Model,
    Siglip2ImageProcessorPil,
)

from peft_skip import SkipConfig, get_towers
from peft_skip.data import ImageTransform
from peft_skip.towers import DOCS_ADDING_A_FAMILY
from peft_skip.tuner.layer import SkipLayer


def _deep_pass(tower, inputs, mask, pool_kwargs, skip=SKIP):
    with torch.no_grad():
        cached = tower.run_layers(tower.embed(**inputs), 0, skip, attention_mask=mask)
    hidden = tower.run_layers(cached, skip, tower.num_layers, attention_mask=mask)
    return tower.pool(hidden, attention_mask=mask, **pool_kwargs)


def _vision_pass(towers, images, skip=SKIP):
    inputs = {k: v for k, v in images.items() if k != "pixel_attention_mask"}
    return _deep_pass(towers.vision, inputs, images.get("pixel_attention_mask"), {}, skip)


def _text_pass(towers, text, skip=SKIP):
    ids = text["input_ids"]
    return _deep_pass(towers.text, {"input_ids": ids}, text["attention_mask"], {"input_ids": ids}, skip)


@pytest.mark.parametrize("padded", [True, False], ids=["padded", "unpadded"])
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_deep_pass_from_cache_equals_full_forward(family, attn_implementation, padded):
    model = family.build(attn_implementation)
    towers = get_towers(model)
    images, text = family_inputs(family, padded)
    with torch.no_grad():
        if images is not None:
            expected = family.image_features(model, images)
            torch.testing.assert_close(_vision_pass(towers, images), expected, atol=1e-5, rtol=1e-5)
        if text is not None:
            expected = family.text_features(model, text)
            torch.testing.assert_close(_text_pass(towers, text), expected, atol=1e-5, rtol=1e-5)


def test_text_layers_get_the_mask_of_the_model():
    """The exactness test can fail: a CLIP text slice run bidirectionally (no causal mask) gives other features."""
    model = FAMILIES[0].build("sdpa")
    tower = get_towers(model).text
    text = text_batch(num=4, padded=False)
    with torch.no_grad():
        hidden = tower.embed(input_ids=text["input_ids"])
        for layer in tower.layers:
            hidden = layer(hidden, None)
        bidirectional = tower.pool(hidden, input_ids=text["input_ids"])
        expected = model.get_text_features(**text).pooler_output
    assert not torch.allclose(bidirectional, expected, atol=1e-3)


def _towers_output(family: Family, model) -> torch.Tensor:
    """What a user reads off the model: its logits, or the embeddings of a single-tower model."""
    images, text = family_inputs(family)
    with torch.no_grad():
        if family.standalone:
            return family.image_features(model, images) if images is not None else family.text_features(model, text)
        return model(**images, **text).logits_per_image


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_save_load_merge_round_trip(family, tmp_path):
    base_output = _towers_output(family, family.build("sdpa"))
    peft_model = get_peft_model(family.build("sdpa"), SkipConfig(skip_layers=SKIP, init_weights=False))
    trained = _towers_output(family, peft_model)
    assert not torch.allclose(trained, base_output, atol=1e-4), "random deltas should change the output"

    peft_model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(family.build("sdpa"), tmp_path)
    torch.testing.assert_close(_towers_output(family, loaded), trained, atol=1e-5, rtol=1e-5)
    merged = loaded.merge_and_unload()
    assert not any(isinstance(m, SkipLayer) for m in merged.modules())
    torch.testing.assert_close(_towers_output(family, merged), trained, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_transformers_and_peft_low_level_loading_equal_peft_model(family, tmp_path):
    """`model.load_adapter`, `<family class>.from_pretrained(adapter_dir)` and `inject_adapter_in_model` +
    `set_peft_model_state_dict` give `PeftModel.from_pretrained`'s outputs, with deltas no initialisation repeats."""
    family.build("sdpa").save_pretrained(tmp_path / "base")
    peft_model = get_peft_model(family.build("sdpa"), SkipConfig(skip_layers=SKIP))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in peft_model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    peft_model.peft_config["default"].base_model_name_or_path = str(tmp_path / "base")
    peft_model.save_pretrained(tmp_path / "adapter")
    adapter = str(tmp_path / "adapter")
    expected = _towers_output(family, PeftModel.from_pretrained(family.build("sdpa"), adapter))
    torch.testing.assert_close(expected, _towers_output(family, peft_model), atol=1e-6, rtol=0)

    loaded = family.build("sdpa")
    loaded.load_adapter(adapter)
    injected = inject_adapter_in_model(
        SkipConfig.from_pretrained(adapter), family.build("sdpa"), low_cpu_mem_usage=True
    )
    set_peft_model_state_dict(injected, load_peft_weights(adapter), low_cpu_mem_usage=True)
    for model in (loaded, type(loaded).from_pretrained(adapter), injected):
        torch.testing.assert_close(_towers_output(family, model), expected, atol=1e-6, rtol=0)


def _delta_owner(peft_model, delta_name: str) -> str:
    """The base-model parameter a delta belongs to: `a.b.skip_tuned.default.c-d` -> `a.b.c.d`."""
    module_path, _, rest = delta_name.removeprefix("base_model.model.").partition(".skip_tuned.")
    key = rest.split(".", 1)[1]
    return f"{module_path}.{key.replace('-', '.')}"


def _deep_paths(family: Family, model) -> list[str]:
    towers = get_towers(model)
    return [p for t in (towers.vision, towers.text) if t is not None for p in t.deep_module_paths(SKIP)]


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_trainable_parameters_are_the_deep_layers_and_heads(family):
    model = family.build("sdpa")
    deep = _deep_paths(family, model)
    expected = {n for n, _ in model.named_parameters() if any(n.startswith(p + ".") for p in deep)}
    peft_model = get_peft_model(model, SkipConfig(skip_layers=SKIP))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert all(".skip_tuned.default." in n for n in trainable)
    assert {_delta_owner(peft_model, n) for n in trainable} == expected
    assert len(trainable) == len(expected)


def _contrastive_loss(family: Family, towers, images, text) -> torch.Tensor:
    """Cross-entropy over scale * cos (+ bias); single-tower models contrast two views of their inputs."""
    if family.standalone:
        features = _vision_pass(towers, images) if images is not None else _text_pass(towers, text)
        other = features.detach().roll(1, dims=0)
        logits = F.normalize(features, dim=-1) @ F.normalize(other, dim=-1).T * 10
    else:
        image_features = F.normalize(_vision_pass(towers, images), dim=-1)
        text_features = F.normalize(_text_pass(towers, text)[: image_features.shape[0]], dim=-1)
        logits = towers.logit_scale.exp() * image_features @ text_features.T
        if towers.logit_bias is not None:
            logits = logits + towers.logit_bias
    return F.cross_entropy(logits, torch.arange(logits.shape[0]))


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_sgd_step_changes_only_deep_deltas(family):
    peft_model = get_peft_model(family.build("sdpa"), SkipConfig(skip_layers=SKIP))
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.5)
    images, text = family_inputs(family)
    _contrastive_loss(family, get_towers(peft_model), images, text).backward()
    optimizer.step()

    changed = {n for n, p in peft_model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".skip_tuned.default." in n for n in changed)
    # Every deep layer and head learned something (single parameters may have an exactly zero gradient, e.g. the
    # key bias, to which softmax attention is invariant).
    owners = {_delta_owner(peft_model, n) for n in changed}
    for path in _deep_paths(family, peft_model.get_base_model()):
        assert any(o.startswith(path + ".") for o in owners), f"nothing under {path} was trained"


@pytest.mark.parametrize("family", [f for f in FAMILIES if f.name.startswith("siglip")], ids=lambda f: f.name)
def test_attention_pooling_head_delta_gradients_equal_full_fine_tuning(family):
    """`nn.MultiheadAttention` reads `out_proj.weight` itself: its deltas must still get full fine-tuning's
    gradients, so the head is wrapped whole."""
    peft_model = get_peft_model(family.build("eager"), SkipConfig(skip_layers=SKIP, init_weights=False))
    head = peft_model.get_base_model().vision_model.head
    assert isinstance(head, SkipLayer)
    assert not any(isinstance(m, SkipLayer) for m in head.base_layer.modules())
    assert "attention-out_proj-weight" in head.skip_tuned["default"]

    full = copy.deepcopy(peft_model).merge_and_unload()
    full.requires_grad_(True)
    images, text = family_inputs(family)
    _contrastive_loss(family, get_towers(peft_model), images, text).backward()
    _contrastive_loss(family, get_towers(full), images, text).backward()

    full_grads = dict(full.named_parameters())
    deltas = [(n, p) for n, p in peft_model.named_parameters() if p.requires_grad]
    for name, delta in deltas:
        torch.testing.assert_close(delta.grad, full_grads[_delta_owner(peft_model, name)].grad, atol=1e-6, rtol=1e-5)
    head_grads = [n for n, _ in deltas if ".head.skip_tuned." in n and "vision_model" in n]
    assert len(head_grads) == len(dict(full.vision_model.head.named_parameters()))


def test_second_adapter_gets_its_own_deltas():
    peft_model = get_peft_model(FAMILIES[2].build("sdpa"), SkipConfig(skip_layers=SKIP))
    peft_model.add_adapter("other", SkipConfig(skip_layers=SKIP))
    base = peft_model.get_base_model()
    for module in (base.vision_model.head, base.text_model.encoder.layers[SKIP].mlp.fc1):
        assert set(module.skip_tuned) == {"default", "other"}


@pytest.mark.parametrize(
    "model",
    [
        BertModel(BertConfig(**TEXT)),
        CLIPVisionModel(CLIPVisionConfig(**CLIP_VISION)),
    ],
    ids=["bert", "clip_vision_without_projection"],
)
def test_unsupported_model_raises_type_error(model):
    with pytest.raises(TypeError, match=DOCS_ADDING_A_FAMILY) as error:
        get_towers(model)
    if isinstance(model, BertModel):
        assert "siglip2" in str(error.value) and "chinese_clip" in str(error.value)
    with pytest.raises(TypeError, match=DOCS_ADDING_A_FAMILY):
        get_peft_model(model, SkipConfig(skip_layers=SKIP))


def test_towers_of_single_tower_models():
    family = {f.name: f for f in FAMILIES}
    vision_only = get_towers(family["clip_vision_model"].build("sdpa"))
    text_only = get_towers(family["clip_text_model"].build("sdpa"))
    assert vision_only.text is None and vision_only.vision is not None and vision_only.logit_scale is None
    assert text_only.vision is None and text_only.text is not None
    siglip = get_towers(FAMILIES[2].build("sdpa"))
    assert siglip.logit_bias is not None and get_towers(FAMILIES[0].build("sdpa")).logit_bias is None


def test_metaclip_2_pools_at_the_first_eos_even_when_its_id_is_2():
    """Released MetaCLIP 2 configs have eos_token_id=2; CLIP's legacy rule (argmax of ids) would pool elsewhere."""
    torch.manual_seed(0)
    config = MetaClip2Config(text_config=dict(CLIP_TEXT, eos_token_id=2), vision_config=CLIP_VISION)
    model = MetaClip2Model(config).eval()
    text = text_batch(num=4, seed=1)
    text["input_ids"] = torch.where(text["input_ids"] == EOS, 2, text["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(
            _text_pass(get_towers(model), text), model.get_text_features(**text).pooler_output, atol=1e-5, rtol=1e-5
        )


def test_clip_pools_at_the_first_eos_not_at_the_largest_id():
    """With an end-of-text id below other ids of the prompt, argmax of the ids would pool at another token."""
    eos = 50
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=dict(CLIP_TEXT, eos_token_id=eos), vision_config=CLIP_VISION)).eval()
    text = text_batch(num=4, seed=1)
    ids = text["input_ids"]
    text["input_ids"] = torch.where(ids == EOS, eos, torch.where(ids == eos, eos + 1, ids))  # one EOS, after BOS 97
    assert (text["input_ids"].argmax(-1) != (text["input_ids"] == eos).int().argmax(-1)).all()
    with torch.no_grad():
        torch.testing.assert_close(
            _text_pass(get_towers(model), text), model.get_text_features(**text).pooler_output, atol=1e-5, rtol=1e-5
        )


def test_siglip2_image_inputs_are_the_image_processor_patches():
    processor = Siglip2ImageProcessorPil(patch_size=4, max_num_patches=16)
    images = [random_image(16, 16, seed=seed) for seed in range(2)]
    expected = processor(images=images, return_tensors="pt")
    assert expected["pixel_attention_mask"].all()  # a square image of the full grid has no padding patch
    transform = ImageTransform.from_processor(processor, train=False)
    assert transform.image_size == 16 and not transform.crop
    model = next(f for f in FAMILIES if f.name == "siglip2").build("sdpa")
    tower = get_towers(model).vision
    inputs = tower.image_inputs(torch.stack([transform(image) for image in images]))
    assert inputs.keys() == {"pixel_values", "spatial_shapes"}
    torch.testing.assert_close(inputs["pixel_values"], expected["pixel_values"], atol=1e-5, rtol=1e-5)
    assert torch.equal(inputs["spatial_shapes"], expected["spatial_shapes"])
    with torch.no_grad():
        full = model.get_image_features(**expected).pooler_output
    torch.testing.assert_close(_deep_pass(tower, inputs, None, {}), full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="multiples of 4"):
        tower.image_inputs(torch.zeros(1, 3, 10, 16))


@pytest.mark.parametrize("family", [f for f in FAMILIES if f.has_text and not f.standalone], ids=lambda f: f.name)
def test_one_epoch_of_the_trainer(family, tmp_path):
    import numpy as np
    from PIL import Image

    from peft_skip import SkipTrainer, SkipTrainingArguments, evaluate_accuracy
    from peft_skip.data import ImageDataset

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(6)]
    train_set = ImageDataset(["a", "b", "c"], images, [0, 0, 1, 1, 2, 2])
    model = get_peft_model(family.build("sdpa"), SkipConfig(skip_layers=SKIP, class_ratio=0.5))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    args = SkipTrainingArguments(
        output_dir=str(tmp_path), num_train_epochs=1, learning_rate=1e-2, batch_size=2, disable_tqdm=True
    )
    transform = ImageTransform(32, mean=(0.5,) * 3, std=(0.5,) * 3, train=True, seed=0)
    prompts = text_batch(num=3, seed=1)
    SkipTrainer(model, args, train_set, prompts, transform).train()
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert any("vision_model" in n for n in changed) and any("text" in n for n in changed)
    assert (tmp_path / "adapter_model.safetensors").exists()
    eval_transform = ImageTransform(32, mean=(0.5,) * 3, std=(0.5,) * 3, train=False)
    assert evaluate_accuracy(model, train_set, prompts, eval_transform)["num_images"] == len(train_set)


def test_prompt_padding_follows_the_family():
    by_name = {f.name: f for f in FAMILIES}
    assert get_towers(by_name["clip"].build("sdpa")).text.padding() == {"padding": True}
    # SigLIP pools the last position: its prompts are padded to the full text length, as in its training.
    assert get_towers(by_name["siglip"].build("sdpa")).text.padding() == {"padding": "max_length", "max_length": 16}
