"""The cost meter: what one meta-step of each algorithm costs in time and memory, and what more inner steps would
cost, measured while it trains without slowing the start (Qt-free; the Trainer owns one, the CLI's progress line
and the app's status area show it, metrics.COST_FIELDS name its numbers).

* Time per meta-step: wall seconds of every real `meta_step` (on CUDA followed by a synchronize): the mean of the
  first 20 after the first (whose one-time warm-up is not a step's cost; it counts only until a second exists),
  then a moving average over about the last 20. Nothing else runs inside a real step.
* Memory per meta-step: "cuda": peak CUDA memory allocated during a step above what was allocated before it
  (torch.cuda.reset_peak_memory_stats, then max_memory_allocated - memory_allocated at the start): the step's own
  activations, graph and temporaries, without theta, the optimizer state and the batch. "cpu": the peak bytes of
  CPU tensors a step allocates and keeps alive at once. On the CPU torch keeps no allocator statistics, so a
  TorchDispatchMode (LiveTensorBytes) sees every op (forward, autograd's backward, explicit meta-gradients such as
  conv4_meta.py alike) and records the storage of each new output; every 32 ops, or sooner once the new storages
  exceed 1% of the peak, the freed storages are dropped and the live total compared with the peak (exact at the
  sampling points, so a lower bound by at most 1% of the peak or what 32 ops allocate: iMAML's step, whose peak
  follows a varying number of inner-step ops, reads the same bytes at every inner-step count). Python runs for
  every op (1.2-3x a step), so it never runs on a real step: a throwaway copy of the algorithm (theta cloned, its
  own optimizer, no shared tensors or random state) takes meta-steps on the first one and the first two tasks of
  the current batch, and the step's bytes are extrapolated to the whole batch (affine in the number of tasks:
  exact whether tasks are stepped one at a time, then the two agree, or folded into one batch, then the second
  task's bytes repeat for every task). Measured once, then every `every` steps
  within a quarter of the budget.
  torch.profiler's memory events and the process's peak RSS were tried: the profiler costs more than the
  dispatch mode on conv-4 (8 s and 19 s of event processing against 17 s for a MAML++ step), and RSS does not
  fall when tensors are freed (glibc keeps the pages), so a step after the first shows almost nothing.
* Expected cost of more inner steps (when `probe` is set: TrainingSession sets it, so the CLI and the app show it;
  a bare Trainer does not): copies of the algorithm with inner_steps S, S+1 and S+2 take meta-steps on a slice of
  the batch: timed alone on its first task (in this thread's CPU time, the fastest of 2 to 5 interleaved rounds
  within 20 ms: wall time on a loaded machine misses millisecond steps by 5x), measured with
  the dispatch mode on one and two tasks (extrapolated to the batch as above). Times are kept as fractions of the
  slice's time at S and shown times the live step time (the fraction carries from one task to the batch when per-
  task work or per-op overhead dominates, the two regimes of these models), so the expectation follows the
  machine's current speed. The S+2 minus S+1 difference is the marginal cost of one more inner step, and
  cost(k) = cost(S+1) + (k - S - 1) * marginal for k > S (linear in k: MAML's graph, FOMAML's and Reptile's loops
  all grow by one step's forward and backward per step; the probe starts at S+1 because a single inner step may
  take a cheaper explicit path, e.g. conv-4 MAML on the CPU). Algorithms without inner steps in training (the
  pretrained baseline: min_inner_steps 0) get no expectation.

Off the critical path: these measurements are pieces (one slice step each) that run between real steps, never
before the first iteration has ended, and only while the meter's own time stays within `budget` (4%) of the
training time (the Trainer's, validation included, or the steps' own; a piece runs when its predicted cost fits;
the prediction learns from the pieces already run).
Until they have run, the numbers are None and the texts say "estimating…". A run that finishes first completes
them when they would take under `finish_seconds` (a short run still ends with its forecast); see
benchmarks/bench_first_iteration.py for what the meter costs.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .metrics import COST_FIELDS, MetricsLog

MEMORY_KINDS = {"cuda": "peak CUDA memory allocated by the step",
                "cpu": "peak bytes of CPU tensors the step keeps alive"}


class LiveTensorBytes(TorchDispatchMode):
    """While active: the peak total bytes of the CPU tensor storages created by ops inside it that are alive at once
    (see the module docstring)."""

    SWEEP = 32
    # ... or sooner, once the storages created since the last sweep exceed this share of the peak (at least FLOOR
    # bytes): the peak is then missed by at most that much, whatever the op count's phase (a step whose peak sits at
    # a fixed place after a varying number of ops, like iMAML's conjugate gradient after its inner steps, otherwise
    # reads up to 32 ops' allocations apart from one inner-step count to the next)
    PRECISION = 0.01
    FLOOR = 1 << 16

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        """Never compiled: without this, torch wraps __torch_dispatch__ in a dynamo guard whose first call imports
        torch._dynamo (seconds)."""
        return False

    def __init__(self):
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0
        self.fresh = 0  # bytes of the storages created since the last sweep
        self._ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {_storage_ptr(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                self._add(t, inputs)
        self._ops += 1
        if self._ops % self.SWEEP == 0 or self.fresh > self.PRECISION * max(self.peak, self.FLOOR):
            self.sweep()
        return out

    def _add(self, t: torch.Tensor, inputs: set) -> None:
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return
        ptr, size = storage.data_ptr(), storage.nbytes()
        if not ptr or not size or ptr in inputs:
            return
        known = self.live.get(ptr)
        if known is not None:
            if not known[0].expired():
                return  # a storage seen before (an op returned it again)
            self.current -= known[1]  # freed, and its address reused by this one
        self.live[ptr] = (StorageWeakRef(storage), size)
        self.current += size
        self.fresh += size

    def sweep(self) -> None:
        for ptr in [p for p, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(ptr)[1]
        self.peak = max(self.peak, self.current)
        self.fresh = 0


def _storage_ptr(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return 0


def measure(fn, device: torch.device | str, memory: bool = True, clock=time.perf_counter):
    """Run fn(); returns (its result, seconds by `clock` (wall time by default), bytes or None, memory kind).
    CUDA: peak allocated above the start; CPU: LiveTensorBytes."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        if memory:
            torch.cuda.reset_peak_memory_stats(device)
            start = torch.cuda.memory_allocated(device)
    t0 = clock()
    if memory and not cuda:
        tracker = LiveTensorBytes()
        with tracker:
            out = fn()
        tracker.sweep()
        used = tracker.peak
    else:
        out = fn()
        used = None
    if cuda:
        torch.cuda.synchronize(device)
        if memory:
            used = max(torch.cuda.max_memory_allocated(device) - start, 0)
    seconds = clock() - t0
    return out, seconds, used, "cuda" if cuda else "cpu"


