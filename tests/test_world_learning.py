"""Skip Tuning learns: a few shots of a world task lift the CLIP pretrained here clearly above its zero-shot accuracy.

The test that turns red when the method breaks in a way the mechanics tests miss (a wrong label remap in CSkip, wrong
prototypes, a wrong attention mask): a random-weight model sits at chance either way, this one does not.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from peft_skip.commands.arguments import DataArguments, ModelArguments
from peft_skip.commands.experiment import train_and_evaluate
from peft_skip.offline.pretrain import world_clip_path
from peft_skip.training.training_args import SkipTrainingArguments
from peft_skip.tuner.config import SkipConfig


def test_few_shot_skip_tuning_beats_zero_shot(tmp_path):
    # The README's recipe (examples/world.yaml), shortened: 8 shots of 40 classes, 3 epochs, 400 test images.
    training = SkipTrainingArguments(
        output_dir=str(tmp_path),
        shots=8,
        num_train_epochs=3,
        optim="adamw_torch",
        learning_rate=3e-4,
        batch_size=8,
        sampler="random",
        crop_min_area=1.0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    data = DataArguments(data="world:combos", test_limit=400, per_device_eval_batch_size=200)
    metrics = train_and_evaluate(ModelArguments(world_clip_path()), data, SkipConfig(skip_layers=3), training)
    zero_shot, tuned = metrics["zero_shot"]["accuracy"], metrics["tuned"]["accuracy"]
    assert not metrics["random_weights"] and zero_shot > 0.5, metrics["zero_shot"]  # pretrained, not random
    assert tuned >= zero_shot + 0.04, (zero_shot, tuned)


def test_the_readme_recipe_names_real_options():
    from peft_skip.commands.cli import _build

    with open(Path(__file__).resolve().parents[1] / "examples" / "world.yaml", encoding="utf-8") as f:
        options = yaml.safe_load(f)
    train = _build()[1]["train"]
    known = {a.dest for a in train._actions}
    assert set(options) <= known, set(options) - known
