"""Paths in a `--config` file, read relative to the file (so that a config works from any directory).

`PATH_OPTIONS` names the options (dataclass fields, the same name in every command) that hold paths:
- `"output"`: a directory that may not exist yet: always resolved against the config file's directory.
- `"input"`: a path, or a name that is not one (a Hub model id, a data spec such as `world:combos`, a comma list of
  class names): resolved only when that path exists next to the config file, else kept as written. A data spec's
  `hf:` / `imagefolder:` prefix stays in front of its path.
"""

from __future__ import annotations

import os

PATH_OPTIONS = {
    "model": "input",
    "data": "input",
    "data_root": "input",
    "class_names": "input",
    "adapter": "input",
    "output_dir": "output",
    "cache_dir": "output",
}

# Data specs whose remainder is a path (`peft_skip.data.load_dataset_spec`).
_PATH_PREFIXES = ("hf:", "imagefolder:")


def resolve_config_paths(values: dict, config_file: str) -> dict:
    """`values` (field name -> value, as read from `config_file`) with their relative paths made absolute against
    the directory of `config_file`, as `PATH_OPTIONS` says."""
    directory = os.path.dirname(os.path.abspath(config_file))
    resolved = dict(values)
    for name, kind in PATH_OPTIONS.items():
        value = values.get(name)
        if not isinstance(value, str) or not value:
            continue
        prefix = next((p for p in _PATH_PREFIXES if value.startswith(p)), "")
        path = os.path.expanduser(value[len(prefix) :])
        if os.path.isabs(path):
            continue
        candidate = os.path.normpath(os.path.join(directory, path))
        if kind == "output" or os.path.exists(candidate):
            resolved[name] = prefix + candidate
    return resolved
