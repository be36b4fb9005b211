"""The markdown of `check.py`'s sections: precision drift, the cost table next to the paper's, the GPU options."""

from __future__ import annotations


def _cell(value, fmt: str = "{:.3g}") -> str:
    return "n/a" if value is None else fmt.format(value)


def precision_lines(section: dict) -> list[str]:
    runs = {k: v for k, v in section.items() if isinstance(v, dict)}
    lines = [
        f"`SkipTrainer`, 2 epochs of {section['steps_per_epoch']} steps on {section['images']} digits images, "
        f"{section['model']} shape with random weights; drift from the fp32 run of the same batches.",
        "",
        "| run | device | epoch losses | loss drift (max relative) | update drift (relative L2) | train (s) | "
        "peak memory (MB) | grad scaler |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, run in runs.items():
        losses = ", ".join(f"{loss:.4f}" for loss in run["epoch_losses"])
        lines.append(
            f"| {name} | {run['device']} | {losses} | {_cell(run.get('loss_drift'), '{:.2e}')} | "
            f"{_cell(run.get('update_drift'), '{:.2e}')} | {run['train_seconds']:.1f} | {run['peak_memory_mb']:.0f} | "
            f"{'yes' if run['grad_scaler'] else 'no'} |"
        )
    return lines


def cost_lines(section: dict) -> list[str]:
    from check import METHOD_NAMES, PAPER_B2N_COST

    lines = [
        f"Base-to-new cell, batch {section['batch_size']}, the recipe's {section['recipe_epochs']} epochs "
        "extrapolated from the timed steps (cache rebuilt every epoch, as the paper's cache mode does); memory is "
        "`torch.cuda.max_memory_allocated` (on the CPU: peak RSS). Command: `" + " ".join(section["argv"]) + "`.",
        "",
        "| method | precision | paper: recipe (s) | paper: memory (MB) | ours: epoch (s) | ours: recipe (s) | "
        "ours: cache (s) | ours: peak memory (MB) | images/s | achieved / matmul |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in section["rows"]:
        seconds, memory = PAPER_B2N_COST.get(row["method"], (None, None))
        lines.append(
            f"| {METHOD_NAMES.get(row['method'], row['method'])} | {row['mixed_precision']} | "
            f"{_cell(seconds, '{:.0f}')} | {_cell(memory, '{:.0f}')} | {row['epoch_seconds']:.3g} | "
            f"{row['recipe_seconds']:.3g} | {row['cache_seconds']:.3g} | {row['peak_memory_mb']:.0f} | "
            f"{row['images_per_second']:.1f} | {row['achieved_vs_matmul_peak']:.3f} |"
        )
    return lines + ["", "The paper's full fine-tuning row is its motivation figure's (B2N); it has no LoRA row."]


def options_lines(section: dict) -> list[str]:
    matmul = ", ".join(f"{name} {rate:.0f}" for name, rate in section["matmul"].items())
    lines = [
        f"{section['classes']} classes, {section['images']} images; matmul GFLOP/s measured here: {matmul}.",
        "",
        "| cache build: images per forward | autocast | images/s |",
        "|---|---|---|",
    ]
    lines += [
        f"| {r['batch_size']} | {r['autocast']} | {r['images_per_second']:.1f} |" for r in section["cache_build"]
    ]
    lines += [
        "",
        "| step variant | step (ms) | images/s | peak memory (MB) | achieved GFLOP/s | achieved / matmul |",
        "|---|---|---|---|---|---|",
    ]
    for r in section["steps"]:
        if "error" in r:
            lines.append(f"| {r['variant']} | failed: {r['error']} | | | | |")
        else:
            lines.append(
                f"| {r['variant']} | {1000 * r['step_seconds']:.2f} | {r['images_per_second']:.1f} | "
                f"{r['peak_memory_mb']:.0f} | {r['achieved_gflops_per_second']:.1f} | {r['achieved_vs_matmul']:.3f} |"
            )
    return lines
