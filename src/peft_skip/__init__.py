"""Skip Tuning (Wu et al., CVPR 2025) as a peft method for transformers CLIP-family models.

Importing this package registers peft type `SKIP`, so `get_peft_model(model, SkipConfig(...))`,
`PeftConfig.from_pretrained` and `PeftModel.from_pretrained` work. Import it before loading a Skip Tuning adapter.
"""

from .tuner.versions import check_versions

check_versions()  # before peft's enum and transformers' `load_adapter` are patched

from .tuner.model import register  # noqa: E402

register()

from .towers import Tower, Towers, get_towers  # noqa: E402
from .training.cache import ImageCache, TextCache, build_text_cache  # noqa: E402
from .training.classes import ClassSelector, keep_count, rank_keep_probabilities  # noqa: E402
from .training.evaluation import evaluate_accuracy, evaluate_protocol, tokenize_classes  # noqa: E402
from .training.hf_trainer import SkipHFTrainer  # noqa: E402
from .training.loss import drop_tokens, skip_tuning_loss  # noqa: E402
from .training.trainer import SkipTrainer  # noqa: E402
from .training.training_args import SkipTrainingArguments  # noqa: E402
from .tuner.config import SkipConfig  # noqa: E402
from .tuner.hub import push_to_hub  # noqa: E402
from .tuner.model import SkipModel  # noqa: E402

__version__ = "0.1.0"
__all__ = [
    "ClassSelector",
    "ImageCache",
    "SkipConfig",
    "SkipHFTrainer",
    "SkipModel",
    "SkipTrainer",
    "SkipTrainingArguments",
    "TextCache",
    "Tower",
    "Towers",
    "build_text_cache",
    "drop_tokens",
    "evaluate_accuracy",
    "evaluate_protocol",
    "get_towers",
    "keep_count",
    "push_to_hub",
    "rank_keep_probabilities",
    "skip_tuning_loss",
    "tokenize_classes",
]
