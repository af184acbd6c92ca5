"""Time to accuracy: meta-train on images_background_small1.zip until the held-out 5-way 1-shot accuracy first reaches
a target, with the engine and with a reference MAML (a per-task autograd loop), taking turns in one process.

What a user waits for is a usable initialization, not a meta-step. For each seed, the engine (the default image
experiment: `ExperimentConfig(task="images")`, the algorithm's image defaults) and the reference train from
the same initialization on the same stream of tasks (the same Trainer sampler and generator), and every
`--check-every` iterations both are evaluated on the same fixed set of `--eval-tasks` held-out tasks (the held-out
characters of the split, 15 queries per class, `--steps` test-time steps of the algorithm's own adaptation, task
seed 2017; the evaluation card is printed). Training stops when the accuracy first reaches `--target` or after
`--max-iterations` (or `--max-seconds` of training). Wall and process CPU time count training only; the checks'
evaluation time is reported on its own. The two runs take turns a check at a time (`--order interleaved`, the
default), so a change in the shared machine's load hits both alike; `--order sequential` runs them back to back.

The reference is MAML as one would write it from the paper: a Python loop over the meta-batch, per task the
inner SGD steps by autograd on the conv-4 as plain PyTorch (`Conv4.torch_module()` through
`torch.func.functional_call`), the query loss backpropagated through them (second order; first order for
FOMAML), then torch.optim.Adam. It takes the engine's hyperparameters: inner lr, inner steps, the inner loss
convention, meta-lr and its schedule, step-loss weights, meta-batch.

    python benchmarks/time_to_accuracy.py [--target 0.95] [--check-every 50] [--seeds 0 1 2] [--threads N]
    python benchmarks/time_to_accuracy.py --target 0.3 --max-iterations 20 --check-every 10 --eval-tasks 50
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "omniglot" / "images_background_small1.zip"
EVAL_SEED = 2017
EVAL_QUERIES = 15


@dataclass
class Outcome:
    """One training run to the target."""

    name: str
    seed: int
    reached: bool = False
    iterations: int = 0
    wall_s: float = 0.0  # training only
    cpu_s: float = 0.0
    eval_s: float = 0.0  # the checks' evaluation, not counted above
    accuracy: tuple[float, float] = (math.nan, math.nan)  # at the stop (mean, 95% CI)
    trend: list[tuple[int, float]] = field(default_factory=list)
    note: str = ""


class ReferenceMAML:
    """MAML written the straightforward way: a loop over tasks, autograd per task, torch.optim.Adam."""

    def __init__(self, model, algorithm, params):
        from torch.func import functional_call

        self.module = model.torch_module().to(next(iter(params.values())).device)
        self.call = functional_call
        cfg = algorithm.config
        self.loss_fn = algorithm.loss_fn  # the inner (and outer) loss convention the engine uses
        self.inner_lr, self.steps = float(cfg.inner_lr), int(cfg.inner_steps)
        self.weights = list(cfg.step_loss_weights) or None
        self.first_order = bool(getattr(algorithm, "first_order", False))
        self.schedule = algorithm.meta_lr  # iteration -> outer lr (constant, or cosine over the run)
        self.params = params
        self.optimizer = torch.optim.Adam(list(params.values()), lr=float(cfg.meta_lr))

    def logits(self, params, x):
        """x [N, C, H, W] -> [1, N, ways]: one task, batch norm over its images as in the engine."""
        return self.call(self.module, params, (x,)).unsqueeze(0)

    def task_objective(self, xs, ys, xq, yq):
        fast = dict(self.params)
        terms = []
        for _ in range(self.steps):
            loss = self.loss_fn(self.logits(fast, xs), ys.unsqueeze(0)).sum()
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not self.first_order)
            fast = {k: v - self.inner_lr * g for (k, v), g in zip(fast.items(), grads)}
            if self.weights is not None:
                terms.append(self.loss_fn(self.logits(fast, xq), yq.unsqueeze(0)).sum())
        if self.weights is not None:
            return sum(w * t for w, t in zip(self.weights, terms))
        return self.loss_fn(self.logits(fast, xq), yq.unsqueeze(0)).sum()

    def meta_gradient(self, batch) -> list[torch.Tensor]:
        """d(mean over tasks of the query objective)/d(theta), accumulated task by task."""
        for p in self.params.values():
            p.grad = None
        b = batch.x_support.shape[0]
        for i in range(b):
            objective = self.task_objective(batch.x_support[i], batch.y_support[i], batch.x_query[i],
                                            batch.y_query[i])
            (objective / b).backward()
        return [p.grad for p in self.params.values()]

    def step(self, batch, iteration: int) -> None:
        self.meta_gradient(batch)
        for group in self.optimizer.param_groups:
            group["lr"] = float(self.schedule(iteration))
        self.optimizer.step()


def evaluate(model, heldout, params, steps: int, adaptation, tasks: int, device) -> tuple[float, float]:
    from maml_lab.core.tasks.images import accuracy_after_steps

    return accuracy_after_steps(model, heldout, params, 1, [steps], adaptation, tasks, EVAL_QUERIES, EVAL_SEED,
                                device)[steps]


class Race:
    """One run towards the target, advanced a check at a time (`--check-every` iterations, then an evaluation), so
    that the engine and the reference can take turns and the machine's load changes hit both alike."""

    def __init__(self, name: str, trainer, step, args, heldout, steps: int, seed: int, log=print):
        self.name, self.trainer, self.step, self.args = name, trainer, step, args
        self.heldout, self.steps, self.seed, self.log = heldout, steps, seed, log
        self.run = next(iter(trainer.runs.values()))
        self.out = Outcome(name, seed)
        self.done = False
        self.sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)

    def advance(self) -> None:
        """Train up to the next check, evaluate, and decide whether this run is done."""
        args, out = self.args, self.out
        if out.iterations >= args.max_iterations:
            self.done = True
            return
        n = min(args.check_every, args.max_iterations - out.iterations)
        self.sync()
        w0, c0 = time.perf_counter(), time.process_time()
        self.step(n)
        self.sync()
        out.wall_s += time.perf_counter() - w0
        out.cpu_s += time.process_time() - c0
        out.iterations += n
        w0 = time.perf_counter()
        out.accuracy = evaluate(self.trainer.model, self.heldout, self.run.params, self.steps,
                                self.run.algorithm.adaptation(), args.eval_tasks, self.trainer.device)
        out.eval_s += time.perf_counter() - w0
        out.trend.append((out.iterations, out.accuracy[0]))
        self.log(f"  {self.name} seed {self.seed}: iteration {out.iterations}, {out.wall_s:.1f} s training, "
                 f"held-out 5-way 1-shot {100 * out.accuracy[0]:.1f}% +- {100 * out.accuracy[1]:.1f}%")
        if not math.isfinite(out.accuracy[0]):
            out.note = "non-finite accuracy"
            self.done = True
        elif out.accuracy[0] >= args.target:
            out.reached = self.done = True
        elif args.max_seconds and out.wall_s >= args.max_seconds:
            out.note = f"stopped at the {args.max_seconds:g} s training cap"
            self.done = True
        elif out.iterations >= args.max_iterations:
            self.done = True


