"""What a command loads and evaluates: the model, the data, the evaluation's output, logging. See `training_args.py`
for how to train and `SkipConfig` for the method; the command line is generated from these dataclasses."""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Literal

import transformers

from ..data import TEMPLATES, ImageDataset, ImageDecoding, build_prompts, is_table_spec, load_dataset_spec
from ..data.coop import COOP_DATASETS
from ..training.recipes import PROTOCOLS


@dataclass
class ModelArguments:
    model: str = field(
        metadata={"help": "Model name on the Hub or a local directory (e.g. from `peft-skip make-offline-model`)."}
    )

    def __post_init__(self) -> None:
        path = os.path.expanduser(self.model)
        # A Hub id is `name` or `owner/name`; anything else is a directory, and a missing one is said as such.
        if os.path.isfile(path):
            raise NotADirectoryError(f"--model {self.model} is a file; give the model's directory or a Hub id.")
        if (path.startswith((".", os.sep)) or path.count("/") > 1) and not os.path.isdir(path):
            raise FileNotFoundError(
                f"--model {self.model}: no such directory; give a model directory or a Hub id such as "
                "openai/clip-vit-base-patch16."
            )


@dataclass
class DataArguments:
    data: str = field(
        metadata={
            "help": "Data set: 'fashion-mnist', 'digits', 'hf:<name or saved dir>', 'imagefolder:<dir>', a .parquet, "
            ".csv, .tsv or .json(l) file of rows with an image and a label column ('{split}' in its name is replaced "
            "by the split), an image folder (one sub-folder per class, optionally under train/ and test/), or a CoOp "
            "dataset name such as 'eurosat' (with --data-root)."
        }
    )
    data_root: str | None = field(
        default=None,
        metadata={"help": "DATA root in CoOp's layout, for CoOp dataset names (docs/reproducing.md#datasets)."},
    )
    image_column: str | None = field(
        default=None,
        metadata={"help": "Column of the images, for hf:, imagefolder: and table-file data (default: 'image')."},
    )
    label_column: str | None = field(
        default=None,
        metadata={"help": "Column of the labels, for hf:, imagefolder: and table-file data (default: 'label')."},
    )
    class_names: str | None = field(
        default=None,
        metadata={
            "help": "The classes' names in label order: a file with one name per line, or a comma-separated list "
            "(default: the data set's own)."
        },
    )
    template: list[str] | None = field(
        default=None,
        metadata={
            "help": "Prompt template(s), each with one '{}' or a key of the built-in templates; several are a prompt "
            "ensemble: evaluation averages each class's text features over them, training uses the first (as the "
            "reference trains on one). Default: the data set's, else 'a photo of a {}.'."
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
        if isinstance(self.template, str):  # one template, from a config file or Python
            self.template = [self.template]
        if self.test_limit is not None and self.test_limit < 1:
            raise ValueError(f"test_limit={self.test_limit} is invalid; give a positive number of images or omit it.")
        if self.per_device_eval_batch_size < 1:
            raise ValueError(
                f"per_device_eval_batch_size={self.per_device_eval_batch_size} is invalid; expected >= 1."
            )
        columns = [f"--{n}" for n in ("image_column", "label_column") if getattr(self, n) is not None]
        if columns and not is_table_spec(self.data):
            raise ValueError(
                f"{' and '.join(columns)} choose columns of hf:, imagefolder: or table-file data, not of --data "
                f"{self.data}: drop them."
            )
        if self.class_names is not None and not self.class_name_list():
            raise ValueError(f"--class_names {self.class_names!r} names no class; give a file or a comma list.")
        if self.image_decoding not in (None, "robust", "dassl"):
            raise ValueError(f"image_decoding={self.image_decoding!r} is invalid; expected 'dassl' or 'robust'.")
        for template in self.resolved_templates():
            build_prompts(["class"], template)  # a bad template fails here, before any model is loaded

    def resolved_decoding(self) -> str:
        """The decoding given, else the paper's (Dassl's) for its datasets, else the robust one."""
        if self.image_decoding is not None:
            return self.image_decoding
        return "dassl" if self.data in COOP_DATASETS else "robust"

    def resolved_templates(self, default: str | None = None) -> list[str]:
        """The templates given, else `default`, else the data set's, else the default one."""
        return list(self.template or [default or TEMPLATES.get(self.data, TEMPLATES["default"])])

    def class_name_list(self) -> list[str] | None:
        """`class_names` read: the file's non-empty lines, else the comma list's items."""
        if self.class_names is None:
            return None
        if os.path.isfile(self.class_names):
            with open(self.class_names, encoding="utf-8") as f:
                return [line.strip() for line in f if line.strip()]
        return [name.strip() for name in self.class_names.split(",") if name.strip()]

    def load(self, split: str) -> ImageDataset:
        """The split `split` of `data`, with the columns and class names given (the decoding is the caller's:
        `resolved_decoding`)."""
        names = self.class_name_list()
        if is_table_spec(self.data):
            columns = {"image_column": self.image_column or "image", "label_column": self.label_column or "label"}
            dataset = load_dataset_spec(self.data, split, data_root=self.data_root, class_names=names, **columns)
        else:
            dataset = load_dataset_spec(self.data, split, data_root=self.data_root)
            if names is not None and len(names) != len(dataset.class_names):
                raise ValueError(
                    f"--class_names gives {len(names)} names, {self.data} has {len(dataset.class_names)} classes: "
                    "give one name per class, in label order."
                )
            if names is not None:
                dataset = dataclasses.replace(dataset, class_names=names)
        return dataset


@dataclass
class EvalArguments:
    adapter: str | None = field(
        default=None,
        metadata={"help": "Skip Tuning adapter directory (from `peft-skip train`); without it, the base model."},
    )
    protocol: Literal[PROTOCOLS] = field(
        default="few_shot",
        metadata={
            "help": "base_to_new: base and new accuracy and their harmonic mean, over the first and second half of "
            "the classes as `train --protocol base_to_new` splits them; the other protocols: accuracy over all "
            "classes."
        },
    )
    output_dir: str | None = field(
        default=None,
        metadata={"help": "Write eval_results.json into this directory instead of printing it.", "aliases": ["--out"]},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Write eval_results.json into an --out holding files peft-skip did not write (they are kept)."
        },
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
    disable_tqdm: bool = field(default=False, metadata={"help": "No progress bars.", "aliases": ["--no-progress"]})

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "fp16_reference"):
            raise ValueError(f"precision={self.precision!r} is invalid; expected 'fp32' or 'fp16_reference'.")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol={self.protocol!r} is invalid; expected one of {PROTOCOLS}.")
        if self.dataloader_num_workers < 0:
            raise ValueError(f"dataloader_num_workers={self.dataloader_num_workers} is invalid; expected >= 0.")


# transformers' `TrainingArguments.log_level` values; "passive" leaves the levels as they are.
LOG_LEVELS = ("passive", "debug", "info", "warning", "error", "critical")


@dataclass
class LoggingArguments:
    log_level: Literal[LOG_LEVELS] = field(
        default="passive",
        metadata={
            "help": "Level of peft-skip's and transformers' loggers on the main process, as transformers' "
            "`log_level`: passive keeps peft-skip at info and transformers at warning."
        },
    )

    def __post_init__(self) -> None:
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"log_level={self.log_level!r} is invalid; expected one of {LOG_LEVELS}.")

    def apply(self) -> None:
        """Sets the loggers' level (the main process only: the others stay at warning)."""
        if self.log_level == "passive" or int(os.environ.get("RANK", "0")) != 0:
            return
        level = getattr(logging, self.log_level.upper())
        logging.getLogger("peft_skip").setLevel(level)
        transformers.utils.logging.set_verbosity(level)
