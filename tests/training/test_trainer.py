"""The Skip Tuning training loop: exactness against full fine-tuning, schedule, sampling, resume, failures."""

from __future__ import annotations

import copy
import math
import os
import socket
import subprocess
import sys

import pytest
import torch
from conftest import text_batch, tiny_clip
from safetensors import safe_open
from tiny_training import (
    NUM_CLASSES,
    TensorImages,
    UnidentifiedImages,
    deltas,
    identity,
    jitter,
    prompts,
    skip_model,
    train,
)
from torch.nn import functional as F

from peft_skip.training.batches import class_batches
from peft_skip.training.cache import ImageCache
from peft_skip.training.evaluation import evaluate_accuracy
from peft_skip.training.recipes import reference_recipe, with_overrides
from peft_skip.training.schedule import lr_lambda, make_optimizer, make_scheduler
from peft_skip.training.trainer import NonFiniteLossError, SkipTrainer
from peft_skip.training.training_args import SkipTrainingArguments
from peft_skip.tuner.layer import SkipLayer


def full_finetuning_step(model, pixels, labels, lr: float, weight_decay: float = 0.0) -> None:
    """One SGD step of plain full fine-tuning of every parameter but logit_scale: CE over logit_scale * cos."""
    params = [p for name, p in model.named_parameters() if name != "logit_scale"]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    batch = {k: v.to(pixels.device) for k, v in prompts().items()}
    text = F.normalize(model.get_text_features(**batch).pooler_output, dim=-1)
    images = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
    F.cross_entropy(model.logit_scale.exp() * images @ text.T, labels.to(pixels.device)).backward()
    optimizer.step()


@pytest.mark.parametrize(
    "skip_layers, accumulation, weight_decay", [(0, 1, 0.0), (2, 1, 0.0), (2, 2, 0.0), (2, 1, 0.01)]
)
def test_one_step_equals_full_finetuning(tmp_path, skip_layers, accumulation, weight_decay, device, accelerator):
    data = TensorImages(per_class=2)
    lr = 0.5
    model = skip_model(skip_layers=skip_layers)
    # One epoch of one optimiser step over every image (one batch, or two accumulated halves); the cosine schedule
    # starts at the full learning rate.
    train(
        model,
        tmp_path,
        data,
        identity,
        num_train_epochs=1,
        learning_rate=lr,
        batch_size=len(data) // accumulation,
        gradient_accumulation_steps=accumulation,
        sampler="random",
        weight_decay=weight_decay,
        accelerator=accelerator(),
    )
    tuned = model.merge_and_unload()
    assert {p.device.type for p in tuned.parameters()} == {device.type}

    reference = tiny_clip().to(device)
    before = copy.deepcopy(reference.state_dict())
    full_finetuning_step(reference, data.pixels.to(device), torch.tensor(data.labels), lr, weight_decay)

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


