"""The benchmark harness: a tiny smoke configuration of compare.py (not for timing) and the FLOP cost model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
from transformers import CLIPConfig

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import cache_build  # noqa: E402
import compare  # noqa: E402
import method_run  # noqa: E402
import seeds_table  # noqa: E402
import sweep  # noqa: E402
import torch  # noqa: E402
from cost import layer_flops, step_flops, tower_shapes  # noqa: E402
from drift import loss_drift, update_drift  # noqa: E402


def vit_b_16() -> CLIPConfig:
    return CLIPConfig(
        text_config=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, patch_size=16),
    )


def test_cost_model_matches_published_vit_b_16_flops():
    vision, _ = tower_shapes(vit_b_16(), text_tokens=77)
    # ViT-B/16 at 224 px: 17.6 GMACs, i.e. about 35.2 GFLOPs per image.
    assert vision.tokens == 197
    assert vision.embed_flops + vision.forward(0, 12) == pytest.approx(35.2e9, rel=0.02)
    assert layer_flops(10, 4, 8) == 8 * 10 * 16 + 4 * 10 * 4 * 8 + 4 * 100 * 4


def test_cost_model_orders_methods():
    vision, text = tower_shapes(vit_b_16(), text_tokens=12)
    cost = {
        m: step_flops(m, vision, text, batch_size=4, num_classes=100, kept_classes=53, skip_layers=6)
        for m in ("ft", "lora", "skip", "deep", "deep+lskip", "deep+cskip")
    }
    assert cost["skip"] < cost["deep+lskip"] < cost["deep"] < cost["ft"]
    assert cost["skip"] < cost["deep+cskip"] < cost["deep"]
    assert cost["lora"] == pytest.approx(2 / 3 * cost["ft"])
    # ω = 0 without CSkip is full fine-tuning of the layers (the frozen patch embedding aside).
    no_skip = step_flops("deep+lskip", vision, text, 4, 100, 100, skip_layers=0)
    assert no_skip == pytest.approx(cost["ft"] - 3 * 4 * vision.embed_flops)
    with pytest.raises(ValueError, match="No cost model"):
        step_flops("adapter", vision, text, 4, 100, 53, 6)


def test_parse_args_refuses_unknown_methods(capsys):
    with pytest.raises(SystemExit):
        compare.parse_args(["--methods", "ft,prefix"])
    assert "unknown methods ['prefix']" in capsys.readouterr().err


def test_drift_measures():
    reference = {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([4.0])}
    assert update_drift(reference, reference) == 0
    assert update_drift(reference, {"a": torch.tensor([3.0, 0.5]), "b": torch.tensor([4.0])}) == pytest.approx(0.1)
    assert loss_drift([2.0, 4.0], [2.0, 3.0]) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="different weights"):
        update_drift(reference, {"a": torch.zeros(2)})


class _PoolHere:
    """`multiprocessing.get_context("spawn").Pool(1)` that applies in this process."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False

    def apply(self, function, args):
        return function(*args)


@pytest.fixture
def methods_in_process(monkeypatch):
    """compare.py's preparation and per-method runs in this process: their own processes only keep one run's peak
    memory out of another's, which these tests do not compare, and each costs seconds of imports."""
    real_run = subprocess.run

    def run(argv, **kwargs):
        if os.path.basename(argv[1]) != "method_run.py":
            return real_run(argv, **kwargs)
        threads = torch.get_num_threads()
        monkeypatch.setattr(sys, "argv", argv[1:])
        try:
            method_run.main()
        finally:
            torch.set_num_threads(threads)
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(compare.subprocess, "run", run)
    here = SimpleNamespace(Pool=lambda processes: _PoolHere())
    monkeypatch.setattr(compare.multiprocessing, "get_context", lambda method: here)


