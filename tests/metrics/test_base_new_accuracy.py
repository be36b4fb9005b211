"""The base_new_accuracy metric, loaded offline through `evaluate.load` from the package's own directory."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import evaluate
import pytest

from peft_skip.metrics import base_new_accuracy_path
from peft_skip.training.evaluation import harmonic_mean


@pytest.fixture(scope="module")
def metric(tmp_path_factory):
    return evaluate.load(base_new_accuracy_path(), cache_dir=str(tmp_path_factory.mktemp("evaluate")))


def test_accuracy_and_base_new_harmonic_mean_by_hand(metric):
    # Base images (classes 0, 1): 3 of 4 right -> 0.75. New images (classes 2, 3): 1 of 2 right -> 0.5.
    # HM = 2 * 0.75 * 0.5 / 1.25 = 0.6. All: 4 of 6 right.
    predictions = [0, 1, 1, 0, 2, 2]
    references = [0, 1, 0, 0, 2, 3]
    is_base = [True, True, True, True, False, False]
    assert metric.compute(predictions=predictions, references=references) == {"accuracy": pytest.approx(4 / 6)}
    result = metric.compute(predictions=predictions, references=references, is_base=is_base)
    assert result == {
        "accuracy": pytest.approx(4 / 6),
        "base_accuracy": pytest.approx(0.75),
        "new_accuracy": pytest.approx(0.5),
        "harmonic_mean": pytest.approx(0.6),
    }


def test_all_wrong_gives_zero_harmonic_mean(metric):
    result = metric.compute(predictions=[1, 0], references=[0, 1], is_base=[True, False])
    assert result["harmonic_mean"] == 0.0 and result["accuracy"] == 0.0


def test_errors_say_what_is_missing(metric):
    with pytest.raises(ValueError, match="needs images of both"):
        metric.compute(predictions=[0, 1], references=[0, 1], is_base=[True, True])
    with pytest.raises(ValueError, match="give one per prediction"):
        metric.compute(predictions=[0, 1], references=[0, 1], is_base=[True])


def test_the_metric_and_the_package_compute_the_same_harmonic_mean(metric):
    rng = random.Random(0)
    for _ in range(20):
        n = rng.randint(2, 12)
        references = [rng.randrange(4) for _ in range(n)]
        predictions = [r if rng.random() < rng.random() else rng.randrange(4) for r in references]
        is_base = [True, False] + [rng.random() < 0.5 for _ in range(n - 2)]
        result = metric.compute(predictions=predictions, references=references, is_base=is_base)
        assert result["harmonic_mean"] == harmonic_mean(result["base_accuracy"], result["new_accuracy"])
    assert harmonic_mean(0.0, 0.0) == 0.0


def test_the_metric_module_is_self_contained():
    """`evaluate.load` imports the file from its own cache: it must not import the package."""
    source = Path(base_new_accuracy_path(), "base_new_accuracy.py").read_text()
    nodes = list(ast.walk(ast.parse(source)))
    imported = {alias.name for node in nodes if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in nodes if isinstance(node, ast.ImportFrom)}
    assert imported == {"datasets", "evaluate"}