def test_protocols_and_overrides(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    args = SkipTrainingArguments(output_dir=str(tmp_path), protocol="base_to_new")
    assert (args.learning_rate, args.vision_learning_rate, args.num_train_epochs) == (2e-5, 5e-6, 20)
    assert (args.warmup_epochs, args.warmup_lr, args.lr_scheduler_type) == (1, 1e-6, "dassl_cosine")
    assert (args.precision, args.dataloader_drop_last, args.batch_size) == ("fp16_reference", True, 4)
    args = SkipTrainingArguments(output_dir=str(tmp_path), protocol="few_shot", num_train_epochs=3, learning_rate=0.1)
    assert (args.learning_rate, args.vision_learning_rate, args.num_train_epochs, args.warmup_epochs) == (
        0.1,
        0.1,
        3,
        0,
    )
    args = SkipTrainingArguments(output_dir=str(tmp_path), protocol="cross_dataset", vision_learning_rate=3e-6)
    assert (args.learning_rate, args.vision_learning_rate, args.num_train_epochs, args.warmup_lr) == (
        1e-5,
        3e-6,
        5,
        1e-8,
    )
    assert (
        SkipTrainingArguments(output_dir=str(tmp_path), protocol="few_shot", recipe_dataset="sun397").num_train_epochs
        == 10
    )
    # On a CPU float32 is the default; the paper's float16 is chosen by name. Each says so in one line.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpu = SkipTrainingArguments(output_dir=str(tmp_path))
    assert cpu.precision == "fp32" and "default on a CPU" in cpu.precision_note()
    assert "--precision fp16_reference" in cpu.precision_note()
    paper = SkipTrainingArguments(output_dir=str(tmp_path), precision="fp16_reference")
    assert paper.precision == "fp16_reference" and "as given" in paper.precision_note()
    adam = SkipTrainingArguments(output_dir=str(tmp_path), optim="adamw_torch").precision_note()
    assert adam.startswith("precision: fp32 (with mixed_precision='no', optim='adamw_torch')") and "sgd" in adam
    # Autocast and AdamW keep float32 weights; the reference's float16 mode refuses them.
    assert SkipTrainingArguments(output_dir=str(tmp_path), mixed_precision="bf16").precision == "fp32"
    assert SkipTrainingArguments(output_dir=str(tmp_path), optim="adamw_torch").precision == "fp32"
    with pytest.raises(ValueError, match="fp16_reference"):
        SkipTrainingArguments(output_dir=str(tmp_path), precision="fp16_reference", mixed_precision="bf16")
    with pytest.raises(ValueError, match="protocol"):
        SkipTrainingArguments(output_dir=str(tmp_path), protocol="zero_shot")
    with pytest.raises(ValueError, match="recipe_dataset"):
        SkipTrainingArguments(output_dir=str(tmp_path), recipe_dataset="imagenet_1k")
    with pytest.raises(ValueError, match="warmup_epochs"):
        SkipTrainingArguments(output_dir=str(tmp_path), num_train_epochs=1, warmup_epochs=1)
    with pytest.raises(ValueError, match="warmup_lr"):
        SkipTrainingArguments(output_dir=str(tmp_path), protocol="few_shot", warmup_epochs=1)


@pytest.mark.parametrize("protocol, dataset", [("base_to_new", "caltech101"), ("cross_dataset", "imagenet")])
def test_dassl_schedule_matches_the_recipe_epoch_by_epoch(tmp_path, protocol, dataset):
    recipe = reference_recipe(protocol, dataset)
    args = SkipTrainingArguments(output_dir=str(tmp_path), protocol=protocol, recipe_dataset=dataset)
    groups = [
        {"name": "text", "params": [torch.nn.Parameter(torch.zeros(1))], "lr": args.learning_rate},
        {"name": "vision", "params": [torch.nn.Parameter(torch.zeros(1))], "lr": args.vision_learning_rate},
    ]
    optimizer = torch.optim.SGD(groups)
    scheduler = make_scheduler(optimizer, args, steps_per_epoch=7)  # steps per epoch play no part
    for epoch in range(recipe.epochs):
        text, vision = (group["lr"] for group in optimizer.param_groups)
        assert text == pytest.approx(recipe.lr_at_epoch(epoch, "text"), rel=1e-12), epoch
        assert vision == pytest.approx(recipe.lr_at_epoch(epoch, "vision"), rel=1e-12), epoch
        optimizer.step()
        scheduler.step()


def test_schedule_per_step_option(tmp_path):
    args = SkipTrainingArguments(
        output_dir=str(tmp_path), protocol="base_to_new", num_train_epochs=4, lr_scheduler_type="cosine_per_step"
    )
    factor = lr_lambda(args, args.learning_rate, steps_per_epoch=10)
    assert [factor(s) * args.learning_rate for s in (0, 9)] == pytest.approx([1e-6, 1e-6])
    assert lr_lambda(args, args.vision_learning_rate, 10)(0) * args.vision_learning_rate == pytest.approx(1e-6)
    # After warm-up the cosine continues as if it had run from step 0.
    assert factor(10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 10 / 40)))
    values = [factor(s) for s in range(10, 40)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False)) and values[-1] < 0.01


