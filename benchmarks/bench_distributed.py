"""Scaling of data-parallel meta-training: 1 process against P gloo processes on this machine's CPU cores.

Times the engine's `Trainer.step()` (sample the global meta-batch, adapt this rank's share, all-reduce the
meta-gradient and the metrics, outer Adam step) with the same global meta-batch in both cases, one torch
thread per process, and prints meta-iterations/s, tasks/s and the speed-up. The processes are spawned by the
script itself (gloo over 127.0.0.1); runs alternate 1, P, 1, P, ... and the best of `--repeats` counts.

--model mlp (default): sinusoid MLP 1-40-40-1, second-order MAML, meta-batch 25, K = 10 (10 queries).
--model conv4: the MAML paper's Omniglot conv-4 on random 28x28 "images", 5-way 1-shot, 5 queries per class,
meta-batch 32, one inner step of 0.4 (second-order MAML).

    python benchmarks/bench_distributed.py [--processes 2] [--meta-batch-size 25] [--iterations 300]
    python benchmarks/bench_distributed.py --model conv4 --iterations 10

On GPUs the same engine runs under torchrun, one process per GPU with NCCL (nothing in this script is needed):

    torchrun --nproc-per-node 8 -m maml_lab train --config exp.toml           # one node, 8 GPUs
    # two nodes of 8 GPUs: run on each node, --node-rank 0 on the first (its address in --rdzv-endpoint), 1 on the other
    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 --rdzv-backend c10d --rdzv-id exp1 \\
        --rdzv-endpoint node0.example:29500 -m maml_lab train --config exp.toml

Compare its reported tasks/s with a plain `python -m maml_lab train` of the same config on one GPU.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import statistics
import time

import torch

from maml_lab.core.algorithms.config import AlgorithmConfig
from maml_lab.core.training.config import ExperimentConfig


def make_trainer(args, world):
    from maml_lab.core.training.trainer import Trainer

    if args.model == "mlp":
        config = ExperimentConfig(meta_batch_size=args.meta_batch_size, shots=10, queries=10,
                                  iterations=args.iterations + args.warmup, val_every=0, device="cpu",
                                  dtype=args.dtype, algorithms=[AlgorithmConfig.defaults("maml")])
        return Trainer(config, record_every=0, world=world)
    import numpy as np

    from maml_lab.core.tasks.images import ImageTaskFamily
    from maml_lab.core.tasks.imagesets import ImageSet, Preprocessing

    rng = np.random.default_rng(0)  # 100 classes of 20 random "images": timing does not depend on content
    pixels = (rng.random((2000, 1, 28, 28)) < 0.15).astype(np.uint8) * 255
    images = ImageSet("random", [f"c{i}" for i in range(100)], None, pixels, np.arange(0, 2001, 20), Preprocessing())
    config = ExperimentConfig(task="images", meta_batch_size=args.meta_batch_size, shots=1, queries=5,
                              iterations=args.iterations + args.warmup, val_every=0, device="cpu", dtype=args.dtype,
                              algorithms=[AlgorithmConfig.defaults("maml", task="images")])
    return Trainer(config, family=ImageTaskFamily(images, ways=5), record_every=0, world=world)


def worker(rank: int, size: int, port: int, args, results) -> None:
    torch.set_num_threads(1)
    world = None
    try:
        if size > 1:
            from maml_lab.core.training.distributed import init_from_env

            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                              WORLD_SIZE=str(size), LOCAL_RANK=str(rank))
            world = init_from_env("cpu", timeout_s=120)
        trainer = make_trainer(args, world)
        for _ in range(args.warmup):
            trainer.step()
        if world is not None:
            world.barrier()
        t0 = time.perf_counter()
        for _ in range(args.iterations):
            trainer.step()
        if world is not None:
            world.barrier()
        elapsed = time.perf_counter() - t0
        if rank == 0:
            results.put(("ok", elapsed))
    except BaseException as exc:  # report instead of leaving the parent waiting
        results.put(("error", f"rank {rank}: {type(exc).__name__}: {exc}"))
    finally:
        if world is not None:
            world.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed_run(size: int, args) -> float:
    """Seconds for args.iterations meta-steps with `size` processes."""
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=worker, args=(r, size, port, args, results), daemon=True) for r in range(size)]
    for p in procs:
        p.start()
    try:
        status, value = results.get(timeout=args.timeout)
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    if status != "ok":
        raise SystemExit(value)
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("mlp", "conv4"), default="mlp")
    parser.add_argument("--meta-batch-size", type=int, default=None, help="global meta-batch (mlp 25, conv4 32)")
    parser.add_argument("--iterations", type=int, default=None, help="timed meta-steps (mlp 300, conv4 10)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed meta-steps first (mlp 20, conv4 2)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each; the best counts")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--timeout", type=float, default=900, help="seconds before giving up on a run")
    args = parser.parse_args()
    mlp = args.model == "mlp"
    args.meta_batch_size = args.meta_batch_size or (25 if mlp else 32)
    args.iterations = args.iterations or (300 if mlp else 10)
    args.warmup = args.warmup if args.warmup is not None else (20 if mlp else 2)
    if args.processes < 2 or args.meta_batch_size < args.processes:
        raise SystemExit("need --processes >= 2 and a meta-batch of at least that many tasks")

    what = ("sinusoid MLP 1-40-40-1, K=10, 10 queries" if mlp
            else "conv-4 28x28, 5-way 1-shot, 5 queries per class")
    print(f"{what}, second-order MAML, global meta-batch {args.meta_batch_size}, {args.dtype}, "
          f"{args.iterations} timed steps after {args.warmup}; 1 torch thread per process; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    times: dict[int, list[float]] = {1: [], args.processes: []}
    for _ in range(args.repeats):
        for size in times:
            times[size].append(timed_run(size, args))
            rate = args.iterations / times[size][-1]
            print(f"  {size} process(es): {rate:8.2f} meta-it/s")
    best = {size: args.iterations / min(ts) for size, ts in times.items()}
    for size, rate in best.items():
        print(f"{size} process(es): {rate:8.2f} meta-iterations/s, {rate * args.meta_batch_size:9.0f} tasks/s "
              f"(best of {args.repeats}; median {args.iterations / statistics.median(times[size]):.2f} meta-it/s)")
    print(f"speed-up with {args.processes} processes: {best[args.processes] / best[1]:.2f}x")


if __name__ == "__main__":
    main()
