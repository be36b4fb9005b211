"""The image cache: image states at layer ω of the vision tower, per augmented view, in memory or on disk."""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import math
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ...data.workers import ordered_map
from ...towers import Tower
from ...tuner.fingerprint import fingerprint as weights_fingerprint
from ..locks import file_lock
from .common import _check_skip_layers, _device_of, human_bytes
from .disk import COMPLETE_FILE, META_FILE, NUMPY_STORAGE, STATES_FILE, allocate_states, reuse_problem, write_states

logger = logging.getLogger(__name__)


def _indices_digest(indices: torch.Tensor) -> str:
    return hashlib.sha256(indices.numpy().astype(np.int64).tobytes()).hexdigest()[:16]


def _one_build_at_a_time(build: Callable) -> Callable:
    """Lets one process at a time check, build and open a cache entry on disk (`build` with a `cache_dir`): another
    run sharing the directory waits, then reuses the entry or rebuilds it, and never reads it half-built. The lock is
    a `fcntl.flock`, released by the OS if its holder dies. A reader keeps its memory map of a complete entry valid
    even if another run rebuilds it later (the rebuild writes a new file; the mapped one lives on until unmapped)."""
    signature = inspect.signature(build)

    @functools.wraps(build)
    def locked(*args, **kwargs):
        arguments = signature.bind(*args, **kwargs)
        arguments.apply_defaults()
        cache_dir, num_images = arguments.arguments["cache_dir"], arguments.arguments["num_images"]
        if cache_dir is None:
            return build(*args, **kwargs)
        indices = arguments.arguments["indices"]
        indices = torch.arange(num_images) if indices is None else torch.unique(torch.as_tensor(indices).cpu())
        shard = "all" if len(indices) == num_images else f"shard-{_indices_digest(indices)}"
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        with file_lock(Path(cache_dir) / f"{shard}.lock", f"the image cache {Path(cache_dir) / shard}", wait=True):
            return build(*args, **kwargs)

    return locked


