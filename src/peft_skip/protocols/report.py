"""`peft-skip benchmark`'s record (results.json, read and replaced whole), its tables and its figure.

Base-to-new and few-shot: one row per dataset and an average row. Cross-dataset and domain generalisation: one row,
ImageNet (the source) and every target as columns, then the average over the targets. As in the papers, the HM of a
row is the harmonic mean of its mean base and mean new accuracy, and an average is the mean over datasets of the
per-dataset means; its ± is the std over seeds of the per-seed averages (shown when every dataset has every seed).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
from collections.abc import Sequence
from pathlib import Path

from ..training.evaluation import harmonic_mean
from ..training.publishing import publish_files

FORMAT = "peft-skip/benchmark-v1"
RESULTS = "results.json"
RESULTS_TABLE = "results.md"
RESULTS_FIGURE = "results.png"
RESULTS_STAGING = ".results.tmp"

# Published ViT-B/16 averages (/work/shared/SKIP_TUNING.md, "Published results"); the per-dataset values of the
# paper's tables are not in this project's sources, so only these are shown next to ours.
PAPER = {
    "base_to_new": {"Average": {"base": 85.04, "new": 77.53, "hm": 81.11}},
    "cross_dataset": {"imagenet": {"accuracy": 72.77}, "Average": {"accuracy": 67.00}},
}
TITLES = {
    "base_to_new": "Base-to-new generalisation",
    "few_shot": "Few-shot learning",
    "cross_dataset": "Cross-dataset generalisation (trained on ImageNet)",
    "domain_generalization": "Domain generalisation (trained on ImageNet)",
}


def _by_dataset(cells: Sequence[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for record in cells:
        out.setdefault(record["dataset"], []).append(record)
    return out


def _stats(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample std (None for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _format(mean: float, std: float | None) -> str:
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def summarise(results: dict) -> dict[str, dict[str, tuple[float, float | None]]]:
    """Per dataset (and `"Average"` over the targets or datasets): metric -> (mean, std over seeds)."""
    keys = ("base", "new") if results["protocol"] == "base_to_new" else ("accuracy",)
    groups = _by_dataset(results["cells"])
    table = {name: {key: _stats([r[key] for r in records]) for key in keys} for name, records in groups.items()}
    averaged = [name for name in groups if name != "imagenet" or results["protocol"] in ("few_shot", "base_to_new")]
    if averaged:
        average = {key: (statistics.fmean(table[name][key][0] for name in averaged), None) for key in keys}
        seeds = [{r["seed"] for r in groups[name]} for name in averaged]
        common = set.intersection(*seeds)
        if len(common) > 1 and all(s == common for s in seeds):
            for key in keys:
                per_seed = [
                    statistics.fmean(r[key] for n in averaged for r in groups[n] if r["seed"] == s) for s in common
                ]
                average[key] = (average[key][0], statistics.stdev(per_seed))
        table["Average"] = average
    for row in table.values():
        if "base" in row:
            row["hm"] = (harmonic_mean(row["base"][0], row["new"][0]), None)
    return table


def _cost(records: Sequence[dict]) -> tuple[str, str]:
    seconds = statistics.fmean(r["seconds"] for r in records)
    return f"{seconds:.1f}", f"{max(r['peak_memory_mb'] for r in records):.0f}"


def results_markdown(results: dict) -> str:
    """results.md: the protocol's table, the paper's published values where known, and how the run was made."""
    protocol, settings = results["protocol"], results["settings"]
    table, paper = summarise(results), PAPER.get(protocol, {})
    groups = _by_dataset(results["cells"])
    lines = [f"# {TITLES[protocol]}: Skip Tuning", ""]
    if protocol in ("base_to_new", "few_shot"):
        keys = ("base", "new", "hm") if protocol == "base_to_new" else ("accuracy",)
        header = " | ".join("HM" if k == "hm" else k for k in keys)
        lines += [
            f"| dataset | {header} | seeds | time / cell (s) | peak memory (MB) |",
            "|---|" + "---|" * (len(keys) + 3),
        ]
        for name, records in groups.items():
            cells = " | ".join(_format(*table[name][k]) for k in keys)
            lines.append(f"| {name} | {cells} | {len(records)} | {' | '.join(_cost(records))} |")
        if "Average" in table:
            lines.append(f"| **Average** | {' | '.join(_format(*table['Average'][k]) for k in keys)} | | | |")
        if "Average" in paper:
            values = " | ".join(f"{paper['Average'][k]:.2f}" for k in keys)
            lines.append(f"| Average (paper) | {values} | | | |")
    else:
        names = list(groups) + (["Average"] if "Average" in table else [])
        lines += [f"| | {' | '.join(names)} |", "|---|" + "---|" * len(names)]
        lines.append(f"| Skip Tuning (ours) | {' | '.join(_format(*table[n]['accuracy']) for n in names)} |")
        if paper:
            values = [f"{paper[n]['accuracy']:.2f}" if n in paper else "" for n in names]
            lines.append(f"| Skip Tuning (paper) | {' | '.join(values)} |")
        lines.append(f"| seeds | {' | '.join(str(len(groups.get(n, []))) if n in groups else '' for n in names)} |")
        lines.append(f"| time / cell (s) | {' | '.join(_cost(groups[n])[0] if n in groups else '' for n in names)} |")
    lines += [
        "",
        f"- model: `{settings['model']}`"
        + (" (**RANDOM weights**: accuracies mean nothing)" if results.get("random_weights") else ""),
        f"- {settings['shots']} shots; epochs: {settings['num_train_epochs'] or 'the reference recipe'}; "
        f"lr: {settings['learning_rate'] or 'the reference recipe'}; mixed precision: {settings['mixed_precision']}",
        "- accuracies in %, mean ± sample std over seeds; HM is the harmonic mean of the mean base and new accuracy; "
        "an average is the mean over datasets (for the ImageNet-trained protocols: over the targets)",
        "- time / cell: wall time of the cell (training included for the cell that trained; resumed runs count only "
        "their own part); peak memory: " + (results["cells"][0]["memory_measure"] if results["cells"] else "n/a"),
    ]
    return "\n".join(lines) + "\n"


def write_figure(output_dir: str, results: dict) -> str | None:
    """results.png: per-dataset bars (mean over seeds, std as error bars), the paper's averages as markers.

    Returns the path, or None (saying why) when matplotlib is not installed or there is nothing to plot.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
    except ImportError:
        print("No figure: matplotlib is not installed (pip install 'peft-skip[bench]').")
        return None
    table = summarise(results)
    if not table:
        return None
    paper = PAPER.get(results["protocol"], {})
    keys = ("base", "new", "hm") if results["protocol"] == "base_to_new" else ("accuracy",)
    names = list(table)
    width, paper_label = 0.8 / len(keys), "paper"
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(names) + 2), 4.5))
    for i, key in enumerate(keys):
        xs = [n + (i - (len(keys) - 1) / 2) * width for n in range(len(names))]
        means = [table[name][key][0] for name in names]
        errors = [table[name][key][1] or 0.0 for name in names]
        ax.bar(xs, means, width, yerr=errors, capsize=3, label=key if key != "hm" else "HM")
        marked = [(x, paper[name][key]) for x, name in zip(xs, names, strict=True) if key in paper.get(name, {})]
        if marked:
            ax.scatter(*zip(*marked, strict=True), marker="*", s=120, color="black", zorder=3, label=paper_label)
            paper_label = None  # one legend entry for all the paper's markers
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{TITLES[results['protocol']]}" + (" - RANDOM weights" if results.get("random_weights") else ""))
    ax.legend(fontsize="small")
    fig.tight_layout()
    path = os.path.join(output_dir, RESULTS_FIGURE)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_results(output_dir: str, results: dict) -> None:
    """results.json and results.md, each replaced whole (a crash leaves the previous or the new file)."""
    tmp = os.path.join(output_dir, RESULTS_STAGING)
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    Path(tmp, RESULTS).write_text(json.dumps(results, indent=2))
    Path(tmp, RESULTS_TABLE).write_text(results_markdown(results))
    publish_files(tmp, output_dir)


def load_results(output_dir: str, protocol: str, settings: dict) -> dict:
    """The results of earlier runs into `output_dir`, which must be of the same benchmark; else a new record."""
    path = Path(output_dir, RESULTS)
    if not path.exists():
        return {"format": FORMAT, "protocol": protocol, "settings": settings, "cells": []}
    try:
        results = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is unreadable ({err}); move it away to start the benchmark afresh.") from err
    if not isinstance(results, dict) or results.get("format") != FORMAT or results.get("protocol") != protocol:
        raise ValueError(f"{path} is not a {protocol} benchmark; use another --out.")
    changed = {k: (results["settings"].get(k), v) for k, v in settings.items() if results["settings"].get(k) != v}
    if changed:
        raise ValueError(
            f"{path} was run with other settings (then, now): {changed}; use the same ones or another --out."
        )
    return results