def race(runs: list[Race], interleaved: bool) -> list[Outcome]:
    """Advance the runs in turns (interleaved) or each to its end in order (back to back)."""
    if interleaved:
        while not all(r.done for r in runs):
            for r in runs:
                if not r.done:
                    r.advance()
    else:
        for r in runs:
            while not r.done:
                r.advance()
    return [r.out for r in runs]


def parse_settings(pairs: list[str]) -> dict:
    """`--set inner_lr=0.6 --set inner_steps=2`: algorithm settings over the image defaults (numbers parsed)."""
    out = {}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        out[key.strip()] = value
    return out


def make_config(args, seed: int):
    from maml_lab.core.algorithms.config import AlgorithmConfig
    from maml_lab.core.training.config import ExperimentConfig

    settings = parse_settings(args.set)
    experiment_keys = {f.name for f in fields(ExperimentConfig)} - {"algorithms"}
    extra = {k: settings.pop(k) for k in list(settings) if k in experiment_keys}  # queries=10, ...
    algo = AlgorithmConfig.defaults(args.algorithm, task="images", **settings)
    if args.meta_batch_size:
        extra["meta_batch_size"] = args.meta_batch_size
    # the run's length is the experiment's (its default, or --set iterations=N): the outer lr schedule spans it
    return ExperimentConfig(task="images", data=str(args.data), ways=5, shots=1, val_every=0, seed=seed,
                            device=args.device, algorithms=[algo], **extra)


