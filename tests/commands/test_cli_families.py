"""`peft-skip` end to end on tiny offline models of each two-tower family `make-offline-model` writes."""

from __future__ import annotations

import json
import math

import pytest
from transformers import AutoModel, AutoProcessor

from peft_skip.commands.cli import main
from peft_skip.offline import OFFLINE_FAMILIES

FAMILIES = ["metaclip_2", "siglip", "siglip2", "chinese_clip", "altclip"]


def test_every_offline_family_is_tested_end_to_end():
    # CLIP runs end to end in test_cli.py.
    assert set(OFFLINE_FAMILIES) == {"clip", *FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_make_train_eval(family, tmp_path):
    model_dir, out = str(tmp_path / "model"), tmp_path / "run"
    assert main(["make-offline-model", "--out", model_dir, "--arch", "tiny", "--family", family]) == 0
    model, processor = AutoModel.from_pretrained(model_dir), AutoProcessor.from_pretrained(model_dir)
    assert model.config.model_type == family
    assert type(processor).__name__ == OFFLINE_FAMILIES[family].processor
    tokens = processor.tokenizer(["a photo of the number 7.", "a 7"], padding=True)
    special = OFFLINE_FAMILIES[family].tokens
    assert special.unk not in processor.tokenizer.tokenize("a photo of the number 7.")
    assert tokens["input_ids"][1][-1] == processor.tokenizer.pad_token_id == model.config.text_config.pad_token_id
    assert processor.tokenizer.convert_ids_to_tokens(tokens["input_ids"][0][-1]) == special.eos
    if special.starts_with_bos:
        assert processor.tokenizer.convert_ids_to_tokens(tokens["input_ids"][0][0]) == special.bos

    data = ["--data", "digits", "--test-limit", "20"]
    train = ["train", "--model", model_dir, *data, "--shots", "2", "--epochs", "1", "--skip-layers", "2"]
    assert main([*train, "--no-progress", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["random_weights"] and metrics["tuned"]["num_images"] == 20
    assert len(metrics["history"]) == 1 and math.isfinite(metrics["history"][0]["loss"])

    assert main(["eval", "--model", model_dir, *data, "--adapter", str(out), "--out", str(tmp_path / "eval")]) == 0
    result = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    assert result["accuracy"] == metrics["tuned"]["accuracy"]
    assert result["per_class"] == metrics["tuned"]["per_class"]