def test_trainer_follows_the_recipe_schedule_per_tower(tmp_path):
    # base_to_new's warm-up and tower ratio (1/4) with a learning rate a tiny model notices, over 3 epochs.
    args = SkipTrainingArguments(
        output_dir=str(tmp_path), protocol="base_to_new", num_train_epochs=3, learning_rate=0.01, disable_tqdm=True
    )
    history = SkipTrainer(skip_model(), args, TensorImages(), prompts(), jitter).train().history
    recipe = with_overrides(reference_recipe("base_to_new"), epochs=3, text_lr=0.01, vision_lr=0.0025)
    assert [h["lr"] for h in history] == pytest.approx([recipe.lr_at_epoch(e, "text") for e in range(3)])
    assert [h["vision_lr"] for h in history] == pytest.approx([recipe.lr_at_epoch(e, "vision") for e in range(3)])
    assert history[0]["lr"] == history[0]["vision_lr"] == 1e-6  # both towers warm up alike


def test_each_tower_moves_by_its_own_learning_rate(tmp_path):
    """One plain SGD step: the deltas are -lr * gradient, so scaling the image tower's lr scales only its deltas."""
    data = TensorImages(per_class=2)
    one_step = dict(num_train_epochs=1, batch_size=len(data), sampler="random", momentum=0.0, weight_decay=0.0)
    same, slower = skip_model(), skip_model()
    train(same, tmp_path / "a", data, identity, learning_rate=0.5, vision_learning_rate=0.5, **one_step)
    train(slower, tmp_path / "b", data, identity, learning_rate=0.5, vision_learning_rate=0.125, **one_step)
    moved = {"vision": 0, "text": 0}
    for name, delta in deltas(same).items():
        tower = "vision" if "vision_model" in name or "visual_projection" in name else "text"
        factor = 0.25 if tower == "vision" else 1.0
        torch.testing.assert_close(deltas(slower)[name], factor * delta, rtol=1e-4, atol=1e-7, msg=name)
        moved[tower] += int(delta.abs().max() > 0)
    assert moved["vision"] > 10 and moved["text"] > 10


def test_optimizer_groups_split_the_towers(tmp_path):
    model = skip_model()
    args = SkipTrainingArguments(output_dir=str(tmp_path), protocol="base_to_new")
    optimizer = make_optimizer(model, args)
    names = {id(p): name for name, p in model.named_parameters()}
    groups = {
        group["name"]: (group["lr"], [names[id(p)] for p in group["params"]]) for group in optimizer.param_groups
    }
    assert groups["vision"][0] == 5e-6 and groups["text"][0] == 2e-5
    assert all("vision_model." in n or "visual_projection." in n for n in groups["vision"][1])
    assert all("text_model." in n or "text_projection." in n for n in groups["text"][1])
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert sorted(groups["vision"][1] + groups["text"][1]) == sorted(trainable)


def relative_errors(model, reference) -> dict[str, float]:
    """`||dW - dW_ref|| / ||dW_ref||` of every delta but the key biases' (their exact gradient is 0: softmax
    ignores a shift of all logits, so half precision leaves them noise)."""
    expected, actual = deltas(reference), deltas(model)
    return {
        name: float((actual[name].float() - value).norm() / value.norm())
        for name, value in expected.items()
        if not ("k_proj" in name and name.endswith("bias"))
    }


def loss_drift(trainer, reference) -> float:
    """Largest relative difference of the epoch losses of two runs."""
    pairs = zip(trainer.result.history, reference.result.history, strict=True)
    return max(abs(a["loss"] - b["loss"]) / b["loss"] for a, b in pairs)


