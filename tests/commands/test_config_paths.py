"""Paths in `--config` files are read relative to the file."""

import os

from peft_skip.commands.config_paths import resolve_config_paths


def test_paths_resolve_against_the_config_files_directory(tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "model").mkdir()
    (tmp_path / "images").mkdir()
    config = str(tmp_path / "conf" / "run.yaml")
    values = {
        "model": "../model",
        "data": "imagefolder:../images",
        "output_dir": "../runs/x",  # need not exist
        "cache_dir": "/abs/cache",
        "learning_rate": 0.1,
    }
    assert resolve_config_paths(values, config) == {
        "model": str(tmp_path / "model"),
        "data": "imagefolder:" + str(tmp_path / "images"),
        "output_dir": str(tmp_path / "runs" / "x"),
        "cache_dir": "/abs/cache",
        "learning_rate": 0.1,
    }


def test_names_that_are_not_paths_stay(tmp_path):
    config = str(tmp_path / "run.yaml")
    values = {"model": "openai/clip-vit-base-patch16", "data": "world:combos", "class_names": "cat,dog"}
    assert resolve_config_paths(values, config) == values
    assert os.path.isabs(resolve_config_paths({"output_dir": "out"}, config)["output_dir"])
