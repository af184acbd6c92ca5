"""Time from Start to the first iteration, and what the cost meter costs, for every registered algorithm.

For each algorithm on each task (the built-in glyph set and Omniglot small1 when /work/shared/omniglot or --small1
has it, 5-way 1-shot, meta-batch 32 as the CLI trains them; the sinusoid), with the task family already loaded
(loading is reported apart, once per image set):

* start to first iteration: from creating the session (run folder, model, algorithms: what the CLI and the app do
  after loading) to the end of the first iteration's progress message, minus one meta-step (the median step of the
  run without the meter): what the user waits for beyond the data and one step, in wall time and in this process's
  CPU time (immune to other jobs; the session's own part is shown apart). Target: under 3 s for images.
* throughput over the first `--duration` seconds (default 60), with the meter as sessions run it (memory and the
  inner-step forecast measured between steps within its budget) and without it (CostMeter disabled), as tasks per
  second of wall time and of this process's CPU time, over the iterations that ended within the duration (no
  iteration cut in half); the ratio with/without, and the meter's own share of the time (its `spent` over the run's
  time). Target: the meter costs under 5%.

The two runs swap order algorithm by algorithm, so drift on a shared machine hits both alike; the CPU
time ratio is immune to other processes, the wall ratio is what a user sees. Prints a Markdown table.

    python benchmarks/bench_first_iteration.py [--duration 60] [--threads 1] [--algorithms maml anil]
                                               [--tasks glyphs small1 sinusoid]
    python benchmarks/bench_first_iteration.py --duration 5 --algorithms maml   # a smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from maml_lab.core.algorithms.config import AlgorithmConfig
from maml_lab.core.algorithms.registry import algorithm_names
from maml_lab.core.training.config import ExperimentConfig
from maml_lab.core.training.trainer import make_family
from maml_lab.lab.session import TrainingSession

SMALL1 = Path("/work/shared/omniglot/images_background_small1.zip")


def config_for(task: str, name: str, small1: Path | None) -> ExperimentConfig:
    if task == "sinusoid":
        return ExperimentConfig(task="sinusoid", algorithms=[AlgorithmConfig.defaults(name, task="sinusoid")],
                                iterations=10**7)
    data = str(small1) if task == "small1" else None
    return ExperimentConfig(task="images", data=data, ways=5, shots=1,
                            algorithms=[AlgorithmConfig.defaults(name, task="images")], iterations=10**7)


def one_run(config, family, duration: float, meter: bool, root: Path) -> dict:
    """A session as the CLI makes it (run folder, probe on), trained for `duration` seconds from its creation."""
    t0, c0 = time.perf_counter(), time.process_time()
    session = TrainingSession(config, family=family, record_every=0)
    session.attach_folder(TrainingSession.create_folder(config, runs_root=root), checkpoint_every=10**9)
    trainer = session.trainer
    trainer.cost.enabled = meter
    marks = []  # (iteration, wall, cpu) at the end of each iteration

    def on_progress(p) -> None:
        if p.state != "running":
            return
        now = time.perf_counter()
        marks.append((p.iteration, now, time.process_time()))
        if now - t0 >= duration and len(marks) >= 2:
            trainer.stop()

    run_started = time.perf_counter()
    session.run(on_progress)
    steps = [b[1] - a[1] for a, b in zip(marks, marks[1:])]
    cpu_steps = [b[2] - a[2] for a, b in zip(marks, marks[1:])]
    first, last = marks[0], marks[-1]
    tasks = last[0] * config.meta_batch_size
    return {"first_s": first[1] - t0, "first_cpu": first[2] - c0, "session_s": run_started - t0,
            "step_s": statistics.median(steps), "step_cpu": statistics.median(cpu_steps),
            "wall_rate": tasks / (last[1] - t0), "cpu_rate": tasks / (last[2] - c0),
            "spent": trainer.cost.spent / (last[1] - t0), "iterations": last[0],
            "forecast": {n: c.get("forecast") for n, c in trainer.cost.summary().items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of training per run (default 60)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--algorithms", nargs="+", default=list(algorithm_names()))
    parser.add_argument("--tasks", nargs="+", default=["glyphs", "small1", "sinusoid"],
                        choices=["glyphs", "small1", "sinusoid"])
    parser.add_argument("--small1", type=Path, default=SMALL1, help="Omniglot small1 zip (skipped when absent)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), "?")
    print(f"# {model}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start; torch "
          f"{torch.__version__}, {torch.get_num_threads()} thread(s); {args.duration:g} s per run", flush=True)
    tasks = [t for t in args.tasks if t != "small1" or args.small1.exists()]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # what the first session in a process pays once (imports: TensorBoard's writer, torch's lazy modules) is not
        # a run's start: one short untimed session first
        warm = config_for("sinusoid", args.algorithms[0], None)
        one_run(warm, make_family(warm), 0.5, True, Path(tmp))
        for task in tasks:
            base = config_for(task, args.algorithms[0], args.small1)
            t = time.perf_counter()
            family = make_family(base)
            print(f"# {task}: task family built (loaded) in {time.perf_counter() - t:.1f} s", flush=True)
            for i, name in enumerate(args.algorithms):
                config = config_for(task, name, args.small1)
                order = (True, False) if i % 2 == 0 else (False, True)  # alternating: drift hits both alike
                runs = {meter: one_run(config, family, args.duration, meter, Path(tmp)) for meter in order}
                with_meter, without = runs[True], runs[False]
                row = (task, name, with_meter, without)
                rows.append(row)
                w, wo = with_meter, without
                print(f"  {task} {name}: start->first {w['first_s']:.2f} s (session {w['session_s']:.2f} s, step "
                      f"{wo['step_s']:.2f} s; CPU {w['first_cpu']:.2f} s, step {wo['step_cpu']:.2f} s), "
                      f"wall {with_meter['wall_rate'] / without['wall_rate']:.3f}, cpu "
                      f"{with_meter['cpu_rate'] / without['cpu_rate']:.3f}, meter {100 * with_meter['spent']:.1f}%, "
                      f"forecast {with_meter['forecast']}", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end\n")
    print("| task | algorithm | meta-step | start to 1st iteration | session | beyond one step | beyond, CPU "
          "| with/without meter, wall | with/without, CPU | meter's share | forecast ready |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for task, name, w, wo in rows:
        beyond = w["first_s"] - wo["step_s"]
        beyond_cpu = w["first_cpu"] - wo["step_cpu"]
        states = set(w["forecast"].values())
        ready = "no" if "estimating" in states else "yes" if "ready" in states else "-"  # -: no inner steps
        print(f"| {task} | {name} | {wo['step_s']:.3g} s | {w['first_s']:.2f} s | {w['session_s']:.2f} s | "
              f"{beyond:.2f} s | {beyond_cpu:.2f} s | "
              f"{w['wall_rate'] / wo['wall_rate']:.3f} | {w['cpu_rate'] / wo['cpu_rate']:.3f} | "
              f"{100 * w['spent']:.1f}% | {ready} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
