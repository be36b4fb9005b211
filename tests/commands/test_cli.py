"""The `peft-skip` command line on a tiny offline model and scikit-learn's digits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from synthetic_images import write_folder

import peft_skip.commands.experiment
from peft_skip.commands.cli import build_parser, main

TRAIN = ["--data", "digits", "--shots", "4", "--skip-layers", "2", "--test-limit", "60", "--no-progress"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("model") / "tiny")
    assert main(["make-offline-model", "--out", path, "--arch", "tiny"]) == 0
    return path


def test_train_eval_zero_shot(tiny_model, tmp_path, capsys):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(["src", os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "peft_skip.commands.cli", "train", "--model", tiny_model, *TRAIN, "--epochs", "2"]
    command += ["--lr", "1e-3", "--mixed-precision", "bf16", "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("RANDOM weights") == 1 and "Skip Tuning accuracy" in run.stdout
    # The cache's messages reach the user; --no-progress silences every bar, the cache's too.
    assert "Building the image cache" in run.stderr and "it/s]" not in run.stderr.replace("\r", "\n")
    assert sorted(os.listdir(out)) == [
        ".lock",  # held by the run while it writes (see output_dir.claim_output_dir)
        ".peft-skip",  # the names peft-skip wrote here: only those are ever replaced
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "checkpoints",
        "metrics.json",
    ]
    assert os.listdir(out / "checkpoints") == ["epoch-0002"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["random_weights"] and len(metrics["history"]) == 2
    assert metrics["training_arguments"]["mixed_precision"] == "bf16"
    assert set(metrics["tuned"]["per_class"]) == {str(d) for d in range(10)}
    assert metrics["tuned"]["num_images"] == 60 and metrics["cache_bytes_per_process"] > 0

    # `eval` reloads the adapter and reproduces the tuned accuracy; `zero-shot` the base model's.
    common = ["--model", tiny_model, "--data", "digits", "--test-limit", "60"]
    assert main(["eval", *common, "--adapter", str(out), "--out", str(tmp_path / "eval")]) == 0
    eval_results = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    assert eval_results["accuracy"] == metrics["tuned"]["accuracy"]
    assert main(["zero-shot", *common]) == 0
    printed = capsys.readouterr().out
    report = json.loads(printed[printed.index("{") :])
    assert report["accuracy"] == metrics["zero_shot"]["accuracy"]
    assert report["per_class"] == metrics["zero_shot"]["per_class"]


def test_base_to_new_resume(tiny_model, tmp_path):
    args = ["train", "--model", tiny_model, *TRAIN, "--preset", "base_to_new", "--epochs", "2", "--out", str(tmp_path)]
    assert main(args) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["tuned"]) == {"base", "new", "harmonic_mean"}
    assert set(metrics["tuned"]["base"]["per_class"]) <= {"0", "1", "2", "3", "4"}
    assert metrics["history"][0]["lr"] == pytest.approx(1e-6)  # warm-up epoch
    assert metrics["history"][1]["vision_lr"] == pytest.approx(5e-6)  # the image tower's peak, a quarter of the text's
    assert metrics["training_arguments"]["learning_rate"] == 2e-5
    # The recipe's float16 where CUDA is present; float32 on a CPU (unless asked otherwise).
    assert metrics["training_arguments"]["precision"] == ("fp16_reference" if torch.cuda.is_available() else "fp32")

    # Resuming a finished run trains no further epoch and keeps its result.
    assert main([*args, "--resume"]) == 0
    resumed = json.loads((tmp_path / "metrics.json").read_text())
    assert resumed["resumed_from_epoch"] == 2 and resumed["history"] == metrics["history"]  # the whole run's
    assert resumed["tuned"] == metrics["tuned"]


def test_base_to_new_refuses_train_and_test_folders_with_different_classes(tiny_model, tmp_path, capsys, monkeypatch):
    # By index, test/'s class 1 ("c") would be scored as base class "b", which test/ lacks.
    write_folder(tmp_path / "data" / "train", {"a": 2, "b": 2, "c": 2, "d": 2})
    write_folder(tmp_path / "data" / "test", {"a": 1, "c": 1, "d": 1})
    monkeypatch.setattr(
        peft_skip.commands.experiment, "load_model", lambda *args: pytest.fail("refused after loading")
    )
    args = ["train", "--model", tiny_model, "--data", str(tmp_path / "data"), "--shots", "2"]
    assert main([*args, "--preset", "base_to_new", "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "test split lacks ['b'] and adds []" in error and error.count("\n") == 1


def test_short_classes_are_trained_whole_and_recorded(tiny_model, tmp_path, capsys):
    write_folder(tmp_path / "data" / "train", {"a": 3, "b": 1, "c": 3})
    write_folder(tmp_path / "data" / "test", {"a": 1, "b": 1, "c": 1})
    args = ["train", "--model", tiny_model, "--data", str(tmp_path / "data"), "--shots", "2", "--epochs", "1"]
    args += ["--skip-layers", "2", "--batch-size", "1", "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(args) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["short_classes"] == {"b": 1} and metrics["train_images"] == 5
    assert "5 training images (2 shots x 3 classes; 1 with fewer, kept whole)" in capsys.readouterr().out
    assert main([*args[:-3], "--shots", "4", "--out", str(tmp_path / "run4"), "--no-progress"]) == 2
    assert "--shots 4 asked but no class has more than 3 images" in capsys.readouterr().err


def test_every_option_is_explained():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert set(commands) == {"train", "eval", "zero-shot", "benchmark", "export", "make-offline-model", "recipe"}
    for name, command in commands.items():
        for action in command._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
    assert "--cache-mode" in commands["train"].format_help()


def test_bad_input_is_reported(tiny_model, tmp_path, capsys):
    assert main(["zero-shot", "--model", tiny_model, "--data", "no-such-data"]) == 2
    assert "Unknown dataset 'no-such-data'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--model", tiny_model, "--data", "digits", "--out", str(tmp_path), "--cache-mode", "lazy"])


def test_config_file_sets_options_and_flags_win(tiny_model, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {tiny_model}\ndata: digits\nepochs: 1\nshots: 3\nskip-layers: 2\ntest_limit: 10\n")
    assert (
        main(["train", "--config", str(config), "--shots", "2", "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["training_arguments"]["num_train_epochs"] == 1 and metrics["training_arguments"]["shots"] == 2
    assert metrics["skip_config"]["skip_layers"] == 2 and metrics["tuned"]["num_images"] == 10

    config.write_text("model: m\ndata: digits\nepoch: 1\n")
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "bad")]) == 2


@pytest.mark.parametrize("dataset, epochs", [("caltech101", 40), ("sun397", 10)])
def test_data_of_the_paper_selects_its_recipe(dataset, epochs):
    """`--data sun397` trains with sun397's recipe (a quarter of the epochs), not the protocol's defaults; an
    explicit --recipe-dataset wins."""
    from peft_skip.commands.cli import _parse

    argv = ["train", "--model", "m", "--data", dataset, "--data-root", "DATA", "--out", "run"]
    _, (_, _, _, training) = _parse(argv)
    assert training.recipe_dataset == dataset and training.num_train_epochs == epochs
    _, (_, _, _, training) = _parse([*argv, "--recipe-dataset", "imagenet"])
    assert training.recipe_dataset == "imagenet"


@pytest.mark.parametrize("precision, dtype", [("fp32", "torch.float32"), ("fp16_reference", "torch.float16")])
def test_eval_in_the_precision_of_training(tiny_model, tmp_path, monkeypatch, precision, dtype):
    """`eval --precision fp16_reference` scores float16 weights, as `train --precision fp16_reference` (the paper's
    recipe, selectable on a CPU too) does, and reproduces the tuned accuracy that `train` reported."""
    import peft_skip.commands.experiment as experiment

    out = tmp_path / "run"
    train = ["train", "--model", tiny_model, *TRAIN, "--epochs", "1", "--lr", "1e-2", "--precision", "fp16_reference"]
    assert main([*train, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["training_arguments"]["precision"] == "fp16_reference"
    seen = []

    def recording(model, *args, **kwargs):
        seen.append(str(model.get_base_model().text_model.encoder.layers[0].mlp.fc1.weight.dtype))
        return evaluate_protocol(model, *args, **kwargs)

    evaluate_protocol = experiment.evaluate_protocol
    monkeypatch.setattr(experiment, "evaluate_protocol", recording)
    common = ["--model", tiny_model, "--data", "digits", "--test-limit", "60", "--adapter", str(out)]
    assert main(["eval", *common, "--precision", precision, "--out", str(tmp_path / "eval")]) == 0
    result = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    assert seen == [dtype] and result["precision"] == precision
    if precision == "fp16_reference":
        assert result["per_class"] == metrics["tuned"]["per_class"]


def test_training_on_a_paper_dataset_uses_its_recipe_and_the_api_warns_otherwise(tiny_model, tmp_path, caplog):
    from coop_miniature import write_coop_miniature

    from peft_skip.commands.arguments import DataArguments, ModelArguments
    from peft_skip.commands.experiment import train_and_evaluate
    from peft_skip.training.training_args import SkipTrainingArguments
    from peft_skip.tuner.config import SkipConfig

    root = str(write_coop_miniature(tmp_path / "DATA", datasets=("eurosat",), train=2, val=1, test=1))
    run = ["--data", "eurosat", "--data-root", root, "--shots", "1", "--epochs", "1", "--skip-layers", "2"]
    assert main(["train", "--model", tiny_model, *run, "--no-progress", "--out", str(tmp_path / "cli")]) == 0
    metrics = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert metrics["training_arguments"]["recipe_dataset"] == "eurosat"
    assert metrics["data"]["template"] == "a centered satellite photo of {}."

    training = SkipTrainingArguments(output_dir=str(tmp_path / "api"), shots=1, num_train_epochs=1, disable_tqdm=True)
    data = DataArguments(data="eurosat", data_root=root)
    with caplog.at_level("WARNING", logger="peft_skip"):
        train_and_evaluate(ModelArguments(model=tiny_model), data, SkipConfig(skip_layers=2), training)
    assert "set recipe_dataset='eurosat' for the paper's eurosat recipe" in caplog.text


def test_eval_of_a_base_to_new_adapter_reports_base_new_and_hm(tiny_model, tmp_path):
    """`eval --protocol base_to_new` splits the classes as training did and reproduces train's base / new / HM."""
    out = tmp_path / "run"
    argv = ["train", "--model", tiny_model, *TRAIN, "--preset", "base_to_new", "--epochs", "2", "--lr", "1e-2"]
    assert main([*argv, "--precision", "fp32", "--out", str(out)]) == 0
    tuned = json.loads((out / "metrics.json").read_text())["tuned"]
    common = ["eval", "--model", tiny_model, "--data", "digits", "--test-limit", "60", "--adapter", str(out)]
    assert main([*common, "--protocol", "base_to_new", "--no-progress", "--out", str(tmp_path / "eval")]) == 0
    result = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    assert result["protocol"] == "base_to_new"
    assert (result["base"], result["new"], result["harmonic_mean"]) == (
        tuned["base"],
        tuned["new"],
        tuned["harmonic_mean"],
    )


