"""Data loading, few-shot sampling, prompts, preprocessing and the offline model (tiny synthetic data, seconds)."""

from __future__ import annotations

import math
import os

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from transformers import CLIPImageProcessor

from peft_skip.data import (
    FASHION_MNIST_CLASSES,
    TEMPLATES,
    ImageDataset,
    ImageTransform,
    build_prompts,
    from_hf_dataset,
    load_dataset_spec,
    load_fashion_mnist,
    load_hf_dataset,
    load_image_folder,
    sample_few_shot,
    split_base_new,
    subset_classes,
    to_rgb,
)

FASHION_ROOT = "/usr/share/datasets/fashion-mnist"


def colour_image(colour, size=(12, 10)) -> PIL.Image.Image:
    return PIL.Image.new("RGB", size, colour)


def write_folder(root, counts: dict[str, int], size=(12, 10)) -> None:
    """One sub-folder per class with `count` solid-colour PNGs whose red channel encodes the image's number."""
    for c, (name, count) in enumerate(counts.items()):
        os.makedirs(root / name, exist_ok=True)
        for i in range(count):
            colour_image((10 * i, 20 * c, 7), size).save(root / name / f"img_{i:02d}.png")


# ---------------------------------------------------------------- image folders and bad data


def test_image_folder_classes_labels_and_images(tmp_path):
    write_folder(tmp_path, {"zebra": 2, "apple": 3, "mango_fruit": 1})
    (tmp_path / "apple" / "notes.txt").write_text("not an image")
    dataset = load_image_folder(tmp_path)
    assert dataset.class_names == ["apple", "mango_fruit", "zebra"]
    assert dataset.labels == [0, 0, 0, 1, 2, 2]
    assert dataset.class_counts() == [3, 1, 2]
    image = dataset.image(4)
    assert image.mode == "RGB" and image.size == (12, 10)
    assert image.getpixel((0, 0)) == (0, 0, 7)  # zebra/img_00.png: zebra was written first (green 0)
    assert len(dataset.subset([5, 0])) == 2 and dataset.subset([5, 0]).labels == [2, 0]


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="No class sub-folders"):
        load_image_folder(tmp_path)
    write_folder(tmp_path, {"cat": 2})
    os.makedirs(tmp_path / "dog")
    with pytest.raises(ValueError, match="'dog' has zero images"):
        load_image_folder(tmp_path)


def test_corrupt_image_error_names_the_file(tmp_path):
    write_folder(tmp_path, {"cat": 1})
    bad = tmp_path / "cat" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    dataset = load_image_folder(tmp_path)
    index = dataset.items.index(str(bad))
    with pytest.raises(OSError, match="broken.jpg"):
        dataset.image(index)
    dataset.image(1 - index)  # the good one still reads


@pytest.mark.parametrize(
    "mode, make, expected",
    [
        ("L", lambda: PIL.Image.new("L", (4, 3), 77), (77, 77, 77)),
        ("1", lambda: PIL.Image.new("1", (4, 3), 1), (255, 255, 255)),
        ("I;16", lambda: PIL.Image.fromarray(np.full((3, 4), 65535, np.uint16)), (255, 255, 255)),
        ("I;16 mid", lambda: PIL.Image.fromarray(np.full((3, 4), 257 * 100, np.uint16)), (100, 100, 100)),
        ("I", lambda: PIL.Image.fromarray(np.full((3, 4), 257 * 30, np.int32)), (30, 30, 30)),
        ("F", lambda: PIL.Image.fromarray(np.full((3, 4), 0.5, np.float32)), (128, 128, 128)),
        ("RGBA opaque", lambda: PIL.Image.new("RGBA", (4, 3), (10, 20, 30, 255)), (10, 20, 30)),
        ("RGBA clear", lambda: PIL.Image.new("RGBA", (4, 3), (10, 20, 30, 0)), (255, 255, 255)),
        ("LA", lambda: PIL.Image.new("LA", (4, 3), (40, 255)), (40, 40, 40)),
        ("CMYK", lambda: PIL.Image.new("CMYK", (4, 3), (0, 0, 0, 0)), (255, 255, 255)),
    ],
)
def test_to_rgb_modes(mode, make, expected):
    image = to_rgb(make())
    assert image.mode == "RGB" and image.size == (4, 3)
    assert image.getpixel((1, 1)) == expected


