"""Sweeps of `compare.py` over the number of classes, ω, shots or the learning rate, with a plot per method.

    python benchmarks/sweep.py classes 10,100,1000 --methods ft,lora,coop,skip -- --arch vit-b-32 --steps-per-epoch 1
    python benchmarks/sweep.py lr 1e-4,1e-3,1e-2 --methods ft,skip -- --arch DIR --data world:combos --eval-on held-out

A learning-rate sweep plots accuracy and prints the best learning rate of every method as a `--lr` for
`compare.py`; run it with `--eval-on held-out` so that the choice never sees the test images.

Arguments after `--` go to every `compare.py` run. Writes `sweep-<name>.json`, `sweep-<name>.md` and
`sweep-<name>.png` to `--out`, and each point's own results under `--out/sweep-<name>/<value>/`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from compare import compare, parse_args  # noqa: E402

SWEEPS = {"classes": "--classes", "skip-layers": "--skip-layers", "shots": "--shots", "lr": "--lr"}
PANELS = (
    ("epoch_seconds", "epoch time (s)"),
    ("cache_seconds", "cache build (s)"),
    ("peak_memory_mb", "peak memory (MB)"),
)
LR_PANELS = (("accuracy", "accuracy"), ("epoch_seconds", "epoch time (s)"))


def best_learning_rates(points: dict[float, list[dict]]) -> dict[str, float]:
    """The learning rate of the most accurate run of every method (the smaller one on a tie)."""
    methods = [r["method"] for r in points[min(points)]]
    best = {}
    for method in methods:
        runs = [(next(r["accuracy"] for r in points[lr] if r["method"] == method), -lr) for lr in points]
        best[method] = -max(runs)[1]
    return best


def plot(points: dict[float, list[dict]], name: str, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = sorted(points)
    methods = [r["method"] for r in points[values[0]]]
    panels = LR_PANELS if name == "lr" else PANELS
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    for ax, (key, label) in zip(axes, panels, strict=True):
        for method in methods:
            ys = [next(r[key] for r in points[v] if r["method"] == method) for v in values]
            ax.plot(values, ys, marker="o", label=method, color="tab:red" if method == "skip" else None)
        if name == "classes":
            # Full fine-tuning grows linearly with the classes: on a log scale both methods stay readable.
            ax.set_xscale("log")
            ax.set_yscale("log")
        if name == "lr":
            ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_title(label)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    argv = sys.argv[1:]
    passthrough = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", choices=sorted(SWEEPS))
    parser.add_argument("values", help="Comma-separated values, e.g. 10,100,1000.")
    parser.add_argument("--methods", default="ft,skip")
    parser.add_argument("--out", default="docs")
    args = parser.parse_args(own)
    values = [(float if args.sweep == "lr" else int)(v) for v in args.values.split(",")]
    points = {}
    for value in values:
        run_dir = os.path.join(args.out, f"sweep-{args.sweep}", str(value))
        compare_argv = [*passthrough, "--methods", args.methods, SWEEPS[args.sweep], str(value), "--out", run_dir]
        points[value] = compare(parse_args(compare_argv), "python benchmarks/compare.py " + " ".join(compare_argv))
    command = "python benchmarks/sweep.py " + " ".join(argv)
    lines = [
        f"`{command}`",
        "",
        f"| {args.sweep} | method | epoch (s) | cache (s) | peak memory (MB) | time / ft (FLOP model) | accuracy |",
    ]
    lines.append("|---|---|---|---|---|---|---|")
    for value in values:
        for r in points[value]:
            predicted = r.get("predicted_time_vs_ft")
            accuracy = "n/a" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}%"
            lines.append(
                f"| {value:g} | {r['method']} | {r['epoch_seconds']:.3g} | {r['cache_seconds']:.3g} | "
                f"{r['peak_memory_mb']:.0f} | {'n/a' if predicted is None else f'{predicted:.3f}'} | {accuracy} |"
            )
    if args.sweep == "lr":
        best = best_learning_rates(points)
        default = best.get("skip", next(iter(best.values())))
        chosen = "".join(f",{method}={lr:g}" for method, lr in best.items() if lr != default)
        lines += [
            "",
            f"Most accurate learning rate per method: `--lr {default:g}{chosen}` (the methods not named, Skip "
            "Tuning's ablations among them, take the first).",
        ]
    base = os.path.join(args.out, f"sweep-{args.sweep}")
    with open(base + ".json", "w") as f:
        json.dump({"command": command, "points": points}, f, indent=2)
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    plot(points, args.sweep, base + ".png", f"sweep over {args.sweep}: {' '.join(passthrough)}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
