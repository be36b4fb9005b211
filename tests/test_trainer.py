"""The Skip Tuning training loop: exactness against full fine-tuning, schedule, sampling, resume, failures."""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import text_batch, tiny_clip
from peft import get_peft_model, get_peft_model_state_dict
from torch.nn import functional as F

from peft_skip import SkipConfig
from peft_skip.evaluation import evaluate_accuracy
from peft_skip.trainer import NonFiniteLossError, SkipTrainer
from peft_skip.training_args import PRESETS, SkipTrainingArguments, class_batches, lr_lambda

NUM_CLASSES = 3


class TensorImages:
    """A data set of random 32x32 images with the `ImageDataset` interface the trainer uses."""

    def __init__(self, per_class: int = 4, num_classes: int = NUM_CLASSES, seed: int = 0) -> None:
        self.class_names = [f"class {c}" for c in range(num_classes)]
        self.labels = [c for c in range(num_classes) for _ in range(per_class)]
        self.pixels = torch.randn(len(self.labels), 3, 32, 32, generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> torch.Tensor:
        return self.pixels[i]


def identity(image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    return image


def jitter(image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A seeded augmentation: flip and noise, so that every epoch's cache differs."""
    if torch.rand((), generator=generator) < 0.5:
        image = image.flip(-1)
    return image + 0.1 * torch.randn(image.shape, generator=generator)


def prompts() -> dict[str, torch.Tensor]:
    return text_batch(NUM_CLASSES, seed=1)


def skip_model(seed: int = 0, **config) -> torch.nn.Module:
    config = {"skip_layers": 2, "class_ratio": 1.0, **config}
    return get_peft_model(tiny_clip(seed), SkipConfig(**config))


def train(model, tmp_path, data=None, transform=jitter, resume=False, **args) -> SkipTrainer:
    args = {"num_train_epochs": 3, "learning_rate": 0.05, "disable_tqdm": True, **args}
    trainer = SkipTrainer(
        model, SkipTrainingArguments(output_dir=str(tmp_path), **args), data or TensorImages(), prompts(), transform
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def deltas(model) -> dict[str, torch.Tensor]:
    return get_peft_model_state_dict(model)


def full_finetuning_step(model, pixels, labels, lr: float) -> None:
    """One SGD step of plain full fine-tuning of every parameter but logit_scale: CE over logit_scale * cos."""
    params = [p for name, p in model.named_parameters() if name != "logit_scale"]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9)
    batch = prompts()
    text = F.normalize(model.get_text_features(**batch).pooler_output, dim=-1)
    images = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
    F.cross_entropy(model.logit_scale.exp() * images @ text.T, labels).backward()
    optimizer.step()


@pytest.mark.parametrize("skip_layers", [0, 2])
def test_one_step_equals_full_finetuning(tmp_path, skip_layers):
    data = TensorImages(per_class=2)
    lr = 0.5
    model = skip_model(skip_layers=skip_layers)
    # One epoch of one batch with every image; the cosine schedule starts at the full learning rate.
    train(
        model,
        tmp_path,
        data,
        identity,
        num_train_epochs=1,
        learning_rate=lr,
        batch_size=len(data),
        sampler="random",
        weight_decay=0.0,
    )
    tuned = model.merge_and_unload()

    reference = tiny_clip()
    before = copy.deepcopy(reference.state_dict())
    full_finetuning_step(reference, data.pixels, torch.tensor(data.labels), lr)

    deep = [f"{tower}_model.encoder.layers.{i}." for tower in ("vision", "text") for i in range(skip_layers, 4)] + [
        "vision_model.post_layernorm.",
        "visual_projection.",
        "text_model.final_layer_norm.",
        "text_projection.",
    ]
    tuned_state = tuned.state_dict()
    checked = 0
    for name, value in reference.state_dict().items():
        if any(name.startswith(prefix) for prefix in deep):
            # The step changed the parameter (a key bias gets no gradient: softmax ignores a shift of all logits),
            # and Skip Tuning changed it the same way.
            assert "k_proj.bias" in name or (value - before[name]).abs().max() > 1e-4, name
            torch.testing.assert_close(tuned_state[name], value, rtol=1e-4, atol=1e-6, msg=name)
            checked += 1
        else:
            torch.testing.assert_close(tuned_state[name], before[name], rtol=0, atol=0, msg=name)
    assert checked == 2 * 16 * (4 - skip_layers) + 6  # 16 tensors per layer, 6 in the heads


def test_presets_and_overrides(tmp_path):
    args = SkipTrainingArguments(output_dir=str(tmp_path), preset="base_to_new")
    assert (args.learning_rate, args.num_train_epochs, args.warmup_epochs, args.warmup_lr) == (2e-5, 20, 1, 1e-6)
    args = SkipTrainingArguments(output_dir=str(tmp_path), preset="few_shot", num_train_epochs=3, learning_rate=0.1)
    assert (args.learning_rate, args.num_train_epochs, args.warmup_epochs, args.batch_size) == (0.1, 3, 0, 4)
    assert PRESETS["cross_dataset"].learning_rate == 1e-5 and PRESETS["cross_dataset"].num_train_epochs == 20
    with pytest.raises(ValueError, match="preset"):
        SkipTrainingArguments(output_dir=str(tmp_path), preset="zero_shot")
    with pytest.raises(ValueError, match="warmup_epochs"):
        SkipTrainingArguments(output_dir=str(tmp_path), num_train_epochs=1, warmup_epochs=1)


def test_schedule_warmup_then_cosine(tmp_path):
    args = SkipTrainingArguments(output_dir=str(tmp_path), preset="base_to_new", num_train_epochs=4)
    factor = lr_lambda(args, steps_per_epoch=10)
    assert [factor(s) * args.learning_rate for s in (0, 9)] == pytest.approx([1e-6, 1e-6])
    # After warm-up the cosine continues as if it had run from step 0.
    assert factor(10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 10 / 40)))
    values = [factor(s) for s in range(10, 40)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False)) and values[-1] < 0.01

    # The trainer follows the schedule: the learning rate at the end of each epoch.
    model = skip_model()
    trainer = SkipTrainer(
        model,
        SkipTrainingArguments(output_dir=str(tmp_path), num_train_epochs=2, learning_rate=0.01, disable_tqdm=True),
        TensorImages(),
        prompts(),
        jitter,
    )
    history = trainer.train().history
    steps = 3  # 3 classes x 4 images, one class per batch of 4
    assert [h["lr"] for h in history] == pytest.approx(
        [0.01 * lr_lambda(trainer.args, steps)(steps * e - 1) for e in (1, 2)]
    )


