"""Accuracy against size of Skip Tuning adapters exported as LoRA adapters (`peft-skip export --rank R`), on the world
tasks with the world CLIP pretrained here.

    python benchmarks/lowrank.py --runs runs/world --out docs/benchmarks/lowrank

Every task is trained as the README's main job does (`peft-skip train --config examples/world.yaml --data
world:<task>`, through `world_few_shot.run_task`; a task whose run, or whose scores with the same ranks and test
images, are already in `--runs` is reused). Its adapter is
then scored as it is (the full delta) and as a LoRA adapter of each rank, loaded by plain peft, on every test image.
Writes `results.json`, `results.md` and `figure.png` (accuracy against adapter size) to `--out`.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field

import yaml
from transformers import AutoModel, AutoProcessor, HfArgumentParser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))  # run from a checkout

from world_few_shot import WorldSuiteArguments, run_task  # noqa: E402

from peft_skip.commands.arguments import DataArguments  # noqa: E402
from peft_skip.commands.experiment import load_saved_adapter, test_set  # noqa: E402
from peft_skip.data import ImageTransform  # noqa: E402
from peft_skip.data.world_tasks import WORLD_TASK_NAMES  # noqa: E402
from peft_skip.training.evaluation import evaluate_protocol  # noqa: E402
from peft_skip.tuner.export import export_lora  # noqa: E402

WEIGHTS = "adapter_model.safetensors"


@dataclass
class LowRankArguments:
    tasks: list[str] = field(
        default_factory=lambda: list(WORLD_TASK_NAMES), metadata={"help": "World tasks to run, each in turn."}
    )
    ranks: list[int] = field(default_factory=lambda: [128, 64, 16, 4], metadata={"help": "LoRA ranks exported."})
    config: str = field(
        default=os.path.join(ROOT, "examples", "world.yaml"),
        metadata={"help": "The `peft-skip train --config` of every run."},
    )
    test_limit: int | None = field(default=None, metadata={"help": "Score this many test images (default: all)."})
    runs: str = field(default="runs/world", metadata={"help": "One training run per task (reused when there)."})
    out: str = field(default="runs/lowrank", metadata={"help": "The tables and the figure."})


def score_task(task: str, args: LowRankArguments) -> dict:
    """The test accuracy of a task's Skip Tuning adapter and of its LoRA exports, with their sizes in bytes."""
    adapter, scores = os.path.join(args.runs, task), os.path.join(args.runs, f"{task}-lowrank.json")
    settings = {"ranks": args.ranks, "test_limit": args.test_limit}
    if os.path.exists(scores):
        with open(scores, encoding="utf-8") as f:
            saved = json.load(f)
        if saved["settings"] == settings and os.path.getmtime(scores) > os.path.getmtime(adapter):
            return saved["rows"]
    if not os.path.exists(os.path.join(adapter, WEIGHTS)):
        run_task(task, WorldSuiteArguments(config=args.config, out=args.runs))
    with open(args.config, encoding="utf-8") as f:
        model_path = yaml.safe_load(f)["model"]
    model_path = os.path.join(os.path.dirname(os.path.abspath(args.config)), model_path)  # relative to the config
    processor = AutoProcessor.from_pretrained(model_path)
    data = DataArguments(data=f"world:{task}", test_limit=args.test_limit)
    test, transform = test_set(data), ImageTransform.from_processor(processor, train=False)

    def accuracy(model) -> float:
        result = evaluate_protocol(model.eval(), processor.tokenizer, test, transform, data.resolved_templates())
        return result["accuracy"]

    skip = load_saved_adapter(AutoModel.from_pretrained(model_path), adapter)
    rows = {"full": {"accuracy": accuracy(skip), "bytes": os.path.getsize(os.path.join(adapter, WEIGHTS))}}
    from peft import PeftModel

    for rank in args.ranks:
        lora_dir = os.path.join(args.runs, f"{task}-lora-{rank}")
        report = export_lora(skip, lora_dir, rank)
        lora = PeftModel.from_pretrained(AutoModel.from_pretrained(model_path), lora_dir)
        rows[str(rank)] = {"accuracy": accuracy(lora), "bytes": report["bytes"], "energy": report["energy"]}
        print(f"{task}: rank {rank}: {rows[str(rank)]['accuracy']:.2%} (full delta: {rows['full']['accuracy']:.2%})")
    with open(scores, "w", encoding="utf-8") as f:
        json.dump({"settings": settings, "rows": rows}, f)
    return rows


def table(results: dict[str, dict]) -> list[str]:
    """Accuracy per task and rank, the change from the full delta, and each adapter's size."""
    first = next(iter(results.values()))
    variants = list(first)
    names = ["full delta (Skip adapter)" if v == "full" else f"LoRA r={v}" for v in variants]
    lines = ["| task | " + " | ".join(names) + " |", "|---|" + "---|" * len(variants)]
    sizes = [f"{first[v]['bytes'] / 2**20:.2f} MiB" for v in variants]
    lines.append("| adapter size (float32) | " + " | ".join(sizes) + " |")
    for task, rows in results.items():
        full = rows["full"]["accuracy"]
        cells = [f"{100 * full:.2f}%"]
        for v in variants[1:]:
            change = 100 * (rows[v]["accuracy"] - full)
            cell = f"{100 * rows[v]['accuracy']:.2f}% ({change:+.2f})"
            cells.append(f"**{cell}**" if abs(change) > 0.5 else cell)
        lines.append(f"| `{task}` | " + " | ".join(cells) + " |")
    energy = [f"{100 * sum(r[v]['energy'] for r in results.values()) / len(results):.1f}%" for v in variants[1:]]
    lines.append("| squared norm of the Linear deltas kept (mean) | 100% | " + " | ".join(energy) + " |")
    return lines


def figure(results: dict[str, dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for task, rows in results.items():
        variants = sorted(rows, key=lambda v: rows[v]["bytes"])
        sizes, accuracies = [rows[v]["bytes"] / 2**20 for v in variants], [100 * rows[v]["accuracy"] for v in variants]
        line = ax.plot(sizes, accuracies, marker=".")
        ax.scatter(rows["full"]["bytes"] / 2**20, 100 * rows["full"]["accuracy"], color=line[0].get_color())
        ax.annotate(task, (rows["full"]["bytes"] / 2**20, 100 * rows["full"]["accuracy"]), fontsize=8)
    ax.set_xscale("log")
    ticks = sorted({rows[v]["bytes"] / 2**20 for rows in results.values() for v in rows})
    ax.set_xticks(ticks, [f"{t:.2f}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("adapter size, MiB, float32 (large dot: Skip Tuning; small: LoRA r = 4, 16, 64, 128)")
    ax.set_ylabel("test accuracy, %")
    ax.set_title("World CLIP: Skip Tuning deltas as LoRA adapters of decreasing rank")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    (args,) = HfArgumentParser(LowRankArguments).parse_args_into_dataclasses(argv)
    results = {task: score_task(task, args) for task in args.tasks}
    lines = table(results)
    print("\n".join(lines))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"arguments": asdict(args), "results": results}, f, indent=2)
    command = "python benchmarks/lowrank.py " + " ".join(sys.argv[1:] if argv is None else argv)
    with open(os.path.join(args.out, "results.md"), "w", encoding="utf-8") as f:
        f.write("\n".join([f"`{command}`", "", *lines]) + "\n")
    figure(results, os.path.join(args.out, "figure.png"))


if __name__ == "__main__":
    main()
