"""ImageTransform: eval preprocessing against transformers' processors, seeded train augmentation."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from synthetic_images import random_image
from transformers import CLIPImageProcessor

from peft_skip.data import (
    ImageTransform,
)


@pytest.mark.parametrize("size", [(50, 37), (37, 50), (32, 32)])
def test_eval_transform_matches_clip_image_processor(size):
    processor = CLIPImageProcessor(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24})
    image = random_image(*size)
    expected = processor(images=image, return_tensors="pt")["pixel_values"][0]
    ours = ImageTransform.from_processor(processor, train=False)(image)
    assert ours.shape == (3, 24, 24) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_the_vit_b_16_processor_gives_the_references_input_pipeline():
    """The reference (Dassl's INPUT) trains and tests at 224 px, bicubic, with a center crop in evaluation: what
    openai/clip-vit-base-patch16's processor (CLIPImageProcessor's defaults) gives our transforms, which read it."""
    processor = CLIPImageProcessor()
    for train in (False, True):
        transform = ImageTransform.from_processor(processor, train=train)
        assert (transform.image_size, transform.resample, transform.crop) == (224, PIL.Image.BICUBIC, True)
    assert ImageTransform.from_processor(processor, train=False)(random_image(300, 250)).shape == (3, 224, 224)


@pytest.mark.parametrize("resample", [PIL.Image.BICUBIC, PIL.Image.BILINEAR])
def test_square_resize_transform_matches_a_processor_without_center_crop(resample):
    processor = CLIPImageProcessor(
        do_center_crop=False, size={"height": 20, "width": 20}, image_mean=[0.5] * 3, resample=resample
    )
    image = random_image(41, 29)
    expected = processor(images=image, return_tensors="pt")["pixel_values"][0]
    transform = ImageTransform.from_processor(processor, train=False)
    assert not transform.crop and transform.image_size == 20 and transform.resample == resample
    torch.testing.assert_close(transform(image), expected, atol=1e-5, rtol=1e-5)


def test_train_transform_is_seeded_and_augments():
    transform = ImageTransform(16, [0.5] * 3, [0.5] * 3, train=True)
    image = random_image()
    first = transform(image, torch.Generator().manual_seed(3))
    assert first.shape == (3, 16, 16)
    torch.testing.assert_close(first, transform(image, torch.Generator().manual_seed(3)))
    views = [transform(image, torch.Generator().manual_seed(s)) for s in range(6)]
    assert all(not torch.equal(views[0], view) for view in views[1:])
    assert -1.0 <= first.min() and first.max() <= 1.0
    own = ImageTransform(16, [0.5] * 3, [0.5] * 3, train=True, seed=5)
    again = ImageTransform(16, [0.5] * 3, [0.5] * 3, train=True, seed=5)
    torch.testing.assert_close(own(image), again(image))


def test_train_transform_full_scale_is_a_resize_or_its_mirror():
    """With crop area 100% and ratio 1, the crop is the whole square image: output = resize, maybe flipped."""
    transform = ImageTransform(12, [0.0] * 3, [1.0] * 3, train=True, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    image = random_image(30, 30)
    resized = ImageTransform(12, [0.0] * 3, [1.0] * 3, train=False, crop=False)(image)
    flips = set()
    for seed in range(8):
        view = transform(image, torch.Generator().manual_seed(seed))
        flipped = torch.allclose(view, resized.flip(-1), atol=1e-6)
        assert flipped or torch.allclose(view, resized, atol=1e-6)
        flips.add(flipped)
    assert flips == {True, False}


@pytest.mark.parametrize("scale", [(0.25, 0.25), (0.5, 0.5), (0.1, 0.9)])
def test_train_crop_area_follows_scale(scale):
    """The random resized crop covers a fraction of the image's area drawn uniformly from `scale`."""
    # Red is the column, green the row: the output's range of each tells the crop's width and height.
    grid = np.stack(np.meshgrid(np.arange(200), np.arange(200)), axis=-1).astype(np.uint8)
    image = PIL.Image.fromarray(np.concatenate([grid, np.zeros((200, 200, 1), np.uint8)], axis=-1))
    transform = ImageTransform(50, [0.0] * 3, [1 / 255] * 3, train=True, scale=scale, ratio=(1.0, 1.0))
    areas = []
    for seed in range(40):
        view = transform(image, torch.Generator().manual_seed(seed))
        width, height = (float(view[c].max() - view[c].min()) + 1 for c in (0, 1))
        areas.append(width * height / 200**2)
    assert sum(areas) / len(areas) == pytest.approx(sum(scale) / 2, abs=0.05)
    assert min(areas) >= scale[0] - 0.03 and max(areas) <= scale[1] + 0.03


def test_transform_converts_grey_input():
    out = ImageTransform(8, [0.0] * 3, [1.0] * 3, train=False)(PIL.Image.new("L", (10, 8), 51))
    torch.testing.assert_close(out, torch.full((3, 8, 8), 0.2))


@pytest.mark.parametrize("extra, top", [(1, 0), (3, 2), (5, 2), (6, 3)])
def test_center_crop_offset_rounds_as_torchvision(extra, top):
    """Dassl's test transform crops with torchvision's `center_crop`, whose offset is `round(extra / 2)` (half to
    even), not `extra // 2`."""
    rows = torch.arange(24 + extra, dtype=torch.uint8).view(-1, 1, 1).expand(-1, 24, 3).contiguous()
    image = PIL.Image.fromarray(rows.numpy())
    transform = ImageTransform(24, [0.0] * 3, [1.0] * 3, train=False, resample=PIL.Image.NEAREST)
    first_row = round(float(transform(image)[0, 0, 0]) * 255)
    assert first_row == top
