"""Reproducible randomness: generators seeded by integer keys, and the augmented images of an image-cache pass, each
image of each view drawn with its own generator, the same in any process or data loader worker."""

from __future__ import annotations

from collections.abc import Callable

import torch


def seeded_generator(*keys: int) -> torch.Generator:
    """A generator seeded by a tuple of integers: the same keys give the same stream in every process."""
    return torch.Generator().manual_seed(hash(keys) & 0xFFFF_FFFF_FFFF)


def describe_transform(transform: Callable) -> dict | str:
    """What identifies an augmentation across runs (its settings, not its address) for the cache fingerprint."""
    if not hasattr(transform, "__dict__") or not vars(transform):
        return getattr(transform, "__qualname__", type(transform).__qualname__)
    return {k: str(v) for k, v in vars(transform).items() if not isinstance(v, torch.Generator)}


class AugmentedImages:
    """`images(view, indices)` of the image cache of pass `key`: each image of each view augmented with its own
    generator, so that any process (a data loader's worker included) computes the same pixels."""

    def __init__(self, train_set, transform: Callable, seed: int, key: int) -> None:
        self.train_set, self.transform, self.seed, self.key = train_set, transform, seed, key

    def fingerprint(self) -> dict:
        """What the pixels of this pass are computed from, for the image cache's key (`ImageCache.build` adds what
        the states are computed with): the data set's fingerprint (`None` for a data set without one, whose cache
        cannot be shared), the augmentation, the seed and the pass."""
        data = self.train_set.fingerprint() if hasattr(self.train_set, "fingerprint") else None
        return {
            "data": data,
            "augmentation": describe_transform(self.transform),
            # "per view": each view has its own augmentation (earlier versions repeated the first).
            "seed": {"seed": self.seed, "per view": True},
            "pass": self.key,
        }

    def __call__(self, view: int, indices: torch.Tensor) -> torch.Tensor:
        return torch.stack(
            [
                self.transform(
                    self.train_set.image(int(i)), generator=seeded_generator(self.seed, self.key, view, int(i))
                )
                for i in indices
            ]
        )
