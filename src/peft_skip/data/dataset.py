"""`ImageDataset`: class names, one item per image and integer labels; images decoded lazily, always as 8-bit RGB."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

import numpy as np
import PIL.Image
import PIL.ImageOps

# How image files become RGB: "robust" (EXIF orientation applied, transparency on white, wide integer and float modes
# scaled, see `to_rgb`); "dassl" (Dassl's `read_image`, the paper's: `PIL.Image.open(path).convert("RGB")` only).
ImageDecoding = Literal["robust", "dassl"]


class ImageSource(Protocol):
    """Where the items of an `ImageDataset` come from when they are not file paths or PIL images."""

    key: str  # identifies the source's content for `ImageDataset.fingerprint`

    def load(self, item: Any) -> PIL.Image.Image: ...


@dataclass
class ImageDataset:
    """A labelled image set.

    Args:
        class_names: name of each class; `labels` index into it. Names must be unique.
        items: one entry per image: a file path, a PIL image, or (with `source`) a key that `source.load` understands.
        labels: class index of each image.
        source: loads items that are not paths or PIL images (rows of an array or of an HF dataset).
        decoding: how images become RGB (`ImageDecoding`): `"robust"`, or `"dassl"` as the paper's code reads them.
    """

    class_names: list[str]
    items: list
    labels: list[int]
    source: ImageSource | None = field(default=None, repr=False)
    decoding: ImageDecoding = "robust"

    def __post_init__(self):
        self.class_names = [str(name) for name in self.class_names]
        self.labels = [int(label) for label in self.labels]
        seen = set()
        duplicates = sorted({name for name in self.class_names if name in seen or seen.add(name)})
        if duplicates:
            raise ValueError(f"Duplicate class names {duplicates}: every class needs its own name.")
        if self.decoding not in ("robust", "dassl"):
            raise ValueError(f"decoding={self.decoding!r} is invalid; expected 'robust' or 'dassl'.")
        if len(self.items) != len(self.labels):
            raise ValueError(f"{len(self.items)} items but {len(self.labels)} labels: give one label per image.")
        bad = [label for label in self.labels if not 0 <= label < len(self.class_names)]
        if bad:
            raise ValueError(f"Labels {sorted(set(bad))[:10]} out of range for {len(self.class_names)} class names.")

    def __len__(self) -> int:
        return len(self.items)

    def image(self, index: int) -> PIL.Image.Image:
        """The image at `index`, converted to 8-bit RGB."""
        item = self.items[index]
        convert = to_rgb if self.decoding == "robust" else _dassl_rgb
        if self.source is not None:
            return convert(self.source.load(item))
        if isinstance(item, PIL.Image.Image):
            return convert(item)
        return read_image(item, self.decoding)

    def with_decoding(self, decoding: ImageDecoding) -> ImageDataset:
        """The same images, decoded the way `decoding` says."""
        return replace(self, decoding=decoding)

    def subset(self, indices: Sequence[int]) -> ImageDataset:
        """The images at `indices`, same classes."""
        indices = [int(i) for i in indices]
        return ImageDataset(
            list(self.class_names),
            [self.items[i] for i in indices],
            [self.labels[i] for i in indices],
            self.source,
            self.decoding,
        )

    def class_counts(self) -> list[int]:
        """Number of images of each class."""
        counts = [0] * len(self.class_names)
        for label in self.labels:
            counts[label] += 1
        return counts

    def fingerprint(self) -> str:
        """A stable hash of the source, the images' contents, labels and class names (for reusing caches built from
        this set and for resuming). Image files count by their bytes, not their paths: a file is hashed once per
        process and again only when its size or modification time changes."""
        digest = hashlib.sha256()
        digest.update(json.dumps(self.class_names).encode())
        digest.update(str(None if self.source is None else self.source.key).encode())
        if self.decoding != "robust":  # the pixels differ (the robust decoding's fingerprints stay as they were)
            digest.update(f"decoding:{self.decoding}".encode())
        for item, label in zip(self.items, self.labels, strict=True):
            if isinstance(item, PIL.Image.Image):
                digest.update(f"{item.mode}{item.size}".encode())
                digest.update(item.tobytes())
            else:
                digest.update(file_digest(item) if isinstance(item, (str, os.PathLike)) else repr(item).encode())
            digest.update(f":{label};".encode())
        return digest.hexdigest()[:16]


# Content digests of image files, by real path: ((size, mtime_ns), sha256 digest).
_file_digests: dict[str, tuple[tuple[int, int], bytes]] = {}


def file_digest(path: str | os.PathLike) -> bytes:
    """sha256 of a file's bytes, recomputed only when its size or modification time changed since the last call."""
    key = os.path.realpath(path)
    try:
        stat = os.stat(key)
    except OSError as error:
        raise OSError(f"Cannot read image file {os.fspath(path)!r}: {error.strerror}. Replace or remove it.") from None
    signature = (stat.st_size, stat.st_mtime_ns)
    known = _file_digests.get(key)
    if known is None or known[0] != signature:
        with open(key, "rb") as f:
            digest = hashlib.sha256()
            while chunk := f.read(1 << 22):
                digest.update(chunk)
        known = (signature, digest.digest())
        _file_digests[key] = known
    return known[1]


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """Converts any PIL image to 8-bit RGB.

    Transparent images are put on a white background. 16- and 32-bit integer images are scaled from the 16-bit range
    (0-65535) to 8 bits, float images from 0-1 when all values lie in it, else from 0-255.

    Args:
        image (`PIL.Image.Image`): An image of any mode.
    """
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode.startswith("I") or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            scale = 255.0 if values.size and 0.0 <= values.min() and values.max() <= 1.0 else 1.0
        else:
            scale = 255.0 / 65535.0
        grey = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
        return PIL.Image.fromarray(grey, mode="L").convert("RGB")
    return image.convert("RGB")


def read_image(path: str | os.PathLike, decoding: ImageDecoding = "robust") -> PIL.Image.Image:
    """Reads an image file as RGB; an unreadable file raises an error naming it.

    Args:
        path (`str` or `os.PathLike`): The image file.
        decoding (`str`): `"robust"`: EXIF orientation applied, then `to_rgb`; `"dassl"`: `convert("RGB")` only, as
            Dassl's `read_image` (the paper's code) does.
    """
    try:
        with PIL.Image.open(path) as image:
            image.load()
            if decoding == "dassl":
                return _dassl_rgb(image)
            image = PIL.ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as err:
        raise OSError(f"Cannot read image file {os.fspath(path)!r}: {err}. Replace or remove the file.") from err
    return to_rgb(image)


def _dassl_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    # PIL's own conversion: transparency dropped (the colour under it kept), no EXIF rotation.
    return image.convert("RGB")
