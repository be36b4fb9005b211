"""Reading adapter files defensively: every problem is found before the model is touched."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

WEIGHTS_NAME = "adapter_model.safetensors"
# What `save_pretrained(safe_serialization=False)` writes: a pickle, which Skip Tuning neither writes nor reads.
PICKLE_WEIGHTS_NAME = "adapter_model.bin"
CONFIG_NAME = "adapter_config.json"
# Where `run_state.save_adapter` stages a new adapter before moving its files into place (config last).
STAGING_DIR = ".adapter.tmp"

_ITEM_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def read_tensor_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """Shapes of the tensors in a safetensors file, after checking the file is whole.

    Args:
        path (`str`): A `.safetensors` file.

    Raises:
        ValueError: If the file is truncated, corrupt or not a safetensors file.
    """

    def corrupt(reason: str) -> ValueError:
        return ValueError(f"{path} is corrupt or truncated ({reason}); save the adapter again or restore a backup.")

    size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise corrupt(f"{size} bytes, shorter than a safetensors header")
        header_size = int.from_bytes(prefix, "little")
        if header_size > size - 8:
            raise corrupt(f"header of {header_size} bytes in a file of {size}")
        try:
            header = json.loads(f.read(header_size))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise corrupt(f"unreadable header: {error}") from None
    shapes, data_end = {}, 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            begin, end = entry["data_offsets"]
            numel = 1
            for dim in entry["shape"]:
                numel *= dim
            expected = numel * _ITEM_SIZES[entry["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise corrupt(f"malformed entry for {key!r}") from None
        if end - begin != expected:
            raise corrupt(f"{key!r} holds {end - begin} bytes, its shape needs {expected}")
        shapes[key] = tuple(entry["shape"])
        data_end = max(data_end, end)
    if 8 + header_size + data_end != size:
        raise corrupt(f"the tensors need {8 + header_size + data_end} bytes, the file has {size}")
    return shapes


def file_sha256(path: str) -> str:
    """Hex sha256 of a file's bytes (about 1 GB/s: a fraction of a second for an adapter)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def check_saved_config(path: str, config_cls: type, peft_type: str) -> None:
    """Refuses an `adapter_config.json` of another peft type or with fields the config class does not know.

    peft drops unknown fields with a warning; for Skip Tuning an unknown field means a file from another version or
    another method, and applying it silently could train or load something else than intended.

    Raises:
        ValueError: Naming the peft type or the unknown fields.
    """
    with open(path, encoding="utf-8") as f:
        try:
            saved = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from None
    if saved.get("peft_type") != peft_type:
        raise ValueError(f"{path} describes a {saved.get('peft_type')} adapter, not a {peft_type} one.")
    known = {field.name for field in dataclasses.fields(config_cls)}
    unknown = sorted(set(saved) - known)
    if unknown:
        raise ValueError(
            f"{path} has fields {config_cls.__name__} does not know: {unknown}. It was written by another version "
            "of peft-skip or for another method; upgrade peft-skip or remove those fields."
        )


def check_deltas_fit(checkpoint: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]) -> None:
    """Checks that saved deltas are exactly the deltas a model expects.

    Args:
        checkpoint (`dict`): Key to shape, as saved.
        expected (`dict`): Key to shape, as the wrapped model would hold them.

    Raises:
        ValueError: Naming missing, unexpected and mis-shaped tensors.
    """
    problems = []
    missing = sorted(set(expected) - set(checkpoint))
    unexpected = sorted(set(checkpoint) - set(expected))
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    for key in sorted(set(checkpoint) & set(expected)):
        if checkpoint[key] != expected[key]:
            problems.append(f"{key} has shape {list(checkpoint[key])}, the model needs {list(expected[key])}")
            break
    if problems:
        raise ValueError(
            "The adapter's tensors do not fit this model: " + "; ".join(problems) + ". Check that the adapter was "
            "saved from this architecture with the same skip_layers."
        )


def check_finite_tensors(path: str) -> None:
    """Refuses a safetensors file holding a NaN or an infinity: deltas that would make every output NaN.

    Raises:
        ValueError: Naming the file and the first non-finite tensor.
    """
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        for key in f.keys():
            tensor = f.get_tensor(key)
            if tensor.is_floating_point() and not tensor.isfinite().all():
                raise ValueError(
                    f"{path} holds non-finite values (NaN or infinity) in {key}: the training that saved it diverged. "
                    "Retrain with a lower learning rate, or use an earlier checkpoint."
                )