ESTIMATING = "estimating…"
BUDGET = 0.04  # the meter's own measurements may take this fraction of the training time
REPEAT_SHARE = 0.25  # a memory measurement repeated every `every` steps waits until the meter is under this share
FINISH_SECONDS = 3.0  # a run that ends before its forecast completes it when that is predicted to take less


@dataclass
class AlgorithmCost:
    """One algorithm's cost so far. Times in seconds, memory in bytes (None: not measured yet)."""

    inner_steps: int
    step_s: float = 0.0  # seconds per meta-step (0 before the first)
    step_bytes: int | None = None  # the latest memory measurement
    memory: str = "cpu"  # "cpu" or "cuda" (MEMORY_KINDS)
    measured_at: int = 0  # the iteration of the latest memory measurement
    # the probe: a meta-step's time with inner_steps + 1, and one more inner step's, as fractions of its time at
    # inner_steps (so the expectation follows the live step time); bytes with inner_steps + 1, and one more step's
    probe_time: float | None = None
    inner_step_time: float | None = None
    probe_bytes: int | None = None
    inner_step_bytes: int | None = None
    forecast: str = "none"  # "estimating" (pieces to run), "ready", "none" (not probed, no inner steps, failed)
    _timed: int = 0

    def expected(self, steps: int) -> tuple[float | None, int | None]:
        """Seconds and bytes of a meta-step with `steps` inner steps (expected_cost)."""
        return expected_cost(self.as_dict(), steps)

    def as_dict(self) -> dict:
        """What progress messages carry: metrics.COST_FIELDS (inner_step_s: the live step time times the probe's
        fraction), the memory kind, the trained inner steps, the iteration of the latest memory measurement, the
        forecast's state, and what expected_cost needs."""
        live = self.step_s or None

        def scaled(fraction):
            return None if fraction is None or live is None else live * fraction

        return {"step_s": self.step_s, "step_bytes": self.step_bytes, "memory": self.memory,
                "inner_steps": self.inner_steps, "inner_step_s": scaled(self.inner_step_time),
                "inner_step_bytes": self.inner_step_bytes, "measured_at": self.measured_at,
                "probe_s": scaled(self.probe_time), "probe_bytes": self.probe_bytes, "forecast": self.forecast}


