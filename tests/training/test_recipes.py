"""The reference recipe, compared field by field with values read by hand from the authors' repository."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny_clip

import peft_skip.protocols.benchmark
import peft_skip.training.training_args
from peft_skip.commands.cli import _parse, main
from peft_skip.data import TEMPLATES
from peft_skip.training.batches import uses_class_batches
from peft_skip.training.recipes import PROTOCOLS, REFERENCE_DATASETS, Recipe, reference_recipe, with_overrides
from peft_skip.training.schedule import make_optimizer
from peft_skip.training.training_args import SkipTrainingArguments

# Shared by every protocol: trainers/_base_/defaults.py (SGD), the three yaml files (batch 4, 224 bicubic, transforms),
# train.py extend_cfg (fp16, START_LAYER 6, TOP_RATIO 0.5, MAX_TOP 50, LAMBDA 0.3, DROP_RATIO 0), configs.py (seeds).
COMMON = dict(
    optimizer="sgd",
    momentum=0.9,
    weight_decay=5e-4,
    nesterov=False,
    dampening=0.0,
    schedule="dassl_cosine",
    batch_size=4,
    sampler="batch_random",
    sampler_min_shots=4,
    fallback_sampler="random",
    drop_last=True,
    precision="fp16_reference",
    seeds=[1, 2, 3],
    skip_layers=6,
    class_ratio=0.5,
    max_classes=50,
    class_decay=0.3,
    token_drop=0.0,
    crop_scale=[0.08, 1.0],
    test_batch_size=100,
)
XD_EVAL = ["imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft"]
XD_EVAL += ["sun397", "dtd", "eurosat", "ucf101"]
DG_EVAL = ["imagenet", "imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"]

# (protocol, dataset) -> the fields that depend on them, as the reference resolves them.
TABLE = {
    ("base_to_new", "imagenet"): dict(
        text_lr=2e-5, vision_lr=5e-6, epochs=5, warmup_epochs=1, warmup_lr=1e-6, shots=[16],
        template="a photo of a {}.", train_dataset="imagenet", train_classes="base",
        eval_datasets=["imagenet"],
    ),
    ("base_to_new", "caltech101"): dict(
        text_lr=2e-5, vision_lr=5e-6, epochs=20, warmup_epochs=1, warmup_lr=1e-6, shots=[16],
        template="itap of a {}.", train_dataset="caltech101", train_classes="base",
        eval_datasets=["caltech101"],
    ),
    ("base_to_new", "food101"): dict(
        text_lr=2e-5, vision_lr=5e-6, epochs=5, warmup_epochs=1, warmup_lr=1e-6, shots=[16],
        template="a photo of the nice {}.", train_dataset="food101", train_classes="base",
        eval_datasets=["food101"],
    ),
    ("base_to_new", "eurosat"): dict(
        text_lr=2e-5, vision_lr=5e-6, epochs=20, warmup_epochs=1, warmup_lr=1e-6, shots=[16],
        template="a centered satellite photo of {}.", train_dataset="eurosat", train_classes="base",
        eval_datasets=["eurosat"],
    ),
    ("cross_dataset", "imagenet"): dict(
        text_lr=1e-5, vision_lr=1e-6, epochs=5, warmup_epochs=1, warmup_lr=1e-8, shots=[16],
        template="a photo of a {}.", train_dataset="imagenet", train_classes="all",
        eval_datasets=XD_EVAL,
    ),
    ("cross_dataset", "caltech101"): dict(
        text_lr=1e-5, vision_lr=1e-6, epochs=5, warmup_epochs=1, warmup_lr=1e-8, shots=[16],
        template="itap of a {}.", train_dataset="imagenet", train_classes="all",
        eval_datasets=XD_EVAL,
    ),
    ("cross_dataset", "fgvc_aircraft"): dict(
        text_lr=1e-5, vision_lr=1e-6, epochs=5, warmup_epochs=1, warmup_lr=1e-8, shots=[16],
        template="a bright photo of a {}, a type of aircraft.", train_dataset="imagenet", train_classes="all",
        eval_datasets=XD_EVAL,
    ),
    ("domain_generalization", "imagenet"): dict(
        text_lr=1e-5, vision_lr=1e-6, epochs=5, warmup_epochs=1, warmup_lr=1e-8, shots=[16],
        template="a photo of a {}.", train_dataset="imagenet", train_classes="all",
        eval_datasets=DG_EVAL,
    ),
    ("domain_generalization", "imagenet_sketch"): dict(
        text_lr=1e-5, vision_lr=1e-6, epochs=5, warmup_epochs=1, warmup_lr=1e-8, shots=[16],
        template="a sketch of a {}.", train_dataset="imagenet", train_classes="all",
        eval_datasets=DG_EVAL,
    ),
    ("domain_generalization", "imagenet_a"): dict(
        text_lr=1e-5, vision_lr=1e-6, epochs=5, warmup_epochs=1, warmup_lr=1e-8, shots=[16],
        template="a bad photo of a {}.", train_dataset="imagenet", train_classes="all",
        eval_datasets=DG_EVAL,
    ),
    ("few_shot", "imagenet"): dict(
        text_lr=1e-5, vision_lr=1e-5, epochs=10, warmup_epochs=0, warmup_lr=None, shots=[1, 2, 4, 8, 16],
        template="a photo of a {}.", train_dataset="imagenet", train_classes="all",
        eval_datasets=["imagenet"],
    ),
    ("few_shot", "caltech101"): dict(
        text_lr=1e-5, vision_lr=1e-5, epochs=40, warmup_epochs=0, warmup_lr=None, shots=[1, 2, 4, 8, 16],
        template="itap of a {}.", train_dataset="caltech101", train_classes="all",
        eval_datasets=["caltech101"],
    ),
    ("few_shot", "sun397"): dict(
        text_lr=1e-5, vision_lr=1e-5, epochs=10, warmup_epochs=0, warmup_lr=None, shots=[1, 2, 4, 8, 16],
        template="a photo of a {}.", train_dataset="sun397", train_classes="all",
        eval_datasets=["sun397"],
    ),
    ("few_shot", "ucf101"): dict(
        text_lr=1e-5, vision_lr=1e-5, epochs=40, warmup_epochs=0, warmup_lr=None, shots=[1, 2, 4, 8, 16],
        template="a photo of a {}, a type of sport.", train_dataset="ucf101", train_classes="all",
        eval_datasets=["ucf101"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("protocol, dataset", sorted(TABLE))
def test_recipe_matches_the_reference_field_by_field(protocol, dataset):
    got = reference_recipe(protocol, dataset).to_dict()
    expected = {**COMMON, **TABLE[protocol, dataset], "protocol": protocol, "dataset": dataset}
    for key, value in expected.items():
        assert got[key] == value, f"{protocol}/{dataset}: {key} is {got[key]!r}, the reference has {value!r}"
    assert got["train_template"] == TEMPLATES[expected["train_dataset"]]
    json.dumps(got)  # JSON-ready


def test_every_protocol_covers_imagenet_and_two_other_datasets():
    for protocol in PROTOCOLS:
        datasets = {d for p, d in TABLE if p == protocol}
        assert "imagenet" in datasets and len(datasets) >= 3


def test_reference_templates_cover_all_15_datasets_and_differ_from_coop_where_the_paper_does():
    assert set(REFERENCE_DATASETS) <= set(TEMPLATES)
    assert TEMPLATES["dtd"] == "itap of a {}."
    assert TEMPLATES["oxford_flowers"] == "a close-up photo of a {}."
    assert TEMPLATES["stanford_cars"] == "a photo of the {}, a type of car."
    assert TEMPLATES["oxford_pets"] == "a bad photo of a {}, a type of pet."
    assert TEMPLATES["imagenet_r"] == "a rendition of a {}."
    assert TEMPLATES["imagenetv2"] == "a photo of a {}."
    assert all(template.count("{}") == 1 for template in TEMPLATES.values())


def test_schedule_warmup_then_cosine_restarting_at_the_peak():
    recipe = reference_recipe("base_to_new", "caltech101")
    assert recipe.lr_at_epoch(0, "text") == recipe.lr_at_epoch(0, "vision") == 1e-6  # both towers warm up alike
    assert recipe.lr_at_epoch(1, "text") == 2e-5 and recipe.lr_at_epoch(1, "vision") == 5e-6
    assert math.isclose(recipe.lr_at_epoch(2, "text"), 2e-5 * 0.5 * (1 + math.cos(math.pi / 20)))
    assert math.isclose(recipe.lr_at_epoch(19, "text"), 2e-5 * 0.5 * (1 + math.cos(math.pi * 18 / 20)))
    few = reference_recipe("few_shot", "imagenet")  # no warm-up, 10 epochs
    assert few.lr_at_epoch(0, "vision") == 1e-5
    assert math.isclose(few.lr_at_epoch(9, "vision"), 1e-5 * 0.5 * (1 + math.cos(math.pi * 9 / 10)))
    xd = reference_recipe("cross_dataset", "imagenet")
    assert xd.lr_at_epoch(0, "text") == 1e-8 and xd.lr_at_epoch(4, "vision") > 0
    with pytest.raises(ValueError, match="outside"):
        xd.lr_at_epoch(5, "text")
    with pytest.raises(ValueError, match="tower"):
        xd.lr_at_epoch(0, "image")


def test_sampler_rule():
    recipe = reference_recipe("few_shot", "dtd")
    samplers = [recipe.sampler_for(k) for k in recipe.shots]  # shots 1, 2, 4, 8, 16
    assert samplers == ["random", "random", "batch_random", "batch_random", "batch_random"]


def test_other_dataset_names_get_the_protocol_defaults():
    recipe = reference_recipe("base_to_new", "fashion-mnist")
    assert recipe.epochs == 20 and recipe.template == "a photo of a {}." and recipe.train_dataset == "fashion-mnist"
    xd = reference_recipe("cross_dataset", "my_photos")
    assert xd.train_dataset == "imagenet" and xd.epochs == 5 and xd.train_template == "a photo of a {}."


def test_unknown_protocol_or_dataset_errors_are_one_line_and_list_the_choices():
    with pytest.raises(ValueError) as err:
        reference_recipe("b2n", "imagenet")
    message = str(err.value)
    assert "\n" not in message and all(p in message for p in PROTOCOLS)
    with pytest.raises(ValueError) as err:
        reference_recipe("few_shot", "imagenet_1k", strict=True)
    message = str(err.value)
    assert "\n" not in message and all(d in message for d in REFERENCE_DATASETS)
    with pytest.raises(ValueError) as err:
        reference_recipe("base_to_new", "imagenet_a")
    assert "\n" not in str(err.value) and "test-only" in str(err.value) and "caltech101" in str(err.value)
    with pytest.raises(ValueError, match="non-empty"):
        reference_recipe("few_shot", "")


def test_recipe_is_frozen_and_overrides_are_explicit():
    recipe = reference_recipe("few_shot", "eurosat")
    with pytest.raises(AttributeError):
        recipe.epochs = 3
    changed = with_overrides(recipe, epochs=3, precision="fp32")
    assert (changed.epochs, changed.precision, recipe.epochs) == (3, "fp32", 40)
    with pytest.raises(ValueError, match="no field"):
        with_overrides(recipe, epoch=3)
    assert isinstance(changed, Recipe)


# The keys issue 11 asks `peft-skip recipe` to print, at least.
PRINTED = ("text_lr", "vision_lr", "epochs", "warmup_epochs", "warmup_lr", "schedule", "batch_size", "momentum")
PRINTED += ("weight_decay", "template", "precision")


@pytest.mark.parametrize("protocol, dataset", sorted(TABLE))
def test_recipe_command_prints_the_reference_field_by_field(protocol, dataset, capsys):
    assert main(["recipe", "--protocol", protocol, "--dataset", dataset]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = {**COMMON, **TABLE[protocol, dataset], "protocol": protocol, "dataset": dataset}
    assert set(PRINTED) <= set(printed)
    for key, value in expected.items():
        assert printed[key] == value, f"{protocol}/{dataset}: {key} is {printed[key]!r}, the reference has {value!r}"


# Each `SkipTrainingArguments` field a recipe sets, and the name the reference table gives it.
REFERENCE_NAMES = {
    "learning_rate": "text_lr",
    "vision_learning_rate": "vision_lr",
    "num_train_epochs": "epochs",
    "warmup_epochs": "warmup_epochs",
    "warmup_lr": "warmup_lr",
    "lr_scheduler_type": "schedule",
    "batch_size": "batch_size",
    "optim": "optimizer",
    "momentum": "momentum",
    "weight_decay": "weight_decay",
    "dataloader_drop_last": "drop_last",
    "precision": "precision",
}


@pytest.mark.parametrize("protocol, dataset", sorted(TABLE))
def test_training_arguments_resolve_to_the_reference(protocol, dataset, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the paper's float16 is the default on CUDA only
    args = SkipTrainingArguments(output_dir="unused", protocol=protocol, recipe_dataset=dataset)
    expected = {**COMMON, **TABLE[protocol, dataset]}
    resolved = {name: getattr(args, name) for name in REFERENCE_NAMES}
    assert resolved == {name: expected[key] for name, key in REFERENCE_NAMES.items()}


def test_recipe_as_train_config_round_trips_through_train_config(tmp_path, capsys):
    assert main(["recipe", "--preset", "cross_dataset", "--dataset", "imagenet", "--as-train-config"]) == 0
    config = tmp_path / "recipe.json"
    config.write_text(capsys.readouterr().out)
    command, (_, data, method, training) = _parse(
        ["train", "--config", str(config), "--model", "m", "--data", "digits", "--out", str(tmp_path)]
    )
    assert command == "train" and data.template == ["a photo of a {}."]
    assert (method.skip_layers, method.class_ratio, method.max_classes, method.class_decay) == (6, 0.5, 50, 0.3)
    # The file holds the paper's float16, whatever this machine's default.
    reference = SkipTrainingArguments(
        output_dir=str(tmp_path), protocol="cross_dataset", recipe_dataset="imagenet", precision="fp16_reference"
    )
    assert training == reference
    assert (training.vision_learning_rate, training.num_train_epochs, training.warmup_lr) == (1e-6, 5, 1e-8)


def test_no_dataset_gives_the_protocols_defaults(capsys):
    assert main(["recipe", "--protocol", "base_to_new"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["dataset"] is None and printed["epochs"] == 20 and printed["template"] == "a photo of a {}."
    args = SkipTrainingArguments(output_dir="unused", protocol="base_to_new", learning_rate=0.1)
    assert (args.num_train_epochs, args.vision_learning_rate) == (20, pytest.approx(0.025))  # the recipe's ratio
    assert SkipTrainingArguments(output_dir="unused", protocol="cross_dataset").num_train_epochs == 5  # ImageNet's
    with pytest.raises(SystemExit):
        main(["recipe", "--protocol", "base_to_new", "--dataset", "imagenet_1k"])
    assert main(["recipe", "--protocol", "base_to_new", "--dataset", "imagenet_a"]) == 2
    assert "test-only" in capsys.readouterr().err


def test_the_runtime_reads_the_recipe_fields_it_used_to_hard_code(monkeypatch, tmp_path):
    """Change a field of the recipe: the trainer's sampler rule, optimiser, augmentation and the benchmark's seeds,
    shots and datasets follow."""
    changed = dict(sampler_min_shots=2, nesterov=True, crop_scale=(0.5, 1.0), seeds=(4, 5), shots=(2, 8))

    def recipe(protocol, dataset=None, strict=False):
        return with_overrides(reference_recipe(protocol, dataset, strict), **changed)

    monkeypatch.setattr(peft_skip.training.training_args, "reference_recipe", recipe)
    monkeypatch.setattr(peft_skip.protocols.benchmark, "reference_recipe", recipe)
    args = SkipTrainingArguments(output_dir=str(tmp_path), batch_size=2)
    two_shots = torch.tensor([0, 0, 1, 1])
    assert uses_class_batches(args, two_shots)  # the reference's 4 would give random batches
    assert args.crop_min_area == 0.5
    assert all(group["nesterov"] for group in make_optimizer(tiny_clip(), args).param_groups)
    benchmark = peft_skip.protocols.benchmark.BenchmarkArguments("few_shot", "m", "root", "out")
    assert benchmark.seed_list() == [4, 5] and benchmark.shots == 8
    changed = dict(train_dataset="sun397", eval_datasets=("sun397", "dtd"))
    cross = peft_skip.protocols.benchmark.BenchmarkArguments("cross_dataset", "m", "root", "out", seeds="1")
    assert [(c.dataset, c.train_dataset) for c in peft_skip.protocols.benchmark.plan_cells(cross)] == [
        ("sun397", "sun397"),
        ("dtd", "sun397"),
    ]
    changed = dict(optimizer="adamw_torch")  # read by the patched recipe when called
    assert SkipTrainingArguments(output_dir=str(tmp_path)).optim == "adamw_torch"
