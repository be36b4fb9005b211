"""`ImageTransform`: CLIP-style preprocessing of PIL images into normalised tensors, with train augmentation."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import PIL.Image
import torch

from .dataset import to_rgb


class ImageTransform:
    """CLIP preprocessing of a PIL image into a normalised (3, S, S) float tensor, with optional train augmentation.

    Eval: resize the shortest side to S, center crop S x S (or, with `crop=False`, resize straight to S x S). Train:
    random resized crop (area `scale`, aspect ratio 3/4 to 4/3) to S x S, then a random horizontal flip. Both
    normalise with `mean` and `std` after scaling to [0, 1].

    Args:
        image_size: S, the side of the output.
        mean, std: per-channel normalisation (3 values each).
        train: whether to augment.
        scale: range of the crop's area, as a fraction of the image's, for the random resized crop.
        seed: seeds this transform's own generator, used when `__call__` gets none.
        crop: eval only: center crop after resizing the shortest side (CLIP) or resize to a square (SigLIP).
        ratio: range of the crop's aspect ratio (width / height) for the random resized crop.
        resample: PIL resampling filter of every resize (CLIP's and SigLIP's processors use bicubic).
    """

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool,
        scale: tuple[float, float] = (0.08, 1.0),
        seed: int | None = None,
        crop: bool = True,
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        resample: int = PIL.Image.BICUBIC,
    ):
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values each, got {list(mean)} and {list(std)}.")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}.")
        self.image_size = int(image_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.train = train
        self.scale = scale
        self.ratio = ratio
        self.crop = crop
        self.resample = resample
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    @classmethod
    def from_processor(cls, processor, train: bool, **kwargs) -> ImageTransform:
        """Reads output size, resampling, mean and std from an image processor (or a processor holding one).

        A NaFlex processor (SigLIP 2) has no fixed size: the images become the largest square grid of its
        `patch_size` patches that `max_num_patches` allows, resized without crop.
        """
        image_processor = getattr(processor, "image_processor", processor)
        if getattr(image_processor, "max_num_patches", None):
            image_size = image_processor.patch_size * math.isqrt(image_processor.max_num_patches)
            kwargs.setdefault("crop", False)
        else:
            crop_size = image_processor.crop_size if getattr(image_processor, "do_center_crop", False) else None
            size = crop_size or image_processor.size
            image_size = size.get("height") or size.get("shortest_edge")
            if not image_size:
                raise ValueError(f"Cannot read an image size from {type(image_processor).__name__} size {size}.")
            kwargs.setdefault("crop", crop_size is not None)
        if getattr(image_processor, "resample", None) is not None:
            kwargs.setdefault("resample", int(image_processor.resample))
        return cls(image_size, image_processor.image_mean, image_processor.image_std, train, **kwargs)

    def __call__(self, image: PIL.Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        """Returns the (3, S, S) float32 tensor of `image`; `generator` (else this transform's own, else torch's
        global one) drives the augmentation."""
        image = to_rgb(image)
        size = self.image_size
        if self.train:
            generator = generator if generator is not None else self.generator
            left, top, width, height = self._random_crop_box(image.width, image.height, generator)
            image = image.resize((size, size), self.resample, box=(left, top, left + width, top + height))
            if torch.rand((), generator=generator) < 0.5:
                image = image.transpose(PIL.Image.FLIP_LEFT_RIGHT)
        elif self.crop:
            short, long = min(image.size), max(image.size)
            resized_long = int(size * long / short)
            new_size = (size, resized_long) if image.width <= image.height else (resized_long, size)
            image = image.resize(new_size, self.resample)
            # Rounded half to even, where torchvision's center_crop (Dassl's test transform) places the crop.
            left, top = round((image.width - size) / 2), round((image.height - size) / 2)
            image = image.crop((left, top, left + size, top + size))
        else:
            image = image.resize((size, size), self.resample)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (pixels - self.mean) / self.std

    def _random_crop_box(
        self, width: int, height: int, generator: torch.Generator | None
    ) -> tuple[int, int, int, int]:
        """(left, top, width, height) of a crop with area in `scale` and aspect ratio in `ratio`, tried 10 times,
        else the largest center crop with a ratio in range."""
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            u = torch.rand(4, generator=generator).tolist()
            target_area = area * (self.scale[0] + u[0] * (self.scale[1] - self.scale[0]))
            aspect = math.exp(log_ratio[0] + u[1] * (log_ratio[1] - log_ratio[0]))
            crop_w = round(math.sqrt(target_area * aspect))
            crop_h = round(math.sqrt(target_area / aspect))
            if 0 < crop_w <= width and 0 < crop_h <= height:
                left = min(int(u[2] * (width - crop_w + 1)), width - crop_w)
                top = min(int(u[3] * (height - crop_h + 1)), height - crop_h)
                return left, top, crop_w, crop_h
        image_ratio = width / height
        if image_ratio < self.ratio[0]:
            crop_w, crop_h = width, round(width / self.ratio[0])
        elif image_ratio > self.ratio[1]:
            crop_w, crop_h = round(height * self.ratio[1]), height
        else:
            crop_w, crop_h = width, height
        return (width - crop_w) // 2, (height - crop_h) // 2, crop_w, crop_h