class ImageCache:
    """Image states at layer ω: `V` augmented views of `n` images, `(T, D_v)` each.

    Build it with [`ImageCache.build`]. The states live in memory, or in a memory-mapped `.npy` file when a
    `cache_dir` is given, so a data set larger than RAM only costs the batches read from it.

    Attributes:
        indices (`torch.Tensor`): The (global) image indices held, ascending, shape `(n,)`.
        views (`int`): Number of augmented views of each image.
        dtype (`torch.dtype`): Storage dtype.
        fingerprint (`dict`): What the states were computed from (see [`ImageCache.build`]).
        path (`Path` or `None`): Directory of the files on disk, `None` in memory.
    """

    def __init__(
        self,
        states: torch.Tensor | np.ndarray,
        indices: torch.Tensor,
        num_images: int,
        dtype: torch.dtype,
        fingerprint: dict,
        path: Path | None = None,
    ) -> None:
        self._states = states  # (V, n, T, D): a tensor, or a numpy memmap of the same layout
        self.indices = indices
        self.views = states.shape[0]
        self.dtype = dtype
        self.fingerprint = fingerprint
        self.path = path
        self._row_of = torch.full((num_images,), -1, dtype=torch.long)
        self._row_of[indices] = torch.arange(len(indices))

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def shape(self) -> tuple[int, ...]:
        """`(views, images, tokens, hidden)`."""
        return tuple(self._states.shape)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.finfo(self.dtype).bits // 8

    def get(self, indices: torch.Tensor, view: int | torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """States of some images, on the storage device (CPU for a cache on disk).

        Args:
            indices (`torch.Tensor`): Global image indices, shape `(B,)`; each must be held by this cache.
            view (`int` or `torch.Tensor`): The view of all images, or of each image (shape `(B,)`).
            dtype (`torch.dtype`): Compute dtype of the result.

        Returns:
            `torch.Tensor`: Input of layer ω, shape `(B, T, D_v)`.
        """
        indices = torch.as_tensor(indices, dtype=torch.long).cpu()
        if indices.numel() and (indices.min() < 0 or indices.max() >= len(self._row_of)):
            raise IndexError(f"image indices must lie in [0, {len(self._row_of)}), got {indices.tolist()}.")
        rows = self._row_of[indices]
        if (rows < 0).any():
            raise IndexError(
                f"images {indices[rows < 0].tolist()} are not in this cache (it holds a shard of "
                f"{len(self)} images): read each process's images from the cache it built."
            )
        views = torch.as_tensor(view, dtype=torch.long).cpu().expand(len(rows))
        if views.numel() and (views.min() < 0 or views.max() >= self.views):
            raise IndexError(f"view must lie in [0, {self.views}), got {views.tolist()}.")
        if isinstance(self._states, torch.Tensor):
            states = self._states[views.to(self._states.device), rows.to(self._states.device)]
        else:
            states = torch.from_numpy(self._states[views.numpy(), rows.numpy()])
            if self.dtype == torch.bfloat16:
                states = states.view(torch.bfloat16)
        return states.to(dtype)

    def to(self, device: torch.device | str) -> ImageCache:
        """This cache with its states on `device`, e.g. a GPU, where [`get`] then reads them without a copy from the
        host each step. Only for a cache in memory: one on disk stays memory-mapped on the CPU.

        Args:
            device (`torch.device` or `str`): Where the states go.
        """
        if not isinstance(self._states, torch.Tensor):
            raise ValueError(f"The image cache at {self.path} is memory-mapped on disk; build it without cache_dir.")
        states = self._states.to(device)
        return ImageCache(states, self.indices, len(self._row_of), self.dtype, self.fingerprint, self.path)

    @classmethod
    @_one_build_at_a_time
    @torch.no_grad()
    def build(
        cls,
        tower: Tower,
        images: Callable[[int, torch.Tensor], torch.Tensor],
        num_images: int,
        skip_layers: int,
        views: int = 1,
        dtype: torch.dtype = torch.float32,
        cache_dir: str | Path | None = None,
        fingerprint: dict | None = None,
        batch_size: int = 32,
        indices: Sequence[int] | torch.Tensor | None = None,
        progress: bool = True,
        num_workers: int = 0,
    ) -> ImageCache:
        """Runs the vision tower's embeddings and layers `[0, skip_layers)` on every view of every image.

        With a `cache_dir`, a complete cache built there from the same inputs is opened instead of recomputed.
        Anything else found there (another fingerprint, or a build that was interrupted: the completeness marker is
        written last) is rebuilt, and the log says why.

        Sharding (e.g. under `accelerate launch`): each process passes its own `indices`, for example
        `range(process_index, num_images, num_processes)`, and gets a cache of those images only; [`get`] still takes
        global indices. On disk each shard has its own sub-directory of `cache_dir`, so processes never share a file.

        Args:
            tower (`Tower`): The vision tower.
            images (`Callable[[int, torch.Tensor], torch.Tensor]`): `images(view, index_batch)` returns the pixel
                values `(b, 3, H, W)` of the images `index_batch` (global indices, shape `(b,)`) with the
                augmentation of view `view` (view 0 may be un-augmented).
            num_images (`int`): Number of images in the data set.
            skip_layers (`int`): ω, the number of frozen shallow layers.
            views (`int`): Number of augmented views of each image.
            dtype (`torch.dtype`): Storage dtype: `torch.float32`, `torch.float16` or `torch.bfloat16`.
            cache_dir (`str` or `Path`, *optional*): Directory of a memory-mapped cache; in memory if not given.
            fingerprint (`dict`, *optional*): JSON-serialisable description of the images: the data set, the
                augmentation of every view, and its seed if the views are to differ between builds (e.g. the epoch
                when rebuilding every epoch). The base weights, `skip_layers`, `views`, `dtype` and the indices are
                added here (the weights: those of the embeddings and the shallow layers, all the states depend on).
            batch_size (`int`): Images per forward pass.
            indices (`Sequence[int]` or `torch.Tensor`, *optional*): Build only these images (a shard).
            progress (`bool`): Show a progress bar.
            num_workers (`int`): Worker processes that call `images` ahead of the model (see
                `peft_skip.data.workers.ordered_map`); 0 calls it in this process.
        """
        _check_skip_layers(tower, skip_layers)
        if dtype not in NUMPY_STORAGE:
            raise ValueError(f"dtype must be one of {list(NUMPY_STORAGE)}, got {dtype}.")
        if views < 1 or batch_size < 1 or num_images < 1:
            raise ValueError(
                f"views, batch_size and num_images must be at least 1, got {views}, {batch_size}, {num_images}."
            )
        indices = torch.arange(num_images) if indices is None else torch.as_tensor(indices, dtype=torch.long)
        indices = torch.unique(indices.cpu())  # sorted: reads from a memory map stay close to sequential
        if indices.numel() == 0 or indices[0] < 0 or indices[-1] >= num_images:
            raise ValueError(f"indices must be non-empty and lie in [0, {num_images}).")
        model_dtype = next(tower.model.parameters()).dtype
        shallow = tower.shallow_module_paths(skip_layers)  # all the states depend on, frozen and never wrapped
        key = {
            "weights": weights_fingerprint(
                (f"{path}.{name}", param)
                for path in shallow
                for name, param in tower.model.get_submodule(path).named_parameters()
            ),
            "tower": tower.name,
            "model_dtype": str(model_dtype),
            "skip_layers": skip_layers,
            "views": views,
            "dtype": str(dtype),
            "num_images": num_images,
            "indices": _indices_digest(indices),
            "data": fingerprint or {},
        }
        key = json.loads(json.dumps(key))  # compare as stored: tuples become lists

        path = None
        if cache_dir is not None:
            shard = "all" if len(indices) == num_images else f"shard-{key['indices']}"
            path = Path(cache_dir) / shard
            reason = reuse_problem(path, key)
            if reason is None:
                states = np.load(path / STATES_FILE, mmap_mode="r")
                logger.info(f"Reusing the image cache at {path} ({human_bytes(states.nbytes)}).")
                return cls(states, indices, num_images, dtype, key, path)
            logger.info(f"Building the image cache at {path}: {reason}.")
            if path.exists() and any(path.iterdir()) and not (path / META_FILE).is_file():
                raise FileExistsError(
                    f"{path} exists but is not an image cache peft-skip wrote (no {META_FILE}); move it away or "
                    "choose another --cache-dir."
                )
            # The marker goes first so that a build interrupted from now on is never taken for a complete one.
            (path / COMPLETE_FILE).unlink(missing_ok=True)
            if path.exists():
                shutil.rmtree(path)
            path.mkdir(parents=True)
            (path / META_FILE).write_text(json.dumps(key, indent=1))

        device = _device_of(tower)
        batches = indices.split(batch_size)
        states = None
        bar = tqdm(
            total=views * len(batches),
            desc=f"Image cache ({tower.name} layers [0, {skip_layers}))",
            disable=not progress,
            dynamic_ncols=True,
        )
        starts = torch.tensor([0, *(len(b) for b in batches[:-1])]).cumsum(0).tolist()
        plan = [(view, batch) for view in range(views) for batch in batches]
        pixels = ordered_map(images, plan, num_workers, pin_memory=device.type == "cuda")
        for (view, batch), start, pixel_values in zip(plan, starts * views, pixels, strict=True):
            pixel_values = pixel_values.to(device, non_blocking=True)
            hidden = tower.embed(**tower.image_inputs(pixel_values))
            hidden = tower.run_layers(hidden, 0, skip_layers).to(dtype).cpu()
            if states is None:
                states = allocate_states(path, (views, len(indices), *hidden.shape[1:]), dtype)
                nbytes = math.prod(states.shape) * hidden.element_size()
                where = f"on disk at {path}" if path else "in memory"
                logger.info(
                    f"Image cache: {views} view(s) x {len(indices)} images x {hidden.shape[1]} tokens x "
                    f"{hidden.shape[2]} ({dtype}) = {human_bytes(nbytes)} {where}."
                )
            write_states(states, view, slice(start, start + len(batch)), hidden, dtype)
            bar.update()
        bar.close()
        if path is not None:
            states.flush()
            (path / COMPLETE_FILE).write_text("complete\n")
            states = np.load(path / STATES_FILE, mmap_mode="r")
        return cls(states, indices, num_images, dtype, key, path)