def test_fp16_reference_trains_float16_weights_in_place(tmp_path, device, accelerator):
    model = skip_model(delta_dtype="bfloat16")
    fp16 = train(model, tmp_path, precision="fp16_reference", num_train_epochs=2, accelerator=accelerator())
    layer_norm_params = {
        id(p)
        for module in model.modules()
        if isinstance(module, torch.nn.LayerNorm)
        or (isinstance(module, SkipLayer) and isinstance(module.base_layer, torch.nn.LayerNorm))
        for p in module.parameters()
    }
    assert len(layer_norm_params) > 0
    for name, param in model.named_parameters():
        expected = torch.float32 if id(param) in layer_norm_params or "logit_scale" in name else torch.float16
        assert param.dtype == expected and param.device.type == device.type, name
    # Close to float32 training.
    reference = skip_model()
    fp32 = train(reference, tmp_path / "fp32", num_train_epochs=2, accelerator=accelerator())
    errors = relative_errors(model, reference)
    print(
        f"\nfp16_reference vs fp32 on {device.type}: deltas' relative error median "
        f"{sorted(errors.values())[len(errors) // 2]:.2e}, max {max(errors.values()):.2e}; epoch losses differ by "
        f"up to {loss_drift(fp16, fp32):.2e} (relative)"
    )
    assert max(errors.values()) < 0.2
    with safe_open(os.path.join(tmp_path, "adapter_model.safetensors"), "pt") as saved:
        assert {saved.get_tensor(key).dtype for key in saved.keys()} == {torch.bfloat16}
    # A layer norm computes in float32 on its float32 weights and returns float16, as CLIP's own LayerNorm does.
    norm = model.base_model.model.vision_model.pre_layrnorm
    x = torch.randn(2, 5, 32).half().to(device)
    expected = F.layer_norm(x.float(), (32,), norm.weight, norm.bias, norm.eps).half()
    assert torch.equal(norm(x), expected)


@pytest.mark.parametrize("mixed_precision", ["bf16", "fp16"])
def test_mixed_precision_through_accelerate_stays_close_to_fp32(tmp_path, device, accelerator, mixed_precision):
    if mixed_precision == "fp16" and device.type == "cpu":
        pytest.skip("fp16 autocast with loss scaling needs CUDA (make_accelerator refuses it without a GPU)")
    reference = skip_model()
    fp32 = train(reference, tmp_path / "fp32", num_train_epochs=2, accelerator=accelerator())
    model = skip_model()
    half_accelerator = accelerator(mixed_precision)
    half = train(
        model, tmp_path / "half", num_train_epochs=2, mixed_precision=mixed_precision, accelerator=half_accelerator
    )
    # Autocast over float32 weights; fp16's gradients go through Accelerate's grad scaler.
    assert (half_accelerator.scaler is not None) == (mixed_precision == "fp16")
    assert {(p.dtype, p.device.type) for p in model.parameters()} == {(torch.float32, device.type)}
    errors = relative_errors(model, reference)
    print(
        f"\nmixed_precision={mixed_precision} vs fp32 on {device.type}: deltas' relative error max "
        f"{max(errors.values()):.2e}; epoch losses differ by up to {loss_drift(half, fp32):.2e} (relative)"
    )
    # Rounded, not wrong: close to the float32 run, and not the float32 run itself.
    assert 0 < max(errors.values()) < 0.1


