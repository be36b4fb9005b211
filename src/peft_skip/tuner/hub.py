"""Uploading a trained adapter to the Hugging Face Hub (`train --push_to_hub`, `push_to_hub`)."""

from __future__ import annotations

import os
import tempfile

from huggingface_hub import HfApi
from torch import nn

# What a run's output directory publishes: the adapter, its model card and the run's metrics - not the per-epoch
# checkpoints (optimiser state, RNG) nor the run's lock.
UPLOADED_FILES = ["adapter_config.json", "adapter_model.safetensors", "README.md", "metrics.json"]


def hub_repo_id(output_dir: str, hub_model_id: str | None) -> str:
    """`hub_model_id`, else the output directory's name (in the token owner's namespace), as transformers does."""
    return hub_model_id or os.path.basename(os.path.abspath(output_dir))


def create_hub_repo(repo_id: str, private: bool | None = None) -> str:
    """Creates `repo_id` (or finds it) before training, so that a missing login or an unreachable Hub fails in
    seconds, not after the last epoch. Returns its full id, `namespace/name` (a bare name gets the token owner's)."""
    try:
        return HfApi().create_repo(repo_id, private=private, exist_ok=True).repo_id
    except Exception as error:  # network, auth and permission errors all end the run the same way
        raise ValueError(
            f"Cannot create or reach the Hub repository {repo_id!r} ({type(error).__name__}: {error}): log in with "
            "`hf auth login`, check --hub_model_id, or drop --push_to_hub."
        ) from error


def push_to_hub(model: nn.Module, repo_id: str, private: bool | None = None) -> str:
    """Uploads a Skip Tuning model's adapter with its full model card; returns the commit's URL.

    Use it instead of `model.push_to_hub`: transformers' `PushToHubMixin.push_to_hub`, which peft's models inherit,
    replaces the card `save_pretrained` wrote with the Hub's (or an empty template), losing the Skip Tuning section
    that says how to load the adapter (`import peft_skip` first).

    Args:
        model (`nn.Module`): A `PeftModel` with a Skip Tuning adapter.
        repo_id (`str`): `user/name` (or `name`, in the token owner's namespace).
        private (`bool`, *optional*): Create the repository private.
    """
    repo_id = create_hub_repo(repo_id, private)
    with tempfile.TemporaryDirectory() as directory:
        model.save_pretrained(directory)
        return push_adapter(directory, repo_id, kept=False)


def push_adapter(output_dir: str, repo_id: str, kept: bool = True) -> str:
    """Uploads `UPLOADED_FILES` of `output_dir` to `repo_id` in one commit; returns the commit's URL.

    Args:
        output_dir (`str`): A directory with an adapter (a run's output directory).
        repo_id (`str`): The repository's full id (`create_hub_repo`'s).
        kept (`bool`): `output_dir` outlives the call, so a failure's message says how to retry from it.

    Raises:
        ValueError: the upload failed.
    """
    try:
        commit = HfApi().upload_folder(
            repo_id=repo_id,
            folder_path=output_dir,
            allow_patterns=UPLOADED_FILES,
            commit_message="Skip Tuning adapter (peft-skip)",
        )
    except Exception as error:
        retry = f"hf upload {repo_id} {output_dir} . --include {' '.join(UPLOADED_FILES)}"
        kept_there = f"; the adapter is saved in {output_dir}: retry with `{retry}`" if kept else ""
        raise ValueError(f"Uploading to {repo_id!r} failed ({type(error).__name__}: {error}){kept_there}.") from error
    return commit.commit_url
