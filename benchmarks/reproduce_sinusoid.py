"""Reproduce the MAML paper's sinusoid table (Appendix C, Table 2): MSE after 1 / 5 / 10 fine-tuning steps.

Meta-trains MAML, FOMAML, Reptile and the pretrained baseline on the same stream of sinusoid tasks with
the paper's settings (MLP 1-40-40-1 ReLU, K = 10, one inner SGD step with alpha = 0.01, Adam 1e-3,
meta-batch 25), then fine-tunes each on K = 5 points of 600 held-out tasks and prints mean MSE with
95% CI (1.96 std / sqrt(600)) beside the paper's numbers.

    python benchmarks/reproduce_sinusoid.py --iterations 70000 [--out-dir runs/sinusoid]

The paper's settings alone leave MAML unstable when fine-tuned for 5-10 steps (see docs/sinusoid_runs.md); the
table at the top of docs/sinusoid_runs.md comes from

    python benchmarks/reproduce_sinusoid.py --iterations 140000 --meta-lr-schedule cosine --step-loss-weights 0.5 0.5

Any registered algorithm trains beside the others (`--algorithms maml fomaml reptile mamlpp metasgd anil boil
pretrained`: every one at one budget, docs/sinusoid_runs.md); `--steps` chooses the fine-tuning steps of the table
(0 = before adaptation). Each algorithm's process CPU time in its meta-steps is printed, so runs on a shared
machine compare.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from maml_lab.core.algorithms.config import AlgorithmConfig
from maml_lab.core.algorithms.registry import algorithm_names
from maml_lab.core.analysis.card import EvaluationCard
from maml_lab.core.analysis.evaluation import adaptation_curve
from maml_lab.core.training.config import ExperimentConfig
from maml_lab.core.training.trainer import Trainer

PAPER = {"maml": (0.67, 0.38, 0.35), "pretrained": (2.41, 2.23, 2.19)}
STEPS = (1, 5, 10)
QUERIES = 100


def evaluation_card(trainer, name: str, shots: int, tasks: int, steps=STEPS, queries: int = QUERIES) -> EvaluationCard:
    """The protocol of the table's row for `name`: fine-tuned by its own test-time rule (Reptile: as trained)."""
    run = trainer.runs[name]
    return EvaluationCard.build("sinusoid", tasks, [shots], list(steps), run.algorithm.adaptation(), queries=queries,
                                loss=trainer.family.loss, model=trainer.model, algorithm=name,
                                notes={"iterations": trainer.iteration})


def evaluate(trainer, shots: int, tasks: int, steps=STEPS) -> list[dict]:
    """Each algorithm's card and its MSE (mean, 95% CI) after each of `steps`, on the same held-out tasks."""
    rows = []
    for name, run in trainer.runs.items():
        curve = adaptation_curve(trainer.model, trainer.family, run.params, shots, max(steps),
                                 run.algorithm.adaptation(), tasks, QUERIES)
        rows.append({"algorithm": name, "card": evaluation_card(trainer, name, shots, tasks, steps).to_dict(),
                     "mse": {str(s): [float(curve.loss_mean[s]), float(curve.loss_ci95[s])] for s in steps},
                     "paper": list(PAPER.get(name, ()))})
    return rows


def mse_cell(mean: float, ci: float) -> str:
    """'0.52 +- 0.06'; a diverged mean (inf, NaN) says so; large ones in 3 significant digits."""
    if not math.isfinite(mean):
        return f"{mean} (diverged)"
    if abs(mean) >= 100:
        return f"{mean:.3g} +- {ci:.3g}"
    return f"{mean:.2f} +- {ci:.2f}"


def table(rows: list[dict], steps=STEPS) -> str:
    """The markdown table, each algorithm's evaluation card above it."""
    lines = [row["card"]["text"] for row in rows]
    lines.append(f"| method | {' | '.join(f'{s} step' + ('' if s == 1 else 's') for s in steps)} | paper |")
    lines.append("| --- | " + " | ".join("---" for _ in steps) + " | --- |")
    for row in rows:
        cells = " | ".join(mse_cell(m, c) for m, c in (row["mse"][str(s)] for s in steps))
        paper = " / ".join(f"{v:.2f}" for v in row["paper"]) if row["paper"] else "-"
        lines.append(f"| {row['algorithm']} | {cells} | {paper} |")
    return "\n".join(lines)