def test_class_batches():
    labels = torch.tensor([0] * 6 + [1] * 5 + [2] * 4)
    batches = class_batches(labels, 4, per_class=True, generator=torch.Generator().manual_seed(0))
    assert sorted(torch.cat(batches).tolist()) == list(range(len(labels)))
    assert all(len(labels[b].unique()) == 1 and len(b) <= 4 for b in batches)
    assert len(batches) == 2 + 2 + 1

    batches = class_batches(labels, 4, per_class=False, generator=torch.Generator().manual_seed(0))
    assert sorted(torch.cat(batches).tolist()) == list(range(len(labels)))
    assert [len(b) for b in batches] == [4, 4, 4, 3]
    assert any(len(labels[b].unique()) > 1 for b in batches)
    again = class_batches(labels, 4, per_class=False, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))


@pytest.mark.parametrize("cache_mode", ["paper", "views"])
def test_resume_equals_uninterrupted(tmp_path, cache_mode):
    uninterrupted = skip_model(class_ratio=0.5, token_drop=0.3)
    train(uninterrupted, tmp_path / "a", cache_mode=cache_mode, views=2)

    interrupted = skip_model(class_ratio=0.5, token_drop=0.3)
    calls = 0

    def crash_in_third_epoch(module, inputs, output):
        nonlocal calls
        calls += 1
        if calls == 2 * 3 + 2:  # 3 steps per epoch
            raise KeyboardInterrupt

    hook = interrupted.base_model.model.visual_projection.register_forward_hook(crash_in_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, tmp_path / "b", cache_mode=cache_mode, views=2)
    hook.remove()
    assert sorted(os.listdir(tmp_path / "b" / "checkpoints")) == ["epoch-0002"]  # save_total_limit=1

    resumed = skip_model(class_ratio=0.5, token_drop=0.3)
    trainer = train(resumed, tmp_path / "b", cache_mode=cache_mode, views=2, resume=True)
    expected, actual = deltas(uninterrupted), deltas(resumed)
    assert any(v.abs().max() > 0 for v in expected.values())
    for name in expected:
        # Resuming adds the saved deltas to the base weights: equal up to float rounding.
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=1e-6, msg=name)
    assert trainer.args.num_train_epochs == 3

    with pytest.raises(ValueError, match=r"another run \(.*training.learning_rate: saved 0.05, now 0.5\)"):
        train(skip_model(), tmp_path / "b", cache_mode=cache_mode, views=2, learning_rate=0.5, resume=True)


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path):
    model = skip_model()
    calls = 0

    def poison_second_epoch(module, inputs, output):
        nonlocal calls
        calls += 1
        return output * float("nan") if calls > 3 else output

    model.base_model.model.visual_projection.register_forward_hook(poison_second_epoch)
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 1.*epoch-0001"):
        train(model, tmp_path)
    assert os.listdir(tmp_path / "checkpoints") == ["epoch-0001"]
    assert not os.path.exists(tmp_path / "adapter_model.safetensors")


