"""Where the time of one image meta-training iteration goes: sampling, moving data, the meta-step, validation,
logging, checkpoints.

Runs a real TrainingSession (the code the CLI and the app run) with a run folder in a temporary directory, MAML
5-way 1-shot on images_background_small1.zip, meta-batch 32, and times each phase of the Trainer's loop with wall
clocks around the methods that do it (CUDA: synchronized before every reading). Validation and checkpoints come
every `--val-every` / `--checkpoint-every` iterations, so they are timed on their own (`--rare-repeats` calls
each) and amortized over their interval; every other phase is timed over `--iterations` consecutive iterations.

    python benchmarks/profile_iteration.py [--iterations 30] [--threads 1] [--device cpu] [--record-every 1]

Phases:
  sampling (indices)     the task sampler's random choice of classes and image rows (CPU generator)
  moving data            gathering the sampled rows from the uint8 image tensor, to float, onto the device
  meta-step              the algorithm's meta_step (meta-gradient and outer update, its metrics)
  parameter path         the trajectory recorder's snapshot of theta (the "looking inside" views)
  logging                the run folder's observer (metrics.csv rows, TensorBoard) minus its checkpoints
  progress callback      the session's Progress message to its listener (here: discarded)
  checkpoint             the observer's checkpoint (metrics flush, safetensors write, run.json), amortized
  validation             Trainer.validate on the fixed held-out batch, amortized
  other                  the rest of the loop (last-finite-parameters copy, finiteness check, bookkeeping)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "omniglot" / "images_background_small1.zip"
PHASES = ("sampling (indices)", "moving data", "meta-step", "parameter path", "logging", "progress callback",
          "checkpoint", "validation", "other")


class Clock:
    """Accumulates wall time per phase; nested phases are subtracted from their parent."""

    def __init__(self, device: torch.device, now=time.perf_counter):
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.now = now
        self.total: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[list] = []

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            self.sync()
            frame = [name, self.now(), 0.0]  # name, start, time of nested phases
            self._stack.append(frame)
            try:
                return fn(*args, **kwargs)
            finally:
                self.sync()
                self._stack.pop()
                spent = self.now() - frame[1]
                self.total[name] += spent - frame[2]
                self.calls[name] += 1
                if self._stack:
                    self._stack[-1][2] += spent
        return timed

    def reset(self) -> None:
        self.total.clear()
        self.calls.clear()


def instrument(session, clock: Clock) -> None:
    """Wrap the methods of the session's trainer, family, algorithms, recorders and run logger."""
    trainer = session.trainer
    family = trainer.family
    original_sample = family.sample
    family.sample_indices = clock.wrap("sampling (indices)", family.sample_indices)
    family.sample = clock.wrap("moving data", original_sample)
    for run in trainer.runs.values():
        run.algorithm.meta_step = clock.wrap("meta-step", run.algorithm.meta_step)
    for recorder in trainer.recorders.values():
        recorder.record = clock.wrap("parameter path", recorder.record)
    trainer.validate = clock.wrap("validation", trainer.validate)
    logger = session.logger
    if logger is not None:
        logger.checkpoint = clock.wrap("checkpoint", logger.checkpoint)
        logger.on_step = clock.wrap("logging", logger.on_step)