def test_palette_images_with_and_without_transparency(tmp_path):
    palette = PIL.Image.new("P", (4, 3), 1)
    palette.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    assert to_rgb(palette).getpixel((0, 0)) == (200, 100, 50)
    palette.info["transparency"] = 1
    assert to_rgb(palette).getpixel((0, 0)) == (255, 255, 255)


def test_grey_16bit_and_rgba_files_read_as_rgb(tmp_path):
    os.makedirs(tmp_path / "a")
    PIL.Image.fromarray(np.full((5, 6), 257 * 200, np.uint16)).save(tmp_path / "a" / "deep.png")
    PIL.Image.new("L", (6, 5), 9).save(tmp_path / "a" / "grey.png")
    PIL.Image.new("RGBA", (6, 5), (1, 2, 3, 255)).save(tmp_path / "a" / "rgba.png")
    dataset = load_image_folder(tmp_path)
    pixels = [dataset.image(i).getpixel((2, 2)) for i in range(3)]
    assert pixels == [(200, 200, 200), (9, 9, 9), (1, 2, 3)]


def test_dataset_validation():
    with pytest.raises(ValueError, match=r"Duplicate class names \['cat'\]"):
        ImageDataset(["cat", "dog", "cat"], [], [])
    with pytest.raises(ValueError, match="one label per image"):
        ImageDataset(["cat"], ["x.png"], [])
    with pytest.raises(ValueError, match="out of range"):
        ImageDataset(["cat"], ["x.png"], [1])


def test_fingerprint_is_stable_and_sensitive(tmp_path):
    write_folder(tmp_path, {"a": 2, "b": 2})
    first, again = load_image_folder(tmp_path), load_image_folder(tmp_path)
    assert first.fingerprint() == again.fingerprint()
    assert first.subset([0, 1]).fingerprint() != first.subset([0, 2]).fingerprint()
    renamed = ImageDataset(["a", "c"], first.items, first.labels)
    assert renamed.fingerprint() != first.fingerprint()
    relabelled = ImageDataset(first.class_names, first.items, [1, 0, 0, 1])
    assert relabelled.fingerprint() != first.fingerprint()
    in_memory = ImageDataset(["x"], [colour_image((1, 2, 3))], [0])
    assert in_memory.fingerprint() != ImageDataset(["x"], [colour_image((1, 2, 4))], [0]).fingerprint()


# ---------------------------------------------------------------- HF datasets


def tiny_hf(labels=(0, 1, 2, 1, 0, 2), names=("cat", "dog", "fish")):
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(names))})
    images = [colour_image((i, 0, 0)) for i in range(len(labels))]
    return datasets.Dataset.from_dict({"image": images, "label": list(labels)}, features=features)


def test_hf_dataset_uses_class_label_names():
    dataset = from_hf_dataset(tiny_hf())
    assert dataset.class_names == ["cat", "dog", "fish"]
    assert dataset.labels == [0, 1, 2, 1, 0, 2]
    image = dataset.image(3)
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (3, 0, 0)
    assert dataset.fingerprint() == from_hf_dataset(tiny_hf()).fingerprint()


def test_hf_dataset_string_labels_and_errors():
    images = [colour_image((i, 0, 0)) for i in range(3)]
    strings = datasets.Dataset.from_dict(
        {"img": images, "kind": ["zebra", "ant", "zebra"]},
        features=datasets.Features({"img": datasets.Image(), "kind": datasets.Value("string")}),
    )
    dataset = from_hf_dataset(strings, image_column="img", label_column="kind")
    assert dataset.class_names == ["ant", "zebra"] and dataset.labels == [1, 0, 1]
    assert dataset.image(2).getpixel((0, 0)) == (2, 0, 0)
    with pytest.raises(ValueError, match="no column"):
        from_hf_dataset(strings)
    floats = datasets.Dataset.from_dict({"image": images, "label": [0.5, 1.0, 2.0]})
    with pytest.raises(TypeError, match="row 0 holds 0.5"):
        from_hf_dataset(floats)
    ints = datasets.Dataset.from_dict({"image": images, "label": [0, 1, 1]})
    with pytest.raises(ValueError, match="pass `class_names`"):
        from_hf_dataset(ints)
    assert from_hf_dataset(ints, class_names=["x", "y"]).class_names == ["x", "y"]
    with pytest.raises(ValueError, match="no label"):
        from_hf_dataset(tiny_hf(labels=(0, -1, 1)))


