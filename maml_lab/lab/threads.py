"""How many torch intra-op threads the app's training thread uses: by what the task family's ops are like.

Why: torch's threads pay only where each op is large. Measured in the app on a 2-core CPU
(`benchmarks/bench_gui_latency.py`, offscreen, 20-30 s of training after 5-25 s of warm-up): the sinusoid MLP ran
331 meta-iterations/s on one thread and 293 on two, with the GUI's timer late by p99 12 ms and 23 ms; MAML on
Omniglot 5-way 1-shot (conv-4) ran 1.3-1.5x faster on two threads than on one depending on the view shown
(Training 3.15 -> 4.15 iterations/s, Tasks 3.10 -> 4.05, Playground 3.35 -> 5.05), the timer under p99 5 ms.
So families whose ops are small (`TaskFamilyKind.parallel_ops` False) keep a core for the GUI (one thread per
two cores, at most 4); families with large ops (True: image tasks) use every core, at most 4.
`python main.py --threads N` fixes the number for every run instead (`fix`). The CLI (`maml_lab/cli.py`,
`use_threads`) follows the same policy for each run's family (it keeps no core for a GUI it does not have, but small
ops gain nothing from a second thread), unless `--threads` or $OMP_NUM_THREADS says otherwise: with torch's default
(every core) a 2-D navigation run took 58 min of wall time on a shared 2-core machine, 2 min on one thread.

Torch's OpenMP build keeps the number per thread, but a thread takes the process-wide number (the last one any
thread set) the first time it asks for it or runs a parallel op, overwriting what it set itself before. So
`set_for_this_thread` initializes the calling thread first and then sets its number, which no other thread
changes afterwards: the training thread sets its own at the start of a run (and the GUI default again at its end),
and every other thread that computes (the views' background jobs) sets the GUI default for itself before each
job (`use_gui_threads`). Without that, a view's job thread started during an image run took the training thread's
count, and on 2 cores the two oversubscribed the CPU (training in the app's Tasks view was no faster on two
threads than on one).
"""

from __future__ import annotations

import os

import torch

MAX_THREADS = 4

_fixed: int | None = None


def fix(threads: int | None) -> None:
    """Use `threads` for every run (the app's --threads); None: decide per task family again."""
    global _fixed
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    _fixed = threads


def gui_threads(cores: int | None = None) -> int:
    """The app's process default (and its GUI thread's): one thread per two cores, at most MAX_THREADS."""
    if _fixed is not None:
        return _fixed
    cores = cores or os.cpu_count() or 2
    return max(1, min(MAX_THREADS, cores // 2))


def training_threads(task: str | None, cores: int | None = None) -> int:
    """Threads for a run on task family `task` in the app (see the module docstring)."""
    if _fixed is not None:
        return _fixed
    cores = cores or os.cpu_count() or 2
    from ..core.tasks.registry import task_family

    try:
        parallel = bool(task_family(task).parallel_ops)
    except ValueError:  # an unknown family: refused later, with its message, by the session
        parallel = False
    return max(1, min(MAX_THREADS, cores)) if parallel else gui_threads(cores)


def set_for_this_thread(threads: int) -> None:
    """The calling thread's torch threads, kept whatever other threads set later (see the module docstring)."""
    torch.get_num_threads()  # initializes this thread from the process-wide number, once
    torch.set_num_threads(threads)


def use_gui_threads() -> None:
    """Set the calling thread's torch threads to the GUI default (a view's background job, before it computes)."""
    set_for_this_thread(gui_threads())
