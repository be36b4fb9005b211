"""`peft-skip benchmark` end to end on miniature CoOp layouts and a tiny random-weight model: the cells, resuming,
the base / new relabelling and the tables."""

from __future__ import annotations

import json

import pytest
from coop_miniature import IMAGENET_CLASSES, SPLIT_FILE_CLASSES, write_coop_miniature

import peft_skip.protocols.benchmark
import peft_skip.training.evaluation
import peft_skip.training.trainer
from peft_skip.commands.cli import main
from peft_skip.offline import make_offline_model
from peft_skip.protocols.benchmark import BenchmarkArguments, Cell, cell_training_arguments, plan_cells
from peft_skip.protocols.report import results_markdown, summarise
from peft_skip.training.recipes import reference_recipe
from peft_skip.training.trainer import SkipTrainer

DATASETS = ("imagenet", "caltech101", "eurosat")
COMMON = ["--shots", "4", "--epochs", "1", "--skip-layers", "2", "--no-progress"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(write_coop_miniature(tmp_path_factory.mktemp("data"), datasets=DATASETS, train=4, val=2, test=2))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    names = [name for dataset in ("caltech101", "eurosat") for _, name in SPLIT_FILE_CLASSES[dataset]]
    names += [name for _, name in IMAGENET_CLASSES]
    return make_offline_model(str(tmp_path_factory.mktemp("model") / "tiny"), arch="tiny", class_names=names)


def _benchmark(protocol, datasets, seeds, model, root, out, *extra) -> list[str]:
    command = ["benchmark", "--protocol", protocol, "--datasets", datasets, "--seeds", seeds, "--model", model]
    return command + ["--root", root, "--out", str(out), *COMMON, *extra]


@pytest.fixture
def trained(monkeypatch):
    """The (output_dir, epochs resumed from) of every training, and the train set each saw."""
    calls = []
    original = SkipTrainer.train

    def spy(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        calls.append((self.args.output_dir, result.resumed_from_epoch, self.train_set))
        return result

    monkeypatch.setattr(SkipTrainer, "train", spy)
    return calls


def test_base_to_new_end_to_end(data_root, tiny_model, tmp_path, trained, monkeypatch):
    evaluated = []
    original = peft_skip.training.evaluation.evaluate_accuracy

    def spy(model, dataset, *args, **kwargs):
        evaluated.append(dataset)
        return original(model, dataset, *args, **kwargs)

    monkeypatch.setattr(peft_skip.training.evaluation, "evaluate_accuracy", spy)
    batch_sizes = []
    evaluate_protocol = peft_skip.protocols.benchmark.evaluate_protocol

    def protocol_spy(*args):
        batch_sizes.append(args[-1])
        return evaluate_protocol(*args)

    monkeypatch.setattr(peft_skip.protocols.benchmark, "evaluate_protocol", protocol_spy)
    out = tmp_path / "b2n"
    assert main(_benchmark("base_to_new", "caltech101,eurosat", "1,2", tiny_model, data_root, out)) == 0

    results = json.loads((out / "results.json").read_text())
    assert [(r["dataset"], r["seed"]) for r in results["cells"]] == [
        ("caltech101", 1),
        ("caltech101", 2),
        ("eurosat", 1),
        ("eurosat", 2),
    ]
    for record in results["cells"]:
        assert {"base", "new", "hm", "seconds", "peak_memory_mb"} <= set(record) and "accuracy" not in record
        assert 0 <= record["base"] <= 100 and record["num_images"] == 4 * 2  # 4 classes x 2 test images
        assert record["hm"] == pytest.approx(
            peft_skip.training.evaluation.harmonic_mean(record["base"], record["new"])
        )
        assert record["short_classes"] == {}  # 4 shots of 4 images per class
    assert batch_sizes == [reference_recipe("base_to_new", "eurosat").test_batch_size] * 4  # the recipe's, 100
    assert sorted(p.name for p in (out / "eurosat").iterdir()) == ["seed1", "seed2", "split_fewshot"]
    assert (out / "eurosat" / "seed2" / "adapter_model.safetensors").exists()

    # Hand-worked relabelling: 4 classes -> base = labels 0, 1 (trained, 4 shots each), new = labels 2, 3 tested as
    # 0, 1 among themselves only.
    eurosat = [name for _, name in SPLIT_FILE_CLASSES["eurosat"]]
    train_set = trained[2][2]
    assert train_set.class_names == eurosat[:2] and sorted(train_set.labels) == [0] * 4 + [1] * 4
    base, new = evaluated[4], evaluated[5]  # eurosat seed 1: base first, then new
    assert base.class_names == eurosat[:2] and new.class_names == eurosat[2:]
    assert sorted(new.labels) == [0, 0, 1, 1]
    folders = {
        label: {item.split("/")[-2] for item, y in zip(new.items, new.labels, strict=True) if y == label}
        for label in (0, 1)
    }
    assert folders == {0: {"HerbaceousVegetation"}, 1: {"Highway"}}

    table = (out / "results.md").read_text()
    assert "| dataset | base | new | HM | seeds |" in table
    assert table.count("| caltech101 | ") == 1 and "| **Average** |" in table and "| Average (paper) | 85.04" in table
    assert "RANDOM weights" in table and (out / "results.png").stat().st_size > 0


def test_cross_dataset_trains_imagenet_once_per_seed(data_root, tiny_model, tmp_path, trained):
    out = tmp_path / "xd"
    assert main(_benchmark("cross_dataset", "caltech101,eurosat", "1", tiny_model, data_root, out)) == 0
    results = json.loads((out / "results.json").read_text())
    assert [(r["dataset"], r["train_dataset"]) for r in results["cells"]] == [
        ("imagenet", "imagenet"),
        ("caltech101", "imagenet"),
        ("eurosat", "imagenet"),
    ]
    assert [call[0] for call in trained] == [str(out / "imagenet" / "seed1")]
    assert trained[0][2].class_names == [name for _, name in IMAGENET_CLASSES]  # all classes
    assert all("accuracy" in r for r in results["cells"]) and results["cells"][1]["train_seconds"] == 0
    table = (out / "results.md").read_text().splitlines()
    assert table[2:4] == ["| | imagenet | caltech101 | eurosat | Average |", "|---|---|---|---|---|"]
    assert table[5] == "| Skip Tuning (paper) | 72.77 |  |  | 67.00 |"


def test_resume_skips_finished_cells_and_continues_interrupted_ones(data_root, tiny_model, tmp_path, monkeypatch):
    out = tmp_path / "resume"
    command = _benchmark("few_shot", "eurosat", "1,2", tiny_model, data_root, out, "--epochs", "2")
    original = peft_skip.training.trainer.save_checkpoint

    def interrupt(model, output_dir, epoch, *args):
        original(model, output_dir, epoch, *args)
        if output_dir.endswith("seed2") and epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(peft_skip.training.trainer, "save_checkpoint", interrupt)
    with pytest.raises(KeyboardInterrupt):
        main(command)
    first = json.loads((out / "results.json").read_text())
    assert [(r["dataset"], r["seed"]) for r in first["cells"]] == [("eurosat", 1)]
    assert (out / "eurosat" / "seed2" / "checkpoints" / "epoch-0001").is_dir()

    monkeypatch.setattr(peft_skip.training.trainer, "save_checkpoint", original)
    calls = []
    train = SkipTrainer.train
    monkeypatch.setattr(SkipTrainer, "train", lambda self: calls.append(self.args.output_dir) or train(self))
    assert main(command) == 0
    assert calls == [str(out / "eurosat" / "seed2")]  # seed 1 is not trained again
    final = json.loads((out / "results.json").read_text())
    assert final["cells"][0] == first["cells"][0]
    assert final["cells"][1]["seed"] == 2 and final["cells"][1]["resumed_from_epoch"] == 1
    assert final["cells"][1]["epochs"] == 2

    # Other settings in the same directory are refused before any work.
    assert main([*command, "--lr", "1e-3"]) == 2
    assert calls == [str(out / "eurosat" / "seed2")]


def test_plan_and_arguments():
    args = BenchmarkArguments("domain_generalization", "m", "root", "out", seeds="1,2")
    cells = plan_cells(args)
    assert cells[:5] == [
        Cell(name, 1, "imagenet") for name in ("imagenet", "imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")
    ]
    assert len(cells) == 10
    base_to_new = BenchmarkArguments("base_to_new", "m", "root", "out", datasets="eurosat, imagenet")
    assert [c.dataset for c in plan_cells(base_to_new)] == ["eurosat"] * 3 + ["imagenet"] * 3
    training = cell_training_arguments(base_to_new, "imagenet", 2, "out/imagenet/seed2")
    assert (training.num_train_epochs, training.learning_rate, training.seed) == (5, 2e-5, 2)  # a quarter of 20
    assert training.warmup_epochs == 1 and training.warmup_lr == 1e-6 and training.resume_from_checkpoint
    with pytest.raises(ValueError, match="test-only"):
        plan_cells(BenchmarkArguments("few_shot", "m", "root", "out", datasets="imagenet_a"))
    with pytest.raises(ValueError, match="Unknown datasets"):
        BenchmarkArguments("few_shot", "m", "root", "out", datasets="mnist")
    with pytest.raises(ValueError, match="--seeds"):
        BenchmarkArguments("few_shot", "m", "root", "out", seeds="1;2")


def test_missing_data_fails_before_training(tiny_model, tmp_path, trained):
    command = _benchmark("few_shot", "dtd", "1", tiny_model, str(tmp_path), tmp_path / "out")
    assert main(command) == 2 and trained == []


def test_shots_no_class_can_give_are_refused_before_training(data_root, tiny_model, tmp_path, trained, capsys):
    # The miniature has 4 training images per class: `--shots 100` would train 4-shot while recording 100.
    command = _benchmark("few_shot", "eurosat", "1", tiny_model, data_root, tmp_path / "out") + ["--shots", "100"]
    assert main(command) == 2 and trained == []
    assert "--shots 100 asked but no class has more than 4 images" in capsys.readouterr().err
    assert not (tmp_path / "out" / "results.json").exists()


def test_summary_mean_std_and_averages():
    cells = [
        {"dataset": "a", "seed": 1, "base": 80.0, "new": 60.0},
        {"dataset": "a", "seed": 2, "base": 90.0, "new": 70.0},
        {"dataset": "b", "seed": 1, "base": 50.0, "new": 40.0},
        {"dataset": "b", "seed": 2, "base": 70.0, "new": 40.0},
    ]
    table = summarise({"protocol": "base_to_new", "cells": cells})
    assert table["a"]["base"] == pytest.approx((85.0, 50**0.5))
    assert table["a"]["hm"][0] == pytest.approx(2 * 85 * 65 / 150)
    # Average over datasets of the means; std over seeds of the per-seed averages (65 and 80).
    assert table["Average"]["base"] == pytest.approx((72.5, 112.5**0.5))
    assert table["Average"]["new"] == pytest.approx((52.5, 12.5**0.5))
    for record in cells:
        record |= {"seconds": 1.0, "peak_memory_mb": 10.0, "memory_measure": "process_max_rss"}
    settings = {"model": "m", "shots": 16, "num_train_epochs": None, "learning_rate": None, "mixed_precision": "no"}
    text = results_markdown({"protocol": "base_to_new", "settings": settings, "cells": cells})
    assert "| a | 85.00 ± 7.07 | 65.00 ± 7.07 | 73.67 | 2 | 1.0 | 10 |" in text