def test_compare_smoke(tmp_path, methods_in_process):
    """Two methods on a 4-layer CLIP, 12 classes (2 of them synthesised), one step per epoch, also in bf16 and
    with the frozen weights kept."""
    out = tmp_path / "out"
    argv = "--arch tiny --classes 12 --shots 4 --epochs 2 --steps-per-epoch 1 --methods ft,skip --skip-layers 2"
    extra = ["--mixed-precision", "bf16", "--ablate-offload"]
    compare.main([*argv.split(), "--test-images", "6", "--out", str(out), *extra])
    report = json.loads((out / "results.json").read_text())
    assert report["facts"]["synthetic_classes"] is True
    assert 0 <= report["facts"]["zero_shot"]["all"] <= 1
    results = {r["label"]: r for r in report["results"]}
    assert set(results) == {"ft", "skip", "skip (frozen kept)", "ft bf16", "skip bf16"}
    for label in ("ft bf16", "skip bf16"):
        # Half precision changed the losses and updates a little, not wholly; the matmul rate is bf16's.
        assert 0 < results[label]["drift"]["loss"] < 0.1 and 0 < results[label]["drift"]["updates"] < 0.5
    for r in results.values():
        assert r["matmul_gflops_per_second"] > 0 and r["achieved_vs_matmul_peak"] > 0
    ft, skip = results["ft"], results["skip"]
    for r in (ft, skip):
        assert r["losses_finite"]
        assert r["epoch_seconds"] > 0 and r["peak_memory_mb"] > 0 and r["images_per_second"] > 0
        assert 0 <= r["accuracy"] <= 1
        assert r["full_steps_per_epoch"] == 12  # 12 classes x 4 shots in batches of 4 from one class each
        assert r["timed_steps_per_epoch"] == 1
    assert ft["cache_seconds"] == 0 and skip["cache_seconds"] > 0
    assert ft["kept_classes"] == 12 and skip["kept_classes"] < 12  # CSkip: 6 always + a random tail
    # Skip Tuning trains layers 2 and 3 of 4 plus the heads, and saves only their deltas.
    assert skip["trainable_params"] < 0.6 * ft["trainable_params"]
    assert skip["checkpoint_bytes"] < 0.6 * ft["checkpoint_bytes"]
    assert skip["predicted_time_vs_ft"] < 0.6 and ft["predicted_time_vs_ft"] == 1
    table = (out / "results.md").read_text()
    assert "| skip |" in table and "synthesised names" in table
    assert "| skip (frozen kept) |" in table and "achieved / matmul" in table and "update drift" in table
    assert (out / "figure.png").stat().st_size > 1000


def test_cache_build_smoke(tmp_path):
    """The build with and without workers (two batches of images: they must give the same states) next to the pure
    forward."""
    argv = "--arch tiny --images 40 --image-size 40x30 --skip-layers 2 --workers 0,2 --repeats 1"
    cache_build.main([*argv.split(), "--out", str(tmp_path)])
    rows = {r["run"]: r for r in json.loads((tmp_path / "results.json").read_text())["results"]}
    assert set(rows) == {"pure forward", "build, 0 workers", "build, 2 workers"}
    assert rows["pure forward"]["vs_pure_forward"] == 1 and all(r["images_per_second"] > 0 for r in rows.values())
    assert "bit-identical" in (tmp_path / "results.md").read_text()


def test_learning_rates_take_a_default_and_per_method_values(capsys):
    assert compare.learning_rates("1e-3") == {"default": 1e-3}
    assert compare.learning_rates("1e-3,ft=1e-4, coop=2e-3") == {"default": 1e-3, "ft": 1e-4, "coop": 2e-3}
    args = compare.parse_args(["--lr", "1e-3,ft=1e-5"])
    assert args.lr == {"default": 1e-3, "ft": 1e-5}
    with pytest.raises(SystemExit):
        compare.parse_args(["--lr", "ft=1e-5"])
    assert "no default learning rate" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare.parse_args(["--lr", "1e-3,fft=1e-5"])
    assert "unknown methods ['fft']" in capsys.readouterr().err


def test_compare_base_to_new_trains_on_base_and_scores_both(tmp_path, methods_in_process):
    """CoOp's learned context and Skip Tuning's deltas are scored on classes they never trained on; every method
    has its own learning rate."""
    out = tmp_path / "out"
    argv = "--arch tiny --classes 10 --shots 4 --epochs 1 --steps-per-epoch 1 --methods coop,skip --skip-layers 2"
    compare.main([*argv.split(), "--base-to-new", "--lr", "1e-3,coop=2e-3", "--test-images", "8", "--out", str(out)])
    report = json.loads((out / "results.json").read_text())
    facts = report["facts"]
    assert facts["protocol"] == "base-to-new" and facts["classes"] == 5 and facts["train_images"] == 20
    assert facts["eval_images"] == {"base": 8, "new": 8}
    for scores in [facts["zero_shot"], *(r["accuracies"] for r in report["results"])]:
        assert set(scores) == {"base", "new", "hm"}
        if scores["base"] + scores["new"] > 0:
            assert scores["hm"] == pytest.approx(2 * scores["base"] * scores["new"] / (scores["base"] + scores["new"]))
    results = {r["method"]: r for r in report["results"]}
    assert results["coop"]["lr"] == 2e-3 and results["skip"]["lr"] == 1e-3
    assert all(r["accuracy"] == r["accuracies"]["hm"] for r in results.values())
    assert "| base | new | HM |" in (out / "results.md").read_text()


