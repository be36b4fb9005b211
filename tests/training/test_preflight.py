"""Bad input is refused before any expensive work, in one line; data that cannot train is warned about; the image
cache is keyed by the images' contents and shared safely between runs."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from conftest import tiny_clip
from synthetic_images import write_folder

import peft_skip  # noqa: F401
from peft_skip import get_towers
from peft_skip.commands.cli import main
from peft_skip.data import load_dataset_spec
from peft_skip.training.cache import ImageCache
from peft_skip.training.preflight import check_launch, warn_if_untrainable

FAST = ["--shots", "4", "--skip-layers", "2", "--test-limit", "8", "--no-progress", "--lr", "1e-3", "--epochs", "1"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("model") / "tiny")
    assert main(["make-offline-model", "--out", path, "--arch", "tiny"]) == 0
    return path


@pytest.fixture
def folder(tmp_path):
    write_folder(tmp_path / "images", {"circle": 5, "square": 5})
    return tmp_path / "images"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--eval-batch-size", "0"], "per_device_eval_batch_size=0 is invalid"),
        (["--test-limit", "-5"], "test_limit=-5 is invalid"),
        (["--template", "a {x} of a {}."], "exactly one '{}'"),
        (["--template", "a photo of a {} }"], "not a valid format string (Single '}'"),
        (["--lr", "nan"], "learning_rate=nan"),
        (["--lr", "inf"], "learning_rate=inf"),
        (["--lr", "1e5", "--precision", "fp16_reference"], "largest value is 65504"),
        (["--config", "epochs: 1.5"], "num_train_epochs: 1.5 is invalid"),
        (["--config", "shots: 2.5"], "shots: 2.5 is invalid"),
        (["--config", "protocol: fewshot"], "'fewshot' is invalid; expected one of"),
        (["--config", "data: [1"], "is not valid YAML or JSON at line 2"),
        (["--config", "- a list"], "must hold option: value pairs"),
    ],
    ids=[
        "eval-batch-size-0",
        "test-limit-negative",
        "template-named-field",
        "template-stray-brace",
        "lr-nan",
        "lr-inf",
        "lr-beyond-float16",
        "config-float-epochs",
        "config-float-shots",
        "config-bad-choice",
        "config-yaml-syntax",
        "config-not-a-mapping",
    ],
)
def test_bad_arguments_are_one_line_before_any_work(tiny_model, folder, tmp_path, capsys, flags, message):
    if flags[0] == "--config":
        (tmp_path / "c.yaml").write_text(flags[1] + "\n")
        flags = ["--config", str(tmp_path / "c.yaml")]
    code = main(["train", "--model", tiny_model, "--data", str(folder), *FAST, "--out", str(tmp_path / "o"), *flags])
    captured = capsys.readouterr()
    assert code == 2 and "Traceback" not in captured.err
    assert captured.err.startswith("peft-skip train: error:") and len(captured.err.strip().splitlines()) == 1
    assert message in captured.err and captured.out == ""


def test_a_corrupt_training_image_fails_before_the_zero_shot_evaluation(tiny_model, folder, tmp_path, capsys):
    broken = folder / "square" / "img_03.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n but the rest was lost")
    args = ["train", "--model", tiny_model, "--data", str(folder), *FAST, "--shots", "5", "--out", str(tmp_path / "o")]
    code = main(args)
    captured = capsys.readouterr()
    assert code == 2 and "Traceback" not in captured.err
    assert f"Cannot read image file '{broken}'" in captured.err.strip().splitlines()[-1]
    assert "zero-shot" not in captured.out


def _prompts(tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    ids = [tokenizer(text)["input_ids"] for text in texts]
    length = max(map(len, ids))
    return {
        "input_ids": torch.tensor([row + [0] * (length - len(row)) for row in ids]),
        "attention_mask": torch.tensor([[1] * len(row) + [0] * (length - len(row)) for row in ids]),
    }


def test_classes_that_cannot_train_are_warned_about(tiny_model, caplog):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    prompts = _prompts(tokenizer, ["a photo of a Cat.", "a photo of a cat.", "a photo of a dog."])
    with caplog.at_level(logging.WARNING, logger="peft_skip"):
        warnings = warn_if_untrainable(["Cat", "cat", "dog"], prompts)
    assert len(warnings) == 1 and "Classes ['Cat', 'cat'] get identical prompts" in caplog.text
    assert warn_if_untrainable(["cat", "dog"], _prompts(tokenizer, ["a cat", "a dog"])) == []
    single = warn_if_untrainable(["cat"], _prompts(tokenizer, ["a cat"]))
    assert len(single) == 1 and "Only one class" in single[0]


def test_a_single_class_run_says_it_learns_nothing(tiny_model, tmp_path, capsys, caplog):
    write_folder(tmp_path / "one", {"circle": 5})
    with caplog.at_level(logging.WARNING, logger="peft_skip"):
        main(["train", "--model", tiny_model, "--data", str(tmp_path / "one"), *FAST, "--out", str(tmp_path / "o")])
    assert "Only one class (['circle']): the loss is 0" in caplog.text


def test_accelerate_launch_cpu_with_several_processes_is_refused(monkeypatch):
    launcher = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "launch", "--cpu", "--num_processes", "2", "x.py"]
    )
    try:
        time.sleep(0.2)
        monkeypatch.setattr("os.getppid", lambda: launcher.pid)
        monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
        monkeypatch.delenv("WORLD_SIZE", raising=False)
        with pytest.raises(ValueError, match="starts a single process.*--multi_gpu --num_processes 2"):
            check_launch()
        monkeypatch.setenv("WORLD_SIZE", "2")  # really several processes
        check_launch()
    finally:
        launcher.kill()
        launcher.wait()


def _cache(data, cache_dir, images_seen=None, model=None):
    """The image cache of an image folder's training set, keyed like the trainer keys it."""
    model = model or tiny_clip()
    towers = get_towers(model)

    def images(view, indices):
        if images_seen is not None:
            images_seen.append(len(indices))
        pixels = [np.asarray(data.image(int(i)).resize((32, 32)), dtype=np.float32) / 255 for i in indices]
        return torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2)

    return ImageCache.build(
        towers.vision, images, len(data), 2, cache_dir=cache_dir, fingerprint={"data": data.fingerprint()}
    )


