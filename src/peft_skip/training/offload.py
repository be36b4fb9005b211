"""The frozen weights a step from the caches never reads leave the compute device while it trains.

A Skip Tuning step from the caches runs only the deep layers, and computes with their trained copies `W`
(`SkipLayer`). Two sets of frozen parameters stay idle meanwhile: the embeddings and shallow layers (read to build
the caches and for evaluation) and the deep layers' base weights `W0` (read for deltas, merging, `disable_adapter`).
`FrozenOffload` takes them off the device for a block of steps and puts them back, bit for bit, afterwards.

Off means: to CPU memory from a GPU; on the CPU, where a copy within memory would free nothing, to an anonymous
temporary file, read back as a private memory map (as transformers loads checkpoints): only the pages that are read
again (a cache rebuild, a delta, an evaluation) come back into memory. Frozen weights never change, so they are
written once; taking them off again only drops them.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from ..towers import get_towers
from ..tuner.layer import SkipLayer

_ALIGN = 64  # bytes: every tensor starts aligned in the file, so its mapping can be viewed as any dtype


def idle_parameters(model: nn.Module, from_caches: bool = True) -> dict[str, nn.Parameter]:
    """The frozen parameters a Skip Tuning step never reads, by name.

    Args:
        model (`PeftModel`): A model wrapped by `get_peft_model(model, SkipConfig(...))`.
        from_caches (`bool`): The step reads the caches (LSkip), so the embeddings and shallow layers are idle too;
            `False` leaves them (the base weights of the deep layers only).

    Returns:
        `dict[str, nn.Parameter]`: Parameters that do not require gradients and occur only in idle modules: base
        weights of `SkipLayer`s whose forward does not read them, and with `from_caches` those under
        `Tower.shallow_module_paths`.
    """
    config = model.peft_config[model.active_adapter]
    idle = []
    if from_caches:
        towers = get_towers(model)
        base = model.get_base_model()
        prefix = next(name for name, module in model.named_modules() if module is base)
        for tower in (towers.vision, towers.text):
            if tower is not None:
                skip = config.tower_skip_layers(tower.name)
                idle += [f"{prefix}.{path}" for path in tower.shallow_module_paths(skip)]
    idle += [
        f"{name}.base_layer"
        for name, module in model.named_modules()
        if isinstance(module, SkipLayer) and not module.reads_base_layer()
    ]
    occurrences: dict[int, list[str]] = {}
    parameters = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        occurrences.setdefault(id(param), []).append(name)
        parameters.setdefault(id(param), (name, param))
    # A parameter shared with a module the step runs (tied weights) is not idle.
    return {
        name: param
        for key, (name, param) in parameters.items()
        if not param.requires_grad and all(_under(n, idle) for n in occurrences[key])
    }


def _under(name: str, paths: Iterable[str]) -> bool:
    return any(name.startswith(path + ".") for path in paths)


class FrozenOffload:
    """Takes frozen parameters off their device inside a `with` block and brings them back when it ends.

    Inside the block the model holds stand-ins on the `meta` device (same shape and dtype, no values: computing with
    them fails) and the parameters themselves hold no data; after it, the model holds the same `nn.Parameter` objects
    again, with their original values on their original device. The block can be entered again (e.g. once per epoch).

    Args:
        model (`nn.Module`): The model that holds the parameters.
        parameters (`dict[str, nn.Parameter]`): The parameters to take off, by name (see `idle_parameters`); none of
            them may require gradients.

    Example:
        ```py
        >>> offload = FrozenOffload(model, idle_parameters(model))
        >>> with offload:
        ...     train_steps_from_the_caches()
        ```
    """

    def __init__(self, model: nn.Module, parameters: dict[str, nn.Parameter]) -> None:
        trained = [name for name, param in parameters.items() if param.requires_grad]
        if trained:
            raise ValueError(f"Cannot take trained parameters off the device: {trained[:3]}; pass frozen ones only.")
        self.model = model
        self.parameters = parameters
        self.nbytes = sum(p.numel() * p.element_size() for p in parameters.values())  # on their device
        names = {id(param): name for name, param in parameters.items()}
        # Every place that holds each parameter (a tied parameter is held by several modules).
        self._owners = [
            (module, attr, names[id(param)])
            for module in model.modules(remove_duplicate=False)
            for attr, param in module._parameters.items()
            if param is not None and id(param) in names
        ]
        self._stored: dict[str, torch.Tensor | tuple[int, torch.Size, torch.dtype]] = {}
        self._devices: dict[str, torch.device] = {}
        self._file = None

    def __enter__(self) -> FrozenOffload:
        if not self._stored:
            self._store()
            self._own_memory()
        stand_ins = {
            name: nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device="meta"), requires_grad=False)
            for name, p in self.parameters.items()
        }
        for module, attr, name in self._owners:
            module._parameters[attr] = stand_ins[name]
        for param in self.parameters.values():
            param.data = torch.empty(0, dtype=param.dtype, device=param.device)  # frees the values
        return self

    def __exit__(self, *exc) -> None:
        for name, param in self.parameters.items():
            param.data = self._load(name)
        for module, attr, name in self._owners:
            module._parameters[attr] = self.parameters[name]

    @torch.no_grad()
    def _store(self) -> None:
        for name, param in self.parameters.items():
            self._devices[name] = param.device
        on_cpu = [name for name, param in self.parameters.items() if param.device.type == "cpu"]
        for name, param in self.parameters.items():
            if name not in on_cpu:
                self._stored[name] = param.detach().to("cpu")
        if not on_cpu:
            return
        # Unlinked at once: the file vanishes with its last mapping, whatever ends the run.
        self._file = tempfile.TemporaryFile(prefix="peft-skip-frozen-")
        for name in on_cpu:
            param = self.parameters[name].detach().contiguous()
            offset = -self._file.tell() % _ALIGN + self._file.tell()
            self._file.seek(offset)
            param.reshape(-1).view(torch.uint8).numpy().tofile(self._file)
            self._stored[name] = (offset, param.shape, param.dtype)
        self._file.flush()

    @torch.no_grad()
    def _own_memory(self) -> None:
        """Gives every other CPU tensor of the model that borrows its memory a copy of its own.

        transformers maps a checkpoint file into memory and makes every weight a view into that one mapping: the pages
        read so far stay resident until no weight of the file is left, so dropping the idle weights frees nothing
        while a single other one (e.g. `logit_scale`) still views it.
        """
        offloaded = {id(p) for p in self.parameters.values()}
        for module in self.model.modules():
            for tensors in (module._parameters, module._buffers):
                for name, tensor in tensors.items():
                    borrowed = tensor is not None and tensor.device.type == "cpu" and tensor.numel()
                    if borrowed and id(tensor) not in offloaded and not tensor.untyped_storage().resizable():
                        if isinstance(tensor, nn.Parameter):
                            tensor.data = tensor.data.clone()
                        else:
                            tensors[name] = tensor.clone()

    def _load(self, name: str) -> torch.Tensor:
        stored, device = self._stored[name], self._devices[name]
        if isinstance(stored, torch.Tensor):
            return stored.to(device)
        offset, shape, dtype = stored
        nbytes = shape.numel() * torch.empty((), dtype=dtype).element_size()
        if nbytes == 0:
            return torch.empty(shape, dtype=dtype)
        # Copy-on-write: a later in-place change of the weights never reaches the file.
        mapped = np.memmap(self._file, dtype=np.uint8, mode="c", offset=offset, shape=(nbytes,))
        return torch.from_numpy(mapped).view(dtype).reshape(shape)
