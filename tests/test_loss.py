"""One Skip Tuning step: what it builds from the prompts."""

import torch
from conftest import text_batch, tiny_clip
from peft import get_peft_model
from torch.nn import functional as F

from peft_skip import SkipConfig
from peft_skip.loss import SkipTuningStep
from peft_skip.towers import get_towers


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