def test_class_batches_draw_like_the_reference():
    labels = torch.tensor([0] * 6 + [1] * 5 + [2] * 4)
    generator = torch.Generator().manual_seed(0)
    # batch_random: one class per batch; a class leaves once fewer than batch_size of its images remain.
    batches = class_batches(labels, 4, per_class=True, generator=generator, drop_last=True)
    assert len(batches) == 3 and all(len(b) == 4 and len(labels[b].unique()) == 1 for b in batches)
    assert sorted(int(labels[b[0]]) for b in batches) == [0, 1, 2]
    kept = class_batches(labels, 4, per_class=True, generator=generator)  # today's keep-all option
    assert sorted(torch.cat(kept).tolist()) == list(range(len(labels)))
    assert all(len(labels[b].unique()) == 1 and len(b) <= 4 for b in kept) and len(kept) == 2 + 2 + 1
    # The class of each batch is drawn uniformly among the classes left (not a shuffle of all batches): with one
    # class of 3 batches and one of 1, the single batch comes first half of the time (a shuffle: a quarter).
    labels = torch.tensor([0] * 12 + [1] * 4)
    first = [
        int(labels[class_batches(labels, 4, True, torch.Generator().manual_seed(s), True)[0][0]]) for s in range(400)
    ]
    assert 0.4 < sum(first) / 400 < 0.6

    labels = torch.tensor([0] * 6 + [1] * 5 + [2] * 4)
    batches = class_batches(labels, 4, per_class=False, generator=torch.Generator().manual_seed(0), drop_last=True)
    assert [len(b) for b in batches] == [4, 4, 4] and len(set(torch.cat(batches).tolist())) == 12
    assert any(len(labels[b].unique()) > 1 for b in batches)
    kept = class_batches(labels, 4, per_class=False, generator=torch.Generator().manual_seed(0))
    assert [len(b) for b in kept] == [4, 4, 4, 3] and sorted(torch.cat(kept).tolist()) == list(range(len(labels)))
    again = class_batches(labels, 4, per_class=False, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(kept, again, strict=True))


def test_incomplete_batches_are_dropped_unless_asked(tmp_path):
    data = TensorImages(per_class=5)  # 3 classes x 5 images: one full one-class batch each, 1 image left per class
    trainer = train(skip_model(), tmp_path / "a", data, num_train_epochs=1)
    assert trainer.per_class and [len(b) for b in trainer._batches(0)] == [4, 4, 4]
    trainer = train(skip_model(), tmp_path / "b", data, num_train_epochs=1, dataloader_drop_last=False)
    assert sorted(len(b) for b in trainer._batches(0)) == [1, 1, 1, 4, 4, 4]
    with pytest.raises(ValueError, match="fewer than batch_size"):
        train(skip_model(), tmp_path / "c", data, sampler="class", batch_size=8)
    with pytest.raises(ValueError, match="no full batch"):
        train(skip_model(), tmp_path / "d", data, sampler="random", batch_size=16)


@pytest.mark.parametrize(
    "cache_mode, schedule, precision, optim",
    [
        ("paper", "dassl_cosine", "fp32", "sgd"),
        ("views", "cosine_per_step", "fp32", "sgd"),
        ("paper", "dassl_cosine", "fp16_reference", "sgd"),
        ("paper", "dassl_cosine", "fp32", "adamw_torch"),
    ],
)
def test_resume_equals_uninterrupted(tmp_path, cache_mode, schedule, precision, optim, device, accelerator):
    # Six classes, two shots: random batches of 4, and CSkip keeps the top 2 ranks plus a decaying tail, so the
    # resumed run must rank with the pre-trained prototypes, not the tuned model's.
    data = TensorImages(per_class=2, num_classes=6)
    method = dict(class_ratio=0.3, token_drop=0.3)
    run = dict(data=data, cache_mode=cache_mode, views=2, lr_scheduler_type=schedule, precision=precision, optim=optim)
    if optim == "adamw_torch":
        run["learning_rate"] = 1e-3
    uninterrupted = skip_model(**method)
    text_classes = []
    hook = uninterrupted.base_model.model.text_projection.register_forward_hook(
        lambda module, inputs, output: text_classes.append(len(output))
    )
    train(uninterrupted, tmp_path / "a", accelerator=accelerator(), **run)
    hook.remove()
    assert min(text_classes) < len(data.class_names)  # CSkip dropped classes

    interrupted = skip_model(**method)
    calls = 0

    def crash_in_third_epoch(module, inputs, output):
        nonlocal calls
        calls += 1
        if calls == 2 * 3 + 2:  # 3 steps per epoch
            raise KeyboardInterrupt

    hook = interrupted.base_model.model.visual_projection.register_forward_hook(crash_in_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, tmp_path / "b", accelerator=accelerator(), **run)
    hook.remove()
    assert sorted(os.listdir(tmp_path / "b" / "checkpoints")) == ["epoch-0002"]  # save_total_limit=1

    resumed = skip_model(**method)
    trainer = train(resumed, tmp_path / "b", resume=True, accelerator=accelerator(), **run)
    # The whole run's history, the epochs before the crash included.
    assert [row["epoch"] for row in trainer.result.history] == [1, 2, 3]
    expected, actual = deltas(uninterrupted), deltas(resumed)
    assert any(v.abs().max() > 0 for v in expected.values())
    for name in expected:
        # The checkpoint restores the trained weights themselves: bit-equal, also under Adam (which turns a
        # rounding difference on a near-zero gradient into a step of lr).
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0, msg=name)
    assert trainer.args.num_train_epochs == 3

    saved = run.get("learning_rate", 0.05)
    with pytest.raises(ValueError, match=rf"another run \(.*training.learning_rate: saved {saved}, now 0.5"):
        train(skip_model(), tmp_path / "b", resume=True, **{**run, "learning_rate": 0.5})


