"""The adapter's model card (README.md), built with `huggingface_hub`'s `ModelCardData` and `EvalResult`.

`SkipConfig.save_pretrained` writes it without results (per-epoch checkpoints, the Python API); a run writes it
again with its accuracies once they exist (`write_card(..., metrics=...)`), so the final adapter's card carries the
model-index of its zero-shot and tuned accuracy.
"""

from __future__ import annotations

import json
import os

from huggingface_hub import EvalResult, ModelCard, ModelCardData, try_to_load_from_cache

SECTION = "## Skip Tuning adapter"
TASK = "zero-shot-image-classification"


def base_model_facts(base: str | None) -> dict:
    """The `license` and `model_type` of the base model, read from its directory or from the Hub cache (never from
    the network); missing ones are absent."""
    if not base:
        return {}

    def local(name: str) -> str | None:
        if os.path.isdir(base):
            path = os.path.join(base, name)
            return path if os.path.isfile(path) else None
        cached = try_to_load_from_cache(base, name)
        return cached if isinstance(cached, str) else None

    facts = {}
    if config := local("config.json"):
        with open(config, encoding="utf-8") as f:
            facts["model_type"] = json.load(f).get("model_type")
    readme = local("README.md")
    with open(readme or os.devnull, encoding="utf-8") as f:
        has_metadata = f.readline().strip() == "---"
    if has_metadata:  # a card without a YAML block has no license to read
        facts["license"] = ModelCard.load(readme, ignore_metadata_errors=True).data.license
    return {key: value for key, value in facts.items() if value}


def _eval_results(metrics: dict) -> list[EvalResult]:
    """The zero-shot and tuned accuracies of a run's `metrics.json`, as model-index entries."""
    data = metrics["data"]
    spec = data["data"]
    dataset = {"dataset_type": spec.removeprefix("hf:"), "dataset_name": spec, "dataset_split": data.get("split")}
    results = []
    for key, name in (("zero_shot", "zero-shot accuracy (base model)"), ("tuned", "Skip Tuning accuracy")):
        result = metrics[key]
        if "harmonic_mean" in result:
            values = {
                f"{name}, base classes": result["base"]["accuracy"],
                f"{name}, new classes": result["new"]["accuracy"],
                f"{name}, harmonic mean": result["harmonic_mean"],
            }
        else:
            values = {name: result["accuracy"]}
        for metric_name, value in values.items():
            results.append(
                EvalResult(
                    task_type=TASK,
                    metric_type="accuracy",
                    metric_value=round(value, 4),
                    metric_name=metric_name,
                    **dataset,
                )
            )
    return results


def build_card(
    base: str | None,
    settings: dict,
    metrics: dict | None = None,
    model_name: str | None = None,
    license: str | None = None,
) -> ModelCard:
    """The model card of a Skip Tuning adapter.

    Args:
        base (`str`, *optional*): Hub id or absolute directory of the base model.
        settings (`dict`): The method's settings (`SkipConfig.method_settings()`).
        metrics (`dict`, *optional*): A run's `metrics.json` (`train_and_evaluate`): adds the model-index of its
            accuracies, the data set and the training recipe.
        model_name (`str`, *optional*): The adapter's name in the model-index (default: "skip-tuning-adapter").
        license (`str`, *optional*): A Hub license id; default: the base model's where known.
    """
    facts = base_model_facts(base)
    # The Hub accepts only model ids as `base_model`: a local base is named in the text and adapter_config.json.
    hub_base = base if base and not os.path.isabs(base) and not os.path.isdir(base) else None
    tags = ["peft", "skip-tuning", facts.get("model_type", "clip"), TASK]
    if hub_base:
        tags.append(f"base_model:adapter:{hub_base}")
    data = ModelCardData(
        base_model=hub_base,
        library_name="peft",
        license=license or facts.get("license"),
        pipeline_tag=TASK,
        tags=tags,
        metrics=["accuracy"] if metrics else None,
    )
    if metrics:
        spec = metrics["data"]["data"]
        data.datasets = [spec[3:]] if spec.startswith("hf:") and not os.path.isdir(spec[3:]) else None
        data.model_name = model_name or "skip-tuning-adapter"
        data.eval_results = _eval_results(metrics)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{_text(base, settings, metrics)}")


def _table(rows: dict) -> str:
    lines = ["| setting | value |", "|---|---|"]
    return "\n".join(lines + [f"| `{key}` | `{value}` |" for key, value in rows.items() if value is not None])


def _text(base: str | None, settings: dict, metrics: dict | None) -> str:
    base = base or "<base model name or directory>"
    parts = [
        "# Skip Tuning adapter\n",
        f"Deltas of the deep layers of both towers of `{base}`, trained with Skip Tuning (Wu et al., CVPR 2025, "
        "arXiv 2412.11509) using [peft-skip](https://pypi.org/project/peft-skip/). The file holds only the deltas "
        "of the trained layers; the base model's weights are not included.\n",
    ]
    if metrics:
        parts.append("## Results\n\n| | zero-shot (base model) | Skip Tuning |\n|---|---|---|")
        for label, zero_shot, tuned in _result_rows(metrics):
            parts.append(f"| {label} | {100 * zero_shot:.2f}% | {100 * tuned:.2f}% |")
        data = metrics["data"]
        parts.append(
            f"\nData: `{data['data']}`, split `{data['split']}`"
            + (f" ({data['test_limit']} images)" if data.get("test_limit") else "")
            + f"; prompts: {', '.join(f'`{t}`' for t in data.get('eval_templates') or [data['template']])}.\n"
        )
        parts.append("## Training recipe\n\nThe resolved training arguments of the run:\n")
        parts.append(_table(metrics["training_arguments"] | {"template": data["template"]}) + "\n")
    parts.append(f"{SECTION}\n\n{_table(settings)}\n")
    parts.append(
        f"""### How to load

```python
import peft_skip  # registers the SKIP peft type; import it before loading
from peft import PeftModel
from transformers import AutoModel

base = AutoModel.from_pretrained("{base}")
model = PeftModel.from_pretrained(base, "<this repository or directory>")
model = model.merge_and_unload()  # a plain model again: no inference overhead
```
"""
    )
    return "\n".join(parts)


def _result_rows(metrics: dict) -> list[tuple[str, float, float]]:
    zero_shot, tuned = metrics["zero_shot"], metrics["tuned"]
    if "harmonic_mean" not in tuned:
        return [("accuracy", zero_shot["accuracy"], tuned["accuracy"])]
    rows = [(f"{part} classes", zero_shot[part]["accuracy"], tuned[part]["accuracy"]) for part in ("base", "new")]
    return rows + [("harmonic mean", zero_shot["harmonic_mean"], tuned["harmonic_mean"])]


def write_card(directory: str, card: ModelCard) -> None:
    """Writes `card` as `directory/README.md`, replaced whole (a temporary file, then a rename)."""
    path = os.path.join(directory, "README.md")
    card.save(path + ".tmp")
    os.replace(path + ".tmp", path)
