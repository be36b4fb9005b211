"""Skip Tuning models in transformers' own tools: the merged model in `pipeline("zero-shot-image-classification")`,
and plain (uncached) training of a `get_peft_model` Skip model with `transformers.Trainer`."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import image_batch, text_batch, tiny_clip
from peft import PeftModel, get_peft_model
from PIL import Image
from transformers import AutoModel, AutoProcessor, Trainer, TrainingArguments, default_data_collator, pipeline

from peft_skip import SkipConfig
from peft_skip.commands.cli import main


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    """A tiny offline model directory with its processor (tokenizer and image processor)."""
    path = str(tmp_path_factory.mktemp("model") / "tiny")
    assert main(["make-offline-model", "--out", path, "--arch", "tiny"]) == 0
    return path


def test_merged_model_in_the_zero_shot_pipeline(tiny_model):
    processor = AutoProcessor.from_pretrained(tiny_model)
    skip = get_peft_model(AutoModel.from_pretrained(tiny_model), SkipConfig(skip_layers=1, init_weights=False))
    merged = skip.merge_and_unload().eval()
    classify = pipeline(
        "zero-shot-image-classification",
        model=merged,
        tokenizer=processor.tokenizer,
        image_processor=processor.image_processor,
    )
    pixels = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    image, labels = Image.fromarray(pixels), ["sneaker", "bag", "ankle boot", "shirt"]
    template = "a photo of a {}."
    scores = {r["label"]: r["score"] for r in classify(image, candidate_labels=labels, hypothesis_template=template)}
    inputs = processor(text=[template.format(x) for x in labels], images=image, return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = merged(**inputs).logits_per_image[0].softmax(-1)
    assert [scores[x] for x in labels] == pytest.approx(expected.tolist(), abs=1e-6)
    # The merged deltas are what the pipeline scores with: the base model's scores differ.
    with torch.no_grad():
        base = AutoModel.from_pretrained(tiny_model).eval()(**inputs).logits_per_image[0].softmax(-1)
    assert not torch.allclose(base, expected, atol=1e-3)


class CaptionedImages(torch.utils.data.Dataset):
    """Images with one caption each, for CLIP's contrastive loss (`return_loss=True`)."""

    def __init__(self, num: int = 8) -> None:
        self.pixels, self.text = image_batch(num, seed=1), text_batch(num, seed=2)

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.pixels[i], **{k: v[i] for k, v in self.text.items()}}


def contrastive_batch(rows: list[dict]) -> dict:
    return {**default_data_collator(rows), "return_loss": True}


def test_trainer_trains_the_deep_layers_of_a_skip_model(tmp_path):
    model = get_peft_model(tiny_clip(), SkipConfig(skip_layers=2))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"),
        per_device_train_batch_size=4,
        num_train_epochs=2,
        learning_rate=1e-3,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=CaptionedImages(), data_collator=contrastive_batch)
    assert torch.isfinite(torch.tensor(trainer.train().training_loss))

    changed = {name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])}
    tuned = {name for name in before if ".skip_tuned." in name}
    # Every trained copy of a deep layer moved; nothing else did (shallow layers, base weights W0, logit_scale).
    assert changed == tuned and any(".encoder.layers.3." in name for name in tuned)
    assert not any(".encoder.layers.0." in name or ".layers.1." in name for name in tuned)

    # `Trainer.save_model` writes the Skip Tuning adapter (deltas only), which loads back to the same model.
    trainer.save_model(str(tmp_path / "adapter"))
    loaded = PeftModel.from_pretrained(tiny_clip(), str(tmp_path / "adapter")).eval()
    inputs = {**text_batch(5), "pixel_values": image_batch(3)}
    with torch.no_grad():
        expected = copy.deepcopy(model).eval()(**inputs).logits_per_image
        assert torch.allclose(loaded(**inputs).logits_per_image, expected, atol=1e-6)
        assert not torch.allclose(tiny_clip()(**inputs).logits_per_image, expected, atol=1e-4)