def expected_cost(cost: dict, steps: int) -> tuple[float | None, int | None]:
    """Seconds and bytes of a meta-step with `steps` inner steps, from an AlgorithmCost.as_dict(): measured at the
    trained number, extrapolated linearly from the probe beyond it (None where unknown: fewer steps than trained,
    or no probe yet)."""
    trained = cost.get("inner_steps")
    if steps == trained:
        return (cost.get("step_s") or None), cost.get("step_bytes")
    if trained is None or steps < trained:
        return None, None
    extra = steps - trained - 1
    seconds = None
    if cost.get("probe_s") is not None and cost.get("inner_step_s") is not None:
        seconds = max(cost["probe_s"] + extra * cost["inner_step_s"], 0.0)
    probe_b, step_b = cost.get("probe_bytes"), cost.get("inner_step_bytes")
    used = None if probe_b is None or step_b is None else max(int(probe_b + extra * step_b), 0)
    return seconds, used


def first_tasks(batch, n: int):
    """The first `n` tasks of a task batch (a dataclass whose per-task tensors, `info`'s included, lead with the
    task dimension: TaskBatch, NavigationBatch); the batch itself when it has no more, or cannot be cut."""
    count = batch.num_tasks
    if n >= count or not dataclasses.is_dataclass(batch):
        return batch

    def cut(v):
        return v[:n] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == count else v

    changes = {f.name: cut(getattr(batch, f.name)) for f in dataclasses.fields(batch) if f.init}
    if isinstance(changes.get("info"), dict):
        changes["info"] = {k: cut(v) for k, v in changes["info"].items()}
    return dataclasses.replace(batch, **changes)


def _to_batch(one: float | None, two: float | None, tasks: int) -> float | None:
    """A step's bytes on the whole batch from its bytes on its first task and first two: affine in the number of
    tasks (tasks stepped one at a time keep one task's bytes however many; folded tasks add the second's for each)."""
    if one is None:
        return None
    if two is None or tasks <= 1:
        return one
    return one + (tasks - 1) * max(two - one, 0)


@dataclass
class _Plan:
    """One algorithm's measurements still to run (pieces: ("time" | "memory", inner steps, tasks)), what they
    need (the latest real step's algorithm, theta and batch) and what they found."""

    algorithm: object = None
    params: dict | None = None
    batch: object = None
    iteration: int = 0
    tasks: int = 1
    queue: list = dataclasses.field(default_factory=list)
    repeats: set = dataclasses.field(default_factory=set)  # queued pieces that repeat a measurement
    results: dict = dataclasses.field(default_factory=dict)
    # predicted seconds of a piece = factor * (tasks / batch tasks) * step time * (inner steps / trained), learnt
    factors: dict = dataclasses.field(default_factory=lambda: {"time": 2.5, "memory": 3.0})


