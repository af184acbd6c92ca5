"""Omniglot N-way K-shot classification on the official "background small 1" split: MAML, FOMAML, Reptile, ...

The 136 characters of images_background_small1.zip are split as `maml-lab train --task images` splits them
(seeded, by character: 95 meta-train, 41 held out); the training characters are augmented with 90/180/270
degree rotations (380 classes). Each algorithm meta-trains 5-way 1-shot with its image defaults (conv-4,
meta-batch 32, alpha 0.4, one inner step; MAML, FOMAML, ANIL, BOIL: Adam 3e-3 annealed by a cosine over the run,
tuned for time to accuracy; `--meta-lr 0.001 --meta-lr-schedule constant` for the MAML paper's outer step, with
which the tables in docs/image_tasks.md were measured; Reptile: supervised-reptile's 1-shot
Omniglot run, i.e. 5 inner Adam steps (beta1 0, lr 1e-3, state carried) on mini-batches of 10 of 10 training
shots per class, the first 5 tasks of each meta-batch, epsilon 1 -> 0, and 50 test steps on batches of 5), then
is evaluated on the held-out characters: 5-way 1-shot and 5-shot accuracy after the test steps (3; Reptile 50), with
95% confidence intervals over --eval-tasks tasks of 15 queries per class. With --trend-every, held-out
1-shot accuracy is also measured during training (on fewer tasks) to show the trend.

    python benchmarks/omniglot_small1.py [--iterations 500] [--algorithms maml fomaml reptile] [--threads 1]
    python benchmarks/omniglot_small1.py --algorithms anil boil   # any registered algorithm, adapted by its own rule

The MAML paper reaches 98.7% on full Omniglot after 60,000 iterations; this benchmark measures what a
modest CPU budget reaches on a 136-character subset.

--ways and --shots set the training tasks (default 5-way 1-shot); the meta-batch defaults to the MAML paper's
(32 for 5-way, 16 for 20-way and above). Evaluation is at the training ways with the training shots, and for
5-way also with 1 and 5 shots (--eval-shots to choose); every evaluation cell draws --eval-queries (15) queries
per class, so a class needs shots + 15 images (Omniglot has 20 per character: 5 shots + 15 queries is the most);
shapes the held-out characters cannot supply are refused before training.

    python benchmarks/omniglot_small1.py --ways 5 --shots 5 --algorithms maml    # 5-way 5-shot training
    python benchmarks/omniglot_small1.py --ways 20 --shots 1 --algorithms maml   # 20-way 1-shot, meta-batch 16
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from maml_lab.core.algorithms.config import AlgorithmConfig
from maml_lab.core.tasks.images import accuracy_after_steps, format_accuracy
from maml_lab.core.training.config import ExperimentConfig
from maml_lab.core.training.trainer import Trainer, make_family

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "omniglot" / "images_background_small1.zip"
EVAL_QUERIES = 15


def evaluation_card(trainer, name: str, heldout, tasks: int, steps: int, shots=(1, 5), queries: int = EVAL_QUERIES):
    """The protocol of `name`'s final evaluation (core/analysis/card.py): printed above its numbers."""
    from maml_lab.core.analysis.card import EvaluationCard

    run = trainer.runs[name]
    return EvaluationCard.build("images", tasks, list(shots), [steps], run.algorithm.adaptation(), queries=queries,
                                ways=heldout.ways, loss=heldout.loss, model=trainer.model, algorithm=name,
                                notes={"iterations": trainer.iteration, "data": heldout.info.get("data"),
                                       "heldout_classes": heldout.image_set.num_classes})


def paper_meta_batch(ways: int) -> int:
    """The MAML paper's Omniglot meta-batch: 32 tasks for 5-way, 16 for 20-way."""
    return 16 if ways >= 20 else 32