def run_seed(args, family, seed: int, log=print) -> list[Outcome]:
    from maml_lab.core.training.trainer import Trainer

    config = make_config(args, seed)
    heldout = family.validation_family
    engine = Trainer(config, family=family, record_every=0)
    run = engine.runs[args.algorithm]
    steps = args.steps if args.steps is not None else run.algorithm.config.test_inner_steps

    def engine_step(n: int) -> None:
        if engine.run(iterations=n) == "diverged":
            raise FloatingPointError(engine.stop_reason)

    runs = [Race("engine", engine, engine_step, args, heldout, steps, seed, log)]
    if args.reference != "none":
        ref_trainer = Trainer(config, family=family, record_every=0)  # same initialization, same task stream
        ref_run = ref_trainer.runs[args.algorithm]
        reference = ReferenceMAML(ref_trainer.model, ref_run.algorithm, ref_run.params)

        def reference_step(n: int) -> None:
            for _ in range(n):
                reference.step(ref_trainer.sample_batch(), ref_trainer.iteration)
                ref_trainer.iteration += 1

        runs.append(Race("reference", ref_trainer, reference_step, args, heldout, steps, seed, log))
    return race(runs, args.order == "interleaved")


def card_text(args, family, model, algorithm_config, steps: int) -> str:
    from maml_lab.core.analysis.card import EvaluationCard

    split = family.info.get("split", {})
    card = EvaluationCard.build("images", args.eval_tasks, [1], [steps], algorithm_config, queries=EVAL_QUERIES,
                                ways=5, loss=family.loss, model=model, algorithm=algorithm_config.name,
                                notes={"data": args.data.name, "heldout_classes": split.get("heldout_classes"),
                                       "split_seed": split.get("seed"), "task_seed": EVAL_SEED})
    return card.text()


