"""Reading and transforming images in worker processes, ahead of the model, in a fixed order.

The cache builds and evaluation call a function per batch of images (decode, augment, stack); `ordered_map` runs
those calls in the workers of a torch `DataLoader` while the main process runs the model on the previous batches.
Every call gets exactly its own arguments and the results come back in order, so the outcome is that of one process
whatever the number of workers (each image's augmentation is seeded by the image, never by the worker).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from torch.utils.data import DataLoader, Dataset


class _Calls(Dataset):
    """Item `i` is `function(*arguments[i])`."""

    def __init__(self, function: Callable, arguments: Sequence[tuple]) -> None:
        self.function = function
        self.arguments = arguments

    def __len__(self) -> int:
        return len(self.arguments)

    def __getitem__(self, i: int) -> Any:
        return self.function(*self.arguments[i])


def ordered_map(
    function: Callable, arguments: Sequence[tuple], num_workers: int = 0, pin_memory: bool = False
) -> Iterator[Any]:
    """`function(*args)` for each `args` of `arguments`, in order, computed by `num_workers` worker processes.

    Each worker computes up to two calls ahead of the consumer. Under the `spawn` start method (macOS, Windows)
    `function` and its arguments must be picklable (a module-level function or class instance).

    Args:
        function (`Callable`): What to compute, e.g. `images(view, index_batch)` of `ImageCache.build`.
        arguments (`Sequence[tuple]`): The positional arguments of each call.
        num_workers (`int`): Worker processes; 0 computes each call in this process when it is consumed.
        pin_memory (`bool`): Return tensors in page-locked memory (faster copies to a GPU).
    """
    if num_workers < 0:
        raise ValueError(f"num_workers={num_workers} is invalid; expected >= 0.")
    if num_workers == 0 or len(arguments) < 2:
        yield from (function(*args) for args in arguments)
        return
    # batch_size=None: every item is one call's result, passed through unchanged.
    loader = DataLoader(
        _Calls(function, arguments),
        batch_size=None,
        num_workers=min(num_workers, len(arguments)),
        pin_memory=pin_memory,
    )
    yield from loader
