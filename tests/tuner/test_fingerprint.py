import torch
from conftest import tiny_clip
from peft import get_peft_model

import peft_skip  # noqa: F401
from peft_skip import SkipConfig
from peft_skip.tuner.fingerprint import fingerprint as fingerprint_of
from peft_skip.tuner.fingerprint import fingerprint_mismatch
from peft_skip.tuner.layer import base_parameters


def fingerprint(model):
    return fingerprint_of(base_parameters(model))


def test_same_weights_match_in_any_dtype_and_when_wrapped():
    reference = fingerprint(tiny_clip())
    assert fingerprint_mismatch(reference, fingerprint(tiny_clip())) is None
    assert fingerprint_mismatch(reference, fingerprint(tiny_clip().to(torch.float16))) is None
    assert fingerprint_mismatch(reference, fingerprint(tiny_clip().to(torch.bfloat16))) is None
    wrapped = get_peft_model(tiny_clip(), SkipConfig(skip_layers=1, init_weights=False))
    assert fingerprint_mismatch(reference, fingerprint(wrapped.base_model.model)) is None


def test_other_weights_or_shapes_differ():
    reference = fingerprint(tiny_clip())
    assert "weights differ" in fingerprint_mismatch(reference, fingerprint(tiny_clip(seed=3)))
    assert "names or shapes" in fingerprint_mismatch(reference, fingerprint(tiny_clip(layers=3)))


def test_a_small_change_to_one_deep_tensor_is_noticed():
    model = tiny_clip()
    reference = fingerprint(model)
    with torch.no_grad():
        model.vision_model.encoder.layers[3].mlp.fc2.weight.mul_(-1)
    assert fingerprint_mismatch(reference, fingerprint(model)) is not None


def test_a_change_to_part_of_a_tensor_is_noticed():
    """A tensor larger than the sample: a change in its second half (or in any one row) must move the fingerprint."""
    model = tiny_clip()
    reference = fingerprint(model)
    weight = model.text_model.encoder.layers[1].mlp.fc1.weight  # 64 x 32: more elements than one sample holds
    assert weight.numel() > 256
    with torch.no_grad():
        weight[weight.shape[0] // 2 :].mul_(-1)
    assert fingerprint_mismatch(reference, fingerprint(model)) is not None
