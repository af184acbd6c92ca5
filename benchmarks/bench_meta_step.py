"""Time one meta-step of the engine against a per-task autograd loop and `higher`, in the same process.

--model mlp (default): sinusoid MLP 1-40-40-1, meta-batch 25, K = 10 (10 queries), one inner SGD step, Adam outer.
--model conv4: the MAML paper's Omniglot conv-4 on 28x28 images, 5-way 1-shot, 5 queries per class, meta-batch 32,
one inner SGD step of 0.4 (second-order MAML by default).
The three implementations are interleaved round by round so machine noise hits them alike; the
script prints tasks/s (median over rounds) and the engine's speed-up over each reference.

    python benchmarks/bench_meta_step.py [--rounds 7] [--steps 50]
    python benchmarks/bench_meta_step.py --model conv4 [--threads 1] [--clock process] [--conv4-batched loop]
    python benchmarks/bench_meta_step.py --model conv4 --queries 3   # other query-set sizes (per class)
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import OrderedDict

import torch
import torch.nn.functional as F

from maml_lab.core.algorithms.config import AlgorithmConfig, make_algorithm
from maml_lab.core.models.mlp import MLP
from maml_lab.core.tasks.sinusoid import SinusoidFamily


class Setup:
    """What is benchmarked: model, loss, task batch shape and inner step size."""

    def __init__(self, model: str, conv4_batched: str = "auto", queries: int | None = None):
        self.kind = model
        if model == "mlp":
            self.model, self.loss_name, self.lr = MLP(), "mse", 0.01
            self.b, self.k, self.q = 25, 10, 10
            self.loss = F.mse_loss
        else:
            from maml_lab.core.models.conv4 import Conv4

            self.model, self.loss_name, self.lr = Conv4(1, 28, 5, batched=conv4_batched), "cross_entropy", 0.4
            self.b, self.k, self.q = 32, 1, 5  # 5-way 1-shot, 5 queries per class
            self.loss = F.cross_entropy
        if queries is not None:
            self.q = queries

    def describe(self) -> str:
        if self.kind == "mlp":
            return f"MLP 1-40-40-1, meta-batch {self.b}, K={self.k}"
        return (f"conv-4 (28x28, 64 filters), 5-way {self.k}-shot, {self.q} queries per class, meta-batch {self.b}, "
                f"inner lr {self.lr}, per-task strategy {self.model.per_task_strategy('cpu')}")

    def batches(self, n: int, g: torch.Generator):
        if self.kind == "mlp":
            return [SinusoidFamily().sample(self.b, self.k, self.q, g) for _ in range(n)]
        import numpy as np

        from maml_lab.core.tasks.images import ImageTaskFamily
        from maml_lab.core.tasks.imagesets import ImageSet, Preprocessing

        rng = np.random.default_rng(0)  # 100 classes of 20 random "images": timing does not depend on content
        pixels = (rng.random((2000, 1, 28, 28)) < 0.15).astype(np.uint8) * 255
        images = ImageSet("random", [f"c{i}" for i in range(100)], None, pixels, np.arange(0, 2001, 20),
                          Preprocessing())
        family = ImageTaskFamily(images, ways=5)
        return [family.sample(self.b, self.k, self.q, g) for _ in range(n)]

    def forward(self, params, x):
        """Plain functional PyTorch for one task."""
        if self.kind == "mlp":
            h = F.relu(F.linear(x, params["0.weight"], params["0.bias"]))
            h = F.relu(F.linear(h, params["2.weight"], params["2.bias"]))
            return F.linear(h, params["4.weight"], params["4.bias"])
        h = x
        for i in range(0, 12, 3):
            h = F.conv2d(h, params[f"{i}.weight"], params[f"{i}.bias"], stride=2, padding=1)
            h = F.relu(F.batch_norm(h, None, None, params[f"{i + 1}.weight"], params[f"{i + 1}.bias"], training=True))
        return F.linear(h.flatten(1), params["13.weight"], params["13.bias"])


class PerTaskLoop:
    """The straightforward implementation: a Python loop over tasks, autograd per task."""

    def __init__(self, setup: Setup, params, algorithm: str, inner_steps: int):
        self.setup = setup
        self.params = OrderedDict((k, v.clone().requires_grad_(True)) for k, v in params.items())
        self.algorithm = algorithm
        self.inner_steps = inner_steps
        self.opt = torch.optim.Adam(self.params.values(), lr=1e-3)

    def step(self, batch):
        fwd, loss_fn, lr = self.setup.forward, self.setup.loss, self.setup.lr
        if self.algorithm == "reptile":
            deltas = {k: torch.zeros_like(v) for k, v in self.params.items()}
            for i in range(batch.num_tasks):
                fast = {k: v.detach().requires_grad_(True) for k, v in self.params.items()}
                for _ in range(self.inner_steps):
                    loss = loss_fn(fwd(fast, batch.x_support[i]), batch.y_support[i])
                    grads = torch.autograd.grad(loss, list(fast.values()))
                    fast = {k: (v - lr * g).detach().requires_grad_(True) for (k, v), g in zip(fast.items(), grads)}
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
                loss = loss_fn(fwd(fast, batch.x_support[i]), batch.y_support[i])
                grads = torch.autograd.grad(loss, list(fast.values()), create_graph=self.algorithm == "maml")
                fast = {k: v - lr * g for (k, v), g in zip(fast.items(), grads)}
            total = total + loss_fn(fwd(fast, batch.x_query[i]), batch.y_query[i])
        (total / batch.num_tasks).backward()
        self.opt.step()


class Higher:
    """The same loop written with `higher` (0.2.1), as its MAML example does."""

    def __init__(self, setup: Setup, params, algorithm: str, inner_steps: int):
        import higher

        self.higher = higher
        self.setup = setup
        self.model = setup.model.torch_module().to(next(iter(params.values())).device)
        self.model.load_state_dict(params)
        self.algorithm = algorithm
        self.inner_steps = inner_steps
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.inner_opt = torch.optim.SGD(self.model.parameters(), lr=setup.lr)

    def step(self, batch):
        loss_fn = self.setup.loss
        self.opt.zero_grad()
        for i in range(batch.num_tasks):
            with self.higher.innerloop_ctx(self.model, self.inner_opt, copy_initial_weights=False,
                                           track_higher_grads=self.algorithm == "maml") as (fmodel, diffopt):
                for _ in range(self.inner_steps):
                    diffopt.step(loss_fn(fmodel(batch.x_support[i]), batch.y_support[i]))
                (loss_fn(fmodel(batch.x_query[i]), batch.y_query[i]) / batch.num_tasks).backward()
        self.opt.step()


class Engine:
    def __init__(self, setup: Setup, params, algorithm: str, inner_steps: int):
        self.params = OrderedDict((k, v.clone().requires_grad_(True)) for k, v in params.items())
        cfg = AlgorithmConfig.defaults(algorithm, inner_steps=inner_steps, inner_lr=setup.lr)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.algo = make_algorithm(setup.model, setup.loss_name, cfg, total_iterations=10**9)
        self.algo.setup(self.params)

    def step(self, batch):
        self.algo.meta_step(self.params, batch)


CLOCK = time.perf_counter
SYNC = lambda: None  # noqa: E731 - torch.cuda.synchronize on CUDA, so the clock sees the kernels finish


def time_steps(impl, batches) -> float:
    SYNC()
    start = CLOCK()
    for b in batches:
        impl.step(b)
    SYNC()
    return (CLOCK() - start) / len(batches)


def main() -> None:
    global CLOCK, SYNC
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("mlp", "conv4"), default="mlp")
    parser.add_argument("--rounds", type=int, help="default 7 (mlp), 5 (conv4)")
    parser.add_argument("--steps", type=int, help="meta-steps per implementation per round (default 40; conv4 3)")
    parser.add_argument("--algorithms", nargs="+", help="default maml fomaml reptile (mlp), maml (conv4)")
    parser.add_argument("--queries", type=int, help="query examples per class (conv4, default 5) or per task (mlp, 10)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--clock", choices=("wall", "process"), default="wall",
                        help="process: CPU time of this process (robust when other jobs share the CPU)")
    parser.add_argument("--conv4-batched", choices=("auto", "loop", "grouped", "vmap"), default="auto",
                        help="the engine's strategy for per-task conv-4 parameters")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (CUDA: the engine's autograd paths)")
    args = parser.parse_args()
    conv = args.model == "conv4"
    rounds = args.rounds or (5 if conv else 7)
    steps = args.steps or (3 if conv else 40)
    algorithms = args.algorithms or (["maml"] if conv else ["maml", "fomaml", "reptile"])
    if args.threads:
        torch.set_num_threads(args.threads)
    CLOCK = time.process_time if args.clock == "process" else time.perf_counter
    setup = Setup(args.model, args.conv4_batched, args.queries)
    g = torch.Generator().manual_seed(0)
    params = setup.model.init_params(g)
    batches = setup.batches(steps, g)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            parser.error("--device cuda: CUDA is not available here")
        SYNC = torch.cuda.synchronize
    params = OrderedDict((k, v.to(device)) for k, v in params.items())
    batches = [b.to(device) for b in batches]
    B = setup.b
    try:
        import higher  # noqa: F401

        have_higher = True
    except ImportError:
        have_higher = False
        print("higher is not installed (pip install higher==0.2.1): comparing with the loop only")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock, device {device}; "
          f"{setup.describe()}")
    print(f"{'algorithm':<10} {'engine':>14} {'per-task loop':>16} {'higher':>14} {'vs loop':>8} {'vs higher':>10}")
    for algorithm in algorithms:
        inner = 5 if algorithm == "reptile" else 1
        impls = {"engine": Engine(setup, params, algorithm, inner),
                 "loop": PerTaskLoop(setup, params, algorithm, inner)}
        if have_higher and algorithm != "reptile":
            impls["higher"] = Higher(setup, params, algorithm, inner)
        for impl in impls.values():  # warm-up
            time_steps(impl, batches[:5])
        times = {name: [] for name in impls}
        for _ in range(rounds):
            for name, impl in impls.items():
                times[name].append(time_steps(impl, batches))
        med = {name: statistics.median(t) for name, t in times.items()}
        rate = {name: B / t for name, t in med.items()}
        hi = f"{rate['higher']:>10,.0f} t/s" if "higher" in rate else f"{'-':>14}"
        vs_hi = f"{med['higher'] / med['engine']:>9.1f}x" if "higher" in med else f"{'-':>10}"
        label = algorithm + (" (k=5)" if algorithm == "reptile" else "")
        print(f"{label:<10} {rate['engine']:>10,.0f} t/s {rate['loop']:>12,.0f} t/s {hi} "
              f"{med['loop'] / med['engine']:>7.1f}x {vs_hi}")
        if conv:
            print(f"{'':<10} {1e3 * med['engine']:>11.0f} ms {1e3 * med['loop']:>13.0f} ms "
                  + (f"{1e3 * med['higher']:>11.0f} ms" if "higher" in med else f"{'-':>14}")
                  + "  (median per meta-step)")


if __name__ == "__main__":
    main()