class CostMeter:
    """Times every meta-step; measures memory (once, then every `every` steps) and the cost of more inner steps
    (once, when `probe`) in pieces between steps, within `budget` of the training time (None: at once)."""

    def __init__(self, every: int = 100, probe: bool = True, enabled: bool = True, clock=time.perf_counter,
                 budget: float | None = BUDGET, finish_seconds: float = FINISH_SECONDS, ratio_clock=time.thread_time):
        if every < 1:
            raise ValueError(f"the cost meter measures memory every N >= 1 steps, got {every}")
        self.every = int(every)
        self.clock = clock  # wall time; benchmarks on a shared CPU may pass time.process_time
        # what the forecast's time ratios are measured by: this thread's CPU time, which neither another process
        # nor the app's GUI thread inflates (wall time on a loaded machine misses millisecond steps by 5x)
        self.ratio_clock = ratio_clock
        self.probe = probe
        self.enabled = enabled
        self.budget = budget
        self.finish_seconds = finish_seconds
        self.costs: dict[str, AlgorithmCost] = {}
        self.logs: dict[str, MetricsLog] = {}  # every memory measurement: iteration and COST_FIELDS, bounded
        self.trained = 0.0  # seconds of real meta-steps
        self.active = 0.0  # seconds of training as its owner counts them (Trainer: steps, validation, observers)
        self.spent = 0.0  # seconds of the meter's own measurements (inside `active`)
        self.pieces: list[tuple[str, int, tuple]] = []  # what ran: (algorithm, real steps before it, piece)
        self._steps: dict[str, int] = {}
        self._plans: dict[str, _Plan] = {}

    def meta_step(self, name: str, algorithm, params, batch, iteration: int) -> dict:
        """algorithm.meta_step(params, batch, iteration), timed (and its CUDA memory measured when due); then the
        meter's pending measurements that fit its budget (none before this algorithm's second step)."""
        if not self.enabled:
            return algorithm.meta_step(params, batch, iteration)
        cost = self.costs.get(name)
        if cost is None or cost.inner_steps != algorithm.config.inner_steps:
            cost = self.costs[name] = AlgorithmCost(int(algorithm.config.inner_steps))
            self._plans[name] = _Plan()
            self._steps[name] = 0
        plan = self._plans[name]
        count = self._steps[name]
        self._steps[name] = count + 1
        device = next(iter(params.values())).device
        cuda_due = device.type == "cuda" and count % self.every == 0  # CUDA's peak statistics cost nothing
        metrics, seconds, used, kind = measure(lambda: algorithm.meta_step(params, batch, iteration), device,
                                               cuda_due, self.clock)
        self.trained += seconds
        cost.memory = kind
        if count == 0:  # the first step's warm-up counts until a second exists
            cost.step_s = seconds
        else:  # the mean of the first 20 after the first, then a moving average over about the last 20
            cost._timed += 1
            cost.step_s = cost.step_s + (seconds - cost.step_s) / min(cost._timed, 20)
        plan.algorithm, plan.params, plan.batch, plan.iteration = algorithm, params, batch, iteration
        plan.tasks = getattr(batch, "num_tasks", 1)
        if cuda_due:
            cost.step_bytes, cost.measured_at = used, iteration + 1
            self._log(name, cost, iteration + 1)
        elif kind == "cpu" and (count == 0 or count % self.every == 0 and not self.pending()):
            # measured once, then again every `every` steps when nothing else waits (a forecast comes first), within
            # a quarter of the budget (memory per step hardly changes: the steady cost stays about 1%)
            pieces = [("memory", cost.inner_steps, n) for n in self._slices(plan)]
            self._queue(plan, pieces)
            if count:
                plan.repeats.update(pieces)
        if count == 0 and self.probe and getattr(algorithm, "min_inner_steps", 1) > 0:
            cost.forecast = "estimating"
            s = cost.inner_steps
            self._queue(plan, [("time", s, 1)] + [("memory", k, n) for k in (s + 1, s + 2) for n in self._slices(plan)])
        if count >= 1:
            self._run_pending(name, self.budget)
        return metrics

    @staticmethod
    def _slices(plan: _Plan) -> tuple[int, ...]:
        """The slice sizes memory is measured on: the first task and the first two (the whole batch when it is
        one task, or cannot be cut)."""
        if plan.tasks <= 1 or not dataclasses.is_dataclass(plan.batch):
            return (plan.tasks,)
        return (1, 2)

    @staticmethod
    def _queue(plan: _Plan, pieces: list) -> None:
        plan.queue.extend(p for p in pieces if p not in plan.queue)

    def count_active(self, seconds: float) -> None:
        """The owner's training time went on by `seconds` (the Trainer: an iteration with its validation and
        observers, the meter's measurements included): the budget's base, when more than the steps' own time."""
        self.active += seconds

    @property
    def training_seconds(self) -> float:
        """What the budget is a share of: the training time without the meter's own."""
        return max(self.trained, self.active - self.spent)

    def pending(self, name: str | None = None) -> int:
        """How many measurements of `name` (None: of every algorithm) wait for their turn."""
        plans = self._plans.values() if name is None else [self._plans[name]] if name in self._plans else []
        return sum(len(plan.queue) for plan in plans)

    @staticmethod
    def _size(plan: _Plan, cost: AlgorithmCost, piece: tuple) -> float:
        """A piece's seconds if it cost what its share of a real step does (its predicted cost over its factor)."""
        kind, steps, tasks = piece
        if kind == "time":  # one round of S, S+1 and S+2
            steps = 3 * steps + 3
        return tasks / max(plan.tasks, 1) * max(steps, 1) / max(cost.inner_steps, 1) * cost.step_s

    def _predict(self, plan: _Plan, cost: AlgorithmCost, piece: tuple) -> float:
        return plan.factors[piece[0]] * self._size(plan, cost, piece)

    def _run_pending(self, name: str, budget: float | None) -> None:
        """Run `name`'s pending pieces while their predicted cost fits `budget` (None: all of them)."""
        plan, cost = self._plans[name], self.costs[name]
        while plan.queue:
            piece = plan.queue[0]
            share = None if budget is None else budget * (REPEAT_SHARE if piece in plan.repeats else 1.0)
            if share is not None and self.spent + self._predict(plan, cost, piece) > share * self.training_seconds:
                return
            plan.queue.pop(0)
            plan.repeats.discard(piece)
            t0 = self.clock()
            try:
                plan.results[piece] = self._run_piece(plan, cost, piece)
            except Exception:  # noqa: BLE001 - a config the copy cannot vary (a plug-in's): no such number
                plan.results[piece] = None
            took = self.clock() - t0
            self.spent += took
            self.pieces.append((name, self._steps[name], piece))
            size = self._size(plan, cost, piece)
            if size > 0 and took > 0:  # half the last piece's, half what was known: steps and pieces are noisy
                plan.factors[piece[0]] = 0.5 * plan.factors[piece[0]] + 0.5 * took / size
            self._collect(name, plan, cost)

    def finish(self) -> None:
        """The run ended: complete the pending measurements when they are predicted to take under
        `finish_seconds` in all (a short run still reports its forecast)."""
        if not self.enabled:
            return
        names = [n for n, p in self._plans.items() if p.queue and p.algorithm is not None]
        if sum(self._predict(self._plans[n], self.costs[n], piece) for n in names for piece in self._plans[n].queue) \
                <= self.finish_seconds:
            for name in names:
                self._run_pending(name, None)

    def _run_piece(self, plan: _Plan, cost: AlgorithmCost, piece: tuple):
        """One measurement on a throwaway copy of the algorithm: seconds ("time") or bytes ("memory")."""
        kind, steps, tasks = piece
        batch = first_tasks(plan.batch, tasks)
        device = next(iter(plan.params.values())).device

        def stepper(k):
            copy, theta = _variant(plan.algorithm, k, plan.params)
            return lambda: copy.meta_step(theta, batch, plan.iteration)

        if kind == "memory":
            return measure(stepper(steps), device, memory=True)[2]
        # S, S+1 and S+2 in turn, the fastest of each over 2 to 5 rounds within 20 ms (a copy's first step warms up;
        # the rest is noise)
        steppers = [stepper(k) for k in (steps, steps + 1, steps + 2)]
        best, spent, rounds = [math.inf] * 3, 0.0, 0
        while rounds < 2 or (rounds < 5 and spent < 0.02):
            for i, step in enumerate(steppers):
                took = measure(step, device, memory=False, clock=self.ratio_clock)[1]
                best[i], spent = min(best[i], took), spent + took
            rounds += 1
        return tuple(best)

    def _collect(self, name: str, plan: _Plan, cost: AlgorithmCost) -> None:
        """What the pieces run so far give: the step's bytes, the forecast once all of its pieces are in."""
        s, r = cost.inner_steps, plan.results
        if cost.memory == "cpu":
            now = [("memory", s, n) for n in self._slices(plan)]
            if all(p in r for p in now) and not any(p in plan.queue for p in now):
                cost.step_bytes = self._bytes(plan, s)
                cost.measured_at = plan.iteration + 1
                for p in now:
                    r.pop(p)
                self._log(name, cost, cost.measured_at)
        if cost.forecast != "estimating" or any(p[0] == "time" or p[1] != s for p in plan.queue):
            return
        times = r.get(("time", s, 1))
        used = [self._bytes(plan, k) for k in (s + 1, s + 2)]
        if times is None:
            cost.forecast = "none"
            return
        base = max(times[0], 1e-9)
        # a step more never takes less time: a negative difference is the noise of a shared machine
        cost.probe_time, cost.inner_step_time = times[1] / base, max(times[2] - times[1], 0.0) / base
        cost.probe_bytes = None if used[0] is None else int(used[0])
        cost.inner_step_bytes = None if None in used else int(used[1] - used[0])
        cost.forecast = "ready"
        self._log(name, cost, plan.iteration + 1)

    def _bytes(self, plan: _Plan, steps: int) -> float | None:
        sizes = self._slices(plan)
        found = [plan.results.get(("memory", steps, n)) for n in sizes]
        if None in found:
            return None
        if len(found) == 1:
            return found[0]
        return _to_batch(found[0], found[1], plan.tasks)

    def _log(self, name: str, cost: AlgorithmCost, iteration: int) -> None:
        row = {k: v for k, v in cost.as_dict().items() if k in COST_FIELDS}
        self.logs.setdefault(name, MetricsLog(COST_FIELDS)).append({"iteration": iteration, **row})

    def summary(self) -> dict:
        """algorithm -> AlgorithmCost.as_dict(), for progress messages."""
        return {name: cost.as_dict() for name, cost in self.costs.items()}