def test_hf_image_column_as_paths_and_undecoded_bytes(tmp_path):
    write_folder(tmp_path, {"a": 2})
    paths = sorted(str(p) for p in (tmp_path / "a").iterdir())
    by_path = from_hf_dataset(datasets.Dataset.from_dict({"image": paths, "label": ["a", "a"]}))
    assert by_path.image(1).getpixel((0, 0)) == (10, 0, 7)
    features = datasets.Features({"image": datasets.Image(decode=False), "label": datasets.ClassLabel(names=["a"])})
    undecoded = datasets.Dataset.from_dict({"image": paths, "label": [0, 0]}, features=features)
    assert from_hf_dataset(undecoded).image(1).getpixel((0, 0)) == (10, 0, 7)
    corrupt = datasets.Dataset.from_dict(
        {"image": [{"bytes": b"not a png", "path": "x.png"}], "label": [0]}, features=features
    )
    with pytest.raises(OSError, match="row 0 .*x.png"):
        from_hf_dataset(corrupt).image(0)
    numbers = datasets.Dataset.from_dict({"image": [1.5], "label": ["a"]})
    with pytest.raises(TypeError, match="not an image"):
        from_hf_dataset(numbers).image(0)


def test_hf_dataset_from_disk_and_spec(tmp_path):
    datasets.DatasetDict({"train": tiny_hf(), "test": tiny_hf(labels=(2, 2))}).save_to_disk(tmp_path / "saved")
    test = load_hf_dataset(str(tmp_path / "saved"), "test")
    assert test.labels == [2, 2] and test.class_names == ["cat", "dog", "fish"]
    assert load_dataset_spec(f"hf:{tmp_path / 'saved'}", "train").labels == [0, 1, 2, 1, 0, 2]
    with pytest.raises(ValueError, match="splits"):
        load_hf_dataset(str(tmp_path / "saved"), "validation")


def test_imagefolder_builder_spec(tmp_path):
    write_folder(tmp_path / "data" / "train", {"bird": 2, "ant": 1})
    dataset = load_dataset_spec(f"imagefolder:{tmp_path / 'data'}", "train")
    assert dataset.class_names == ["ant", "bird"]
    assert sorted(dataset.labels) == [0, 1, 1]
    assert dataset.image(0).mode == "RGB"


# ---------------------------------------------------------------- Fashion-MNIST, digits, specs


def test_fashion_mnist():
    test = load_fashion_mnist("test")
    assert len(test) == 10_000 and test.class_names == FASHION_MNIST_CLASSES
    assert test.class_counts() == [1000] * 10
    image = test.image(0)
    assert image.mode == "RGB" and image.size == (28, 28)
    r, g, b = (np.asarray(image)[..., c] for c in range(3))
    assert (r == g).all() and (g == b).all() and r.max() > 100
    assert test.labels[0] == 9  # the first test image is an ankle boot
    assert load_dataset_spec("fashion-mnist", "test").fingerprint() == test.fingerprint()
    with pytest.raises(ValueError, match="splits 'train' and 'test'"):
        load_fashion_mnist("val")


def test_fashion_mnist_missing_files_say_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("test", root=str(tmp_path))


def test_fashion_mnist_uncompressed_idx(tmp_path):
    import gzip

    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(f"{FASHION_ROOT}/{name}.gz", "rb") as f:
            (tmp_path / name).write_bytes(f.read())
    uncompressed = load_fashion_mnist("test", root=str(tmp_path))
    reference = load_fashion_mnist("test")
    assert uncompressed.labels == reference.labels
    assert np.array_equal(np.asarray(uncompressed.image(123)), np.asarray(reference.image(123)))


def test_digits_split_is_deterministic_and_disjoint():
    train, test = load_dataset_spec("digits", "train"), load_dataset_spec("digits", "test")
    assert len(train) + len(test) == 1797 and not set(train.items) & set(test.items)
    assert train.items == load_dataset_spec("digits", "train").items
    assert all(count > 0 for count in test.class_counts())
    assert train.image(0).size == (8, 8) and train.image(0).mode == "RGB"


