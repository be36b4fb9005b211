"""One Skip Tuning step: what it builds from the prompts."""

import torch
from conftest import image_batch, text_batch, tiny_clip
from peft import get_peft_model
from torch.nn import functional as F

from peft_skip import SkipConfig
from peft_skip.towers import get_towers
from peft_skip.training.loss import SkipTuningStep, drop_tokens


def test_prototypes_come_from_the_pre_trained_model():
    """CSkip ranks classes by the zero-shot features, also when the model's deltas are not zero (a resumed run)."""
    model = get_peft_model(tiny_clip(), SkipConfig(skip_layers=2, class_ratio=0.5, init_weights=False))
    prompts = text_batch(4, seed=1)
    step = SkipTuningStep.from_prompts(model, get_towers(model), prompts, torch.Generator().manual_seed(0), "cpu")
    with torch.no_grad():
        pre_trained = F.normalize(tiny_clip().get_text_features(**prompts).pooler_output, dim=-1)
        tuned = F.normalize(model.get_text_features(**prompts).pooler_output, dim=-1)
    assert not torch.allclose(tuned, pre_trained, atol=1e-3)
    torch.testing.assert_close(step.prototypes, pre_trained)


def test_a_step_with_dropped_classes_is_the_full_model_on_the_kept_classes():
    """The step's logits are the full model's over the kept classes, in their order, and its targets are the labels."""
    model = get_peft_model(tiny_clip(), SkipConfig(skip_layers=2, class_ratio=0.2, init_weights=False))
    towers = get_towers(model)
    prompts = text_batch(10, seed=1)
    step = SkipTuningStep.from_prompts(model, towers, prompts, torch.Generator().manual_seed(0), "cpu")
    pixels, labels = image_batch(3), torch.tensor([7, 2, 7])
    with torch.no_grad():
        states = towers.vision.run_layers(towers.vision.embed(pixels), 0, 2)
        out = step(states, labels, 1.0, torch.Generator())
        images = towers.image_features(pixels)
        texts = towers.text_features(prompts["input_ids"], prompts["attention_mask"])
    kept, _ = step.selector.select(images.float(), step.prototypes, labels)
    assert 2 < len(kept) < 10  # CSkip dropped classes
    torch.testing.assert_close(kept[out.targets], labels, rtol=0, atol=0)
    expected = towers.logit_scale.exp() * images @ texts[kept].T
    torch.testing.assert_close(out.logits, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.loss, F.cross_entropy(expected, out.targets), rtol=1e-4, atol=1e-4)


def test_token_drop_keeps_the_class_token():
    """The step drops image tokens as `drop_tokens` does with the tower's class tokens kept (CLIP pools token 0)."""
    model = get_peft_model(tiny_clip(), SkipConfig(skip_layers=2, token_drop=0.6))
    towers = get_towers(model)
    prompts = text_batch(3, seed=1)
    step = SkipTuningStep.from_prompts(model, towers, prompts, torch.Generator().manual_seed(0), "cpu")
    labels = torch.tensor([0, 1, 2])
    with torch.no_grad():
        states = towers.vision.run_layers(towers.vision.embed(image_batch(3)), 0, 2)
        out = step(states, labels, 1.0, torch.Generator().manual_seed(5))
        kept = drop_tokens(states, 0.6, torch.Generator().manual_seed(5), class_tokens=1)
        images = F.normalize(towers.vision.pool(towers.vision.run_layers(kept, 2, 4)), dim=-1)
        texts = towers.text_features(prompts["input_ids"], prompts["attention_mask"])
    assert kept.shape[1] < states.shape[1]
    torch.testing.assert_close(out.logits, towers.logit_scale.exp() * images @ texts.T, rtol=1e-4, atol=1e-4)
