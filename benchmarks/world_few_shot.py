"""Zero-shot against few-shot Skip Tuning of the world CLIP on every world task, through `peft-skip train` itself.

    python benchmarks/world_few_shot.py --out runs/world-all
    python benchmarks/world_few_shot.py --base_to_new --out runs/world-b2n

Every task runs `peft-skip train --config examples/world.yaml --data world:<task>` (the README's main job on another
task), so the numbers are those a user gets; the CLIP is the one pretrained here (`peft_skip.offline.pretrain`), so
unlike the random-weight models elsewhere its zero-shot accuracy is real. Writes `results.json` and `results.md`.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field

import yaml
from transformers import HfArgumentParser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))  # run from a checkout

from peft_skip.commands.cli import main as peft_skip  # noqa: E402
from peft_skip.data import split_base_new  # noqa: E402
from peft_skip.data.world_tasks import WORLD_TASK_NAMES, load_world_task  # noqa: E402


@dataclass
class WorldSuiteArguments:
    tasks: list[str] = field(
        default_factory=lambda: list(WORLD_TASK_NAMES), metadata={"help": "World tasks to run, each in turn."}
    )
    config: str = field(
        default=os.path.join(ROOT, "examples", "world.yaml"),
        metadata={"help": "The `peft-skip train --config` of every run."},
    )
    base_to_new: bool = field(
        default=False,
        metadata={"help": "Train on the base half of the classes, score base and new (one lr, no warm-up)."},
    )
    seed: int = field(default=0, metadata={"help": "Seeds the shots and the training."})
    out: str = field(default="runs/world", metadata={"help": "One run directory per task, and the tables."})


def run_task(task: str, args: WorldSuiteArguments) -> dict:
    """`peft-skip train` on `world:<task>`; returns its zero-shot and tuned accuracies, chance and training time."""
    argv = ["train", "--config", args.config, "--data", f"world:{task}", "--seed", str(args.seed), "--no-progress"]
    if args.base_to_new:
        with open(args.config, encoding="utf-8") as f:
            learning_rate = yaml.safe_load(f)["learning_rate"]
        # The reference recipe's base-to-new ratios (a 4x lower image lr, a warm-up epoch) are for ViT-B/16 at 1e-5.
        argv += ["--protocol", "base_to_new", "--vision_learning_rate", str(learning_rate), "--warmup_epochs", "0"]
    output_dir = os.path.join(args.out, task)
    if peft_skip([*argv, "--out", output_dir]) != 0:
        raise RuntimeError(f"peft-skip {' '.join(argv)} failed: see its output above.")
    with open(os.path.join(output_dir, "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    return {
        "zero_shot": _scores(metrics["zero_shot"]),
        "tuned": _scores(metrics["tuned"]),
        "chance": _chance(task, args.base_to_new),
        "train_seconds": metrics["train_seconds"],
        "cache_seconds": metrics["cache_seconds"],
    }


def _chance(task: str, base_to_new: bool) -> dict[str, float]:
    test = load_world_task(task, "test")  # cached: the run has just loaded it
    groups = {"all": test.class_names}
    if base_to_new:
        groups = dict(zip(("base", "new"), split_base_new(test), strict=True))
    return {name: 1 / len(members) for name, members in groups.items()}


def _parts(result: dict) -> dict[str, dict]:
    """The class groups of an `evaluate_protocol` result: `all`, or `base` and `new`."""
    return {"base": result["base"], "new": result["new"]} if "harmonic_mean" in result else {"all": result}


def _scores(result: dict) -> dict[str, float]:
    scores = {name: part["accuracy"] for name, part in _parts(result).items()}
    return scores | ({"hm": result["harmonic_mean"]} if "harmonic_mean" in result else {})


def _change(before: float, after: float) -> str:
    tuned = f"{100 * after:.1f}%"
    return f"{100 * before:.1f}% -> " + (f"**{tuned}**" if after > before else tuned)


def table(results: dict[str, dict]) -> list[str]:
    keys = list(next(iter(results.values()))["zero_shot"])
    lines = ["| task | " + " | ".join(f"{k}: zero-shot -> Skip Tuning" for k in keys) + " | chance | training |"]
    lines.append("|---|" + "---|" * (len(keys) + 2))
    for task, r in results.items():
        cells = [_change(r["zero_shot"][k], r["tuned"][k]) for k in keys]
        chance = " / ".join(f"{100 * c:.1f}%" for c in r["chance"].values())
        lines.append(f"| `{task}` | " + " | ".join(cells) + f" | {chance} | {r['train_seconds']:.0f} s |")
    return lines


def main(argv: list[str] | None = None) -> None:
    (args,) = HfArgumentParser(WorldSuiteArguments).parse_args_into_dataclasses(argv)
    unknown = [t for t in args.tasks if t not in WORLD_TASK_NAMES]
    if unknown:
        raise SystemExit(f"unknown world tasks {unknown}: choose from {', '.join(WORLD_TASK_NAMES)}.")
    results = {task: run_task(task, args) for task in args.tasks}
    lines = table(results)
    print("\n".join(lines))
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"arguments": asdict(args), "results": results}, f, indent=2)
    command = "python benchmarks/world_few_shot.py " + " ".join(sys.argv[1:] if argv is None else argv)
    with open(os.path.join(args.out, "results.md"), "w", encoding="utf-8") as f:
        f.write("\n".join([f"`{command}`", "", *lines]) + "\n")


if __name__ == "__main__":
    main()
