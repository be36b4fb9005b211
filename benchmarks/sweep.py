"""Sweeps of `compare.py` over the number of classes, ω, shots or the learning rate, with a plot per method.

    python benchmarks/sweep.py classes 10,100,1000 --methods ft,lora,coop,skip -- --arch vit-b-32 --steps-per-epoch 1
    python benchmarks/sweep.py lr 1e-4,1e-3,1e-2 --methods ft,skip -- --arch DIR --data world:combos --eval-on held-out

A learning-rate sweep plots accuracy and prints the best learning rate of every method as a `--lr` for
`compare.py`; run it with `--eval-on held-out` so that the choice never sees the test images. `--merge` reports
several sweeps of the same kind as one (a grid widened afterwards for the methods whose best was at its edge):

    python benchmarks/sweep.py lr --merge a/sweep-lr.json b/sweep-lr.json --out merged

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


def _series(points: dict[float, list[dict]], method: str, key: str) -> tuple[list[float], list]:
    """The values at which `method` ran and its `key` at each, in order."""
    pairs = [(v, r[key]) for v in sorted(points) for r in points[v] if r["method"] == method]
    return [v for v, _ in pairs], [y for _, y in pairs]


def _methods(points: dict[float, list[dict]]) -> list[str]:
    return list(dict.fromkeys(r["method"] for v in sorted(points) for r in points[v]))


def best_learning_rates(points: dict[float, list[dict]]) -> dict[str, float]:
    """The learning rate of the most accurate run of every method (the smaller one on a tie)."""
    best = {}
    for method in _methods(points):
        rates, accuracies = _series(points, method, "accuracy")
        best[method] = -max(zip(accuracies, (-lr for lr in rates), strict=True))[1]
    return best


def plot(points: dict[float, list[dict]], name: str, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [r for value in points for r in points[value]]
    pretrained = any(r["accuracy"] is not None and not r.get("random_weights", True) for r in results)
    panels = LR_PANELS if name == "lr" else PANELS + ((("accuracy", "accuracy"),) if pretrained else ())
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    for ax, (key, label) in zip(axes, panels, strict=True):
        for method in _methods(points):
            ax.plot(
                *_series(points, method, key), marker="o", label=method, color="tab:red" if method == "skip" else None
            )
        if name == "classes":
            # Full fine-tuning grows linearly with the classes: on a log scale both methods stay readable.
            ax.set_xscale("log")
            ax.set_yscale("log")
        if name == "lr":
            ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_title(label)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(points: dict[float, list[dict]], name: str, base: str, commands: list[str], title: str) -> None:
    """Writes `base.json`, `base.md` (a row per point and method; for `lr` the best of each method) and `base.png`."""
    lines = [*(f"`{command}`" for command in commands), ""]
    lines += [f"| {name} | method | epoch (s) | cache (s) | peak memory (MB) | time / ft (FLOP model) | accuracy |"]
    lines.append("|---|---|---|---|---|---|---|")
    for value in sorted(points):
        for r in points[value]:
            predicted = r.get("predicted_time_vs_ft")
            accuracy = "n/a" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}%"
            lines.append(
                f"| {value:g} | {r['method']} | {r['epoch_seconds']:.3g} | {r['cache_seconds']:.3g} | "
                f"{r['peak_memory_mb']:.0f} | {'n/a' if predicted is None else f'{predicted:.3f}'} | {accuracy} |"
            )
    if name == "lr":
        best = best_learning_rates(points)
        default = best.get("skip", next(iter(best.values())))
        chosen = "".join(f",{method}={lr:g}" for method, lr in best.items() if lr != default)
        lines += [
            "",
            f"Most accurate learning rate per method: `--lr {default:g}{chosen}` (the methods not named, Skip "
            "Tuning's ablations among them, take the first).",
        ]
    with open(base + ".json", "w") as f:
        json.dump({"commands": commands, "points": points}, f, indent=2)
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    plot(points, name, base + ".png", title)
    print("\n".join(lines))


def merge(paths: list[str]) -> tuple[dict[float, list[dict]], list[str]]:
    """The points and commands of several `sweep-<name>.json` of one sweep (e.g. a grid widened for some methods)."""
    points, commands = {}, []
    for path in paths:
        with open(path) as f:
            sweep = json.load(f)
        commands += sweep["commands"]
        for value, results in sweep["points"].items():
            points.setdefault(float(value), []).extend(results)
    return points, commands


def main() -> None:
    argv = sys.argv[1:]
    passthrough = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", choices=sorted(SWEEPS))
    parser.add_argument("values", nargs="?", help="Comma-separated values, e.g. 10,100,1000.")
    parser.add_argument("--methods", default="ft,skip")
    parser.add_argument("--out", default="docs")
    parser.add_argument("--merge", nargs="+", help="Report these sweep-<name>.json together instead of running.")
    args = parser.parse_args(own)
    base = os.path.join(args.out, f"sweep-{args.sweep}")
    if args.merge:
        points, commands = merge(args.merge)
        return report(points, args.sweep, base, commands, f"sweep over {args.sweep}, {len(args.merge)} runs merged")
    if not args.values:
        parser.error("give the values to sweep, or --merge.")
    values = [(float if args.sweep == "lr" else int)(v) for v in args.values.split(",")]
    points = {}
    for value in values:
        run_dir = os.path.join(base, str(value))
        compare_argv = [*passthrough, "--methods", args.methods, SWEEPS[args.sweep], str(value), "--out", run_dir]
        points[value] = compare(parse_args(compare_argv), "python benchmarks/compare.py " + " ".join(compare_argv))
    data = next((passthrough[i + 1] for i, a in enumerate(passthrough[:-1]) if a == "--data"), "")
    command = "python benchmarks/sweep.py " + " ".join(argv)
    report(points, args.sweep, base, [command], f"sweep over {args.sweep} {data}".strip())


if __name__ == "__main__":
    main()
