"""LSkip: the hidden states at layer ω of both towers, computed once without gradients.

The shallow layers are frozen, so their outputs only change when the inputs do: the text prompts never change
(`TextCache`, built once), the images change with the augmentation (`ImageCache`, either rebuilt every epoch with
`views=1` as the paper does, or built once with several augmented views that training then picks from).
"""

from .common import human_bytes
from .image import ImageCache
from .text import TextCache, build_text_cache

__all__ = ["ImageCache", "TextCache", "build_text_cache", "human_bytes"]