def summary(outcomes: list[Outcome], target: float) -> list[str]:
    lines = [f"{'seed':>4} {'run':<9} {'reached':>7} {'iterations':>10} {'wall s':>8} {'CPU s':>8} {'eval s':>7} "
             f"{'accuracy at stop':>18}"]
    for o in outcomes:
        acc = f"{100 * o.accuracy[0]:.1f}% +- {100 * o.accuracy[1]:.1f}%"
        lines.append(f"{o.seed:>4} {o.name:<9} {'yes' if o.reached else 'no':>7} {o.iterations:>10} "
                     f"{o.wall_s:>8.1f} {o.cpu_s:>8.1f} {o.eval_s:>7.1f} {acc:>18}" + (f"  {o.note}" if o.note else ""))
    for name in ("engine", "reference"):
        mine = [o for o in outcomes if o.name == name]
        if mine:
            hit = [o for o in mine if o.reached]
            med = f"median {statistics.median(o.wall_s for o in hit):.1f} s wall" if hit else "never"
            lines.append(f"{name}: reached {100 * target:.0f}% in {len(hit)} of {len(mine)} seeds; {med}")
    pairs = [(e, r) for e in outcomes for r in outcomes
             if e.name == "engine" and r.name == "reference" and e.seed == r.seed and e.reached and r.reached]
    if pairs:
        lines.append("engine speed-up over the reference (time to target, per seed): "
                     + ", ".join(f"seed {e.seed}: {r.wall_s / max(e.wall_s, 1e-9):.2f}x wall, "
                                 f"{r.cpu_s / max(e.cpu_s, 1e-9):.2f}x CPU" for e, r in pairs))
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--target", type=float, default=0.95, help="held-out accuracy to reach (0..1)")
    parser.add_argument("--check-every", type=int, default=50, help="iterations between accuracy checks")
    parser.add_argument("--max-iterations", type=int,
                        help="stop there if the target is not reached (default: the run's length, the image "
                             "experiment's iterations, which the outer lr schedule spans)")
    parser.add_argument("--max-seconds", type=float, default=0.0, help="stop a run after this much training (0: none)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--algorithm", default="maml", help="the engine's algorithm (image defaults)")
    parser.add_argument("--meta-batch-size", type=int, help="default: the image experiment's")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="a setting over the image defaults, the algorithm's (inner_lr=0.6, meta_lr=0.002) or the "
                             "experiment's (queries=10); repeatable")
    parser.add_argument("--eval-tasks", type=int, default=600)
    parser.add_argument("--steps", type=int, help="test-time steps (default: the algorithm's, 3 for images)")
    parser.add_argument("--reference", choices=("loop", "none"), default="loop")
    parser.add_argument("--order", choices=("interleaved", "sequential"), default="interleaved",
                        help="engine and reference take turns, a check at a time (default), or run back to back")
    parser.add_argument("--threads", type=int,
                        help="torch threads (default: what the app's training thread takes for image tasks, "
                             "maml_lab/lab/threads.py: every core up to 4; 1 for the one-core figure)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    args = parser.parse_args(argv)
    if not args.data.exists():
        print(f"image set not found: {args.data}", file=sys.stderr)
        return 2
    if not 0 < args.target <= 1:
        print(f"--target is an accuracy in (0, 1], got {args.target}", file=sys.stderr)
        return 2
    if args.check_every < 1 or (args.max_iterations or 1) < 1 or args.eval_tasks < 1:
        print("need --check-every, --max-iterations and --eval-tasks >= 1", file=sys.stderr)
        return 2
    if args.threads is None:
        from maml_lab.lab.threads import training_threads

        args.threads = training_threads("images")
    torch.set_num_threads(args.threads)
    from maml_lab.core.training.trainer import Trainer, make_family

    try:
        first = make_config(args, args.seeds[0])
        if args.max_iterations is None:
            args.max_iterations = first.iterations
        family = make_family(first)
        probe = Trainer(first, family=family, record_every=0)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    algo = probe.runs[args.algorithm].algorithm.config
    steps = args.steps if args.steps is not None else algo.test_inner_steps
    split = family.info["split"]
    print(f"{args.data.name}: {split['train_classes']} training characters ({family.image_set.num_classes} classes "
          f"with rotations), {split['heldout_classes']} held out; {args.algorithm}, meta-batch "
          f"{first.meta_batch_size}, inner lr {algo.inner_lr:g} x {algo.inner_steps} step(s), meta-lr "
          f"{algo.meta_lr:g} ({algo.meta_lr_schedule} over {first.iterations} iterations); target "
          f"{100 * args.target:g}%, check every "
          f"{args.check_every}; device {probe.device}, {torch.get_num_threads()} thread(s), torch {torch.__version__}")
    print(card_text(args, family, probe.model, algo, steps), flush=True)
    del probe
    outcomes = []
    for seed in args.seeds:
        outcomes += run_seed(args, family, seed, log=lambda s: print(s, flush=True))
    print()
    print("\n".join(summary(outcomes, args.target)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