def with_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with attention dropout: a step draws from torch's global generator."""
    for module in model.modules():
        if isinstance(getattr(module, "dropout", None), float):
            module.dropout = 0.3
    return model


def test_resume_with_dropout_equals_uninterrupted_without_a_saved_random_state(tmp_path):
    run = dict(num_train_epochs=2, precision="fp32")
    uninterrupted = with_dropout(skip_model())
    train(uninterrupted, tmp_path / "a", **run)
    without_dropout = train(skip_model(), tmp_path / "c", **run).model
    projection = "base_model.model.visual_projection.skip_delta.weight"
    assert not torch.equal(deltas(uninterrupted)[projection], deltas(without_dropout)[projection])  # dropout acts

    interrupted = with_dropout(skip_model())
    calls = 0

    def crash_in_second_epoch(module, inputs, output):
        nonlocal calls
        calls += 1
        if calls == 3 + 2:  # 3 steps per epoch
            raise KeyboardInterrupt

    hook = interrupted.base_model.model.visual_projection.register_forward_hook(crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, tmp_path / "b", **run)
    hook.remove()
    resumed = with_dropout(skip_model())
    torch.manual_seed(123)  # whatever the global generator holds when the run resumes
    train(resumed, tmp_path / "b", resume=True, **run)
    for name, expected in deltas(uninterrupted).items():
        torch.testing.assert_close(deltas(resumed)[name], expected, rtol=0, atol=1e-6, msg=name)
    state = torch.load(tmp_path / "b" / "checkpoints" / "epoch-0002" / "trainer_state.pt", weights_only=True)
    assert set(state) == {"epoch", "identity", "optimizer", "scheduler", "history", "tuned"}  # no random state


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


def test_non_finite_gradient_or_delta_stops_before_saving(tmp_path):
    from peft_skip.training import run_state

    model = skip_model()
    trained = next(p for p in model.parameters() if p.requires_grad)
    trained.register_hook(lambda grad: grad * float("inf"))
    with pytest.raises(
        NonFiniteLossError, match=r"Non-finite gradient at epoch 1, step 1.*Last good checkpoint: none"
    ):
        train(model, tmp_path / "a")
    assert not os.path.exists(tmp_path / "a" / "checkpoints")

    model = skip_model(delta_dtype="float16")
    with torch.no_grad():
        next(p for p in model.parameters() if p.requires_grad).add_(1e6)  # finite, but no float16 delta
    with pytest.raises(FloatingPointError, match=r"delta .* is not finite"):
        run_state.save_adapter(model, str(tmp_path / "b"))
    assert not os.path.exists(tmp_path / "b" / "adapter_model.safetensors")


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