def test_a_missing_model_directory_is_said_so(capsys):
    assert main(["eval", "--model", "./nope", "--data", "digits"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "peft-skip eval: error: --model ./nope: no such directory; give a model directory or a Hub id such as "
        "openai/clip-vit-base-patch16."
    )


def test_the_main_job_runs_from_another_directory(tmp_path, monkeypatch):
    """The README's main job (`--config examples/world.yaml`, its model named relative to the file) from another
    working directory, shrunk; the adapter records the base by its absolute path."""
    from peft_skip.offline.pretrain import world_clip_path

    config = str(Path(__file__).resolve().parents[2] / "examples" / "world.yaml")
    monkeypatch.chdir(tmp_path)
    small = ["--shots", "1", "--epochs", "1", "--test-limit", "20", "--no-progress", "--dataloader_num_workers", "0"]
    assert main(["train", "--config", config, *small, "--out", "run"]) == 0
    saved = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == os.path.realpath(world_clip_path())


def test_data_flags_and_several_templates_parse(tmp_path):
    from peft_skip.commands.cli import _parse

    argv = ["eval", "--model", str(tmp_path), "--data", "rows.parquet", "--image_column", "file", "--label-column"]
    argv += ["y", "--class_names", "cat,dog", "--template", "a {}.", "an {}!", "--protocol", "base_to_new"]
    command, (_, data, evaluation) = _parse([*argv, "--no-progress"])
    assert (data.image_column, data.label_column, data.class_name_list()) == ("file", "y", ["cat", "dog"])
    assert data.resolved_templates() == ["a {}.", "an {}!"]
    assert evaluation.protocol == "base_to_new" and evaluation.disable_tqdm