def default_eval_shots(ways: int, shots: int) -> list[int]:
    """The training shots, and for 5-way also 1 and 5 (the columns of the 5-way 1-shot tables)."""
    return sorted({1, 5, shots}) if ways == 5 else [shots]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--iterations", type=int, default=500, help="meta-iterations per algorithm")
    parser.add_argument("--algorithms", nargs="+", default=["maml", "fomaml", "reptile"])
    parser.add_argument("--ways", type=int, default=5, help="classes per training and evaluation task")
    parser.add_argument("--shots", type=int, default=1, help="training shots per class")
    parser.add_argument("--meta-batch-size", type=int,
                        help="tasks per meta-iteration (default: the MAML paper's, 32 for 5-way, 16 for 20-way)")
    parser.add_argument("--eval-tasks", type=int, default=600)
    parser.add_argument("--eval-shots", type=int, nargs="+",
                        help="shots of the final evaluation (default: the training shots; for 5-way 1 and 5 too)")
    parser.add_argument("--eval-queries", type=int, default=EVAL_QUERIES, help="query images per class at evaluation")
    parser.add_argument("--trend-every", type=int, default=100, help="held-out check at the training shots every N "
                                                                    "iterations (0: none)")
    parser.add_argument("--trend-tasks", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is robust on a shared CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, help="also export each initialization here")
    parser.add_argument("--convention", choices=["lab", "cbfinn"], default=None,
                        help="loss and batch-norm conventions (docs/image_tasks.md; default: the images default)")
    parser.add_argument("--inner-lr", type=float, help="inner step size (default: the images default, 0.4)")
    parser.add_argument("--inner-steps", type=int, help="inner steps in training (default: each algorithm's own)")
    parser.add_argument("--meta-lr", type=float, help="outer Adam step size (default: each algorithm's own)")
    parser.add_argument("--meta-lr-schedule", choices=["constant", "cosine"],
                        help="outer step size schedule (default: each algorithm's own)")
    parser.add_argument("--test-steps", type=int, help="fine-tuning steps at evaluation (default: each algorithm's)")
    args = parser.parse_args(argv)
    if not args.data.is_file():
        print(f"Omniglot data not found: {args.data}", file=sys.stderr)
        return 2
    meta_batch = args.meta_batch_size or paper_meta_batch(args.ways)
    eval_shots = sorted(set(args.eval_shots)) if args.eval_shots else default_eval_shots(args.ways, args.shots)
    torch.set_num_threads(args.threads)
    started, cpu_started = time.time(), time.process_time()
    base = ExperimentConfig(task="images", data=str(args.data), ways=args.ways, shots=args.shots, queries=5,
                            rotations=True, meta_batch_size=meta_batch, iterations=args.iterations, val_every=0,
                            seed=args.seed,
                            task_options={"convention": args.convention} if args.convention else {})
    try:
        family = make_family(base)
        heldout = family.validation_family
        for shots in sorted({args.shots, *eval_shots}):  # refuse before training, with the numbers
            heldout.validate(shots, args.eval_queries)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    split = family.info["split"]
    counts = heldout.image_set.counts
    print(f"{args.data.name}: {split['train_classes']} training characters (x4 rotations = "
          f"{family.image_set.num_classes} classes), {split['heldout_classes']} held-out characters "
          f"({int(counts.min())}-{int(counts.max())} images each); {args.ways}-way {args.shots}-shot training, "
          f"meta-batch {meta_batch}; evaluation {args.ways}-way {'/'.join(map(str, eval_shots))}-shot, "
          f"{args.eval_queries} queries per class; torch {torch.__version__}, {torch.get_num_threads()} thread(s)",
          flush=True)
    rows = []
    for name in args.algorithms:
        algo = AlgorithmConfig.defaults(name, task="images", inner_lr=args.inner_lr, inner_steps=args.inner_steps,
                                       test_inner_steps=args.test_steps, meta_lr=args.meta_lr,
                                       meta_lr_schedule=args.meta_lr_schedule)
        config = ExperimentConfig(**{**base.to_dict(), "algorithms": [algo]})
        print(f"{name}: {algo.inner_steps} inner step(s) of {algo.inner_lr:g} in training, {algo.test_inner_steps} at "
              f"test, outer Adam {algo.meta_lr:g} ({algo.meta_lr_schedule})", flush=True)
        trainer = Trainer(config, family=family, record_every=0)
        run = trainer.runs[name]
        steps = algo.test_inner_steps  # fine-tuned by its own test-time rule (ANIL: the head only, BOIL: the body)
        trend = []
        t_train = cpu_train = 0.0
        chunk = args.trend_every or args.iterations
        while trainer.iteration < args.iterations:
            t0, c0 = time.time(), time.process_time()
            trainer.run(iterations=min(chunk, args.iterations - trainer.iteration))
            t_train += time.time() - t0
            cpu_train += time.process_time() - c0
            if trainer.state == "diverged":
                print(f"{name}: {trainer.stop_reason}", flush=True)
                break
            recent = run.log.tail_rows()[-50:]
            train_acc = sum(m["post_accuracy"] for m in recent) / len(recent)
            line = (f"  {name} iteration {trainer.iteration}: {t_train:.0f} s ({cpu_train:.0f} s CPU), training "
                    f"query accuracy {100 * train_acc:.1f}%")
            if args.trend_every and trainer.iteration < args.iterations:
                acc = accuracy_after_steps(trainer.model, heldout, run.params, args.shots, [steps],
                                           run.algorithm.adaptation(), args.trend_tasks, 15, seed=1234)[steps]
                trend.append((trainer.iteration, acc[0]))
                line += (f", held-out {args.shots}-shot {100 * acc[0]:.1f}% +- {100 * acc[1]:.1f}% "
                         f"({args.trend_tasks} tasks)")
            print(line, flush=True)
        t0 = time.time()
        final = {shots: accuracy_after_steps(trainer.model, heldout, run.params, shots, [steps],
                                             run.algorithm.adaptation(), args.eval_tasks, args.eval_queries)[steps]
                 for shots in eval_shots}
        t_eval = time.time() - t0
        card = evaluation_card(trainer, name, heldout, args.eval_tasks, steps, eval_shots, args.eval_queries)
        print(card.text(), flush=True)
        trend.append((trainer.iteration, final[args.shots][0]) if args.shots in final else (trainer.iteration, None))
        rows.append((name, trainer.iteration, t_train, cpu_train, final, steps, t_eval, trend))
        if args.out_dir:
            args.out_dir.mkdir(parents=True, exist_ok=True)
            shape = "" if (args.ways, args.shots) == (5, 1) else f"{args.ways}w{args.shots}s-"
            trainer.export(name, args.out_dir / f"omniglot_small1-{shape}{name}.safetensors")
        cells = ", ".join(format_accuracy(args.ways, shots, *final[shots]) for shots in eval_shots)
        print(f"{name}: {cells} ({trainer.iteration} iterations, {t_train:.0f} s training, {cpu_train:.0f} s CPU, "
              f"{t_eval:.0f} s eval)", flush=True)
    print()
    print(f"held-out characters, {args.eval_tasks} tasks per cell, {args.eval_queries} queries per class, 95% CI; "
          f"meta-batch {meta_batch}, {args.ways}-way {args.shots}-shot training")
    heads = [f"{args.ways}-way {shots}-shot" for shots in eval_shots]
    print(f"{'algorithm':<9} {'iterations':>10} {'train s':>8} {'s/iter':>7} {'CPU s':>7} {'steps':>5} "
          + " ".join(f"{h:>16}" for h in heads) + f"  trend ({args.shots}-shot)")
    for name, iters, t_train, cpu_train, final, steps, _, trend in rows:
        cells = [f"{100 * m:.1f}% +- {100 * c:.1f}%" for m, c in (final[shots] for shots in eval_shots)]
        trend_text = " ".join(f"{i}:{100 * a:.0f}%" for i, a in trend if a is not None)
        print(f"{name:<9} {iters:>10} {t_train:>8.0f} {t_train / max(iters, 1):>7.2f} {cpu_train:>7.0f} {steps:>5} "
              + " ".join(f"{c:>16}" for c in cells) + f"  {trend_text}")
    print(f"total {time.time() - started:.0f} s, {time.process_time() - cpu_started:.0f} s CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
