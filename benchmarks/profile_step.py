"""Profiles training steps of one benchmark method with torch.profiler (CPU time and memory per op).

    python benchmarks/profile_step.py --method skip -- --arch vit-b-16 --classes 100 --steps-per-epoch 2 --epochs 1

Arguments after `--` build the workload as for `compare.py`; one untimed step warms up, the rest are profiled.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch
from torch.profiler import ProfilerActivity, profile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from compare import parse_args, prepare  # noqa: E402
from methods import make_method  # noqa: E402


def main() -> None:
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="skip")
    parser.add_argument("--rows", type=int, default=25)
    own = parser.parse_args(argv[:split])
    args = parse_args(argv[split + 1 :])
    from transformers import CLIPModel

    with tempfile.TemporaryDirectory(prefix="skip-profile-") as work_dir:
        facts = prepare(args, work_dir)
        workload = torch.load(facts["workload"], weights_only=False)
        model = CLIPModel.from_pretrained(facts["model"]).requires_grad_(False)
    spec = {**vars(args), "method": own.method, "checkpoint_dir": ""}
    method = make_method(model, workload, spec)
    method.model.train()
    method.build_cache(time.perf_counter)
    lr = args.lr.get(own.method, args.lr["default"])
    optimizer = torch.optim.SGD(method.trainable_parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    batches = [b for epoch in workload["batches"] for b in epoch]

    def step(positions: torch.Tensor) -> None:
        method.loss(positions).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(batches[0])
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=False) as prof:
        for positions in batches[1:]:
            step(positions)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=own.rows))
    print(prof.key_averages().table(sort_by="self_cpu_memory_usage", row_limit=10))


if __name__ == "__main__":
    main()
