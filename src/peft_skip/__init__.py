"""Skip Tuning (Wu et al., CVPR 2025) as a peft method for transformers CLIP-family models.

Importing this package registers peft type `SKIP`, so `get_peft_model(model, SkipConfig(...))`,
`PeftConfig.from_pretrained` and `PeftModel.from_pretrained` work. Import it before loading a Skip Tuning adapter.

The names here are what a user calls: the config and model, the two trainers, evaluation, the towers of a supported
model, the Hub upload. The step's parts (caches, CSkip, the loss) live in `peft_skip.training`'s modules.
"""

from .tuner.versions import check_versions

check_versions()  # before peft's enum and transformers' `load_adapter` are patched

from .tuner.model import register  # noqa: E402

register()

from .towers import Tower, Towers, get_towers  # noqa: E402
from .training.evaluation import evaluate_accuracy, evaluate_protocol, tokenize_classes  # noqa: E402
from .training.hf_trainer import SkipHFTrainer  # noqa: E402
from .training.trainer import SkipTrainer  # noqa: E402
from .training.training_args import SkipTrainingArguments  # noqa: E402
from .tuner.config import SkipConfig  # noqa: E402
from .tuner.hub import push_to_hub  # noqa: E402
from .tuner.model import SkipModel  # noqa: E402

__version__ = "0.1.0"
__all__ = [
    "SkipConfig",
    "SkipHFTrainer",
    "SkipModel",
    "SkipTrainer",
    "SkipTrainingArguments",
    "Tower",
    "Towers",
    "evaluate_accuracy",
    "evaluate_protocol",
    "get_towers",
    "push_to_hub",
    "tokenize_classes",
]
