"""ImageDataset: validation, fingerprints, and decoding any image (file or PIL mode) to RGB."""

from __future__ import annotations

import os

import numpy as np
import PIL.Image
import pytest
from synthetic_images import colour_image, write_folder

from peft_skip.data import (
    ImageDataset,
    load_image_folder,
    to_rgb,
)


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


def test_dassl_decoding_converts_only(tmp_path):
    """The paper's decoding (Dassl's `read_image`): no EXIF rotation, transparent pixels keep the colour under them;
    the robust one rotates and puts them on white. Subsets keep the decoding, the fingerprint tells them apart."""
    wide = PIL.Image.new("RGB", (6, 2), (10, 20, 30))
    exif = wide.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display
    wide.save(tmp_path / "rotated.jpg", exif=exif)
    PIL.Image.new("RGBA", (4, 3), (10, 20, 30, 0)).save(tmp_path / "clear.png")
    robust = ImageDataset(["a"], [str(tmp_path / "rotated.jpg"), str(tmp_path / "clear.png")], [0, 0])
    dassl = robust.with_decoding("dassl")
    assert robust.image(0).size == (2, 6) and dassl.image(0).size == (6, 2)
    assert robust.image(1).getpixel((0, 0)) == (255, 255, 255) and dassl.image(1).getpixel((0, 0)) == (10, 20, 30)
    assert dassl.subset([1]).decoding == "dassl"
    assert dassl.fingerprint() != robust.fingerprint()
    with pytest.raises(ValueError, match="decoding"):
        robust.with_decoding("exif")


def test_paper_datasets_decode_as_dassl():
    from peft_skip.commands.arguments import DataArguments

    assert DataArguments("eurosat").resolved_decoding() == "dassl"
    assert DataArguments("fashion-mnist").resolved_decoding() == "robust"
    assert DataArguments("eurosat", image_decoding="robust").resolved_decoding() == "robust"
