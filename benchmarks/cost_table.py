"""The cost meter's numbers (maml_lab/core/training/cost.py) for several algorithms and inner-step counts on conv-4.

Conv-4 on 28x28 grayscale, 5-way 1-shot with 5 queries per class, meta-batch 32 (the Omniglot benchmark's
setting), random images (cost does not depend on the pixels). For each algorithm and number of inner steps S it
runs `--steps` meta-steps through a CostMeter (no budget: it measures memory after the second step, on slices of
the batch extrapolated to it, and again after the last when --steps allows; it times every step),
and prints seconds and bytes per meta-step; for S = 1 it also prints what the meter's probe (S+1 and S+2) expects
at every other S, so the extrapolation can be checked against the direct measurements.

    python benchmarks/cost_table.py [--algorithms maml fomaml mamlpp] [--inner-steps 1 3 5] [--threads 1]
                                    [--clock wall|process]
"""

from __future__ import annotations

import argparse
import time
from collections import OrderedDict

import torch

from maml_lab.core.algorithms.config import AlgorithmConfig, make_algorithm
from maml_lab.core.models.conv4 import Conv4
from maml_lab.core.tasks.base import TaskBatch
from maml_lab.core.training.cost import CostMeter, expected_cost, format_bytes, format_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithms", nargs="+", default=["maml", "fomaml", "mamlpp"])
    parser.add_argument("--inner-steps", type=int, nargs="+", default=[1, 3, 5])
    parser.add_argument("--meta-batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4, help="meta-steps per cell (memory on the first and last)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=["wall", "process"], default="wall",
                        help="process: CPU time of this process, immune to other jobs on a shared CPU (1 thread)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    b, ways = args.meta_batch_size, 5
    batch = TaskBatch(torch.rand(b, ways, 1, 28, 28, generator=g), torch.arange(ways).repeat(b, 1),
                      torch.rand(b, 5 * ways, 1, 28, 28, generator=g),
                      torch.arange(ways).repeat_interleave(5).repeat(b, 1))
    model = Conv4(in_channels=1, image_size=28, ways=ways)
    print(f"conv-4 28x28, 5-way 1-shot, 5 queries per class, meta-batch {b}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), {args.clock} clock; memory: peak bytes of CPU tensors a meta-step "
          "keeps alive")
    rows, predictions = [], {}
    for name in args.algorithms:
        for steps in args.inner_steps:
            config = AlgorithmConfig.defaults(name, task="images", inner_steps=steps)
            params = OrderedDict((k, v.requires_grad_(True)) for k, v in model.init_params(g).items())
            algo = make_algorithm(model, "cross_entropy", config, 1000)
            algo.setup(params)
            # budget None: memory (on one- and two-task slices) and the probe right after the second step
            meter = CostMeter(every=max(args.steps - 1, 1), probe=steps == min(args.inner_steps),
                              clock=time.process_time if args.clock == "process" else time.perf_counter, budget=None)
            t0 = time.perf_counter()
            for i in range(args.steps):
                meter.meta_step(name, algo, params, batch, i)
            cost = meter.summary()[name]
            rows.append((name, steps, cost["step_s"], cost["step_bytes"], time.perf_counter() - t0))
            if meter.probe:
                predictions[name] = cost
            print(f"  {name} S={steps}: {format_seconds(cost['step_s'])}, {format_bytes(cost['step_bytes'])} "
                  f"({time.perf_counter() - t0:.0f} s for the cell)", flush=True)
    print("\n| algorithm | inner steps | s / meta-step | memory / meta-step | expected from the S = "
          f"{min(args.inner_steps)} run's probe |")
    print("| --- | --- | --- | --- | --- |")
    for name, steps, seconds, used, _ in rows:
        expected = "(measured)"
        if name in predictions and steps != min(args.inner_steps):
            s, m = expected_cost(predictions[name], steps)
            expected = f"{format_seconds(s)}, {format_bytes(m)}"
        print(f"| {name} | {steps} | {format_seconds(seconds)} | {format_bytes(used)} | {expected} |")


if __name__ == "__main__":
    main()
