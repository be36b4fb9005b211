"""A run's state on disk: --resume continues only the same run, one run at a time per --out, a used --out is
never inherited, an unusable --out or a damaged checkpoint fails at once in one line."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from synthetic_images import write_folder

import peft_skip  # noqa: F401
from peft_skip.commands.cli import main
from peft_skip.training import run_state, trainer
from peft_skip.training.output_dir import LOCK_FILE, claim_output_dir

FAST = ["--shots", "4", "--skip-layers", "2", "--test-limit", "8", "--no-progress", "--lr", "1e-3", "--epochs", "1"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("models")
    paths = str(root / "tiny"), str(root / "other")
    assert main(["make-offline-model", "--out", paths[0], "--arch", "tiny"]) == 0
    assert main(["make-offline-model", "--out", paths[1], "--arch", "tiny", "--seed", "1"]) == 0
    return paths


@pytest.fixture
def folder(tmp_path):
    write_folder(tmp_path / "images", {"circle": 6, "square": 6, "cross": 6})
    return tmp_path / "images"


def _train(model, data, out, *extra) -> int:
    return main(["train", "--model", model, "--data", str(data), *FAST, "--out", str(out), *extra])


def _last_line(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return captured.err.strip().splitlines()[-1]


def _rewrite(path) -> None:
    import PIL.Image

    PIL.Image.new("RGB", (12, 10), (200, 100, 50)).save(path)


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda f, m: ["--model", m[1]], "base model weights"),
        (lambda f, m: ["--data", "digits"], "data"),
        (lambda f, m: (_rewrite(f / "circle" / "img_00.png"), [])[1], "data"),
        (lambda f, m: ["--shots", "3"], "training.shots"),
        (lambda f, m: ["--class-ratio", "0.9"], "method.class_ratio"),
        (lambda f, m: ["--skip-layers", "1"], "method.skip_layers"),
        (lambda f, m: ["--template", "a drawing of a {}."], "prompts"),
    ],
    ids=["model", "data", "image-contents", "few-shot-sample", "class-ratio", "skip-layers", "template"],
)
def test_resume_names_what_differs_before_any_work(models, folder, tmp_path, capsys, change, field):
    assert _train(models[0], folder, tmp_path / "run") == 0
    capsys.readouterr()
    extra = change(folder, models)
    args = ["train", "--model", models[0], "--data", str(folder), *FAST, "--out", str(tmp_path / "run")]
    code = main([*args, *extra, "--resume"])
    captured = capsys.readouterr()
    assert code == 2
    line = captured.err.strip().splitlines()[-1]
    assert "Cannot resume from" in line and f"{field}: saved" in line, line
    assert "zero-shot accuracy" not in captured.out  # refused before the evaluation


def test_a_new_run_into_a_used_out_neither_loses_its_checkpoints_nor_resumes_anothers(
    models, folder, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    assert _train(models[0], folder, out, "--epochs", "3") == 0
    assert os.listdir(out / "checkpoints") == ["epoch-0003"]

    def killed_after_the_first_checkpoint(*args, **kwargs):
        save_checkpoint(*args, **kwargs)
        raise KeyboardInterrupt

    # A new run (another seed) killed after its first epoch: it once pruned its own epoch-0001 and kept the earlier
    # run's epoch-0003, which --resume then took.
    save_checkpoint = trainer.save_checkpoint
    monkeypatch.setattr(trainer, "save_checkpoint", killed_after_the_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        _train(models[0], folder, out, "--seed", "7", "--epochs", "3")
    monkeypatch.undo()
    assert os.listdir(out / "checkpoints") == ["epoch-0001"]
    assert _train(models[0], folder, out, "--seed", "7", "--epochs", "3", "--resume") == 0
    assert json.loads((out / "metrics.json").read_text())["resumed_from_epoch"] == 1
    state = torch.load(out / "checkpoints" / "epoch-0003" / run_state.TRAINER_STATE, weights_only=True)
    assert state["identity"]["training.seed"] == 7


def test_checkpoints_are_ordered_by_epoch_not_name(tmp_path):
    for name in ["epoch-9999", "epoch-10000", "epoch-0002", "epoch-0003.tmp", "epoch-0004.old.tmp"]:
        os.makedirs(tmp_path / "checkpoints" / name)
        (tmp_path / "checkpoints" / name / run_state.TRAINER_STATE).touch()
    os.makedirs(tmp_path / "checkpoints" / "epoch-0001")  # the user's: no trainer state of ours
    assert [os.path.basename(p) for p in run_state.list_checkpoints(str(tmp_path))] == [
        "epoch-0002",
        "epoch-9999",
        "epoch-10000",
    ]


def _hold_lock(path) -> subprocess.Popen:
    code = (
        "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); f.write('4242'); "
        "f.flush(); print('held', flush=True); time.sleep(120)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


@contextlib.contextmanager
def _locked_by_another_process(path):
    """The lock file `path` held by a process of pid 4242 (as it writes) for the block, then killed."""
    holder = _hold_lock(path)
    try:
        yield
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def test_one_run_at_a_time_per_out_and_a_killed_run_leaves_no_lock(models, folder, tmp_path, capsys):
    out = tmp_path / "run"
    with claim_output_dir(str(out)):  # a directory of peft-skip's, as a running run leaves it
        pass
    with _locked_by_another_process(out / LOCK_FILE):
        assert _train(models[0], folder, out) == 2
        captured = capsys.readouterr()
        assert "is in use by another process (pid 4242)" in captured.err.strip().splitlines()[-1]
        assert "zero-shot" not in captured.out
    assert _train(models[0], folder, out) == 0  # the OS released the dead process's lock


def test_an_unusable_out_fails_before_any_work(models, folder, tmp_path, capsys):
    (tmp_path / "file").write_text("not a directory")
    assert _train(models[0], folder, tmp_path / "file") == 2
    captured = capsys.readouterr()
    assert "is a file; give a directory" in captured.err and "zero-shot" not in captured.out
    # sysfs refuses new entries, even to root (a chmod'ed directory would not stop root).
    assert _train(models[0], folder, "/sys/peft-skip-test-out") == 2
    captured = capsys.readouterr()
    assert "Cannot write to --out /sys/peft-skip-test-out" in captured.err and "zero-shot" not in captured.out


def test_a_truncated_trainer_state_is_one_clear_line(models, folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(models[0], folder, out) == 0
    state = out / "checkpoints" / "epoch-0001" / run_state.TRAINER_STATE
    state.write_bytes(state.read_bytes()[:200])
    capsys.readouterr()
    assert _train(models[0], folder, out, "--resume") == 2
    line = _last_line(capsys)
    assert f"{state} is missing, truncated or corrupt" in line and "delete" in line


def test_resume_applies_every_load_check_before_the_zero_shot_evaluation(models, folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(models[0], folder, out) == 0
    weights = out / "checkpoints" / "epoch-0001" / "adapter_model.safetensors"
    intact = weights.read_bytes()
    for damage, message in [(intact[:-100], "corrupt or truncated"), (intact[:-4] + b"\0\0\0\1", "sha256 differs")]:
        weights.write_bytes(damage)
        capsys.readouterr()
        assert _train(models[0], folder, out, "--resume") == 2
        captured = capsys.readouterr()
        assert "Cannot resume from" in captured.err and message in captured.err.strip().splitlines()[-1]
        assert "zero-shot" not in captured.out


def test_a_full_disk_inside_a_checkpoint_save_is_one_clear_line(models, folder, tmp_path, capsys, monkeypatch):
    def full(*args, **kwargs):
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(run_state.torch, "save", full)
    assert _train(models[0], folder, tmp_path / "run") == 2
    line = _last_line(capsys)
    assert "Could not write checkpoint" in line and "file write failed" in line and "--resume" in line
    assert not (tmp_path / "run" / "checkpoints" / "epoch-0001").exists()


def test_a_lock_waits_for_its_holder_and_reports_busy_otherwise(tmp_path):
    from peft_skip.training.locks import BusyError, file_lock

    holder = _hold_lock(tmp_path / "x.lock")
    with pytest.raises(BusyError, match=r"the thing is in use by another process \(pid 4242\)"):
        with file_lock(tmp_path / "x.lock", "the thing"):
            pass
    started = time.monotonic()
    subprocess.Popen(["sh", "-c", f"sleep 1; kill -9 {holder.pid}"])
    with file_lock(tmp_path / "x.lock", "the thing", wait=True):
        assert time.monotonic() - started > 0.5
        with file_lock(tmp_path / "x.lock", "the thing"):  # re-entrant in one process
            pass
    holder.wait()


_HOLDER_WITH_A_WORKER = """
import importlib.util, os, sys, time
spec = importlib.util.spec_from_file_location("locks", sys.argv[1])
locks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(locks)
with locks.file_lock(sys.argv[2], "the output directory"):
    started, ready = os.pipe()
    worker = os.fork()
    if worker == 0:  # a data loader's worker: outlives its killed parent for a while
        os.write(ready, b"1")  # fork's after-child hooks have run
        time.sleep(60)
        os._exit(0)
    os.read(started, 1)
    print(worker, flush=True)
    time.sleep(60)