def test_held_out_evaluation_never_scores_a_training_image(tmp_path):
    from transformers import AutoProcessor
    from workload import build_workload, training_images

    from peft_skip.offline import make_offline_model

    _, shots, _ = training_images("fashion-mnist", 3, 4, seed=0)
    processor = AutoProcessor.from_pretrained(make_offline_model(str(tmp_path), "tiny", shots.class_names, seed=0))
    kwargs = dict(processor=processor, epochs=1, batch_size=4, eval_images=30)
    train, facts = build_workload("fashion-mnist", 3, 4, 0, eval_on="held-out", **kwargs)
    test, _ = build_workload("fashion-mnist", 3, 4, 0, **kwargs)
    held_out = train["eval_sets"]["all"]["pixels"]
    assert facts["eval_on"] == "held-out" and len(held_out) == 30
    assert not any(torch.equal(image, shot) for image in held_out for shot in train["train_pixels"])
    assert not torch.equal(held_out, test["eval_sets"]["all"]["pixels"])
    with pytest.raises(ValueError, match="needs real classes"):
        build_workload("fashion-mnist", 12, 4, 0, eval_on="held-out", **kwargs)
    with pytest.raises(ValueError, match="draws every training image of fashion-mnist: lower it"):
        build_workload("fashion-mnist", 3, 6000, 0, eval_on="held-out", **kwargs)  # 6,000 per class


def _write_run(path, seed: int, accuracy: float, seconds: float, zero_shot: float) -> str:
    result = {
        "method": "skip",
        "accuracies": {"all": accuracy},
        "lr": 1e-3,
        "epoch_seconds": seconds,
        "peak_memory_mb": 100.0,
    }
    facts = {"zero_shot": {"all": zero_shot}, "data": "world:combos", "protocol": "few-shot"}
    run = path / f"seed-{seed}"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({"command": "compare.py", "facts": facts, "results": [result]}))
    return str(run)


def test_seeds_table_gives_mean_and_std_over_runs(tmp_path):
    runs = [_write_run(tmp_path, 0, 0.70, 2.0, 0.5), _write_run(tmp_path, 1, 0.80, 4.0, 0.6)]
    seeds_table.main([*runs, "--out", str(tmp_path / "out")])
    table = (tmp_path / "out" / "seeds.md").read_text()
    assert "| zero-shot | 55.0 ± 7.1 | - | - | - |" in table
    assert "| skip | 75.0 ± 7.1 | 0.001 | 3.0 ± 1.4 | 100.0 ± 0.0 |" in table
    assert (tmp_path / "out" / "seeds.png").stat().st_size > 0


def test_learning_rate_sweep_picks_the_most_accurate_and_the_smaller_on_a_tie():
    def point(ft: float, skip: float) -> list[dict]:
        return [{"method": "ft", "accuracy": ft}, {"method": "skip", "accuracy": skip}]

    points = {1e-4: point(0.5, 0.6), 1e-3: point(0.7, 0.6), 1e-2: point(0.2, 0.5)}
    assert sweep.best_learning_rates(points) == {"ft": 1e-3, "skip": 1e-4}


def _shrunk_world_config(path, test_limit: int) -> dict:
    """The README's main job's config at `path`, shrunk to 2 shots and 1 epoch, its model path made absolute."""
    import yaml

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = yaml.safe_load(open(os.path.join(root, "examples", "world.yaml"), encoding="utf-8"))
    model = os.path.join(root, "examples", config["model"])  # relative to the config file
    config |= {"model": model, "shots": 2, "num_train_epochs": 1, "test_limit": test_limit}
    path.write_text(yaml.safe_dump(config))
    return config


def test_world_suite_runs_peft_skip_train_per_task(tmp_path):
    """Base-to-new on one world task through the README's main job's config, shrunk to 2 shots and 1 epoch."""
    import world_few_shot

    config = _shrunk_world_config(tmp_path / "run.yaml", test_limit=20)
    argv = ["--tasks", "lighting", "--base-to-new", "--config", str(tmp_path / "run.yaml"), "--out", str(tmp_path)]
    world_few_shot.main(argv)
    result = json.loads((tmp_path / "results.json").read_text())["results"]["lighting"]
    assert set(result["tuned"]) == {"base", "new", "hm"} and result["chance"] == {"base": 0.1, "new": 0.1}
    metrics = json.loads((tmp_path / "lighting" / "metrics.json").read_text())
    training = metrics["training_arguments"]
    assert training["protocol"] == "base_to_new" and training["warmup_epochs"] == 0
    assert training["vision_learning_rate"] == training["learning_rate"] == config["learning_rate"]
    assert "| `lighting` |" in (tmp_path / "results.md").read_text()