def _variant(algorithm, steps: int, params):
    """A throwaway copy of `algorithm` with `steps` inner steps, on a clone of theta, with its own optimizer."""
    from ..algorithms.config import make_algorithm

    config = algorithm.config
    if steps != config.inner_steps:
        weights = [1.0] * steps if config.step_loss_weights else []
        config = dataclasses.replace(config, inner_steps=steps, step_loss_weights=weights, options=dict(config.options))
    copy = make_algorithm(algorithm.model, algorithm.loss_name, config, algorithm.total_iterations)
    theta = OrderedDict((k, v.detach().clone().requires_grad_(v.requires_grad)) for k, v in params.items())
    copy.setup(theta)
    return copy, theta


def format_bytes(n: float | None) -> str:
    """1234567 -> '1.23 MB' (decimal units)."""
    if n is None:
        return "?"
    n = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} B" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"


def format_seconds(s: float | None, digits: int = 3) -> str:
    if s is None:
        return "?"
    return f"{s * 1000:.{digits}g} ms" if abs(s) < 1 else f"{s:.{digits}g} s"


def cost_time(cost: dict) -> str:
    """The shortest form of all, two digits of the time per meta-step ('620 ms'; 'estimating…' first): the toolbar's
    compact cost meter when three or more algorithms train."""
    return format_seconds(cost["step_s"], 2) if _timed(cost) and cost.get("step_s") else ESTIMATING