def time_meta_steps(trainer) -> dict[str, float]:
    """Process CPU seconds each algorithm spends in its meta-steps (filled in while the trainer runs)."""
    cpu = {name: 0.0 for name in trainer.runs}
    for name, run in trainer.runs.items():
        step = run.algorithm.meta_step

        def timed(*args, _step=step, _name=name, **kwargs):
            start = time.process_time()
            try:
                return _step(*args, **kwargs)
            finally:
                cpu[_name] += time.process_time() - start

        run.algorithm.meta_step = timed
    return cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=70000)
    parser.add_argument("--algorithms", nargs="+", default=["maml", "fomaml", "reptile", "pretrained"],
                        choices=algorithm_names(), help="default: the four of the table below")
    parser.add_argument("--eval-shots", type=int, default=5)
    parser.add_argument("--eval-tasks", type=int, default=600)
    parser.add_argument("--steps", type=int, nargs="+", default=list(STEPS),
                        help="fine-tuning steps of the table (0: before adaptation; default 1 5 10, the paper's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, help="export each initialization here")
    parser.add_argument("--meta-lr-schedule", choices=("constant", "cosine"), default="constant",
                        help="outer lr: constant (the paper) or cosine-annealed to 0 (MAML++'s stabilizer)")
    parser.add_argument("--step-loss-weights", type=float, nargs="+", metavar="W",
                        help="MAML and FOMAML: meta-train through len(W) inner steps with the query loss after "
                             "step s weighted by W[s] (MAML++'s multi-step loss; default: the paper's one step)")
    parser.add_argument("--json", type=Path, help="also write the cards and results here")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 is as fast for this small MLP and immune to contention)")
    args = parser.parse_args(argv)
    steps = sorted(set(args.steps))
    if steps[0] < 0:
        parser.error("--steps must be >= 0")
    torch.set_num_threads(args.threads)

    def algorithm(name: str) -> AlgorithmConfig:
        multi_step = {}
        if args.step_loss_weights and name in ("maml", "fomaml", "anil", "boil"):  # MAML's objective, own subset
            multi_step = {"inner_steps": len(args.step_loss_weights), "step_loss_weights": args.step_loss_weights}
        elif args.step_loss_weights and name == "mamlpp":  # as many inner steps, with its own annealed weights
            multi_step = {"inner_steps": len(args.step_loss_weights)}
        return AlgorithmConfig.defaults(name, meta_lr_schedule=args.meta_lr_schedule, **multi_step)

    config = ExperimentConfig(iterations=args.iterations, seed=args.seed, val_every=0,
                              algorithms=[algorithm(a) for a in args.algorithms])
    trainer = Trainer(config)
    cpu = time_meta_steps(trainer)
    start, cpu_start = time.perf_counter(), time.process_time()
    last = [start]

    def progress(p: dict) -> None:
        now = time.perf_counter()
        if now - last[0] > 30 or p["state"] != "running":
            last[0] = now
            print(f"  iteration {p['iteration']}/{p['total']}, {p['tasks_per_s']:,.0f} tasks/s", flush=True)

    weights = " ".join(f"{w:g}" for w in args.step_loss_weights) if args.step_loss_weights else "last step only"
    print(f"meta-training {', '.join(args.algorithms)} for {args.iterations} iterations on {trainer.device}, "
          f"seed {args.seed} (meta-lr schedule: {args.meta_lr_schedule}; MAML/FOMAML step-loss weights: {weights})")
    trainer.run(callback=progress, report_every=100)
    train_s, train_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    if trainer.state == "diverged":  # every algorithm stops with it, at the iteration it reached
        print(f"training stopped at iteration {trainer.iteration}: {trainer.stop_reason}", flush=True)
    if args.out_dir:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        for name in trainer.runs:
            trainer.export(name, args.out_dir / f"sinusoid-{name}.safetensors")

    print(f"\nK = {args.eval_shots}, {args.eval_tasks} held-out tasks, {QUERIES} query points each, each algorithm "
          f"fine-tuned by its own test-time rule; MSE (95% CI)")
    rows = evaluate(trainer, args.eval_shots, args.eval_tasks, steps)
    for row in rows:
        row["train_cpu_s"] = cpu[row["algorithm"]]
    print(table(rows, steps))
    if args.json:
        args.json.write_text(json.dumps({"iterations": trainer.iteration, "seed": args.seed, "steps": steps,
                                         "rows": rows}, indent=2))
    print("\nprocess CPU time in meta-steps: " + ", ".join(
        f"{name} {seconds:.0f} s ({1000 * seconds / max(trainer.iteration, 1):.2f} ms/it)"
        for name, seconds in cpu.items()))
    print(f"meta-training took {train_s / 60:.1f} min wall, {train_cpu / 60:.1f} min CPU ({trainer.iteration} "
          f"iterations, {len(trainer.runs)} algorithms on one task stream); total "
          f"{(time.perf_counter() - start) / 60:.1f} min wall, {(time.process_time() - cpu_start) / 60:.1f} min CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
