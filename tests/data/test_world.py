"""The captioned world: deterministic scenes, images and captions; pretraining never sees what tasks hold out."""

from __future__ import annotations

import numpy as np
import pytest

from peft_skip.data.world import (
    BACKGROUNDS,
    COLOUR_NAMES,
    FASHION,
    OBJECTS,
    PRETRAIN_BACKGROUNDS,
    World,
    world_words,
)
from peft_skip.data.world_tasks import WORLD_TASK_NAMES, load_world_task, world_tasks


@pytest.fixture(scope="module")
def world() -> World:
    return World(0)


def test_same_seed_same_pairs(world):
    first = world.pretraining_batch(16, np.random.default_rng(3))
    second = World(0).pretraining_batch(16, np.random.default_rng(3))
    assert np.array_equal(first[0], second[0]) and first[1] == second[1]
    assert first[0].shape == (16, 32, 32, 3) and first[0].dtype == np.uint8
    other = world.pretraining_batch(16, np.random.default_rng(4))
    assert not np.array_equal(first[0], other[0])


def test_pretraining_holds_out_combinations_backgrounds_and_outlines(world):
    scenes = world.sample(4000, np.random.default_rng(0))
    assert not world.held_out[scenes["object"], scenes["colour"]].any()
    assert set(np.unique(scenes["background"])) == {BACKGROUNDS.index(b) for b in PRETRAIN_BACKGROUNDS}
    assert (scenes["style"] == 0).all()
    # A fifth of the combinations is held out, two colours of every object.
    assert world.held_out.sum() == len(OBJECTS) * 2 and (world.held_out.sum(1) == 2).all()


def test_item_instances_of_pretraining_and_tasks_are_disjoint(world):
    _, pools = world._bank
    for obj in range(len(FASHION)):  # drawn shapes have one instance, shared
        sets = [set(pools[split][obj].tolist()) for split in ("pretrain", "train", "test")]
        assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])


def test_captions_name_the_object_in_words(world):
    rng = np.random.default_rng(0)
    scenes = world.sample(200, rng)
    captions = world.captions(scenes, rng)
    for caption, obj, colour in zip(captions, scenes["object"], scenes["colour"], strict=True):
        assert OBJECTS[obj] in caption
        assert not any(c in caption.split() for c in COLOUR_NAMES if c != COLOUR_NAMES[colour])
    assert len(set(captions)) > 100
    words = {w for text in world_words() for w in text.replace(",", " ").replace(".", " ").split()}
    assert {w for c in captions for w in c.replace(",", " ").replace(".", " ").split()} <= words


@pytest.mark.parametrize("name", WORLD_TASK_NAMES)
def test_tasks_are_deterministic_and_split(name):
    train, test = load_world_task(name, "train"), load_world_task(name, "test")
    assert len(train.class_names) >= 10 and train.class_names == test.class_names
    assert min(train.class_counts()) >= 16 and min(test.class_counts()) >= 16
    assert np.asarray(train.image(0)).shape == (32, 32, 3)
    assert train.fingerprint() == load_world_task(name, "train").fingerprint() != test.fingerprint()


def test_combos_task_uses_only_held_out_combinations(world):
    task = world_tasks(world)["combos"]
    for fixed in task.classes:
        assert world.held_out[OBJECTS.index(fixed["object"]), COLOUR_NAMES.index(fixed["colour"])]


def test_unknown_task_or_split_is_one_clear_error():
    with pytest.raises(ValueError, match="Unknown world task 'nope'"):
        load_world_task("nope", "train")
    with pytest.raises(ValueError, match="splits"):
        load_world_task("combos", "val")
