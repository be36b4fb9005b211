"""The batches of an epoch: which sampler the reference's rule picks, and what it draws."""

import pytest
import torch

from peft_skip.training.batches import class_batches, uses_class_batches
from peft_skip.training.training_args import SkipTrainingArguments


@pytest.mark.parametrize("shots, per_class", [(1, False), (3, False), (4, True), (16, True)])
def test_one_class_batches_from_four_shots_on(tmp_path, shots, per_class):
    """The reference draws "batch_random" batches (one class each) with 4 shots or more, random ones below."""
    labels = torch.arange(3).repeat_interleave(shots)
    args = SkipTrainingArguments(output_dir=str(tmp_path), batch_size=4)
    assert uses_class_batches(args, labels) is per_class
    batches = class_batches(labels, 4, per_class, torch.Generator().manual_seed(0))
    assert sorted(torch.cat(batches).tolist()) == list(range(len(labels)))  # every image once
    if per_class:
        assert all(len(set(labels[b].tolist())) == 1 for b in batches)