def test_evaluate_a_prompt_ensemble(capfd):
    """T prompts per class (template by template): each class's normalised text features averaged, renormalised."""
    data = TensorImages()
    model = tiny_clip()
    first, second = text_batch(NUM_CLASSES, seed=1), text_batch(NUM_CLASSES, seed=2)
    both = {key: torch.cat([first[key], second[key]]) for key in first}
    result = evaluate_accuracy(model, data, both, identity, batch_size=5, progress=True)
    assert "evaluating" in capfd.readouterr().err  # the progress bar
    text = [F.normalize(model.get_text_features(**p).pooler_output, dim=-1) for p in (first, second)]
    classes = F.normalize(text[0] + text[1], dim=-1)
    images = F.normalize(model.get_image_features(pixel_values=data.pixels).pooler_output, dim=-1)
    predictions = (images @ classes.T).argmax(-1)
    assert result["accuracy"] == pytest.approx((predictions == torch.tensor(data.labels)).double().mean().item())
    assert predictions.tolist() != (images @ text[0].T).argmax(-1).tolist()  # the ensemble decides otherwise
    evaluate_accuracy(model, data, first, identity, batch_size=5)
    assert "evaluating" not in capfd.readouterr().err  # no bar unless asked
    with pytest.raises(ValueError, match="prompts per class"):
        evaluate_accuracy(model, data, {key: value[:-1] for key, value in both.items()}, identity)
    assert result["num_images"] == len(data)


def test_bad_inputs(tmp_path):
    with pytest.raises(TypeError, match="get_peft_model"):
        SkipTrainer(tiny_clip(), SkipTrainingArguments(output_dir=str(tmp_path)), TensorImages(), prompts(), identity)
    with pytest.raises(ValueError, match="one prompt per class"):
        SkipTrainer(
            skip_model(), SkipTrainingArguments(output_dir=str(tmp_path)), TensorImages(), text_batch(5), identity
        )


def test_a_data_set_without_fingerprint_can_neither_resume_nor_use_a_cache_dir(tmp_path):
    train(skip_model(), tmp_path / "plain", data=UnidentifiedImages(), num_train_epochs=1)  # trains without either
    for option in ({"resume_from_checkpoint": True}, {"cache_dir": str(tmp_path / "cache")}):
        arguments = SkipTrainingArguments(output_dir=str(tmp_path / "run"), precision="fp32", **option)
        with pytest.raises(ValueError, match="has no fingerprint\\(\\), so it cannot resume or use cache_dir") as err:
            SkipTrainer(skip_model(), arguments, UnidentifiedImages(), prompts(), identity)
        assert "\n" not in str(err.value)
    trainer = SkipTrainer(
        skip_model(),
        SkipTrainingArguments(output_dir=str(tmp_path / "plain")),
        UnidentifiedImages(),
        prompts(),
        jitter,
    )
    with pytest.raises(ValueError, match="cannot resume"):
        trainer.train(resume_from_checkpoint=True)


DISTRIBUTED = os.path.join(os.path.dirname(os.path.dirname(__file__)), "distributed_train.py")
ACCELERATE_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(__file__)), "..", "examples", "accelerate_config.yaml"
)