def profile(args) -> dict:
    from maml_lab.core.algorithms.config import AlgorithmConfig
    from maml_lab.core.training.config import ExperimentConfig
    from maml_lab.core.training.runs import RunLogger
    from maml_lab.core.training.trainer import make_family
    from maml_lab.lab.session import TrainingSession

    torch.set_num_threads(args.threads)
    algo = AlgorithmConfig.defaults(args.algorithm, task="images")
    total = args.warmup + args.iterations
    config = ExperimentConfig(task="images", data=str(args.data), ways=5, shots=1, queries=5,
                              meta_batch_size=args.meta_batch_size, iterations=total + 10 * (args.rare_repeats + 1),
                              val_every=args.val_every, val_tasks=args.val_tasks, seed=args.seed,
                              device=args.device, algorithms=[algo])
    t0 = time.perf_counter()
    family = make_family(config)
    load_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="maml-lab-profile-") as tmp:
        # what TrainingSession.create does, with the run logger's checkpoint writes chosen by --checkpoint-writes
        folder = TrainingSession.create_folder(config, run_dir=Path(tmp) / "run")
        session = TrainingSession(config, family=family, record_every=args.record_every)
        logger = RunLogger(folder, checkpoint_every=args.checkpoint_every,
                           background=args.checkpoint_writes == "background")
        logger.start(session.trainer)
        session.trainer.observers.append(logger)
        session.folder, session.logger = folder, logger
        trainer = session.trainer
        trainer.val_budget = args.val_budget
        clock = Clock(trainer.device, time.process_time if args.clock == "process" else time.perf_counter)
        instrument(session, clock)
        progress = clock.wrap("progress callback", lambda p: None)
        # warm-up (allocator, first-call costs), untimed; a checkpoint or validation in it is not counted
        session.run(callback=progress, iterations=args.warmup)
        clock.reset()
        clock.sync()
        wall0, cpu0 = time.perf_counter(), time.process_time()
        trainer.run(args.iterations, callback=progress, report_every=1)
        clock.sync()
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
        loop_s = cpu if args.clock == "process" else wall
        iterations = args.iterations
        loop = dict(clock.total)
        # rare phases, each on its own, amortized over its interval
        rare = {}
        clock.reset()
        for _ in range(args.rare_repeats):
            trainer.validate()
        if args.rare_repeats:
            rare["validation"] = (clock.total["validation"] / args.rare_repeats, args.val_every)
        if session.logger is not None and args.rare_repeats:
            clock.reset()
            for _ in range(args.rare_repeats):
                trainer.step()  # a new iteration, so each checkpoint is a new file as in a run
                session.logger.checkpoint(trainer)  # what the training thread waits for
                session.logger.wait_for_checkpoint()  # a background write: 1000 iterations apart in a run
            rare["checkpoint"] = (clock.total["checkpoint"] / args.rare_repeats, args.checkpoint_every)
        trainer.state = "stopped"
        session.logger.on_end(trainer) if session.logger is not None else None
    # the loop's time, minus the rare phases it may have contained (counted amortized instead)
    in_loop = loop_s - loop.get("validation", 0.0) - loop.get("checkpoint", 0.0)
    per_it = {name: 1000 * loop.get(name, 0.0) / iterations for name in PHASES if name not in rare}
    per_it["other"] = 1000 * in_loop / iterations - sum(v for k, v in per_it.items() if k != "other")
    rare_ms = {}
    for name, (seconds, every) in rare.items():
        per_it[name] = 1000 * seconds / every if every else 0.0
        rare_ms[name] = (1000 * seconds, every)
    if "validation" in rare and args.val_budget is not None:
        # the Trainer's rule (Trainer._scheduled_validation) over a run of --schedule-iterations, with these costs
        step_ms = sum(v for k, v in per_it.items() if k not in ("validation", "progress callback"))
        val_ms, every = rare_ms["validation"]
        train = spent = 0.0
        count = 0
        for it in range(1, args.schedule_iterations + 1):
            train += step_ms
            if every and it % every == 0 and spent <= args.val_budget * train:
                spent += val_ms
                count += 1
        per_it["validation"] = spent / args.schedule_iterations
        rare_ms["validation"] = (val_ms, f"{every} within a {100 * args.val_budget:.0f}% budget: {count} of "
                                         f"{args.schedule_iterations // every if every else 0} due in "
                                         f"{args.schedule_iterations} iterations")
    return {"per_iteration": per_it, "rare": rare_ms, "iterations": iterations, "wall_s": wall, "cpu_s": cpu,
            "load_s": load_s, "device": str(trainer.device), "threads": torch.get_num_threads()}


def format_table(result: dict) -> str:
    per_it = result["per_iteration"]
    total = sum(per_it.values())
    lines = [f"{'phase':<20} {'ms/iteration':>12} {'% of iteration':>15}  note", "-" * 72]
    for name in PHASES:
        if name not in per_it:
            continue
        note = ""
        if name in result["rare"]:
            ms, every = result["rare"][name]
            note = (f"{ms:.0f} ms per call, every {every}" + ("" if isinstance(every, str) else " iterations")
                    if every else "off")
        lines.append(f"{name:<20} {per_it[name]:>12.2f} {100 * per_it[name] / total:>14.1f}%  {note}")
    lines.append("-" * 72)
    lines.append(f"{'total':<20} {total:>12.2f} {100.0:>14.1f}%")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--algorithm", default="maml")
    parser.add_argument("--iterations", type=int, default=30, help="timed iterations (after --warmup)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--meta-batch-size", type=int, default=32)
    parser.add_argument("--val-every", type=int, default=500, help="the schedule validation is amortized over")
    parser.add_argument("--val-tasks", type=int, default=100)
    parser.add_argument("--val-budget", type=float, help="Trainer.val_budget (the app's: 0.04; default: none)")
    parser.add_argument("--schedule-iterations", type=int, default=2000,
                        help="run length over which a --val-budget schedule is amortized")
    parser.add_argument("--checkpoint-every", type=int, default=1000)
    parser.add_argument("--checkpoint-writes", choices=("background", "inline"), default="background",
                        help="inline: written on the training thread (as before background writes)")
    parser.add_argument("--record-every", type=int, default=1, help="parameter path (the app: 1, the CLI: 0)")
    parser.add_argument("--rare-repeats", type=int, default=3, help="calls timed of validation and of checkpoints")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clock", choices=("wall", "process"), default="wall",
                        help="process: this process's CPU time (robust when other jobs share the CPU; CPU only)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.data.exists():
        print(f"image set not found: {args.data}", file=sys.stderr)
        return 2
    if args.iterations < 1 or args.warmup < 0 or args.rare_repeats < 0:
        print("need --iterations >= 1, --warmup >= 0 and --rare-repeats >= 0", file=sys.stderr)
        return 2
    result = profile(args)
    print(f"{args.algorithm}, 5-way 1-shot, meta-batch {args.meta_batch_size}, {args.data.name}; device "
          f"{result['device']}, {result['threads']} thread(s), torch {torch.__version__}; {result['iterations']} "
          f"timed iterations ({result['wall_s']:.1f} s wall, {result['cpu_s']:.1f} s process CPU); validation "
          f"{args.val_tasks} tasks every {args.val_every}, checkpoint every {args.checkpoint_every}, parameter path "
          f"every {args.record_every or 'never'}; {args.clock} clock")
    print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
