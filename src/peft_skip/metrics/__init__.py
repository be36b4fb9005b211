"""Metrics shipped as `evaluate` modules, so that `evaluate.load` finds them without the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path


def base_new_accuracy_path() -> str:
    """Directory of the `base_new_accuracy` metric, for `evaluate.load(base_new_accuracy_path())`.

    `evaluate.load("accuracy")` downloads its script from the Hub; this module is installed with peft-skip, so it
    loads offline too.
    """
    return str(Path(__file__).resolve().parent / "base_new_accuracy")
