"""Images read and transformed in worker processes: the same results, in the same order, as in one process."""

from __future__ import annotations

import os

import pytest
import torch

from peft_skip.data.workers import ordered_map


def noisy(seed: int, size: int) -> tuple[int, torch.Tensor]:
    """Which process computed the call, and a tensor that depends only on the arguments."""
    return os.getpid(), torch.randn(size, generator=torch.Generator().manual_seed(seed))


def fail_on_three(i: int) -> int:
    if i == 3:
        raise RuntimeError("image 3 is broken")
    return i


def test_workers_give_the_results_of_one_process_in_order():
    arguments = [(seed, 3 + seed % 2) for seed in range(9)]
    serial = list(ordered_map(noisy, arguments))
    parallel = list(ordered_map(noisy, arguments, num_workers=2))
    assert len(parallel) == 9
    for (_, expected), (_, actual) in zip(serial, parallel, strict=True):
        assert torch.equal(actual, expected)
    assert {pid for pid, _ in serial} == {os.getpid()}
    assert os.getpid() not in {pid for pid, _ in parallel}  # the calls really ran elsewhere


def test_errors_of_a_worker_reach_the_caller():
    with pytest.raises(RuntimeError, match="image 3 is broken"):
        list(ordered_map(fail_on_three, [(i,) for i in range(6)], num_workers=2))
    with pytest.raises(ValueError, match="num_workers=-1"):
        list(ordered_map(fail_on_three, [(0,)], num_workers=-1))
