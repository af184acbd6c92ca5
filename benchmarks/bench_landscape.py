"""Time a 51 x 51 meta-objective landscape against a straightforward loop over grid points and tasks.

MLP 1-40-40-1, 25 sinusoid tasks, K = 10, one inner SGD step: the post-adaptation query loss at every
grid point (2,601 points x 25 tasks = 65,025 adaptations). The loop is timed on a random subset of
grid points (--loop-points) and scaled to the full grid; both run in this process, interleaved.

    python benchmarks/bench_landscape.py [--resolution 51] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from maml_lab.core.analysis.landscape import grid, surface
from maml_lab.core.analysis.trajectory import random_plane, unflatten
from maml_lab.core.models.mlp import MLP
from maml_lab.core.tasks.sinusoid import SinusoidFamily


def forward(p, x):
    h = F.relu(F.linear(x, p["0.weight"], p["0.bias"]))
    h = F.relu(F.linear(h, p["2.weight"], p["2.bias"]))
    return F.linear(h, p["4.weight"], p["4.bias"])


def loop_point(params, plane, batch, a, b, lr):
    """The straightforward way: each task of each grid point adapted alone with autograd."""
    theta = unflatten(plane.point(a, b), params)
    losses = []
    for t in range(batch.num_tasks):
        fast = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
        loss = F.mse_loss(forward(fast, batch.x_support[t]), batch.y_support[t])
        grads = torch.autograd.grad(loss, list(fast.values()))
        with torch.no_grad():
            fast = {k: v - lr * g for (k, v), g in zip(fast.items(), grads)}
            losses.append(F.mse_loss(forward(fast, batch.x_query[t]), batch.y_query[t]).item())
    return float(np.mean(losses))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=51)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loop-points", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: immune to other jobs on a shared CPU; 0: torch's default)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    model = MLP()
    params = model.init_params(g)
    batch = SinusoidFamily().sample(25, 10, 10, g)
    params = {k: v.to(device) for k, v in params.items()}
    batch = batch.to(device)
    plane = random_plane(params, seed=1)
    alphas, betas = grid(1.0, args.resolution)
    points = args.resolution ** 2
    rng = np.random.default_rng(0)
    subset = [(alphas[i], betas[j]) for i, j in rng.integers(0, args.resolution, size=(args.loop_points, 2))]

    surface(model, "mse", params, plane, batch, alphas[:5], betas[:5])  # warm-up
    engine_t, loop_t = [], []
    for _ in range(args.rounds):
        sync()
        t0 = time.perf_counter()
        s = surface(model, "mse", params, plane, batch, alphas, betas, kind="post", inner_steps=1, inner_lr=0.01)
        sync()
        engine_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ref = [loop_point(params, plane, batch, a, b, 0.01) for a, b in subset]
        loop_t.append((time.perf_counter() - t0) / len(subset) * points)
    # the two agree where both were computed
    idx = {(a, b): (j, i) for i, a in enumerate(alphas) for j, b in enumerate(betas)}
    err = max(abs(s.values[idx[(a, b)]] - r) / max(abs(r), 1e-12) for (a, b), r in zip(subset, ref))
    e, lp = statistics.median(engine_t), statistics.median(loop_t)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}; "
          f"{args.resolution}x{args.resolution} grid, "
          f"25 tasks, K=10, 1 inner step, MLP 1-40-40-1 (max relative difference {err:.1e})")
    print(f"engine (batched): {e:.2f} s    loop (extrapolated from {len(subset)} points): {lp:.1f} s    "
          f"speed-up {lp / e:.0f}x    target: < 1.5 s and >= 10x")


if __name__ == "__main__":
    main()
