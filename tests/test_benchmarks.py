"""The benchmark harness: a tiny smoke configuration of compare.py (not for timing) and the FLOP cost model."""

from __future__ import annotations

import json
import os
import sys

import pytest
from transformers import CLIPConfig

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import cache_build  # noqa: E402
import compare  # noqa: E402
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


def test_compare_smoke(tmp_path):
    """Two methods on a 4-layer CLIP, 12 classes (2 of them synthesised), one step per epoch, also in bf16 and
    with the frozen weights kept."""
    out = tmp_path / "out"
    argv = "--arch tiny --classes 12 --shots 4 --epochs 2 --steps-per-epoch 1 --methods ft,skip --skip-layers 2"
    extra = ["--mixed-precision", "bf16", "--ablate-offload"]
    compare.main([*argv.split(), "--test-images", "6", "--out", str(out), *extra])
    report = json.loads((out / "results.json").read_text())
    assert report["facts"]["synthetic_classes"] is True
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


def test_seeds_table_gives_mean_and_std_over_runs(tmp_path):
    import seeds_table

    runs = []
    for seed, (accuracy, seconds) in enumerate([(0.70, 2.0), (0.80, 4.0)]):
        run = tmp_path / f"seed-{seed}"
        run.mkdir()
        result = {"method": "skip", "accuracy": accuracy, "epoch_seconds": seconds, "peak_memory_mb": 100.0}
        (run / "results.json").write_text(json.dumps({"command": "compare.py", "results": [result]}))
        runs.append(str(run))
    seeds_table.main([*runs, "--zero-shot", "0.5", "--out", str(tmp_path / "out")])
    table = (tmp_path / "out" / "seeds.md").read_text()
    assert "| zero-shot | 50.0 | - | - |" in table
    assert "| skip | 75.0 ± 7.1 | 3.0 ± 1.4 | 100.0 ± 0.0 |" in table
    assert (tmp_path / "out" / "seeds.png").stat().st_size > 0