"""


def test_a_killed_holders_forked_worker_does_not_keep_its_lock(tmp_path):
    from peft_skip.training import locks

    code = [sys.executable, "-c", _HOLDER_WITH_A_WORKER, locks.__file__, str(tmp_path / "x.lock")]
    holder = subprocess.Popen(code, stdout=subprocess.PIPE, text=True)
    worker = int(holder.stdout.readline())
    try:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        os.kill(worker, 0)  # the worker still runs
        with locks.file_lock(tmp_path / "x.lock", "the output directory"):  # and holds nothing
            pass
    finally:
        os.kill(worker, signal.SIGKILL)


def test_a_lock_that_is_a_link_is_refused_and_its_target_kept(models, folder, tmp_path, capsys):
    from peft_skip.training.locks import file_lock

    target = tmp_path / "precious.txt"
    target.write_text("precious\n")
    (tmp_path / "x.lock").symlink_to(target)
    with pytest.raises(OSError, match="is a symbolic link"):
        with file_lock(tmp_path / "x.lock", "the thing"):
            pass
    out = tmp_path / "run"
    assert _train(models[0], folder, out) == 0
    (out / LOCK_FILE).unlink()
    (out / LOCK_FILE).symlink_to(target)
    assert _train(models[0], folder, out) == 2
    assert "is a symbolic link" in _last_line(capsys)
    assert target.read_text() == "precious\n"


def _eval(model, data, out, *extra) -> int:
    return main(
        ["eval", "--model", model, "--data", str(data), "--test-limit", "8", "--no-progress", "--out", str(out)]
    )


def test_eval_into_an_out_claims_it_as_train_does(models, folder, tmp_path, capsys):
    """Two evals into one --out: the second is refused in one line, before any work; the file is never half written."""
    out = tmp_path / "run"
    assert _train(models[0], folder, out) == 0
    assert _eval(models[0], folder, out) == 0  # beside the run's own files
    written = json.loads((out / "eval_results.json").read_text())
    assert written["num_images"] == 8 and not [name for name in os.listdir(out) if name.endswith(".tmp")]
    capsys.readouterr()
    with _locked_by_another_process(out / LOCK_FILE):  # an eval (or a train) still writing there
        assert _eval(models[0], folder, out) == 2
        captured = capsys.readouterr()
        assert "is in use by another process (pid 4242)" in captured.err.strip().splitlines()[-1]
        assert "accuracy" not in captured.out
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine\n")
    assert _eval(models[0], folder, mine) == 2
    assert "holds files peft-skip did not write (notes.txt)" in _last_line(capsys)
    assert _eval(models[0], folder, models[0]) == 2  # into the model's own directory
    assert "overlaps --model" in _last_line(capsys)
    assert not (mine / "eval_results.json").exists() and not os.path.exists(
        os.path.join(models[0], "eval_results.json")
    )


def test_a_symlinked_out_writes_through_the_link_and_a_dangling_one_is_one_line(models, folder, tmp_path, capsys):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    assert _train(models[0], folder, tmp_path / "link") == 0
    assert (real / "adapter_model.safetensors").exists() and (tmp_path / "link").is_symlink()
    (tmp_path / "to-model").symlink_to(models[0])
    assert _train(models[0], folder, tmp_path / "to-model") == 2
    assert "overlaps --model" in _last_line(capsys)
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    assert _train(models[0], folder, tmp_path / "dangling") == 2
    assert "is a symbolic link to" in _last_line(capsys) and not (tmp_path / "gone").exists()


def test_an_unwritable_cache_dir_fails_before_any_work(models, folder, tmp_path, capsys):
    # sysfs refuses new entries, even to root.
    assert _train(models[0], folder, tmp_path / "run", "--cache-dir", "/sys/peft-skip-test-cache") == 2
    captured = capsys.readouterr()
    assert "/sys/peft-skip-test-cache" in captured.err.strip().splitlines()[-1] and "zero-shot" not in captured.out
    assert "Traceback" not in captured.err


def test_a_json_result_interrupted_while_written_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    from peft_skip.training import publishing

    path = tmp_path / "metrics.json"
    publishing.write_json(str(path), {"accuracy": 0.5})
    real_dump = json.dump

    def killed_halfway(payload, f, **kwargs):
        f.write(json.dumps(payload)[:5])
        raise KeyboardInterrupt

    monkeypatch.setattr(publishing.json, "dump", killed_halfway)
    with pytest.raises(KeyboardInterrupt):
        publishing.write_json(str(path), {"accuracy": 0.9})
    monkeypatch.setattr(publishing.json, "dump", real_dump)
    assert json.loads(path.read_text()) == {"accuracy": 0.5} and os.listdir(tmp_path) == ["metrics.json"]
