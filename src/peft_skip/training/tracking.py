"""What a run reports per epoch: the rows of `metrics.json` and, with `report_to`, Accelerate's experiment trackers
(TensorBoard, Weights & Biases, MLflow).

Scalars, at step = the number of epochs done: `train/loss`, `train/accuracy` (of the step logits, among the classes
each step kept), `train/learning_rate_text`, `train/learning_rate_vision`, `train/kept_classes` (mean classes the text
tower ran for per batch: CSkip), `train/cache_seconds` (the image cache build of that epoch, 0 when its views were
reused); where the run evaluates (`peft-skip train`), `eval/accuracy` (base-to-new: `eval/base_accuracy`,
`eval/new_accuracy`, `eval/harmonic_mean`) of the zero-shot model at step 0 and of the tuned one at the last epoch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal, get_args

from accelerate import Accelerator
from accelerate.utils import is_mlflow_available, is_tensorboard_available, is_wandb_available

from .output_dir import TRACKING_DIR

# transformers' `report_to` values that Accelerate has trackers for; "all": those of them installed.
ReportTo = Literal["none", "tensorboard", "wandb", "mlflow", "all"]
REPORT_TO: tuple[str, ...] = get_args(ReportTo)
INSTALLED = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available, "mlflow": is_mlflow_available}
PROJECT = "peft-skip"  # the W&B project, MLflow experiment, and TensorBoard directory under `<output_dir>/runs`


def tracker_names(report_to: str) -> list[str]:
    """The trackers `report_to` names, checked to be installed.

    Raises:
        ValueError: A named tracker's package is not installed (says what to install).
    """
    if report_to == "all":
        return [name for name, installed in INSTALLED.items() if installed()]
    names = [] if report_to == "none" else [report_to]
    for name in names:
        if not INSTALLED[name]():
            raise ValueError(
                f"report_to={name!r} needs the {name} package: `pip install {name}`, or report_to='none'."
            )
    return names


def logging_dir(output_dir: str) -> str:
    """Where local trackers (TensorBoard) write: `<output_dir>/runs`, as transformers' `Trainer` does."""
    return os.path.join(output_dir, TRACKING_DIR)


def start_tracking(accelerator: Accelerator, args, config) -> bool:
    """Starts the trackers of `args.report_to` with the run's settings as hyper-parameters, unless none are asked for
    or some already run (the caller that started them logs more and ends them).

    Args:
        accelerator (`Accelerator`): Created with the trackers (`accelerator.make_accelerator(report_to=...)`).
        args (`SkipTrainingArguments`): The run's arguments.
        config (`SkipConfig`): The method's settings.

    Returns:
        `bool`: Whether this call started them (then its caller ends them with `accelerator.end_training()`).
    """
    names = tracker_names(args.report_to)
    if not names or accelerator.trackers:
        return False
    missing = sorted(set(names) - {str(tracker) for tracker in accelerator.log_with})
    if missing:
        raise ValueError(
            f"report_to={args.report_to!r}, but the Accelerator has no {', '.join(missing)} tracker: create it with "
            "`make_accelerator(report_to=..., output_dir=...)` or `Accelerator(log_with=...)`."
        )
    settings = args.run_identity() | config.method_settings()
    hparams = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in settings.items()}
    run_name = os.path.basename(os.path.normpath(args.output_dir))
    accelerator.init_trackers(
        PROJECT, hparams, init_kwargs={"wandb": {"name": run_name}, "mlflow": {"run_name": run_name}}
    )
    return True


@dataclass
class EpochStats:
    """Sums over an epoch's images and batches, added up over all processes."""

    loss: float = 0.0  # sum of per-image losses
    correct: int = 0
    images: int = 0
    kept_classes: int = 0  # sum over the (per-process) batches of the classes the text tower ran for
    batches: int = 0

    def row(self, epoch: int, lrs: dict[str, float], seconds: float, cache_seconds: float) -> dict:
        """The epoch's row of `metrics.json`'s history."""
        return {
            "epoch": epoch,
            "loss": self.loss / self.images,
            "accuracy": self.correct / self.images,
            "lr": lrs.get("text"),
            "vision_lr": lrs.get("vision"),
            "kept_classes": self.kept_classes / self.batches,
            "cache_seconds": cache_seconds,
            "seconds": seconds,
        }


def epoch_scalars(row: dict) -> dict[str, float]:
    """The trackers' scalars of a history row (`EpochStats.row`)."""
    names = {
        "loss": "train/loss",
        "accuracy": "train/accuracy",
        "lr": "train/learning_rate_text",
        "vision_lr": "train/learning_rate_vision",
        "kept_classes": "train/kept_classes",
        "cache_seconds": "train/cache_seconds",
    }
    return {scalar: row[key] for key, scalar in names.items() if row[key] is not None}


def eval_scalars(result: dict) -> dict[str, float]:
    """The trackers' scalars of a result of `peft_skip.training.evaluation.evaluate_protocol`."""
    if "harmonic_mean" in result:
        return {
            "eval/base_accuracy": result["base"]["accuracy"],
            "eval/new_accuracy": result["new"]["accuracy"],
            "eval/harmonic_mean": result["harmonic_mean"],
        }
    return {"eval/accuracy": result["accuracy"]}