def _signed(text: str) -> str:
    return text if text.startswith("-") else "+" + text


def _timed(cost: dict) -> bool:
    return bool(cost) and bool(cost.get("step_s") or cost.get("step_bytes") is not None)


def cost_text(cost: dict) -> str:
    """One line for a progress display, e.g. '620 ms, 85.6 MB/step, +1 inner step +310 ms +41 MB', with
    'estimating…' for what is not measured yet (`cost`: an AlgorithmCost.as_dict())."""
    if not _timed(cost):
        return ESTIMATING
    seconds = format_seconds(cost["step_s"]) if cost.get("step_s") else ESTIMATING
    if cost.get("step_bytes") is not None:
        text = f"{seconds}, {format_bytes(cost['step_bytes'])}/step"
    else:
        text = f"{seconds}/step, memory {ESTIMATING}"
    if cost.get("inner_step_s") is not None:
        text += f", +1 inner step {_signed(format_seconds(cost['inner_step_s']))}"
        if cost.get("inner_step_bytes") is not None:
            text += f" {_signed(format_bytes(cost['inner_step_bytes']))}"
    elif cost.get("forecast") == "estimating":
        text += f", +1 inner step {ESTIMATING}"
    return text


def cost_brief(cost: dict) -> str:
    """The shortest form, for a status area: '620 ms, 85.6 MB' per meta-step ('620 ms, estimating…' first)."""
    if not _timed(cost):
        return ESTIMATING
    seconds = format_seconds(cost["step_s"]) if cost.get("step_s") else ESTIMATING
    used = format_bytes(cost["step_bytes"]) if cost.get("step_bytes") is not None else ESTIMATING
    return f"{seconds}, {used}"


