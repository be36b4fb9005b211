"""Accuracy of the full model under each protocol."""

import pytest
import torch
import transformers

from peft_skip.data import ImageTransform, load_dataset_spec, subset_classes
from peft_skip.offline import make_offline_model
from peft_skip.training.evaluation import evaluate_accuracy, evaluate_protocol, harmonic_mean, tokenize_classes

TEMPLATE = "a photo of a {}."


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = make_offline_model(str(tmp_path_factory.mktemp("model") / "tiny"), arch="tiny", seed=1)
    return transformers.AutoModel.from_pretrained(path).eval(), transformers.AutoProcessor.from_pretrained(path)


def test_base_and_new_images_are_each_scored_among_their_own_classes(tiny):
    model, processor = tiny
    torch.manual_seed(0)
    data = load_dataset_spec("digits", "test")
    data = data.subset(range(0, len(data), 3))
    transform = ImageTransform.from_processor(processor, train=False)
    base_new = ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9])
    result = evaluate_protocol(model, processor.tokenizer, data, transform, TEMPLATE, base_new)
    every = evaluate_accuracy(
        model, data, tokenize_classes(model, processor.tokenizer, data.class_names, TEMPLATE), transform
    )
    differs = []
    for name, classes in zip(("base", "new"), base_new, strict=True):
        own = subset_classes(data, classes)
        prompts = tokenize_classes(model, processor.tokenizer, own.class_names, TEMPLATE)
        expected = evaluate_accuracy(model, own, prompts, transform)
        assert result[name] == expected
        assert set(result[name]["per_class"]) == set(own.class_names)
        differs.append(expected["per_class"] != {c: every["per_class"][c] for c in own.class_names})
    assert any(differs)  # choosing among all ten classes scores some images differently: the test tells them apart
    assert result["harmonic_mean"] == harmonic_mean(result["base"]["accuracy"], result["new"]["accuracy"])
