"""A whole run as `peft-skip train` makes it, on a tiny offline model and scikit-learn's digits."""

import json

from peft_skip.commands.arguments import DataArguments, ModelArguments
from peft_skip.commands.experiment import train_and_evaluate
from peft_skip.offline import make_offline_model
from peft_skip.training.training_args import SkipTrainingArguments
from peft_skip.tuner.config import SkipConfig


def test_base_to_new_trains_on_the_base_classes_and_tests_each_half_on_its_own(tmp_path):
    model = make_offline_model(str(tmp_path / "tiny"), arch="tiny")
    training = SkipTrainingArguments(
        output_dir=str(tmp_path / "run"), protocol="base_to_new", shots=2, num_train_epochs=2, disable_tqdm=True
    )
    data = DataArguments(data="digits", test_limit=40)
    metrics = train_and_evaluate(ModelArguments(model=model), data, SkipConfig(skip_layers=2), training)
    assert metrics["train_classes"] == ["0", "1", "2", "3", "4"]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["train_classes"] == metrics["train_classes"]
    for result in (metrics["zero_shot"], metrics["tuned"]):
        assert set(result["base"]["per_class"]) <= {"0", "1", "2", "3", "4"}
        assert set(result["new"]["per_class"]) <= {"5", "6", "7", "8", "9"}