def test_lowrank_scores_the_full_delta_and_each_rank(tmp_path):
    """One world task, shrunk to 2 shots and 1 epoch: LoRA at the world CLIP's full rank (128) scores as the delta."""
    import lowrank

    _shrunk_world_config(tmp_path / "run.yaml", test_limit=40)
    argv = ["--tasks", "lighting", "--ranks", "128", "2", "--config", str(tmp_path / "run.yaml"), "--test_limit", "40"]
    lowrank.main([*argv, "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["results"]["lighting"]
    assert rows["128"]["accuracy"] == rows["full"]["accuracy"] and rows["128"]["energy"] == pytest.approx(1.0)
    # Full rank costs more than the delta itself: r (in + out) > in x out for square weights.
    assert rows["2"]["bytes"] < rows["full"]["bytes"] < rows["128"]["bytes"] and rows["2"]["energy"] < 1
    assert "| `lighting` |" in (tmp_path / "out" / "results.md").read_text()
    assert (tmp_path / "out" / "figure.png").stat().st_size > 0


def test_seeds_summary_gathers_every_group(tmp_path):
    for group, accuracy in (("combos-few-shot", 0.7), ("lighting-few-shot", 0.9)):
        (tmp_path / group).mkdir()
        for seed in range(2):
            _write_run(tmp_path / group, seed, accuracy + seed / 10, 2.0, 0.5)
    seeds_table.main(["--summary", str(tmp_path)])
    summary = (tmp_path / "summary.md").read_text()
    assert "| group | seeds | zero-shot | skip |" in summary
    assert "| lighting-few-shot | 2 | 50.0 ± 0.0 | 95.0 ± 7.1 |" in summary
    assert (tmp_path / "summary.png").stat().st_size > 0


def test_learning_rate_sweeps_merge_when_a_grid_was_widened(tmp_path):
    """A second sweep below the first grid for one method: the merged report picks from every point."""

    def result(method: str, accuracy: float) -> dict:
        return {
            "method": method,
            "accuracy": accuracy,
            "epoch_seconds": 1.0,
            "cache_seconds": 0.0,
            "peak_memory_mb": 1,
        }

    first = {"commands": ["first"], "points": {"0.001": [result("ft", 0.3), result("skip", 0.8)]}}
    second = {"commands": ["second"], "points": {"1e-05": [result("ft", 0.7)]}}
    paths = []
    for name, sweep_json in (("a", first), ("b", second)):
        paths.append(str(tmp_path / f"{name}.json"))
        (tmp_path / f"{name}.json").write_text(json.dumps(sweep_json))
    points, commands = sweep.merge(paths)
    assert commands == ["first", "second"] and sweep.best_learning_rates(points) == {"ft": 1e-5, "skip": 1e-3}
    sweep.report(points, "lr", str(tmp_path / "sweep-lr"), commands, "merged")
    assert "`--lr 0.001,ft=1e-05`" in (tmp_path / "sweep-lr.md").read_text()
    assert (tmp_path / "sweep-lr.png").stat().st_size > 0


def test_profile_step_smoke(monkeypatch, capsys):
    import profile_step

    argv = "--method skip --rows 3 -- --arch tiny --classes 4 --shots 4 --epochs 1 --steps-per-epoch 2 --skip-layers 2"
    argv += " --lr 1e-3,skip=1e-2 --test-images 0"
    monkeypatch.setattr(sys, "argv", ["profile_step.py", *argv.split()])
    profile_step.main()
    assert "Self CPU time total" in capsys.readouterr().out


def test_gpu_check_rehearsal_on_the_cpu(tmp_path, methods_in_process):
    """benchmarks/gpu/check.py --device cpu --tiny: every section of the GPU check runs and reports, so that the run
    on the GPU machine is not its first."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "gpu"))
    import check

    report = check.main(["--device", "cpu", "--tiny", "--out", str(tmp_path)])
    sections = report["sections"]
    assert not [name for name, s in sections.items() if "error" in s or "left_out" in s]
    precision = sections["precision"]
    assert set(precision) >= {"fp32", "fp16_reference", "bf16"}
    for name in ("fp16_reference", "bf16"):
        assert precision[name]["loss_drift"] > 0 and precision[name]["update_drift"] > 0
    rows = {r["label"]: r for r in sections["cost"]["rows"]}
    assert set(rows) == {"skip", "skip bf16"} and sections["cost"]["recipe_epochs"] == 20
    assert rows["skip"]["recipe_seconds"] > 20 * rows["skip"]["epoch_seconds"] > 0  # plus a cache build per epoch
    steps = sections["options"]["steps"]
    assert len(steps) == 6 and all("error" not in r and r["step_seconds"] > 0 for r in steps)
    assert len(sections["options"]["cache_build"]) == 4
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["sections"].keys() == sections.keys()
    text = (tmp_path / "results.md").read_text()
    assert "| Skip Tuning | no | 239 | 404 |" in text and "torch.compile" in text
    assert sorted(os.listdir(tmp_path / "cost")) == ["figure.png", "results.json", "results.md"]
