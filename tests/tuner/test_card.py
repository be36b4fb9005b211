"""The adapter's model card: written with its accuracies after a run, read back with `huggingface_hub.ModelCard`."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import ModelCard

from peft_skip.commands.cli import main
from peft_skip.tuner.card import build_card

TRAIN = ["--data", "digits", "--shots", "4", "--skip-layers", "2", "--test-limit", "60", "--no-progress"]


@pytest.fixture(scope="module")
def base_to_new_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("card")
    model, out = root / "tiny", root / "run"
    assert main(["make-offline-model", "--out", str(model), "--arch", "tiny"]) == 0
    argv = ["train", "--model", str(model), *TRAIN, "--preset", "base_to_new", "--epochs", "2", "--lr", "1e-2"]
    assert main([*argv, "--license", "mit", "--out", str(out)]) == 0
    return model, out


def test_the_final_card_has_the_runs_results(base_to_new_run):
    model, out = base_to_new_run
    metrics = json.loads((out / "metrics.json").read_text())
    card = ModelCard.load(out / "README.md")
    data = card.data
    assert data.pipeline_tag == "zero-shot-image-classification" and data.library_name == "peft"
    assert data.license == "mit"
    assert {"peft", "skip-tuning", "clip"} <= set(data.tags)
    assert data.base_model is None  # a local base is not a Hub id: it is named in the text instead
    assert str(model.resolve()) in card.text and "import peft_skip" in card.text
    assert data.model_name == "run"
    results = {r.metric_name: r.metric_value for r in data.eval_results}
    tuned, zero_shot = metrics["tuned"], metrics["zero_shot"]
    assert results == {
        "zero-shot accuracy (base model), base classes": round(zero_shot["base"]["accuracy"], 4),
        "zero-shot accuracy (base model), new classes": round(zero_shot["new"]["accuracy"], 4),
        "zero-shot accuracy (base model), harmonic mean": round(zero_shot["harmonic_mean"], 4),
        "Skip Tuning accuracy, base classes": round(tuned["base"]["accuracy"], 4),
        "Skip Tuning accuracy, new classes": round(tuned["new"]["accuracy"], 4),
        "Skip Tuning accuracy, harmonic mean": round(tuned["harmonic_mean"], 4),
    }
    assert {(r.task_type, r.dataset_name, r.dataset_split) for r in data.eval_results} == {
        ("zero-shot-image-classification", "digits", "test")
    }
    # The recipe: the resolved training arguments.
    assert "| `protocol` | `base_to_new` |" in card.text and "| `learning_rate` | `0.01` |" in card.text
    assert "| `skip_layers` | `2` |" in card.text


def test_a_checkpoints_card_has_no_results(base_to_new_run):
    _, out = base_to_new_run
    (checkpoint,) = (out / "checkpoints").iterdir()
    data = ModelCard.load(checkpoint / "README.md").data
    assert data.eval_results is None and data.pipeline_tag == "zero-shot-image-classification"


def test_hub_base_license_and_datasets(tmp_path):
    """A Hub base is `base_model` (and tagged); its license comes from its card when at hand; Hub data sets are
    listed."""
    base = tmp_path / "base"
    base.mkdir()
    (base / "README.md").write_text("---\nlicense: apache-2.0\n---\n# base\n")
    (base / "config.json").write_text('{"model_type": "siglip"}')
    local = build_card(str(base), {"skip_layers": 6})
    assert local.data.license == "apache-2.0" and "siglip" in local.data.tags and local.data.base_model is None
    result = {"accuracy": 0.5, "per_class": {}, "num_images": 2}
    metrics = {
        "data": {"data": "hf:someone/pets", "split": "test", "template": "a photo of a {}."},
        "training_arguments": {"protocol": "few_shot"},
        "zero_shot": result,
        "tuned": result | {"accuracy": 0.75},
    }
    card = ModelCard(str(build_card("openai/clip-vit-base-patch16", {"skip_layers": 6}, metrics, "me/pets")))
    assert card.data.base_model == "openai/clip-vit-base-patch16"
    assert "base_model:adapter:openai/clip-vit-base-patch16" in card.data.tags
    assert card.data.datasets == ["someone/pets"] and card.data.license is None
    assert [(r.metric_name, r.metric_value) for r in card.data.eval_results] == [
        ("zero-shot accuracy (base model)", 0.5),
        ("Skip Tuning accuracy", 0.75),
    ]