def test_images_rewritten_in_place_or_moved_are_keyed_by_contents(tmp_path, folder, caplog, monkeypatch):
    data = load_dataset_spec(str(folder), "train")
    first = _cache(data, tmp_path / "cache").get(torch.arange(len(data)), 0)
    write_folder(tmp_path / "images", {"circle": 5, "square": 5}, size=(12, 10))  # the same bytes: reused
    seen = []
    _cache(data, tmp_path / "cache", seen)
    assert seen == []

    (folder / "circle" / "img_00.png").write_bytes((folder / "square" / "img_04.png").read_bytes())
    with caplog.at_level(logging.INFO, logger="peft_skip.training.cache"):
        rebuilt = _cache(data, tmp_path / "cache", seen).get(torch.arange(len(data)), 0)
    assert seen and "data differ" in caplog.text
    assert not torch.equal(rebuilt, first)

    # The same relative paths under another folder, with other contents: another key.
    other = tmp_path / "elsewhere" / "images"
    shutil.copytree(folder, other)
    (other / "square" / "img_01.png").write_bytes((other / "circle" / "img_01.png").read_bytes())
    monkeypatch.chdir(folder.parent)
    here = load_dataset_spec("images", "train").fingerprint()
    monkeypatch.chdir(other.parent)
    assert load_dataset_spec("images", "train").fingerprint() != here


def test_two_runs_sharing_a_cache_entry_build_it_once_and_never_read_it_half_built(tmp_path, folder):
    data, model = load_dataset_spec(str(folder), "train"), tiny_clip()
    expected = _cache(data, None, model=model).get(torch.arange(len(data)), 0)
    seen, results, errors = [], [], []

    def run():
        try:
            results.append(_cache(data, tmp_path / "cache", seen, model).get(torch.arange(len(data)), 0))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sum(seen) == len(data)  # built once; the other run waited and reused it
    for states in results:
        torch.testing.assert_close(states, expected, rtol=0, atol=0)
