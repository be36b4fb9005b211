"""What a command loads and evaluates: the model, the data, the evaluation's output. See `training_args.py` for how
to train and `SkipConfig` for the method; the command line is generated from these dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .data import TEMPLATES, ImageDecoding, build_prompts
from .data.coop import COOP_DATASETS


@dataclass
class ModelArguments:
    model: str = field(
        metadata={"help": "Model name on the Hub or a local directory (e.g. from `peft-skip make-offline-model`)."}
    )


@dataclass
class DataArguments:
    data: str = field(
        metadata={
            "help": "Data set: 'fashion-mnist', 'digits', 'hf:<name or saved dir>', 'imagefolder:<dir>', an image "
            "folder (one sub-folder per class, optionally under train/ and test/), or a CoOp dataset name such as "
            "'eurosat' (with --data-root)."
        }
    )
    data_root: str | None = field(
        default=None,
        metadata={"help": "DATA root in CoOp's layout, for CoOp dataset names (docs/reproducing.md#datasets)."},
    )
    template: str | None = field(
        default=None,
        metadata={
            "help": "Prompt template with one '{}', or a key of the built-in templates; default: the data set's, "
            "else 'a photo of a {}.'."
        },
    )
    split: str = field(default="test", metadata={"help": "Split evaluated on."})
    test_limit: int | None = field(
        default=None,
        metadata={
            "help": "Evaluate on a fixed random subset of this many images (the same for every seed and command); "
            "default: the whole split."
        },
    )
    image_decoding: ImageDecoding | None = field(
        default=None,
        metadata={
            "help": "How image files become RGB: dassl (PIL open + convert('RGB') only, as the paper's code reads "
            "them), or robust (EXIF orientation applied, transparent pixels on white). Default: dassl for the "
            "paper's datasets (CoOp names, the recipe's image_decoding), robust otherwise."
        },
    )
    per_device_eval_batch_size: int = field(
        default=64, metadata={"help": "Images per forward pass when evaluating.", "aliases": ["--eval-batch-size"]}
    )

    def __post_init__(self) -> None:
        if self.test_limit is not None and self.test_limit < 1:
            raise ValueError(f"test_limit={self.test_limit} is invalid; give a positive number of images or omit it.")
        if self.per_device_eval_batch_size < 1:
            raise ValueError(
                f"per_device_eval_batch_size={self.per_device_eval_batch_size} is invalid; expected >= 1."
            )
        if self.image_decoding not in (None, "robust", "dassl"):
            raise ValueError(f"image_decoding={self.image_decoding!r} is invalid; expected 'dassl' or 'robust'.")
        build_prompts(["class"], self.resolved_template())  # a bad template fails here, before any model is loaded

    def resolved_decoding(self) -> str:
        """The decoding given, else the paper's (Dassl's) for its datasets, else the robust one."""
        if self.image_decoding is not None:
            return self.image_decoding
        return "dassl" if self.data in COOP_DATASETS else "robust"

    def resolved_template(self) -> str:
        """The template given, else the data set's, else the default one."""
        return self.template or TEMPLATES.get(self.data, TEMPLATES["default"])


@dataclass
class EvalArguments:
    adapter: str | None = field(
        default=None,
        metadata={"help": "Skip Tuning adapter directory (from `peft-skip train`); without it, the base model."},
    )
    output_dir: str | None = field(
        default=None,
        metadata={"help": "Write eval_results.json into this directory instead of printing it.", "aliases": ["--out"]},
    )
    dataloader_num_workers: int = field(
        default=2, metadata={"help": "Worker processes that read and transform the test images (0: none)."}
    )
    precision: Literal["fp32", "fp16_reference"] = field(
        default="fp32",
        metadata={
            "help": "fp16_reference: float16 weights with float32 layer norms, as the reference evaluates and as "
            "`train --precision fp16_reference` reports its accuracies (faster on a GPU); fp32: float32."
        },
    )

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "fp16_reference"):
            raise ValueError(f"precision={self.precision!r} is invalid; expected 'fp32' or 'fp16_reference'.")
        if self.dataloader_num_workers < 0:
            raise ValueError(f"dataloader_num_workers={self.dataloader_num_workers} is invalid; expected >= 0.")
