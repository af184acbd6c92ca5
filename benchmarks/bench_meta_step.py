"""Time one meta-step of the engine against a per-task autograd loop and `higher`, in the same process.

Sinusoid MLP 1-40-40-1, meta-batch 25, K = 10 (10 queries), one inner SGD step, Adam outer.
The three implementations are interleaved round by round so machine noise hits them alike; the
script prints tasks/s (median over rounds) and the engine's speed-up over each reference.

    python benchmarks/bench_meta_step.py [--rounds 7] [--steps 50]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import OrderedDict

import torch
import torch.nn.functional as F

from maml_lab.core.algorithms import AlgorithmConfig, make_algorithm
from maml_lab.core.models import MLP
from maml_lab.core.tasks import SinusoidFamily

B, K, Q, LR = 25, 10, 10, 0.01


def loop_forward(params, x):
    h = F.relu(F.linear(x, params["0.weight"], params["0.bias"]))
    h = F.relu(F.linear(h, params["2.weight"], params["2.bias"]))
    return F.linear(h, params["4.weight"], params["4.bias"])


class PerTaskLoop:
    """The straightforward implementation: a Python loop over tasks, autograd per task."""

    def __init__(self, params, algorithm: str, inner_steps: int):
        self.params = OrderedDict((k, v.clone().requires_grad_(True)) for k, v in params.items())
        self.algorithm = algorithm
        self.inner_steps = inner_steps
        self.opt = torch.optim.Adam(self.params.values(), lr=1e-3)

    def step(self, batch):
        if self.algorithm == "reptile":
            deltas = {k: torch.zeros_like(v) for k, v in self.params.items()}
            for i in range(batch.num_tasks):
                fast = {k: v.detach().requires_grad_(True) for k, v in self.params.items()}
                for _ in range(self.inner_steps):
                    loss = F.mse_loss(loop_forward(fast, batch.x_support[i]), batch.y_support[i])
                    grads = torch.autograd.grad(loss, list(fast.values()))
                    fast = {k: (v - LR * g).detach().requires_grad_(True) for (k, v), g in zip(fast.items(), grads)}
                for k in deltas:
                    deltas[k] += fast[k].detach() - self.params[k].detach()
            with torch.no_grad():
                for k, p in self.params.items():
                    p.add_(deltas[k] / batch.num_tasks)
            return
        self.opt.zero_grad()
        total = 0.0
        for i in range(batch.num_tasks):
            fast = dict(self.params)
            for _ in range(self.inner_steps):
                loss = F.mse_loss(loop_forward(fast, batch.x_support[i]), batch.y_support[i])
                grads = torch.autograd.grad(loss, list(fast.values()), create_graph=self.algorithm == "maml")
                fast = {k: v - LR * g for (k, v), g in zip(fast.items(), grads)}
            total = total + F.mse_loss(loop_forward(fast, batch.x_query[i]), batch.y_query[i])
        (total / batch.num_tasks).backward()
        self.opt.step()


class Higher:
    """The same loop written with `higher` (0.2.1), as its MAML example does."""

    def __init__(self, params, algorithm: str, inner_steps: int):
        import higher

        self.higher = higher
        self.model = MLP().torch_module()
        self.model.load_state_dict(params)
        self.algorithm = algorithm
        self.inner_steps = inner_steps
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.inner_opt = torch.optim.SGD(self.model.parameters(), lr=LR)

    def step(self, batch):
        self.opt.zero_grad()
        for i in range(batch.num_tasks):
            with self.higher.innerloop_ctx(self.model, self.inner_opt, copy_initial_weights=False,
                                           track_higher_grads=self.algorithm == "maml") as (fmodel, diffopt):
                for _ in range(self.inner_steps):
                    diffopt.step(F.mse_loss(fmodel(batch.x_support[i]), batch.y_support[i]))
                (F.mse_loss(fmodel(batch.x_query[i]), batch.y_query[i]) / batch.num_tasks).backward()
        self.opt.step()


class Engine:
    def __init__(self, params, algorithm: str, inner_steps: int):
        self.params = OrderedDict((k, v.clone().requires_grad_(True)) for k, v in params.items())
        cfg = AlgorithmConfig.defaults(algorithm, inner_steps=inner_steps, inner_lr=LR)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.algo = make_algorithm(MLP(), "mse", cfg, total_iterations=10**9)
        self.algo.setup(self.params)

    def step(self, batch):
        self.algo.meta_step(self.params, batch)


def time_steps(impl, batches) -> float:
    start = time.perf_counter()
    for b in batches:
        impl.step(b)
    return (time.perf_counter() - start) / len(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=40, help="meta-steps per implementation per round")
    parser.add_argument("--algorithms", nargs="+", default=["maml", "fomaml", "reptile"])
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    g = torch.Generator().manual_seed(0)
    params = MLP().init_params(g)
    batches = [SinusoidFamily().sample(B, K, Q, g) for _ in range(args.steps)]
    try:
        import higher  # noqa: F401

        have_higher = True
    except ImportError:
        have_higher = False
        print("higher is not installed (pip install higher==0.2.1): comparing with the loop only")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; MLP 1-40-40-1, meta-batch {B}, K={K}")
    print(f"{'algorithm':<10} {'engine':>14} {'per-task loop':>16} {'higher':>14} {'vs loop':>8} {'vs higher':>10}")
    for algorithm in args.algorithms:
        inner = 5 if algorithm == "reptile" else 1
        impls = {"engine": Engine(params, algorithm, inner), "loop": PerTaskLoop(params, algorithm, inner)}
        if have_higher and algorithm != "reptile":
            impls["higher"] = Higher(params, algorithm, inner)
        for impl in impls.values():  # warm-up
            time_steps(impl, batches[:5])
        times = {name: [] for name in impls}
        for _ in range(args.rounds):
            for name, impl in impls.items():
                times[name].append(time_steps(impl, batches))
        med = {name: statistics.median(t) for name, t in times.items()}
        rate = {name: B / t for name, t in med.items()}
        hi = f"{rate['higher']:>10,.0f} t/s" if "higher" in rate else f"{'-':>14}"
        vs_hi = f"{med['higher'] / med['engine']:>9.1f}x" if "higher" in med else f"{'-':>10}"
        label = algorithm + (" (k=5)" if algorithm == "reptile" else "")
        print(f"{label:<10} {rate['engine']:>10,.0f} t/s {rate['loop']:>12,.0f} t/s {hi} "
              f"{med['loop'] / med['engine']:>7.1f}x {vs_hi}")


if __name__ == "__main__":
    main()
