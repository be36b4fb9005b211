"""Sweeps of `compare.py` over the number of classes, ω or shots, with a plot of time and memory per method.

    python benchmarks/sweep.py classes 10,100,1000 --methods ft,lora,coop,skip -- --arch vit-b-32 --steps-per-epoch 1

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

SWEEPS = {"classes": "--classes", "skip-layers": "--skip-layers", "shots": "--shots"}
PANELS = (
    ("epoch_seconds", "epoch time (s)"),
    ("cache_seconds", "cache build (s)"),
    ("peak_memory_mb", "peak memory (MB)"),
)


def plot(points: dict[int, list[dict]], name: str, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = sorted(points)
    methods = [r["method"] for r in points[values[0]]]
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.6))
    for ax, (key, label) in zip(axes, PANELS, strict=True):
        for method in methods:
            ys = [next(r[key] for r in points[v] if r["method"] == method) for v in values]
            ax.plot(values, ys, marker="o", label=method, color="tab:red" if method == "skip" else None)
        if name == "classes":
            # Full fine-tuning grows linearly with the classes: on a log scale both methods stay readable.
            ax.set_xscale("log")
            ax.set_yscale("log")
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
    values = [int(v) for v in args.values.split(",")]
    points = {}
    for value in values:
        run_dir = os.path.join(args.out, f"sweep-{args.sweep}", str(value))
        compare_argv = [*passthrough, "--methods", args.methods, SWEEPS[args.sweep], str(value), "--out", run_dir]
        points[value] = compare(parse_args(compare_argv), "python benchmarks/compare.py " + " ".join(compare_argv))
    command = "python benchmarks/sweep.py " + " ".join(argv)
    lines = [
        f"`{command}`",
        "",
        f"| {args.sweep} | method | epoch (s) | cache (s) | peak memory (MB) | time / ft (FLOP model) |",
    ]
    lines.append("|---|---|---|---|---|---|")
    for value in values:
        for r in points[value]:
            predicted = r.get("predicted_time_vs_ft")
            lines.append(
                f"| {value} | {r['method']} | {r['epoch_seconds']:.3g} | {r['cache_seconds']:.3g} | "
                f"{r['peak_memory_mb']:.0f} | {'n/a' if predicted is None else f'{predicted:.3f}'} |"
            )
    base = os.path.join(args.out, f"sweep-{args.sweep}")
    with open(base + ".json", "w") as f:
        json.dump({"command": command, "points": points}, f, indent=2)
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    plot(points, args.sweep, base + ".png", f"sweep over {args.sweep}: {' '.join(passthrough)}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
