"""Image folders, Hugging Face datasets and the --dataset specs (tiny synthetic data, seconds)."""

from __future__ import annotations

import os

import datasets
import pytest
from synthetic_images import colour_image, write_folder

from peft_skip.data import (
    from_hf_dataset,
    load_dataset_spec,
    load_hf_dataset,
    load_image_folder,
)


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
    with pytest.raises(ValueError, match="pass `--class_names`"):
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


def test_coop_dataset_name_spec(tmp_path):
    from coop_miniature import write_coop_miniature

    from peft_skip.data.coop import load_coop_dataset

    root = write_coop_miniature(tmp_path, datasets=("eurosat",))
    test = load_dataset_spec("eurosat", "test", data_root=root)
    assert test.items == load_coop_dataset("eurosat", root, "test").items and len(test) == 8
    with pytest.raises(ValueError, match="--data-root"):
        load_dataset_spec("eurosat", "test")


@pytest.mark.parametrize("suffix", [".csv", ".json", ".parquet"])
def test_table_files_with_image_paths_relative_to_the_file(tmp_path, suffix):
    """Rows of a table file, one per split through `{split}`; image paths are read next to the file."""
    write_folder(tmp_path / "images", {"red": 2, "blue": 1})
    for split in ("train", "test"):
        rows = datasets.Dataset.from_dict(
            {"file": ["images/red/img_00.png", "images/red/img_01.png", "images/blue/img_00.png"], "y": [1, 1, 0]}
        )
        path = str(tmp_path / f"{split}{suffix}")
        {".csv": rows.to_csv, ".json": rows.to_json, ".parquet": rows.to_parquet}[suffix](path)
    spec = str(tmp_path / f"{{split}}{suffix}")
    dataset = load_dataset_spec(spec, "test", image_column="file", label_column="y", class_names=["blue", "red"])
    assert (dataset.class_names, dataset.labels) == (["blue", "red"], [1, 1, 0])
    assert dataset.image(1).getpixel((0, 0)) == (10, 0, 7)  # red's second image
    with pytest.raises(FileNotFoundError, match="val"):
        load_dataset_spec(spec, "val", image_column="file", label_column="y", class_names=["blue", "red"])