def test_two_processes_match_one(tmp_path):
    """`accelerate launch` with 2 CPU processes (gloo on loopback) gives the deltas of a single process."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(["src", "tests", os.environ.get("PYTHONPATH", "")]),
    }
    with socket.socket() as probe:  # a free port: another test run on this machine may be using the config's
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", ACCELERATE_CONFIG]
    command += ["--main_process_port", port]
    subprocess.run([*command, DISTRIBUTED, str(tmp_path / "two")], check=True, env=env, timeout=300)
    saved = torch.load(tmp_path / "two" / "deltas.pt")
    assert saved["num_processes"] == 2
    two = saved["deltas"]

    from distributed_train import run

    one = run(str(tmp_path / "one"))
    assert any(v.abs().max() > 0 for v in one.values())
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-6, msg=name)


def test_workers_build_the_same_caches_and_evaluate_the_same(tmp_path):
    """Each image's augmentation is seeded by the image: the data loader's workers change nothing."""
    serial, parallel = skip_model(), skip_model()
    train(serial, tmp_path / "serial", dataloader_num_workers=0, num_train_epochs=2)
    train(parallel, tmp_path / "parallel", dataloader_num_workers=2, num_train_epochs=2)
    name = "adapter_model.safetensors"
    assert (tmp_path / "serial" / name).read_bytes() == (tmp_path / "parallel" / name).read_bytes()
    data = TensorImages(per_class=5)
    accuracy = [evaluate_accuracy(serial, data, prompts(), identity, 4, num_workers=n) for n in (0, 2)]
    assert accuracy[0] == accuracy[1] and accuracy[0]["num_images"] == len(data)


def test_views_are_different_augmentations(tmp_path):
    trainer = SkipTrainer(
        skip_model(),
        SkipTrainingArguments(output_dir=str(tmp_path), cache_mode="views", views=3, disable_tqdm=True),
        TensorImages(),
        prompts(),
        jitter,
    )
    cache = trainer._image_cache(-1)
    indices = torch.arange(len(trainer.labels))
    first, second, third = (cache.get(indices, view) for view in range(3))
    assert not torch.equal(first, second) and not torch.equal(second, third)
    again = trainer._image_cache(-1)
    assert torch.equal(again.get(indices, 1), second)


def flip(image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Another seeded augmentation than `jitter`."""
    return image.flip(-1) if torch.rand((), generator=generator) < 0.5 else image


def test_disk_cache_trains_as_the_memory_cache(tmp_path):
    """The disk cache is keyed by the pass (a per-epoch cache stays per epoch) and by the augmentation."""
    cache_dir = str(tmp_path / "cache")
    runs = {}
    for name, args in {
        "memory": {},
        "disk": {"cache_dir": cache_dir},
        "views, jitter": {"cache_mode": "views", "views": 1, "cache_dir": cache_dir},
        "views, flip": {"cache_mode": "views", "views": 1, "transform": flip, "num_train_epochs": 1},
        "views, flip, disk": {
            "cache_mode": "views",
            "views": 1,
            "transform": flip,
            "num_train_epochs": 1,
            "cache_dir": cache_dir,
        },
    }.items():
        runs[name] = skip_model()
        train(runs[name], tmp_path / name, **{"num_train_epochs": 2, **args})
    for a, b in (("disk", "memory"), ("views, flip, disk", "views, flip")):
        expected, actual = deltas(runs[b]), deltas(runs[a])
        for key in expected:
            torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0, msg=f"{a}: {key}")


def test_views_mode_reads_one_view_per_epoch(tmp_path):
    """Epoch `e` trains on view `e % views`: view 0 first, as a single view, then another."""
    history = {}
    for views in (1, 2):
        args = SkipTrainingArguments(
            output_dir=str(tmp_path / str(views)),
            cache_mode="views",
            views=views,
            num_train_epochs=2,
            learning_rate=0.05,
            precision="fp32",
            disable_tqdm=True,
        )
        history[views] = SkipTrainer(skip_model(), args, TensorImages(), prompts(), jitter).train().history
    assert history[2][0]["loss"] == history[1][0]["loss"]
    assert history[2][1]["loss"] != history[1][1]["loss"]


def test_each_epoch_draws_its_own_batches(tmp_path, monkeypatch):
    """Every epoch reads every image once, in batches drawn anew (seeded by the epoch)."""
    read = []
    get = ImageCache.get
    monkeypatch.setattr(
        ImageCache, "get", lambda self, indices, *args: read.append(indices.tolist()) or get(self, indices, *args)
    )
    data = TensorImages()
    train(skip_model(), tmp_path, data, num_train_epochs=2, sampler="random")
    epochs = [read[: len(read) // 2], read[len(read) // 2 :]]
    for batches in epochs:
        assert sorted(i for batch in batches for i in batch) == list(range(len(data)))
    assert epochs[0] != epochs[1]
