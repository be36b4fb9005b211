"""Failures that must lose nothing: crashes during saves, a killed run, corrupt adapters, anomaly detection."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import peft
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import CLIPModel

import peft_skip  # noqa: F401
from peft_skip.commands import experiment
from peft_skip.commands.cli import main
from peft_skip.training import run_state, trainer
from peft_skip.training.output_dir import claim_output_dir

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ["--data", "digits", "--shots", "4", "--skip-layers", "2", "--test-limit", "30", "--no-progress"]
TRAIN += ["--lr", "1e-3", "--seed", "3"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("model") / "tiny")
    assert main(["make-offline-model", "--out", path, "--arch", "tiny"]) == 0
    return path


def _train(tiny_model, out, *extra) -> int:
    return main(["train", "--model", tiny_model, *TRAIN, "--out", str(out), *extra])


def _deltas(path) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(path, "adapter_model.safetensors"))


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(tiny_model, tmp_path, monkeypatch, capsys):
    calls, publish = [], run_state.publish

    def publish_then_disk_full(tmp, final):
        calls.append(final)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        publish(tmp, final)

    monkeypatch.setattr(run_state, "publish", publish_then_disk_full)
    assert _train(tiny_model, tmp_path, "--epochs", "2") == 2
    assert "No space left on device" in capsys.readouterr().err.splitlines()[-1]
    monkeypatch.undo()

    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["epoch-0001", "epoch-0002.tmp"]
    assert not (tmp_path / "adapter_model.safetensors").exists()
    # The half-written epoch-0002.tmp is never resumed from; the run completes from epoch 1.
    assert _train(tiny_model, tmp_path, "--epochs", "2", "--resume") == 0
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["epoch-0002"]
    whole = tmp_path / "whole"
    assert _train(tiny_model, whole, "--epochs", "2") == 0
    expected, actual = _deltas(whole), _deltas(tmp_path)
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=1e-5, msg=key)


def test_crash_while_publishing_an_adapter_keeps_the_previous_one(tiny_model, tmp_path, monkeypatch):
    assert _train(tiny_model, tmp_path, "--epochs", "1") == 0
    previous = _deltas(tmp_path)
    newer = PeftModel.from_pretrained(CLIPModel.from_pretrained(tiny_model), tmp_path, is_trainable=True)
    with torch.no_grad():
        for param in newer.parameters():
            if param.requires_grad:
                param.add_(1.0)
    newer.save_pretrained(tmp_path / "newer.tmp")

    real_replace = os.replace

    def crash_on_the_weights(src, dst):
        if str(dst).endswith("adapter_model.safetensors"):
            raise OSError(errno.EIO, "I/O error")
        return real_replace(src, dst)

    monkeypatch.setattr(run_state.os, "replace", crash_on_the_weights)
    with pytest.raises(OSError, match="I/O error"):
        run_state.publish_files(str(tmp_path / "newer.tmp"), str(tmp_path))
    monkeypatch.undo()

    loaded = PeftModel.from_pretrained(CLIPModel.from_pretrained(tiny_model), tmp_path)
    assert loaded.peft_config["default"].skip_layers == 2
    assert all(torch.equal(previous[k], v) for k, v in _deltas(tmp_path).items())


def test_checkpoint_state_loads_without_pickle(tiny_model, tmp_path):
    assert _train(tiny_model, tmp_path, "--epochs", "1") == 0
    state = torch.load(tmp_path / "checkpoints" / "epoch-0001" / run_state.TRAINER_STATE, weights_only=True)
    assert state["epoch"] == 1 and "optimizer" in state


def test_sigkill_then_resume_equals_an_uninterrupted_run(tiny_model, tmp_path):
    assert _train(tiny_model, tmp_path / "whole", "--epochs", "3") == 0

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, "-m", "peft_skip.commands.cli", "train", "--model", tiny_model, *TRAIN, "--epochs", "3"]
    killed = subprocess.Popen([*command, "--out", str(tmp_path / "killed")], env=env, stdout=subprocess.DEVNULL)
    first = tmp_path / "killed" / "checkpoints" / "epoch-0001"
    deadline = time.monotonic() + 120
    while not first.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / "killed" / "adapter_model.safetensors").exists()

    assert _train(tiny_model, tmp_path / "killed", "--epochs", "3", "--resume") == 0
    expected, actual = _deltas(tmp_path / "whole"), _deltas(tmp_path / "killed")
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0, msg=key)
    history = json.loads((tmp_path / "killed" / "metrics.json").read_text())["history"]
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())["history"]
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert [row["loss"] for row in history] == [row["loss"] for row in whole]


def test_detect_anomaly_is_on_during_training(tiny_model, tmp_path, monkeypatch):
    seen = []
    original = trainer.SkipTrainer.train

    def spy(self, *args, **kwargs):
        seen.append(torch.is_anomaly_enabled())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(trainer.SkipTrainer, "train", spy)
    assert _train(tiny_model, tmp_path, "--epochs", "1", "--detect-anomaly") == 0
    assert _train(tiny_model, tmp_path / "off", "--epochs", "1") == 0
    assert seen == [True, False]


def _truncate(path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


@pytest.mark.parametrize(
    "file, damage, message",
    [
        ("adapter_model.safetensors", _truncate, "corrupt or truncated"),
        ("adapter_config.json", _truncate, "adapter_config.json is not valid JSON"),
        ("adapter_config.json", lambda path: path.write_text('{"peft_type": "LORA"}'), "a LORA adapter"),
    ],
    ids=["truncated-weights", "broken-json", "other-peft-type"],
)
def test_eval_of_a_damaged_adapter_is_one_clear_line(tiny_model, tmp_path, capsys, file, damage, message):
    assert _train(tiny_model, tmp_path, "--epochs", "1") == 0
    damage(tmp_path / file)
    code = main(["eval", "--model", tiny_model, "--data", "digits", "--test-limit", "10", "--adapter", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("peft-skip eval: error:") and message in err[-1]


def test_a_new_run_into_a_used_directory_replaces_its_checkpoints(tiny_model, tmp_path):
    assert _train(tiny_model, tmp_path, "--epochs", "1") == 0
    first = _deltas(tmp_path / "checkpoints" / "epoch-0001")
    assert _train(tiny_model, tmp_path, "--epochs", "1", "--seed", "4") == 0
    second = _deltas(tmp_path / "checkpoints" / "epoch-0001")
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["epoch-0001"]
    assert any(not torch.equal(first[k], second[k]) for k in first)


def _killed_staging_save(out) -> None:
    """What a save killed while it wrote into the staging directory leaves."""
    staging = out / ".adapter.tmp"
    staging.mkdir(exist_ok=True)
    (staging / "adapter_model.safetensors").write_bytes(b"\x10\x00")
    (staging / "adapter_config.json").write_text('{"weights_sha')


def test_a_full_disk_or_a_killed_save_of_the_adapter_keeps_the_previous_one(tiny_model, tmp_path, monkeypatch, capsys):
    from safetensors import SafetensorError

    assert _train(tiny_model, tmp_path, "--epochs", "1") == 0
    previous = _deltas(tmp_path)
    _killed_staging_save(tmp_path)
    real_save = peft.peft_model.safe_save_file

    def disk_full_in_staging(tensors, path, *args, **kwargs):
        if ".adapter.tmp" in str(path):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real_save(tensors, path, *args, **kwargs)

    monkeypatch.setattr(peft.peft_model, "safe_save_file", disk_full_in_staging)
    assert _train(tiny_model, tmp_path, "--epochs", "1", "--seed", "4") == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "Could not write the adapter" in line and "No space left" in line and "epoch-0001 is kept" in line
    monkeypatch.undo()
    assert all(torch.equal(previous[k], v) for k, v in _deltas(tmp_path).items())
    PeftModel.from_pretrained(CLIPModel.from_pretrained(tiny_model), tmp_path)  # still one whole adapter

    _killed_staging_save(tmp_path)
    assert _train(tiny_model, tmp_path, "--epochs", "1", "--seed", "4") == 0  # the leftover does not block saves
    assert not (tmp_path / ".adapter.tmp").exists()
    assert any(not torch.equal(previous[k], v) for k, v in _deltas(tmp_path).items())


def test_files_peft_skip_did_not_write_are_never_replaced(tiny_model, tmp_path, capsys):
    project = tmp_path / "project"
    project.mkdir()
    (project / "README.md").write_text("# my project\n")
    (project / "setup.py").write_text("")
    assert _train(tiny_model, project, "--epochs", "1") == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "holds files peft-skip did not write (README.md, setup.py)" in line and "--overwrite_output_dir" in line
    assert sorted(os.listdir(project)) == ["README.md", "setup.py"]  # nothing written, not even a lock

    assert _train(tiny_model, project, "--epochs", "1", "--overwrite_output_dir") == 0
    assert (project / "README.md").read_text() == "# my project\n"  # kept: the model card is not written
    assert (project / "adapter_model.safetensors").exists()
    (project / "checkpoints" / "notes.txt").write_text("mine")
    assert _train(tiny_model, project, "--epochs", "1", "--seed", "4", "--overwrite_output_dir") == 0
    assert (project / "checkpoints" / "notes.txt").read_text() == "mine"  # a new run removes only its checkpoints

    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "adapter_config.json").write_text("{}")
    assert _train(tiny_model, tmp_path / "theirs", "--overwrite_output_dir") == 2
    assert "adapter_config.json, which peft-skip did not write and would replace" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["model", "inside-model", "data"])
def test_out_overlapping_the_model_or_the_data_is_refused(tiny_model, tmp_path, capsys, where):
    out = {"model": tiny_model, "inside-model": os.path.join(tiny_model, "run"), "data": str(tmp_path)}[where]
    data = ["--data", str(tmp_path)] if where == "data" else []
    before = sorted(os.listdir(tiny_model))
    assert _train(tiny_model, out, *data) == 2
    assert "overlaps --" in capsys.readouterr().err.strip().splitlines()[-1]
    assert sorted(os.listdir(tiny_model)) == before


def test_make_offline_model_never_writes_over_a_real_model(tiny_model, tmp_path, capsys):
    real = tmp_path / "real"
    real.mkdir()
    (real / "config.json").write_text('{"model_type": "clip"}')
    (real / "model.safetensors").write_bytes(b"weights")
    assert main(["make-offline-model", "--out", str(real), "--arch", "tiny"]) == 2
    assert "holds no offline model" in capsys.readouterr().err
    assert (real / "model.safetensors").read_bytes() == b"weights"
    assert main(["make-offline-model", "--out", tiny_model, "--arch", "tiny"]) == 0  # its own: rewritten


def test_one_benchmark_at_a_time_per_out_and_never_into_a_users_directory(tmp_path, monkeypatch):
    from peft_skip.protocols import benchmark as protocols
    from peft_skip.training.locks import BusyError, file_lock

    monkeypatch.setattr(protocols, "dataset_folder", lambda root, folder: None)
    monkeypatch.setattr(protocols, "load_coop_dataset", lambda *args: None)
    monkeypatch.setattr(protocols, "check_shots", lambda *args: None)
    monkeypatch.setattr(protocols, "_run_cells", lambda *args: {"cells": []})
    args = protocols.BenchmarkArguments(
        protocol="few_shot", model="m", data_root=str(tmp_path), output_dir=str(tmp_path / "b"), datasets="eurosat"
    )
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "results.md").write_text("my own results\n")
    with pytest.raises(FileExistsError, match=r"holds files peft-skip did not write \(results.md\)"):
        protocols.run_benchmark(args, {})
    (tmp_path / "b" / "results.md").unlink()
    with claim_output_dir(args.output_dir, names=protocols.BENCHMARK_NAMES):  # a benchmark's directory
        pass
    errors = []

    def second_benchmark():
        try:
            protocols.run_benchmark(args, {})
        except BusyError as error:
            errors.append(str(error))

    with file_lock(tmp_path / "b" / ".lock", "another benchmark"):  # another thread waits or fails like a process
        thread = threading.Thread(target=second_benchmark)
        thread.start()
        thread.join()
    assert len(errors) == 1 and "the output directory" in errors[0] and "is in use" in errors[0]
    assert protocols.run_benchmark(args, {}) == {"cells": []}


def test_non_finite_tuned_logits_stop_the_run_before_the_adapter_is_saved(tiny_model, tmp_path, monkeypatch, capsys):
    """Finite weights can still overflow in evaluation: that run saves no adapter and reports no accuracy."""
    calls, evaluate_protocol = [], experiment.evaluate_protocol

    def tuned_model_overflows(model, *args, **kwargs):
        calls.append(model)
        if len(calls) == 1:  # the zero-shot evaluation
            return evaluate_protocol(model, *args, **kwargs)
        overflow = model.get_base_model().visual_projection.register_forward_hook(
            lambda module, inputs, output: torch.full_like(output, float("inf"))
        )
        try:
            return evaluate_protocol(model, *args, **kwargs)
        finally:
            overflow.remove()

    monkeypatch.setattr(experiment, "evaluate_protocol", tuned_model_overflows)
    assert _train(tiny_model, tmp_path, "--epochs", "1") == 1
    captured = capsys.readouterr()
    assert len(calls) == 2
    message = captured.out.strip().splitlines()[-1]
    assert message.startswith("error: Non-finite logits") and message.endswith("The tuned adapter was not saved.")
    assert "Skip Tuning accuracy" not in captured.out
    for name in ("adapter_model.safetensors", "adapter_config.json", "metrics.json"):
        assert not (tmp_path / name).exists(), name
