"""The README's usage example runs as written (with a local tiny model standing in for the Hub checkpoint)."""

import re
from pathlib import Path

from peft_skip.offline import make_offline_model

README = Path(__file__).resolve().parents[1] / "README.md"


def test_usage_example_runs(tmp_path, monkeypatch):
    (example,) = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(example.strip().splitlines()) <= 12
    model_dir = make_offline_model(str(tmp_path / "clip"), arch="tiny")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(
        example.replace("openai/clip-vit-base-patch16", model_dir).replace("skip_layers=6", "skip_layers=2"), namespace
    )
    assert type(namespace["merged"]).__name__ == "CLIPModel"
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_first_lines_are_the_two_setup_commands():
    lines = README.read_text().splitlines()
    assert lines[2] == "```bash"
    assert "peft-skip train" in lines[3] and lines[4].endswith("&& pytest")
    # CI runs the README's test command as written.
    assert lines[4] in (README.parent / ".ci" / "run").read_text().splitlines()
