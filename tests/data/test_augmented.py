"""The augmented images of an image-cache pass and the key they give the cache."""

from __future__ import annotations

from synthetic_images import write_folder

from peft_skip.data import ImageTransform, load_image_folder
from peft_skip.data.augmented import AugmentedImages


def test_the_cache_key_names_the_data_the_augmentation_the_seed_and_the_pass(tmp_path):
    write_folder(tmp_path, {"a": 2, "b": 2})
    data = load_image_folder(tmp_path)
    transform = ImageTransform(8, [0.5] * 3, [0.5] * 3, train=True)
    key = AugmentedImages(data, transform, seed=1, key=0).fingerprint()
    assert key["data"] == data.fingerprint() and key["pass"] == 0 and key["seed"]["seed"] == 1
    others = [
        AugmentedImages(data, transform, seed=1, key=1),  # the next epoch's pass
        AugmentedImages(data, transform, seed=2, key=0),
        AugmentedImages(data, ImageTransform(8, [0.5] * 3, [0.5] * 3, train=True, scale=(1.0, 1.0)), 1, 0),
        AugmentedImages(data.subset([0, 1, 2]), transform, seed=1, key=0),
    ]
    for other in others:
        assert other.fingerprint() != key
    assert AugmentedImages(data, transform, seed=1, key=0).fingerprint() == key
