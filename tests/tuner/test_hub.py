"""`train --push_to_hub`: the repository is created before training, the adapter uploaded after it (a fake Hub)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

import peft_skip.tuner.hub as hub
from peft_skip.commands.cli import main

TRAIN = ["--data", "digits", "--shots", "2", "--skip-layers", "2", "--test-limit", "20", "--epochs", "1"]


class FakeHub:
    """Records the calls; `fail` names the method that raises as an unreachable Hub would."""

    calls: list = []
    fail: str | None = None

    def create_repo(self, repo_id, private=None, exist_ok=False):
        self._call("create_repo", repo_id=repo_id, private=private)
        return SimpleNamespace(repo_id=repo_id if "/" in repo_id else f"me/{repo_id}")  # the token owner's namespace

    def upload_folder(self, repo_id, folder_path, allow_patterns, commit_message):
        uploaded = sorted(f for f in os.listdir(folder_path) if f in allow_patterns)
        self._call("upload_folder", repo_id=repo_id, uploaded=uploaded)
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/1")

    def _call(self, name, **kwargs):
        if name == self.fail:
            raise ConnectionError("hub unreachable")
        FakeHub.calls.append((name, kwargs))


@pytest.fixture
def fake_hub(monkeypatch):
    FakeHub.calls, FakeHub.fail = [], None
    monkeypatch.setattr(hub, "HfApi", FakeHub)
    return FakeHub


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("model") / "tiny")
    assert main(["make-offline-model", "--out", path, "--arch", "tiny"]) == 0
    return path


def test_push_uploads_the_adapter_card_and_metrics_not_the_checkpoints(tiny_model, tmp_path, fake_hub, capsys):
    out = tmp_path / "my-run"
    argv = ["train", "--model", tiny_model, *TRAIN, "--out", str(out), "--push_to_hub", "--hub_private_repo", "true"]
    assert main(argv) == 0
    assert [name for name, _ in fake_hub.calls] == ["create_repo", "upload_folder"]
    assert fake_hub.calls[0][1] == {"repo_id": "my-run", "private": True}  # the output_dir's name by default
    assert fake_hub.calls[1][1] == {"repo_id": "me/my-run", "uploaded": sorted(hub.UPLOADED_FILES)}
    assert (out / "checkpoints").is_dir() and "checkpoints" not in hub.UPLOADED_FILES
    assert "uploaded to the Hub: https://huggingface.co/me/my-run/commit/1" in capsys.readouterr().out


def test_an_unreachable_hub_fails_before_training(tiny_model, tmp_path, fake_hub, capsys):
    fake_hub.fail = "create_repo"
    out = tmp_path / "run"
    argv = ["train", "--model", tiny_model, *TRAIN, "--out", str(out), "--push_to_hub", "--hub_model_id", "me/x"]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "Cannot create or reach the Hub repository 'me/x'" in error and "hf auth login" in error
    assert not (out / "adapter_model.safetensors").exists() and not (out / "checkpoints").exists()


def test_a_failed_upload_keeps_the_run_and_says_how_to_retry(tiny_model, tmp_path, fake_hub, capsys):
    fake_hub.fail = "upload_folder"
    out = tmp_path / "run"
    argv = ["train", "--model", tiny_model, *TRAIN, "--out", str(out), "--push_to_hub", "--hub_model_id", "me/x"]
    assert main(argv) == 2
    assert f"the adapter is saved in {out}: retry with `hf upload me/x {out} ." in capsys.readouterr().err
    assert (out / "adapter_model.safetensors").is_file() and (out / "metrics.json").is_file()


def test_push_to_hub_keeps_the_skip_tuning_card(fake_hub, monkeypatch, tmp_path):
    """`peft_skip.push_to_hub` uploads the card `save_pretrained` wrote (peft's `model.push_to_hub` would replace it
    with the Hub's), so the repository says to import peft_skip before loading."""
    from peft import get_peft_model
    from transformers import CLIPModel

    from peft_skip import SkipConfig, push_to_hub
    from peft_skip.offline.pretrain import world_clip_path

    cards = []
    upload = FakeHub.upload_folder

    def reading_the_card(self, repo_id, folder_path, allow_patterns, commit_message):
        cards.append(open(os.path.join(folder_path, "README.md"), encoding="utf-8").read())
        return upload(self, repo_id, folder_path, allow_patterns, commit_message)

    monkeypatch.setattr(FakeHub, "upload_folder", reading_the_card)
    model = get_peft_model(CLIPModel.from_pretrained(world_clip_path()), SkipConfig(skip_layers=3))
    assert push_to_hub(model, "me/world-skip") == "https://huggingface.co/me/world-skip/commit/1"
    assert [name for name, _ in fake_hub.calls] == ["create_repo", "upload_folder"]
    assert fake_hub.calls[1][1]["uploaded"] == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert "## Skip Tuning adapter" in cards[0] and "import peft_skip" in cards[0]
    fake_hub.fail = "upload_folder"
    with pytest.raises(ValueError, match="Uploading to 'me/world-skip' failed") as error:
        push_to_hub(model, "me/world-skip")
    assert "retry" not in str(error.value)  # nothing is left to retry from


def test_a_hub_repository_without_push_to_hub_is_refused(tmp_path):
    from peft_skip import SkipTrainingArguments

    with pytest.raises(ValueError, match="push_to_hub is not: add --push_to_hub"):
        SkipTrainingArguments(output_dir=str(tmp_path), hub_model_id="me/x")
