"""SkipConfig: the peft configuration of Skip Tuning."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal, get_args

from peft.config import PeftConfig
from peft.utils import PeftType

from .adapter_files import (
    CONFIG_NAME,
    PICKLE_WEIGHTS_NAME,
    STAGING_DIR,
    WEIGHTS_NAME,
    check_finite_tensors,
    check_saved_config,
    file_sha256,
    read_tensor_shapes,
)
from .card import build_card, write_card

# The floating-point dtypes tensors are stored in (deltas, caches), by name.
StorageDtype = Literal["float32", "float16", "bfloat16"]
STORAGE_DTYPES: tuple[str, ...] = get_args(StorageDtype)
# How token drop picks the dropped tokens (`peft_skip.training.loss.drop_tokens`).
TokenDropMode = Literal["reference", "per_image"]
# The fields that describe the method (as opposed to peft bookkeeping); shown in model cards and run metrics.
METHOD_FIELDS = (
    "skip_layers",
    "vision_skip_layers",
    "text_skip_layers",
    "class_ratio",
    "max_classes",
    "class_decay",
    "token_drop",
    "token_drop_mode",
    "delta_dtype",
)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require(name: str, value: object, ok: bool, expected: str) -> None:
    if not ok:
        raise ValueError(f"SkipConfig.{name}={value!r} is invalid; expected {expected}.")


@dataclass
class SkipConfig(PeftConfig):
    """Configuration of Skip Tuning (Wu et al., CVPR 2025): fine-tune the deep layers of both towers in place.

    The first `skip_layers` layers of both encoders stay frozen (LSkip: their outputs are cached once); each training
    step runs the text encoder only for a subset of classes (CSkip: the batch's classes, the `class_ratio` most
    similar to its images, and a random tail whose keep probability decays with rank at scale `class_decay`).

    Args:
        skip_layers (`int`): Number of frozen shallow layers ω of both towers (paper: 6 of 12).
        vision_skip_layers (`int`, *optional*): Overrides `skip_layers` for the image tower.
        text_skip_layers (`int`, *optional*): Overrides `skip_layers` for the text tower.
        class_ratio (`float`): Classes always kept per step: a fraction of all classes if ≤ 1, else a count.
        max_classes (`int`): Upper bound on the classes always kept per step.
        class_decay (`float`): Scale λ of the exponential keep probability over the remaining class ranks.
        token_drop (`float`): Upper bound of the fraction of cached image tokens dropped per step (0 = off).
        token_drop_mode (`str`): `"reference"` (the authors'): the same tokens for the whole batch, the class token
            among them, `ceil(r * T)`; `"per_image"`: each image its own tokens, the class token kept, rounded down.
        init_weights (`bool`): `True` starts the tuned weights at the base weights; `False` adds small random deltas.
        delta_dtype (`str`): Dtype the deltas are saved in: `float32`, `float16` or `bfloat16`.
        base_model_fingerprint (`dict`, *optional*): Set when the model is wrapped: identifies the base weights the
            deltas apply to.
        verify_base_model (`bool`): Refuse to load the adapter onto a base model whose fingerprint differs.
        weights_sha256 (`str`, *optional*): Set when saved: the sha256 of the weights file written with this config,
            so that a config and weights from different saves are never loaded together.
    """

    skip_layers: int = field(
        default=6, metadata={"help": "Number of frozen shallow layers (ω) of both towers; layers ω..N-1 are trained."}
    )
    vision_skip_layers: int | None = field(
        default=None, metadata={"help": "Frozen layers of the image tower; overrides `skip_layers` when set."}
    )
    text_skip_layers: int | None = field(
        default=None, metadata={"help": "Frozen layers of the text tower; overrides `skip_layers` when set."}
    )
    class_ratio: float = field(
        default=0.5,
        metadata={
            "help": "CSkip: classes always kept per step, as a fraction of all classes (≤ 1) or a count (> 1). "
            "1 keeps every class."
        },
    )
    max_classes: int = field(default=50, metadata={"help": "CSkip: upper bound on the classes always kept per step."})
    class_decay: float = field(
        default=0.3,
        metadata={"help": "CSkip: scale λ of the exponential keep probability over the ranks beyond the top classes."},
    )
    token_drop: float = field(
        default=0.0,
        metadata={"help": "Upper bound of the random fraction of cached image tokens dropped per step; 0 is off."},
    )
    token_drop_mode: TokenDropMode = field(
        default="reference",
        metadata={
            "help": "reference (the authors'): drop ceil(r*T) of all T tokens, the same for the whole batch, the "
            "class token included; per_image: drop floor(r*(T-1)) tokens after the class token, each image its own."
        },
    )
    init_weights: bool = field(
        default=True,
        metadata={"help": "True: the tuned weights start at the base weights. False: small random deltas (tests)."},
    )
    delta_dtype: StorageDtype = field(
        default="float32", metadata={"help": "Dtype the deltas are stored in on disk: float32, float16 or bfloat16."}
    )
    base_model_fingerprint: dict | None = field(
        default=None,
        metadata={"help": "Identifies the base weights the deltas apply to; set when the model is first wrapped."},
    )
    verify_base_model: bool = field(
        default=True,
        metadata={"help": "Refuse to apply the deltas to a base model whose weights differ from the fingerprint."},
    )
    weights_sha256: str | None = field(
        default=None,
        metadata={"help": "sha256 of the adapter_model.safetensors saved with this config; set when saved."},
    )
    # peft's injection reads `target_modules`; Skip Tuning derives its targets from the skip_layers instead.
    target_modules = None
    saved_delta_shapes: dict[str, tuple[int, ...]] | None = field(
        default=None,
        init=False,
        repr=False,
        compare=False,
        metadata={
            "help": "Shapes of the deltas in the weights file next to a loaded config, so that the model refuses a "
            "mismatch before it is touched; set by `from_pretrained`, never saved."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.SKIP
        s = self.skip_layers
        _require("skip_layers", s, _is_int(s) and s >= 0, "an integer >= 0")
        for name in ("vision_skip_layers", "text_skip_layers"):
            s = getattr(self, name)
            _require(name, s, s is None or (_is_int(s) and s >= 0), "None or an integer >= 0")
        _require(
            "max_classes", self.max_classes, _is_int(self.max_classes) and self.max_classes >= 1, "an integer >= 1"
        )
        r = self.class_ratio
        _require(
            "class_ratio",
            r,
            _is_number(r) and (0 < r <= 1 or (r > 1 and r % 1 == 0)),
            "a fraction in (0, 1] or a whole number of classes > 1",
        )
        _require(
            "class_decay", self.class_decay, _is_number(self.class_decay) and self.class_decay > 0, "a number > 0"
        )
        _require("token_drop", self.token_drop, _is_number(self.token_drop) and 0 <= self.token_drop < 1, "in [0, 1)")
        _require(
            "token_drop_mode",
            self.token_drop_mode,
            self.token_drop_mode in get_args(TokenDropMode),
            f"one of {get_args(TokenDropMode)}",
        )
        _require("delta_dtype", self.delta_dtype, self.delta_dtype in STORAGE_DTYPES, f"one of {STORAGE_DTYPES}")
        f = self.base_model_fingerprint
        _require(
            "base_model_fingerprint",
            f,
            f is None
            or (
                isinstance(f, dict)
                and set(f) == {"structure", "probe"}
                and isinstance(f["structure"], str)
                and isinstance(f["probe"], list)
                and all(_is_number(v) for v in f["probe"])
            ),
            "None or {'structure': str, 'probe': [numbers]} as saved",
        )
        _require(
            "weights_sha256",
            self.weights_sha256,
            self.weights_sha256 is None or isinstance(self.weights_sha256, str),
            "None or a hex string",
        )
        _require("verify_base_model", self.verify_base_model, isinstance(self.verify_base_model, bool), "a bool")

    def tower_skip_layers(self, tower: str) -> int:
        """ω of the `"vision"` or `"text"` tower."""
        override = self.vision_skip_layers if tower == "vision" else self.text_skip_layers
        return self.skip_layers if override is None else override

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, subfolder: str | None = None, **kwargs):
        """Loads a saved config; for a local adapter directory, also checks its files before any model is touched.

        If the weights are not those the config was saved with, but those of an adapter whose publication was
        interrupted after its weights were moved into place (`run_state.save_adapter`), the config waiting in the
        staging directory is returned: the directory then holds that whole new adapter.

        Raises:
            ValueError: If the directory holds another method's adapter, a config with unknown fields, a corrupt
                or truncated weights file, weights from another save than the config, or non-finite deltas.
            FileNotFoundError: If the weights file next to the config is missing.
        """
        directory = os.path.join(pretrained_model_name_or_path, subfolder or "")
        config_file, weights = os.path.join(directory, CONFIG_NAME), os.path.join(directory, WEIGHTS_NAME)
        if not os.path.isfile(config_file):
            return super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        check_saved_config(config_file, cls, "SKIP")
        if not os.path.isfile(weights) and os.path.isfile(os.path.join(directory, PICKLE_WEIGHTS_NAME)):
            raise ValueError(
                f"{directory} holds {PICKLE_WEIGHTS_NAME} (a pickle): Skip Tuning reads {WEIGHTS_NAME} only; save the "
                "adapter again with peft-skip (safetensors)."
            )
        if not os.path.isfile(weights):
            raise FileNotFoundError(
                f"{weights} is missing: {directory} holds an adapter config without its weights. Copy both files "
                "of the adapter, or save it again."
            )
        shapes = read_tensor_shapes(weights)
        config = super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        if config.weights_sha256 is not None:
            actual = file_sha256(weights)
            if actual != config.weights_sha256:
                staged = os.path.join(directory, STAGING_DIR)
                config = cls._staged_config(staged, actual, **kwargs)
                if config is None:
                    raise ValueError(
                        f"{weights} is not the weights file saved with {config_file} (sha256 differs): the files "
                        "come from different saves or one was modified. Restore both files from one save, or save "
                        "the adapter again."
                    )
        check_finite_tensors(weights)
        config.saved_delta_shapes = shapes
        return config

    @classmethod
    def _staged_config(cls, staged: str, weights_sha256: str, **kwargs) -> SkipConfig | None:
        """The config waiting in `staged` if it was saved with the weights of digest `weights_sha256`."""
        if not os.path.isfile(os.path.join(staged, CONFIG_NAME)):
            return None
        check_saved_config(os.path.join(staged, CONFIG_NAME), cls, "SKIP")
        config = super().from_pretrained(staged, **kwargs)
        return config if config.weights_sha256 == weights_sha256 else None

    def to_dict(self) -> dict:
        config = super().to_dict()
        config.pop("saved_delta_shapes", None)
        return config

    def save_pretrained(self, save_directory: str, **kwargs) -> None:
        pickled = os.path.join(save_directory, PICKLE_WEIGHTS_NAME)
        if os.path.isfile(pickled):
            os.remove(pickled)  # just written by peft, before this config: no adapter is left half-saved
            raise ValueError(
                "Skip Tuning adapters are saved as safetensors only (no pickle; the config records the file's "
                "sha256): call save_pretrained without safe_serialization=False."
            )
        # peft writes the weights before the config: the config records which weights it belongs to.
        weights = os.path.join(save_directory, WEIGHTS_NAME)
        self.weights_sha256 = file_sha256(weights) if os.path.isfile(weights) else None
        super().save_pretrained(save_directory, **kwargs)
        # peft writes its model card before the config: replaced here by Skip Tuning's.
        if os.path.exists(os.path.join(save_directory, "README.md")):
            write_card(save_directory, build_card(self.base_model_name_or_path, self.method_settings()))

    def method_settings(self) -> dict:
        """The fields that describe the method (not peft's bookkeeping): for model cards and run metrics."""
        return {name: getattr(self, name) for name in METHOD_FIELDS}
