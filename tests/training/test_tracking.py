"""`report_to`: the per-epoch scalars reach Accelerate's trackers (read back from TensorBoard's event files)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import text_batch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tiny_training import NUM_CLASSES, TensorImages, identity, jitter, prompts, skip_model

from peft_skip.commands.cli import build_parser, main
from peft_skip.training import tracking
from peft_skip.training.accelerator import make_accelerator
from peft_skip.training.trainer import SkipTrainer
from peft_skip.training.training_args import SkipTrainingArguments

TRAIN = ["--data", "digits", "--shots", "4", "--skip-layers", "2", "--test-limit", "40", "--no-progress"]


def scalars(output_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar TensorBoard holds for the run: tag -> [(step, value)]."""
    events = EventAccumulator(os.path.join(tracking.logging_dir(str(output_dir)), tracking.PROJECT))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def run(tmp_path, model=None, data=None, num_classes=NUM_CLASSES, **args):
    """Trains a tiny Skip Tuning model with `args`; returns the trainer and its `TrainResult`."""
    args = {"num_train_epochs": 3, "learning_rate": 0.05, "precision": "fp32", "disable_tqdm": True, **args}
    trainer = SkipTrainer(
        model or skip_model(),
        SkipTrainingArguments(output_dir=str(tmp_path), **args),
        data or TensorImages(num_classes=num_classes),
        text_batch(num_classes, seed=1),
        jitter,
    )
    return trainer, trainer.train()


def test_trainer_reports_every_epoch_to_tensorboard(tmp_path):
    trainer, result = run(tmp_path, report_to="tensorboard", cache_mode="views", views=2)
    logged = scalars(tmp_path)
    assert set(logged) == {
        "train/loss",
        "train/accuracy",
        "train/learning_rate_text",
        "train/learning_rate_vision",
        "train/kept_classes",
        "train/cache_seconds",
    }
    history = result.history
    for tag, key in [("train/loss", "loss"), ("train/accuracy", "accuracy"), ("train/learning_rate_text", "lr")]:
        assert logged[tag] == [(row["epoch"], pytest.approx(row[key], rel=1e-6)) for row in history], tag
    assert [v for _, v in logged["train/learning_rate_vision"]] == pytest.approx([r["vision_lr"] for r in history])
    # class_ratio 1: the text tower runs for all 3 classes in every batch.
    assert [v for _, v in logged["train/kept_classes"]] == [3.0, 3.0, 3.0]
    # The views are built once, before the first epoch.
    cache = [v for _, v in logged["train/cache_seconds"]]
    assert cache[0] == pytest.approx(result.cache_seconds) and cache[0] > 0 and cache[1:] == [0.0, 0.0]
    # Started by `train`, so ended by it: the event file is closed.
    assert [tracker.writer.all_writers for tracker in trainer.accelerator.trackers] == [None]


def test_kept_classes_count_what_cskip_kept(tmp_path):
    """6 classes, class_ratio 0.2: 2 ranks always kept, of the 4 others the first always and the last never (a
    keep-mask over the ranks drawn once, so every single-class batch keeps as many)."""
    model = skip_model(class_ratio=0.2)
    _, result = run(tmp_path, model, num_classes=6, report_to="tensorboard", batch_size=2, sampler="class")
    kept = [v for _, v in scalars(tmp_path)["train/kept_classes"]]
    assert kept == pytest.approx([row["kept_classes"] for row in result.history])
    assert len(set(kept)) == 1 and 3 <= kept[0] <= 5


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("model") / "tiny")
    assert main(["make-offline-model", "--out", path, "--arch", "tiny"]) == 0
    return path


def test_train_command_reports_training_and_evaluations(tiny_model, tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--model", tiny_model, *TRAIN, "--epochs", "2", "--lr", "1e-3", "--out", str(out)]
    assert main([*argv, "--report_to", "tensorboard"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    logged = scalars(out)
    # The zero-shot model at step 0, the tuned one after the last epoch.
    assert logged["eval/accuracy"] == [
        (0, pytest.approx(metrics["zero_shot"]["accuracy"])),
        (2, pytest.approx(metrics["tuned"]["accuracy"])),
    ]
    assert [v for _, v in logged["train/loss"]] == pytest.approx([row["loss"] for row in metrics["history"]])
    assert metrics["training_arguments"].get("report_to") is None  # never changes a result


def test_report_to_is_a_train_option():
    train_parser = build_parser()._subparsers._group_actions[0].choices["train"]
    assert "--report_to" in train_parser.format_help()


def test_a_missing_tracker_fails_before_any_work(tiny_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(tracking.INSTALLED, "wandb", lambda: False)
    with pytest.raises(ValueError, match=r"report_to='wandb' needs the wandb package: `pip install wandb`"):
        SkipTrainingArguments(output_dir=str(tmp_path), report_to="wandb")
    # No model is loaded: an empty model directory is not what fails.
    (tmp_path / "empty-model").mkdir()
    argv = ["train", "--model", str(tmp_path / "empty-model"), *TRAIN, "--out", str(tmp_path / "run")]
    assert main([*argv, "--report_to", "wandb"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "pip install wandb" in error
    assert not (tmp_path / "run").exists()


def test_all_means_the_installed_trackers(monkeypatch):
    for name in tracking.INSTALLED:
        monkeypatch.setitem(tracking.INSTALLED, name, lambda name=name: name == "tensorboard")
    assert tracking.tracker_names("all") == ["tensorboard"]
    assert tracking.tracker_names("none") == []


def test_an_accelerator_without_the_tracker_is_refused(tmp_path):
    args = {"output_dir": str(tmp_path), "num_train_epochs": 1, "precision": "fp32", "disable_tqdm": True}
    trainer = SkipTrainer(
        skip_model(),
        SkipTrainingArguments(**args, report_to="tensorboard"),
        TensorImages(),
        prompts(),
        identity,
        accelerator=make_accelerator(),
    )
    with pytest.raises(ValueError, match="has no tensorboard tracker"):
        trainer.train()
