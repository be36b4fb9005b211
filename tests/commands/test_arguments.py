"""What a command loads: model directories, data columns, class names, templates, logging."""

from __future__ import annotations

import logging

import pytest
import transformers

from peft_skip.commands.arguments import DataArguments, LoggingArguments, ModelArguments


@pytest.mark.parametrize("model", ["./nope", "../nope", "/no/such/dir", "runs/a/b"])
def test_a_missing_model_directory(model):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        ModelArguments(model)


def test_hub_ids_and_existing_directories_pass(tmp_path):
    for model in ("openai/clip-vit-base-patch16", "clip", str(tmp_path)):
        assert ModelArguments(model).model == model


def test_class_names_from_a_file_or_a_comma_list(tmp_path):
    (tmp_path / "names.txt").write_text("zero\n\n one \ntwo\n")
    assert DataArguments("digits", class_names=str(tmp_path / "names.txt")).class_name_list() == ["zero", "one", "two"]
    names = [str(n) for n in range(10)][::-1]
    data = DataArguments("digits", class_names=",".join(names))
    test = data.load("test")
    assert test.class_names == names
    with pytest.raises(ValueError, match="gives 2 names, digits has 10 classes"):
        DataArguments("digits", class_names="a,b").load("test")


def test_columns_are_for_table_data_only():
    with pytest.raises(ValueError, match="--image_column choose columns"):
        DataArguments("digits", image_column="img")
    assert DataArguments("hf:someone/pets", image_column="img").image_column == "img"


def test_one_template_or_several():
    assert DataArguments("digits").resolved_templates() == ["a photo of the handwritten digit {}."]
    assert DataArguments("digits", template="a {}.").resolved_templates() == ["a {}."]
    assert DataArguments("digits", template=["a {}.", "an {}!"]).resolved_templates() == ["a {}.", "an {}!"]
    with pytest.raises(ValueError, match="exactly one"):
        DataArguments("digits", template=["a {}.", "no field"])


def test_log_level_sets_peft_skip_and_transformers(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    before = transformers.utils.logging.get_verbosity(), logging.getLogger("peft_skip").level
    try:
        LoggingArguments("error").apply()
        assert transformers.utils.logging.get_verbosity() == logging.ERROR
        assert logging.getLogger("peft_skip").level == logging.ERROR
    finally:
        transformers.utils.logging.set_verbosity(before[0])
        logging.getLogger("peft_skip").setLevel(before[1])
    with pytest.raises(ValueError, match="log_level"):
        LoggingArguments("loud")
