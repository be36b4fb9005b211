"""Mean ± std over seeds of `compare.py` runs: accuracy (few-shot, or base / new / HM), learning rate, epoch time and
peak memory per method, zero-shot first, and a figure in the spirit of the paper's Figure 1 (accuracy against
training time, marker area by peak memory).

    python benchmarks/seeds_table.py docs/benchmarks/world-combos/seed-0 docs/benchmarks/world-combos/seed-1 \
        docs/benchmarks/world-combos/seed-2 --out docs/benchmarks/world-combos
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

ACCURACY_LABELS = {"all": "accuracy (%)", "base": "base (%)", "new": "new (%)", "hm": "HM (%)"}
COST_LABELS = {"epoch_seconds": "epoch (s)", "peak_memory_mb": "peak memory (MB)"}


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _cell(values: list[float]) -> str:
    return "{:.1f} ± {:.1f}".format(*mean_std(values))


def collect(runs: list[dict]) -> tuple[list[str], dict[str, dict[str, list[float]]]]:
    """The accuracy keys of the runs and, per method (`zero-shot` first), every key's value in every run."""
    scores = list(runs[0]["facts"]["zero_shot"])
    methods = [r["method"] for r in runs[0]["results"]]
    values = {"zero-shot": {k: [100 * run["facts"]["zero_shot"][k] for run in runs] for k in scores}}
    for m in methods:
        rows = [next(r for r in run["results"] if r["method"] == m) for run in runs]
        values[m] = {k: [100 * row["accuracies"][k] for row in rows] for k in scores}
        values[m] |= {k: [row[k] for row in rows] for k in (*COST_LABELS, "lr")}
    return scores, values


def table(runs: list[dict]) -> list[str]:
    scores, values = collect(runs)
    lines = [f"{len(runs)} seeds; command of the first: `{runs[0]['command']}`", ""]
    labels = [ACCURACY_LABELS[k] for k in scores] + ["lr", *COST_LABELS.values()]
    lines += ["| method | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for m, v in values.items():
        cells = [_cell(v[k]) for k in scores]
        cells += ["-"] * (1 + len(COST_LABELS)) if m == "zero-shot" else [f"{v['lr'][0]:g}"]
        cells += [] if m == "zero-shot" else [_cell(v[k]) for k in COST_LABELS]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def figure(runs: list[dict], path: str, title: str) -> None:
    """Mean accuracy (HM for base-to-new) against mean epoch time, marker area ~ mean peak memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores, values = collect(runs)
    score = "hm" if "hm" in scores else "all"
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for m, v in values.items():
        if m == "zero-shot":
            ax.axhline(statistics.mean(v[score]), linestyle="--", color="tab:blue", label="zero-shot")
            continue
        x, y = statistics.mean(v["epoch_seconds"]), statistics.mean(v[score])
        ax.scatter(
            x, y, s=statistics.mean(v["peak_memory_mb"]) / 2, alpha=0.6, color="tab:red" if m == "skip" else "tab:gray"
        )
        ax.annotate(m, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.legend(fontsize=8)
    ax.set_xlabel("epoch time (s, CPU clock)")
    ax.set_ylabel(ACCURACY_LABELS[score])
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="Output directories of compare.py, one per seed.")
    parser.add_argument("--out", required=True, help="Where seeds.md and seeds.png go.")
    args = parser.parse_args(argv)
    runs = []
    for run in args.runs:
        with open(os.path.join(run, "results.json"), encoding="utf-8") as f:
            runs.append(json.load(f))
    lines = table(runs)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "seeds.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    facts = runs[0]["facts"]
    title = f"{facts['data']}, {facts['protocol']}, {len(runs)} seeds: accuracy against time; area ~ peak memory"
    figure(runs, os.path.join(args.out, "seeds.png"), title)


if __name__ == "__main__":
    main()
