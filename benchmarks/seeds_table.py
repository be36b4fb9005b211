"""Mean ± std over seeds of `compare.py` runs: accuracy (few-shot, or base / new / HM), learning rate, epoch time and
peak memory per method, zero-shot first, and a figure in the spirit of the paper's Figure 1 (accuracy against
training time, marker area by peak memory).

    python benchmarks/seeds_table.py docs/benchmarks/world/combos-few-shot/seed-{0,1,2} \
        --out docs/benchmarks/world/combos-few-shot
    python benchmarks/seeds_table.py --summary docs/benchmarks/world

`--summary DIR` gathers every `DIR/<group>/seed-*` into `DIR/summary.md` (one row per group, one column per method:
its accuracy, HM for base-to-new) and `DIR/summary.png` (one panel per group).
"""

from __future__ import annotations

import argparse
import glob
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


def headline_key(scores: list[str]) -> str:
    return "hm" if "hm" in scores else "all"


def panel(ax, runs: list[dict], title: str) -> None:
    """Mean accuracy (HM for base-to-new) against mean epoch time, marker area ~ mean peak memory."""
    scores, values = collect(runs)
    score = headline_key(scores)
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


def save_figure(groups: dict[str, list[dict]], path: str, title: str | None = None) -> None:
    """One `panel` per group, three to a row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(3, len(groups))
    rows = -(-len(groups) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(6 * columns, 4.2 * rows), squeeze=False)
    for ax, (name, runs) in zip(axes.flat, groups.items(), strict=False):  # spare axes are blanked below
        panel(ax, runs, title or name)
    for ax in axes.flat[len(groups) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load_runs(directories: list[str]) -> list[dict]:
    runs = []
    for run in directories:
        with open(os.path.join(run, "results.json"), encoding="utf-8") as f:
            runs.append(json.load(f))
    return runs


def summary(root: str) -> None:
    """`root/summary.md` and `root/summary.png` from every `root/<group>/seed-*`."""
    groups = {}
    for name in sorted(os.listdir(root)):
        seeds = sorted(glob.glob(os.path.join(root, name, "seed-*")))
        if seeds:
            groups[name] = load_runs(seeds)
    if not groups:
        raise SystemExit(f"no <group>/seed-*/results.json under {root}: run compare.py into it first.")
    methods = list(dict.fromkeys(m for runs in groups.values() for m in collect(runs)[1]))
    lines = [
        "Accuracy (%) per group and method, mean ± std over seeds; HM of base and new for base-to-new.",
        "",
        "| group | seeds | " + " | ".join(methods) + " |",
        "|---|---|" + "---|" * len(methods),
    ]
    for name, runs in groups.items():
        scores, values = collect(runs)
        key = headline_key(scores)
        cells = [_cell(values[m][key]) if m in values else "-" for m in methods]
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
    with open(os.path.join(root, "summary.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    save_figure(groups, os.path.join(root, "summary.png"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", help="Output directories of compare.py, one per seed.")
    parser.add_argument("--out", help="Where seeds.md and seeds.png go.")
    parser.add_argument("--summary", help="A directory of groups of runs to summarise instead.")
    args = parser.parse_args(argv)
    if args.summary:
        return summary(args.summary)
    if not (args.runs and args.out):
        parser.error("give the runs of one group and --out, or --summary DIR.")
    runs = load_runs(args.runs)
    lines = table(runs)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "seeds.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    facts = runs[0]["facts"]
    title = f"{facts['data']}, {facts['protocol']}, {len(runs)} seeds: accuracy against time; area ~ peak memory"
    save_figure({"": runs}, os.path.join(args.out, "seeds.png"), title)


if __name__ == "__main__":
    main()
