"""Mean ± std over seeds of `compare.py` runs: accuracy, epoch time and peak memory per method, and a figure in the
spirit of the paper's Figure 1 (accuracy against training time, marker area by peak memory).

    python benchmarks/seeds_table.py docs/benchmarks/world-combos/seed-0 docs/benchmarks/world-combos/seed-1 \
        docs/benchmarks/world-combos/seed-2 --zero-shot 0.69 --out docs/benchmarks/world-combos
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

KEYS = (
    ("accuracy", "accuracy (%)", 100),
    ("epoch_seconds", "epoch (s)", 1),
    ("peak_memory_mb", "peak memory (MB)", 1),
)


def _mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {std:.1f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="Output directories of compare.py, one per seed.")
    parser.add_argument("--zero-shot", type=float, default=None, help="Zero-shot accuracy of the base model (0-1).")
    parser.add_argument("--out", required=True, help="Where seeds.md and seeds.png go.")
    args = parser.parse_args(argv)
    runs = [json.load(open(os.path.join(run, "results.json"), encoding="utf-8")) for run in args.runs]
    methods = [r["method"] for r in runs[0]["results"]]
    values = {
        m: {k: [next(r[k] for r in run["results"] if r["method"] == m) for run in runs] for k, _, _ in KEYS}
        for m in methods
    }
    lines = [f"{len(runs)} seeds; command of the first: `{runs[0]['command']}`", ""]
    lines += ["| method | " + " | ".join(label for _, label, _ in KEYS) + " |", "|---|" + "---|" * len(KEYS)]
    if args.zero_shot is not None:
        lines.append(f"| zero-shot | {100 * args.zero_shot:.1f} | - | - |")
    for m in methods:
        cells = [_mean_std([scale * v for v in values[m][k]]) for k, _, scale in KEYS]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "seeds.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for m in methods:
        x = statistics.mean(values[m]["epoch_seconds"])
        y = 100 * statistics.mean(values[m]["accuracy"])
        size = statistics.mean(values[m]["peak_memory_mb"])
        ax.scatter(x, y, s=size / 2, alpha=0.6, color="tab:red" if m == "skip" else "tab:gray")
        ax.annotate(m, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    if args.zero_shot is not None:
        ax.axhline(100 * args.zero_shot, linestyle="--", color="tab:blue", label="zero-shot")
        ax.legend(fontsize=8)
    ax.set_xlabel("epoch time (s, CPU clock)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("accuracy against training time; marker area ~ peak memory")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "seeds.png"), dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
