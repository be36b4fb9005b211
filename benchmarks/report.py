"""The report of a `compare.py` run: `results.md` (measurements, ratios to full fine-tuning, achieved FLOP/s, half
precision) and `figure.png` (time, memory and accuracy per method)."""

from __future__ import annotations

from drift import precision_table
from method_run import headline

LABELS = {
    "label": "method",
    "lr": "lr",
    "epoch_seconds": "epoch (s)",
    "cache_seconds": "cache (s)",
    "images_per_second": "images/s",
    "peak_memory_mb": "peak memory (MB)",
    "trainable_params": "trainable params",
    "checkpoint_bytes": "checkpoint (MB)",
    "kept_classes": "classes/step",
}
ACCURACY_LABELS = {"all": "accuracy", "base": "base", "new": "new", "hm": "HM"}


def _format(key: str, value) -> str:
    if value is None:
        return "n/a"
    if key == "checkpoint_bytes":
        return f"{value / 2**20:.1f}"
    if key in ACCURACY_LABELS:
        return f"{100 * value:.1f}%"
    if key == "lr":
        return f"{value:g}"
    if key == "trainable_params":
        return f"{value / 1e6:.2f}M"
    if isinstance(value, float):
        return f"{value:.3g}" if value < 100 else f"{value:.0f}"
    return str(value)


def markdown(results: list[dict], facts: dict, command: str, pairs: list[tuple[dict, dict]]) -> str:
    """The results as markdown: the measurements, the ratios to `ft`, the achieved FLOP/s and half precision."""
    lines = [f"`{command}`", ""]
    scores = list(facts["zero_shot"])
    lines.append("| " + " | ".join([*LABELS.values(), *(ACCURACY_LABELS[k] for k in scores)]) + " |")
    lines.append("|" + "---|" * (len(LABELS) + len(scores)))
    untrained = ["zero-shot", *(["-"] * (len(LABELS) - 1))]
    lines.append("| " + " | ".join(untrained + [_format(k, facts["zero_shot"][k]) for k in scores]) + " |")
    half = [h for _, h in pairs]
    for result in results:
        if all(result is not h for h in half):
            cells = [_format(key, result.get(key)) for key in LABELS]
            cells += [_format(key, result["accuracies"].get(key)) for key in scores]
            lines.append("| " + " | ".join(cells) + " |")
    ft = next((r for r in results if r["label"] == "ft"), None)
    if ft is not None:
        lines += [
            "",
            "| method | time / ft (measured) | time / ft (FLOP model) | memory / ft | checkpoint / full model |",
            "|---|---|---|---|---|",
        ]
        for r in results:
            if any(r is h for h in half):
                continue
            memory = r["peak_memory_mb"] / ft["peak_memory_mb"]
            checkpoint = r["checkpoint_bytes"] / r["full_model_bytes"]
            lines.append(
                f"| {r['label']} | {r['measured_time_vs_ft']:.3f} | {r['predicted_time_vs_ft']:.3f} | "
                f"{memory:.3f} | {checkpoint:.3f} |"
            )
    lines += [
        "",
        "| method | GFLOP / step (cost model) | step (s) | achieved GFLOP/s | matmul GFLOP/s (same process) | "
        "achieved / matmul |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['label']} | {r['predicted_step_gflops']:.3g} | {r['step_seconds']:.3g} | "
            f"{r['achieved_gflops_per_second']:.1f} | {r['matmul_gflops_per_second']:.1f} | "
            f"{r['achieved_vs_matmul_peak']:.2f} |"
        )
    if pairs:
        lines += ["", *precision_table(pairs, pairs[0][1]["mixed_precision"])]
    notes = [
        f"device: {results[0]['device']}; model: {facts['model_name']}"
        f"{' with random weights' if facts['random_weights'] else ' (pretrained)'}; "
        f"{facts['train_images']} training images, {facts['full_steps_per_epoch']} steps per epoch",
        f"timed ({results[0]['clock']} clock): {results[0]['timed_steps_per_epoch']} steps per epoch, epoch time"
        " = median step time x steps per "
        "epoch over the epochs after the first; the caches are built for the timed images and their time scaled to "
        "the whole training set",
        f"text prompts padded to {facts['text_tokens']} tokens; {facts['protocol']}: accuracy on "
        + ", ".join(f"{n}" if name == "all" else f"{n} {name}" for name, n in facts["eval_images"].items())
        + f" {facts['data']} {'test' if facts['eval_on'] == 'test' else 'held-out training'} images, each among "
        "its own classes" + (", of a random-weight model" if facts["random_weights"] else ""),
    ]
    if facts["synthetic_classes"]:
        notes.append(f"classes beyond {facts['data']}'s 10 have synthesised names and reuse its images")
    return "\n".join(lines + [""] + [f"- {note}" for note in notes]) + "\n"


def figure(results: list[dict], path: str, title: str, random_weights: bool = True) -> None:
    """Bars of epoch time, peak memory and accuracy per method (in the spirit of the paper's Figure 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["label"] for r in results]
    colors = ["tab:red" if n == "skip" else "tab:gray" for n in names]
    panels = [
        ("epoch_seconds", "epoch time (s)", 1, "{:,.0f}"),
        ("peak_memory_mb", "peak memory (MB)", 1, "{:,.0f}"),
        ("accuracy", "accuracy (%)" + (" - random weights" if random_weights else ""), 100, "{:.1f}"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6))
    for ax, (key, label, scale, fmt) in zip(axes, panels, strict=True):
        values = [((headline(r["accuracies"]) if key == "accuracy" else r[key]) or 0.0) * scale for r in results]
        bars = ax.bar(names, values, color=colors)
        ax.bar_label(bars, fmt=fmt, fontsize=8)
        ax.set_ylim(0, max([*values, 1.0]) * 1.15)
        ax.set_title(label)
        ax.tick_params(axis="x", rotation=45)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