def test_class_selection_and_adamw_train(tmp_path):
    data = TensorImages(per_class=2, num_classes=6)
    model = skip_model(class_ratio=0.3, max_classes=2)
    batch = text_batch(6, seed=1)
    args = SkipTrainingArguments(
        output_dir=str(tmp_path), num_train_epochs=2, learning_rate=1e-3, optim="adamw_torch", disable_tqdm=True
    )
    history = SkipTrainer(model, args, data, batch, jitter).train().history
    assert len(history) == 2 and all(math.isfinite(h["loss"]) for h in history)
    assert any(v.abs().max() > 0 for v in deltas(model).values())


def test_evaluate_full_model(tmp_path):
    data = TensorImages()
    model = tiny_clip()
    result = evaluate_accuracy(model, data, prompts(), identity, batch_size=5)
    text = F.normalize(model.get_text_features(**prompts()).pooler_output, dim=-1)
    images = F.normalize(model.get_image_features(pixel_values=data.pixels).pooler_output, dim=-1)
    correct = (images @ text.T).argmax(-1) == torch.tensor(data.labels)
    assert result["accuracy"] == pytest.approx(correct.double().mean().item())
    assert result["per_class"]["class 1"] == pytest.approx(correct[4:8].double().mean().item())
    assert result["num_images"] == len(data)


def test_bad_inputs(tmp_path):
    with pytest.raises(TypeError, match="get_peft_model"):
        SkipTrainer(tiny_clip(), SkipTrainingArguments(output_dir=str(tmp_path)), TensorImages(), prompts(), identity)
    with pytest.raises(ValueError, match="one prompt per class"):
        SkipTrainer(
            skip_model(), SkipTrainingArguments(output_dir=str(tmp_path)), TensorImages(), text_batch(5), identity
        )


DISTRIBUTED = os.path.join(os.path.dirname(__file__), "distributed_train.py")
ACCELERATE_CONFIG = os.path.join(os.path.dirname(__file__), "..", "examples", "accelerate_config.yaml")


def test_two_processes_match_one(tmp_path):
    """`accelerate launch` with 2 CPU processes (gloo on loopback) gives the deltas of a single process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(["src", "tests", os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", ACCELERATE_CONFIG]
    subprocess.run([*command, DISTRIBUTED, str(tmp_path / "two")], check=True, env=env, timeout=300)
    saved = torch.load(tmp_path / "two" / "deltas.pt")
    assert saved["num_processes"] == 2
    two = saved["deltas"]

    from distributed_train import run

    one = run(str(tmp_path / "one"))
    assert any(v.abs().max() > 0 for v in one.values())
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-6, msg=name)