def cost_details(label: str, cost: dict, up_to: int = 5, ended: bool = False) -> str:
    """Several lines for a tooltip or a log: the measured cost, what it measures, and the expectation at each inner
    step count up to max(up_to, trained + 2) ('estimating…' until it is measured; `ended`: the run is over, so what
    was not measured never will be)."""
    pending = "not measured (the run ended first)" if ended else ESTIMATING
    if not _timed(cost):
        return f"{label}: {pending}"
    trained = int(cost.get("inner_steps") or 0)
    seconds = format_seconds(cost.get("step_s") or None)
    at = f"{trained} inner step{'s' if trained != 1 else ''}"
    if cost.get("step_bytes") is not None:
        lines = [f"{label}: {seconds} and {format_bytes(cost['step_bytes'])} per meta-step at {at} "
                 f"({MEMORY_KINDS.get(cost.get('memory'), '')})"]
    else:
        lines = [f"{label}: {seconds} per meta-step at {at}; memory {pending}"]
    expected = []
    for steps in range(trained + 1, max(up_to, trained + 2) + 1):
        seconds, used = expected_cost(cost, steps)
        if seconds is not None:
            expected.append(f"{steps}: {format_seconds(seconds)}, {format_bytes(used)}")
    if expected:
        lines.append("  expected with more inner steps: " + " · ".join(expected))
    elif cost.get("forecast") == "estimating":
        lines.append(f"  more inner steps: {pending}")
    return "\n".join(lines)