def test_directory_spec_with_split_folders(tmp_path):
    write_folder(tmp_path / "train", {"a": 2, "b": 2})
    write_folder(tmp_path / "val", {"a": 1, "b": 1})
    assert len(load_dataset_spec(str(tmp_path), "train")) == 4
    assert len(load_dataset_spec(str(tmp_path), "validation")) == 2
    with pytest.raises(ValueError, match="none for split 'test'"):
        load_dataset_spec(str(tmp_path), "test")
    with pytest.raises(ValueError, match="Unknown dataset"):
        load_dataset_spec(str(tmp_path / "nowhere"), "train")
    write_folder(tmp_path / "plain", {"a": 1})
    with pytest.warns(UserWarning, match="uses all of its images"):
        assert len(load_dataset_spec(str(tmp_path / "plain"), "test")) == 1


# ---------------------------------------------------------------- few-shot, base/new, prompts


def test_sample_few_shot_is_seeded_and_balanced():
    dataset = load_dataset_spec("digits", "train")
    first = sample_few_shot(dataset, 4, seed=1)
    assert first.class_counts() == [4] * 10
    assert first.items == sample_few_shot(dataset, 4, seed=1).items
    assert first.items != sample_few_shot(dataset, 4, seed=2).items
    assert len(set(first.items)) == 40


def test_sample_few_shot_errors():
    dataset = ImageDataset(["cat", "dog", "eel"], ["a", "b", "c", "d"], [0, 0, 0, 1])
    with pytest.raises(ValueError, match=r"\['eel'\] have zero images"):
        sample_few_shot(dataset, 1, 0)
    dataset = ImageDataset(["cat", "dog"], ["a", "b", "c", "d"], [0, 0, 0, 1])
    with pytest.raises(ValueError, match="2 shots asked but 'dog' has 1 images"):
        sample_few_shot(dataset, 2, 0)
    with pytest.raises(ValueError, match="at least 1"):
        sample_few_shot(dataset, 0, 0)


@pytest.mark.parametrize("num_classes, num_base", [(2, 1), (5, 3), (10, 5), (37, 19), (101, 51)])
def test_split_base_new(num_classes, num_base):
    base, new = split_base_new([f"c{i}" for i in range(num_classes)])
    assert base == list(range(num_base)) and new == list(range(num_base, num_classes))
    assert num_base == math.ceil(num_classes / 2)


def test_subset_classes_relabels():
    dataset = ImageDataset(["a", "b", "c", "d"], list("pqrstu"), [0, 1, 2, 3, 2, 1])
    new = subset_classes(dataset, [2, 3])
    assert new.class_names == ["c", "d"] and new.items == ["r", "s", "t"] and new.labels == [0, 1, 0]
    swapped = subset_classes(dataset, [3, 1])
    assert swapped.class_names == ["d", "b"] and swapped.labels == [1, 0, 1]
    with pytest.raises(ValueError, match="duplicates"):
        subset_classes(dataset, [1, 1])
    with pytest.raises(ValueError, match="out of range"):
        subset_classes(dataset, [4])


def test_build_prompts():
    assert build_prompts(["golden_retriever", "cat"]) == ["a photo of a golden retriever.", "a photo of a cat."]
    assert build_prompts(["pug"], "oxford_pets") == ["a photo of a pug, a type of pet."]
    assert build_prompts(["Coat"], "fashion-mnist") == ["a photo of a Coat, a type of clothing."]
    assert build_prompts(["banded"], "{} texture.") == ["banded texture."]
    assert TEMPLATES["eurosat"].count("{}") == 1
    with pytest.raises(ValueError, match="exactly one"):
        build_prompts(["x"], "no placeholder")


# ---------------------------------------------------------------- preprocessing


def random_image(width=50, height=37, seed=0) -> PIL.Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return PIL.Image.fromarray(pixels)


@pytest.mark.parametrize("size", [(50, 37), (37, 50), (32, 32)])
def test_eval_transform_matches_clip_image_processor(size):
    processor = CLIPImageProcessor(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24})
    image = random_image(*size)
    expected = processor(images=image, return_tensors="pt")["pixel_values"][0]
    ours = ImageTransform.from_processor(processor, train=False)(image)
    assert ours.shape == (3, 24, 24) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


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


def test_transform_converts_grey_input():
    out = ImageTransform(8, [0.0] * 3, [1.0] * 3, train=False)(PIL.Image.new("L", (10, 8), 51))
    torch.testing.assert_close(out, torch.full((3, 8, 8), 0.2))
