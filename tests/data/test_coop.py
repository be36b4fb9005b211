"""CoOp-layout datasets: each layout loads from its miniature; Dassl's few-shot sets and base / new classes; errors."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from coop_miniature import write_coop_miniature

from peft_skip.data import ImageDataset, coop_fewshot
from peft_skip.data.coop import COOP_DATASETS, coop_folder, coop_splits, load_coop_dataset
from peft_skip.data.coop_fewshot import coop_few_shot, few_shot_file, sample_train_val
from peft_skip.data.coop_splits import clean_class_name
from peft_skip.data.splits import few_shot_indices, split_base_new, subset_classes
from peft_skip.training.recipes import REFERENCE_DATASETS

DOCS = "docs/reproducing.md#datasets"
IMAGENET_NAMES = ["tench", "goldfish", "great white shark", "tiger shark"]
# dataset -> (class names, first train item relative to the DATA root), as CoOp's code would read the miniature.
EXPECTED = {
    "imagenet": (IMAGENET_NAMES, "imagenet/images/train/n01440764/n01440764_1.JPEG"),
    "caltech101": (
        ["face", "leopard", "accordion", "airplane"],
        "caltech-101/101_ObjectCategories/Faces/image_0001.jpg",
    ),
    "oxford_pets": (
        ["abyssinian", "american_bulldog", "american_pit_bull_terrier", "basset_hound"],
        "oxford_pets/images/Abyssinian_1.jpg",
    ),
    "stanford_cars": (
        ["2000 AM General Hummer SUV", "2012 Acura RL Sedan", "2012 Acura TL Sedan", "2008 Acura TL Type-S"],
        "stanford_cars/cars_train/00001.jpg",
    ),
    "oxford_flowers": (
        ["pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea"],
        "oxford_flowers/jpg/image_00001.jpg",
    ),
    "food101": (["apple_pie", "baby_back_ribs", "baklava", "beef_carpaccio"], "food-101/images/apple_pie/100001.jpg"),
    "fgvc_aircraft": (["707-320", "727-200", "Cessna 172", "F-16A/B"], "fgvc_aircraft/images/1000001.jpg"),
    "sun397": (
        ["abbey", "airplane_cabin", "outdoor apartment_building", "shop bakery"],
        "sun397/SUN397/a/abbey/sun_a00001.jpg",
    ),
    "dtd": (["banded", "blotchy", "braided", "bubbly"], "dtd/images/banded/banded_1001.jpg"),
    "eurosat": (
        ["Annual Crop Land", "Forest", "Herbaceous Vegetation Land", "Highway or Road"],
        "eurosat/2750/AnnualCrop/AnnualCrop_1.jpg",
    ),
    "ucf101": (
        ["Apply_Eye_Makeup", "Apply_Lipstick", "Archery", "Baby_Crawling"],
        "ucf101/UCF-101-midframes/Apply_Eye_Makeup/v_ApplyEyeMakeup_g01_c02.jpg",
    ),
    "imagenetv2": (IMAGENET_NAMES, "imagenetv2/imagenetv2-matched-frequency-format-val/0/" + "0" * 39 + "1.jpeg"),
    "imagenet_sketch": (IMAGENET_NAMES, "imagenet-sketch/images/n01440764/0.jpg"),
    "imagenet_a": (["goldfish", "tiger shark"], "imagenet-adversarial/imagenet-a/n01443537/0.jpg"),
    "imagenet_r": (["tench", "goldfish", "great white shark"], "imagenet-rendition/imagenet-r/n01440764/0.jpg"),
}
# Miniature sizes per class: train 6, val 5, test 2 (ImageNet: train 6, val = test 2; shifted sets: test 2).
SIZES = {"train": 6, "val": 5, "test": 2}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_coop_miniature(tmp_path_factory.mktemp("DATA"))


def one_line_error(err) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


def test_the_loaders_cover_the_recipes_datasets():
    assert set(COOP_DATASETS) == set(REFERENCE_DATASETS) == set(EXPECTED)


@pytest.mark.parametrize("name", COOP_DATASETS)
def test_every_layout_loads_from_its_miniature(root, name):
    class_names, first = EXPECTED[name]
    splits = coop_splits(name)
    seen = {}
    for split in splits:
        dataset = load_coop_dataset(name, root, split)
        assert isinstance(dataset, ImageDataset) and dataset.class_names == class_names
        per_class = SIZES["test"] if name.startswith("imagenet") and split != "train" else SIZES[split]
        assert dataset.class_counts() == [per_class] * len(class_names)
        assert all(os.path.isabs(item) and os.path.isfile(item) for item in dataset.items)
        assert len(set(dataset.items)) == len(dataset)
        assert dataset.image(len(dataset) - 1).mode == "RGB"
        seen[split] = set(dataset.items)
    if "train" in splits:
        assert Path(load_coop_dataset(name, root, "train").items[0]) == root / first
        assert not seen["train"] & seen["test"]
    else:
        assert splits == ("test",) and Path(load_coop_dataset(name, root, "test").items[0]) == root / first
    assert (root / coop_folder(name)).is_dir()


def test_imagenet_val_is_its_test_set_and_the_shifted_sets_are_subsets_of_its_classes(root):
    assert load_coop_dataset("imagenet", root, "val").items == load_coop_dataset("imagenet", root, "test").items
    assert coop_splits("imagenet_a") == ("test",)
    adversarial = load_coop_dataset("imagenet_a", root, "test")  # README.txt beside the class folders is skipped
    assert adversarial.labels == [0, 0, 1, 1] and "/n01491361/" in adversarial.items[-1]
    v2 = load_coop_dataset("imagenetv2", root, "test")  # folders 0..3 are labels 0..3
    assert [Path(item).parent.name for item in v2.items] == ["0", "0", "1", "1", "2", "2", "3", "3"]
    assert v2.labels == [0, 0, 1, 1, 2, 2, 3, 3]


def test_caltech_skips_the_folders_coop_ignores(root):
    assert (root / "caltech-101/101_ObjectCategories/BACKGROUND_Google").is_dir()
    items = load_coop_dataset("caltech101", root, "train").items
    assert not any("BACKGROUND_Google" in item or "Faces_easy" in item for item in items)


def test_class_name_clean_ups_are_coops_and_idempotent():
    assert clean_class_name("eurosat", "SeaLake") == "Sea or Lake"
    assert clean_class_name("eurosat", "Sea or Lake") == "Sea or Lake"
    assert clean_class_name("ucf101", "ApplyEyeMakeup") == "Apply_Eye_Makeup"
    assert clean_class_name("ucf101", "Apply_Eye_Makeup") == "Apply_Eye_Makeup"
    assert clean_class_name("ucf101", "YoYo") == "Yo_Yo"
    assert clean_class_name("caltech101", "Motorbikes") == "motorbike"
    assert clean_class_name("dtd", "SeaLake") == "SeaLake"


def test_a_split_file_with_raw_folder_names_reads_coops_names(tmp_path):
    write_coop_miniature(tmp_path, datasets=("eurosat",))
    path = tmp_path / "eurosat/split_zhou_EuroSAT.json"
    split = json.loads(path.read_text())
    raw = {"Annual Crop Land": "AnnualCrop", "Herbaceous Vegetation Land": "HerbaceousVegetation"}
    raw |= {"Highway or Road": "Highway"}
    for entries in split.values():
        for entry in entries:
            entry[2] = raw.get(entry[2], entry[2])
    path.write_text(json.dumps(split))
    assert load_coop_dataset("eurosat", tmp_path, "val").class_names == EXPECTED["eurosat"][0]


# ---- few-shot sets, as Dassl draws them ----------------------------------------------------------------------------


def test_few_shot_indices_hand_worked():
    labels = [0, 0, 0, 1, 1, 1, 1, 2, 2]
    # random.Random(1): sample([0, 1, 2], 2) -> [0, 2]; sample([3, 4, 5, 6], 2) -> [5, 3]; then class 2 has exactly
    # 2 images, which Dassl still passes through random.sample (a shuffle): [8, 7].
    assert few_shot_indices(labels, 2, random.Random(1)) == [0, 2, 5, 3, 8, 7]
    # Classes come in order of first appearance, as Dassl's defaultdict keeps them.
    assert few_shot_indices([1, 0, 1, 0], 1, random.Random(0))[0] in (0, 2)
    # Fewer images than shots: Dassl keeps them all (no repeats).
    assert few_shot_indices([0, 1, 1], 4, random.Random(5)) == [0, 1, 2]
    with pytest.raises(ValueError, match="at least 1"):
        few_shot_indices(labels, 0, random.Random(0))


def dassl_reference_draw(split_file: Path, image_dir: Path, shots: int, seed: int):
    """Dassl's procedure, restated: `random.seed(seed)` (set_random_seed), then per class `random.sample` on train,
    then min(shots, 4) per class on val, continuing the same global stream."""
    split = json.loads(split_file.read_text())
    random.seed(seed)
    out = []
    for part, k in (("train", shots), ("val", min(shots, 4))):
        tracker = {}
        for path, label, _ in split[part]:
            tracker.setdefault(label, []).append(os.fspath(image_dir / path))
        chosen = []
        for items in tracker.values():
            chosen += random.sample(items, k) if len(items) >= k else items
        out.append(chosen)
    return out


@pytest.mark.parametrize("shots, seed", [(1, 1), (4, 2), (8, 3)])
def test_few_shot_draws_exactly_what_dassl_draws(root, tmp_path, shots, seed):
    train, val = coop_few_shot("dtd", root, shots, seed, tmp_path)
    expected_train, expected_val = dassl_reference_draw(
        root / "dtd/split_zhou_DescribableTextures.json", root / "dtd/images", shots, seed
    )
    assert train.items == expected_train and val.items == expected_val
    assert train.class_counts() == [min(shots, SIZES["train"])] * 4  # 8 shots of 6 images: all 6, as in Dassl
    assert val.class_counts() == [min(shots, 4)] * 4  # val: min(k, 4)
    assert train.class_names == val.class_names == EXPECTED["dtd"][0]


def test_few_shot_is_deterministic_per_seed_and_stored_as_json(root, tmp_path, monkeypatch):
    first = coop_few_shot("oxford_pets", root, 2, 1, tmp_path / "a")
    again = coop_few_shot("oxford_pets", root, 2, 1, tmp_path / "b")
    other = coop_few_shot("oxford_pets", root, 2, 2, tmp_path / "a")
    assert first[0].items == again[0].items and first[1].items == again[1].items
    assert first[0].items != other[0].items
    path = few_shot_file(tmp_path / "a", 2, 1)
    assert path == tmp_path / "a/split_fewshot/shot_2-seed_1.json"
    record = json.loads(path.read_text())  # JSON, not a pickle
    assert (record["dataset"], record["shots"], record["seed"]) == ("oxford_pets", 2, 1)
    assert record["train"][0] == [
        os.path.relpath(first[0].items[0], root).replace(os.sep, "/"),
        first[0].labels[0],
        first[0].class_names[first[0].labels[0]],
    ]
    assert len(record["val"]) == 8
    # The stored selection is reused, not drawn again.
    monkeypatch.setattr(coop_fewshot, "sample_train_val", lambda *args: pytest.fail("sampled again"))
    reread = coop_few_shot("oxford_pets", root, 2, 1, tmp_path / "a")
    assert reread[0].items == first[0].items and reread[1].items == first[1].items


def test_imagenet_few_shot_samples_train_only(root, tmp_path):
    train, val = coop_few_shot("imagenet", root, 2, 1, tmp_path)
    assert train.class_counts() == [2, 2, 2, 2]
    assert val.items == load_coop_dataset("imagenet", root, "val").items
    assert json.loads(few_shot_file(tmp_path, 2, 1).read_text())["val"] is None


def test_a_stale_few_shot_file_is_refused_in_one_line(root, tmp_path):
    coop_few_shot("food101", root, 1, 1, tmp_path)
    path = few_shot_file(tmp_path, 1, 1)
    record = json.loads(path.read_text())
    record["train"][0][0] = "images/apple_pie/999.jpg"
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError) as err:
        coop_few_shot("food101", root, 1, 1, tmp_path)
    assert "train[0]" in one_line_error(err) and "delete the file" in str(err.value)
    record["dataset"] = "dtd"
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError) as err:
        coop_few_shot("food101", root, 1, 1, tmp_path)
    assert "made for" in one_line_error(err)
    path.write_bytes(b"\x80\x04pickle")
    with pytest.raises(ValueError) as err:
        coop_few_shot("food101", root, 1, 1, tmp_path)
    assert DOCS in one_line_error(err)


# ---- base / new classes --------------------------------------------------------------------------------------------


def test_base_new_hand_worked():
    names = ["a", "b", "c", "d", "e"]
    train = ImageDataset(names, ["p0", "p1", "p2", "p3", "p4", "p5"], [4, 0, 2, 1, 3, 3])
    assert split_base_new(train) == (["a", "b", "c"], ["d", "e"])  # 5 classes: ceil(5 / 2) = 3 base
    assert split_base_new(ImageDataset(names[:2], ["p", "q"], [1, 0])) == (["a"], ["b"])
    # Only the labels present count, as in Dassl: "c" has no image here.
    assert split_base_new(ImageDataset(names, ["p", "q", "r"], [0, 1, 3])) == (["a", "b"], ["d"])
    test = ImageDataset(names, ["q0", "q1", "q2"], [3, 2, 4])
    base, new = split_base_new(train)
    base_train, base_test = subset_classes(train, base), subset_classes(test, base)
    assert base_train.class_names == ["a", "b", "c"] and base_train.items == ["p1", "p2", "p3"]
    assert base_train.labels == [0, 2, 1] and (base_test.items, base_test.labels) == (["q1"], [2])
    new_train, new_test = subset_classes(train, new), subset_classes(test, new)
    assert new_train.class_names == ["d", "e"] and new_train.labels == [1, 0, 0]
    assert (new_test.items, new_test.labels) == (["q0", "q2"], [0, 1])
    with pytest.raises(ValueError, match="at least 2 classes"):
        split_base_new(ImageDataset(names, ["p", "q"], [0, 0]))


def test_base_new_after_few_shot_as_in_coop(root):
    train = load_coop_dataset("eurosat", root, "train")
    test = load_coop_dataset("eurosat", root, "test")
    few_train, _ = sample_train_val(train, None, 2, 1)
    base, new = split_base_new(few_train)
    base_train, base_test = subset_classes(few_train, base), subset_classes(test, base)
    new_train, new_test = subset_classes(few_train, new), subset_classes(test, new)
    assert new_train.class_names == new_test.class_names
    assert base_train.class_names == ["Annual Crop Land", "Forest"]
    assert new_test.class_names == ["Herbaceous Vegetation Land", "Highway or Road"]
    assert base_test.labels == [0, 0, 1, 1] and new_test.labels == [0, 0, 1, 1]
    assert new_test.items == test.items[4:] and base_train.class_counts() == [2, 2]


# ---- errors --------------------------------------------------------------------------------------------------------


def test_missing_root_folder_or_split_file_is_one_line_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_coop_dataset("dtd", tmp_path / "nowhere", "train")
    assert "nowhere" in one_line_error(err) and DOCS in str(err.value)
    with pytest.raises(FileNotFoundError) as err:
        load_coop_dataset("dtd", tmp_path, "train")
    assert str(tmp_path / "dtd") in one_line_error(err) and DOCS in str(err.value)
    write_coop_miniature(tmp_path, datasets=("dtd", "imagenet_r", "fgvc_aircraft"))
    (tmp_path / "dtd/split_zhou_DescribableTextures.json").unlink()
    with pytest.raises(FileNotFoundError) as err:
        load_coop_dataset("dtd", tmp_path, "train")
    assert "split_zhou_DescribableTextures.json" in one_line_error(err) and DOCS in str(err.value)
    (tmp_path / "imagenet-rendition/classnames.txt").unlink()
    with pytest.raises(FileNotFoundError) as err:
        load_coop_dataset("imagenet_r", tmp_path, "test")
    assert "classnames.txt" in one_line_error(err) and DOCS in str(err.value)
    (tmp_path / "fgvc_aircraft/images_variant_val.txt").unlink()
    with pytest.raises(FileNotFoundError) as err:
        load_coop_dataset("fgvc_aircraft", tmp_path, "val")
    assert "images_variant_val.txt" in one_line_error(err)


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda split: split["train"].__setitem__(0, ["banded/banded_1001.jpg", "0", "banded"]), "train[0]"),
        (lambda split: split["val"].__setitem__(2, ["banded/banded_1001.jpg", 0]), "val[2]"),
        (lambda split: split["test"].__setitem__(0, ["banded/banded_1001.jpg", 0, "striped"]), "label 0 is both"),
        (lambda split: split["train"].__setitem__(1, ["../../etc/passwd", 0, "banded"]), "train[1]"),
        (lambda split: split.pop("val"), "needs lists"),
        (lambda split: split["test"].append(["x.jpg", 9, "zigzagged"]), "missing [4, 5, 6, 7, 8]"),
    ],
)
def test_malformed_split_entries_are_one_line_naming_the_entry(tmp_path, mutate, expected):
    write_coop_miniature(tmp_path, datasets=("dtd",))
    path = tmp_path / "dtd/split_zhou_DescribableTextures.json"
    split = json.loads(path.read_text())
    mutate(split)
    path.write_text(json.dumps(split))
    with pytest.raises(ValueError) as err:
        load_coop_dataset("dtd", tmp_path, "train")
    assert expected in one_line_error(err) and str(path) in str(err.value) and DOCS in str(err.value)


def test_other_malformed_files_are_one_line(tmp_path):
    write_coop_miniature(tmp_path, datasets=("dtd", "fgvc_aircraft", "imagenet"))
    (tmp_path / "dtd/split_zhou_DescribableTextures.json").write_text("{not json")
    with pytest.raises(ValueError) as err:
        load_coop_dataset("dtd", tmp_path, "test")
    assert "not valid JSON" in one_line_error(err)
    with open(tmp_path / "fgvc_aircraft/images_variant_test.txt", "a") as f:
        f.write("1234567 Boeing 999\n")
    with pytest.raises(ValueError) as err:
        load_coop_dataset("fgvc_aircraft", tmp_path, "test")
    assert "images_variant_test.txt:9" in one_line_error(err) and DOCS in str(err.value)
    (tmp_path / "imagenet/images/val/n09999999").mkdir()
    with pytest.raises(ValueError) as err:
        load_coop_dataset("imagenet", tmp_path, "val")
    assert "n09999999" in one_line_error(err) and "classnames.txt" in str(err.value)
    (tmp_path / "imagenet/classnames.txt").write_text("n01440764 tench\nn01443537\n")
    with pytest.raises(ValueError) as err:
        load_coop_dataset("imagenet", tmp_path, "train")
    assert "classnames.txt:2" in one_line_error(err)


def test_unknown_names_and_splits_list_the_choices(root):
    with pytest.raises(ValueError) as err:
        load_coop_dataset("cifar10", root, "train")
    assert all(name in one_line_error(err) for name in COOP_DATASETS)
    with pytest.raises(ValueError) as err:
        load_coop_dataset("dtd", root, "validation")
    assert "train, val, test" in one_line_error(err)
    with pytest.raises(ValueError) as err:
        load_coop_dataset("imagenet_sketch", root, "train")
    assert "choose one of test" in one_line_error(err)
    with pytest.raises(ValueError, match="Unknown CoOp dataset"):
        write_coop_miniature(root, datasets=("cifar10",))
