"""The cost meter: what one meta-step of each algorithm costs in time and memory, and what more inner steps would
cost, measured while it trains (Qt-free; the Trainer owns one, the CLI's progress line and the app's status area
show it, metrics.COST_FIELDS name its numbers).

* Time per meta-step: wall seconds of `meta_step` (on CUDA followed by a synchronize), over the steps that were not
  memory-measured (those carry the measuring overhead): the mean of the first 20, then a moving average over about
  the last 20.
* Memory per meta-step, every `every` steps (the first one included), one of:
  - "cuda": peak CUDA memory allocated during the step above what was allocated before it
    (torch.cuda.reset_peak_memory_stats, then max_memory_allocated - memory_allocated at the start): the step's
    own activations, graph and temporaries, without theta, the optimizer state and the batch;
  - "cpu": the peak bytes of CPU tensors the step allocated and keeps alive at once. A TorchDispatchMode sees
    every op (forward, autograd's backward, explicit meta-gradients such as conv4_meta.py alike) and records the
    storage of each output that is new (not an input's: in-place ops and views do not count); every 32 ops the
    storages that have been freed (torch.multiprocessing StorageWeakRef) are dropped and the live total is
    compared with the peak so far. It is the CPU analogue of the CUDA number (exact at the 32-op sampling
    points, so a lower bound by at most what 32 ops allocate), not the process's RSS. Measuring slows that
    one step (Python runs for every op: 1.2-2.7x on conv-4, more with more inner steps), hence every `every`
    steps (100 by default).
* Expected cost of more inner steps (when `probe` is set: TrainingSession sets it, so the CLI and the app show it;
  a bare Trainer does not probe): once, at the first measured step, throwaway copies of the algorithm (same
  config with inner_steps S, S+1 and S+2, theta cloned, their own optimizers) take meta-steps on the same batch:
  each is timed without the memory tracker (the fastest of up to 3 runs within a tenth of a second: short steps
  are noisy), S+1 and S+2 are then measured with it (5 to 11 extra meta-steps per run, none of which touches the
  run: no shared tensors or random state). Times are kept as fractions of the probe's time at S and shown times the
  live step time, so the expectation follows the machine's current speed. The S+2 minus S+1 difference is the
  marginal cost of one more inner step, and cost(k) = cost(S+1) + (k - S - 1) * marginal for k > S (linear in
  k: MAML's graph, FOMAML's and Reptile's loops all grow by one step's forward and backward per step; the probe
  starts at S+1 because a single inner step may take a cheaper explicit path, e.g. conv-4 MAML on the CPU).
  Algorithms without inner steps in training (the pretrained baseline: min_inner_steps 0) get no expectation.
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
        self._ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {_storage_ptr(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                self._add(t, inputs)
        self._ops += 1
        if self._ops % self.SWEEP == 0:
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

    def sweep(self) -> None:
        for ptr in [p for p, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(ptr)[1]
        self.peak = max(self.peak, self.current)


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


@dataclass
class AlgorithmCost:
    """One algorithm's cost so far. Times in seconds, memory in bytes (None: not measured yet)."""

    inner_steps: int
    step_s: float = 0.0  # seconds per meta-step (unmeasured steps; 0 before the first)
    step_bytes: int | None = None  # the latest memory measurement
    memory: str = "cpu"  # "cpu" or "cuda" (MEMORY_KINDS)
    measured_at: int = 0  # the iteration of the latest memory measurement
    # the probe: a meta-step's time with inner_steps + 1, and one more inner step's, as fractions of its time at
    # inner_steps (so the expectation follows the live step time); bytes with inner_steps + 1, and one more step's
    probe_time: float | None = None
    inner_step_time: float | None = None
    probe_bytes: int | None = None
    inner_step_bytes: int | None = None
    _timed: int = 0
    _probed: bool = False

    def expected(self, steps: int) -> tuple[float | None, int | None]:
        """Seconds and bytes of a meta-step with `steps` inner steps (expected_cost)."""
        return expected_cost(self.as_dict(), steps)

    def as_dict(self) -> dict:
        """What progress messages carry: metrics.COST_FIELDS (inner_step_s: the live step time times the probe's
        fraction), the memory kind, the trained inner steps, the iteration of the latest memory measurement, and
        what expected_cost needs."""
        live = self.step_s or None

        def scaled(fraction):
            return None if fraction is None or live is None else live * fraction

        return {"step_s": self.step_s, "step_bytes": self.step_bytes, "memory": self.memory,
                "inner_steps": self.inner_steps, "inner_step_s": scaled(self.inner_step_time),
                "inner_step_bytes": self.inner_step_bytes, "measured_at": self.measured_at,
                "probe_s": scaled(self.probe_time), "probe_bytes": self.probe_bytes}


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


class CostMeter:
    """Times every meta-step, measures memory every `every` steps, probes the cost of more inner steps once."""

    def __init__(self, every: int = 100, probe: bool = True, enabled: bool = True, clock=time.perf_counter):
        if every < 1:
            raise ValueError(f"the cost meter measures memory every N >= 1 steps, got {every}")
        self.every = int(every)
        self.clock = clock  # wall time; benchmarks on a shared CPU may pass time.process_time
        self.probe = probe
        self.enabled = enabled
        self.costs: dict[str, AlgorithmCost] = {}
        self.logs: dict[str, MetricsLog] = {}  # every memory measurement: iteration and COST_FIELDS, bounded
        self._steps: dict[str, int] = {}

    def meta_step(self, name: str, algorithm, params, batch, iteration: int) -> dict:
        """algorithm.meta_step(params, batch, iteration), timed, and memory-measured when due; returns its
        metrics."""
        if not self.enabled:
            return algorithm.meta_step(params, batch, iteration)
        cost = self.costs.get(name)
        if cost is None or cost.inner_steps != algorithm.config.inner_steps:
            cost = self.costs[name] = AlgorithmCost(int(algorithm.config.inner_steps))
        count = self._steps.get(name, 0)
        self._steps[name] = count + 1
        device = next(iter(params.values())).device
        due = count % self.every == 0
        metrics, seconds, used, kind = measure(lambda: algorithm.meta_step(params, batch, iteration), device, due,
                                               self.clock)
        if due:
            cost.step_bytes, cost.memory, cost.measured_at = used, kind, iteration + 1
            if self.probe and not cost._probed and getattr(algorithm, "min_inner_steps", 1) > 0:
                cost._probed = True
                try:
                    self._probe(cost, algorithm, params, batch, iteration, device)
                except Exception:  # noqa: BLE001 - a config the probe cannot vary (a plug-in's): no expectation
                    cost.probe_time = cost.inner_step_time = cost.probe_bytes = cost.inner_step_bytes = None
            row = {k: v for k, v in cost.as_dict().items() if k in COST_FIELDS}
            self.logs.setdefault(name, MetricsLog(COST_FIELDS)).append({"iteration": iteration + 1, **row})
        else:
            cost._timed += 1  # the mean of the first 20, then a moving average over about the last 20
            cost.step_s = cost.step_s + (seconds - cost.step_s) / min(cost._timed, 20)
        return metrics

    def _probe(self, cost: AlgorithmCost, algorithm, params, batch, iteration: int, device) -> None:
        from ..algorithms.config import make_algorithm

        times, used = [], []
        for steps in (cost.inner_steps, cost.inner_steps + 1, cost.inner_steps + 2):
            weights = [1.0] * steps if algorithm.config.step_loss_weights else []
            config = dataclasses.replace(algorithm.config, inner_steps=steps, step_loss_weights=weights,
                                         options=dict(algorithm.config.options))
            copy = make_algorithm(algorithm.model, algorithm.loss_name, config, algorithm.total_iterations)
            theta = OrderedDict((k, v.detach().clone().requires_grad_(v.requires_grad)) for k, v in params.items())
            copy.setup(theta)

            def step(c=copy, t=theta):
                return c.meta_step(t, batch, iteration)

            # timed alone (the fastest of up to 3 runs within a tenth of a second: short steps are noisy), then
            # measured (the tracker slows the step); the trained number of steps is timed only
            seconds, spent, runs = math.inf, 0.0, 0
            while runs < 3 and (runs == 0 or spent < 0.1):
                took = measure(step, device, memory=False, clock=self.clock)[1]
                seconds, spent, runs = min(seconds, took), spent + took, runs + 1
            times.append(seconds)
            if steps > cost.inner_steps:
                used.append(measure(step, device, memory=True)[2])
        base = max(times[0], 1e-9)
        # a step more never takes less time: a negative difference is the noise of a shared machine
        cost.probe_time, cost.inner_step_time = times[1] / base, max(times[2] - times[1], 0.0) / base
        cost.probe_bytes = used[0]
        cost.inner_step_bytes = None if used[0] is None or used[1] is None else used[1] - used[0]

    def summary(self) -> dict:
        """algorithm -> AlgorithmCost.as_dict(), for progress messages."""
        return {name: cost.as_dict() for name, cost in self.costs.items()}


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


def format_seconds(s: float | None) -> str:
    if s is None:
        return "?"
    return f"{s * 1000:.3g} ms" if abs(s) < 1 else f"{s:.3g} s"


def _signed(text: str) -> str:
    return text if text.startswith("-") else "+" + text


def cost_text(cost: dict) -> str:
    """One line for a progress display, e.g. '620 ms, 85.6 MB/step, +1 inner step +310 ms +41 MB' (`cost`: an
    AlgorithmCost.as_dict())."""
    if not cost or (not cost.get("step_s") and cost.get("step_bytes") is None):
        return "measuring cost"
    seconds = format_seconds(cost["step_s"]) if cost.get("step_s") else "timing"
    text = f"{seconds}, {format_bytes(cost.get('step_bytes'))}/step"
    if cost.get("inner_step_s") is not None:
        text += f", +1 inner step {_signed(format_seconds(cost['inner_step_s']))}"
        if cost.get("inner_step_bytes") is not None:
            text += f" {_signed(format_bytes(cost['inner_step_bytes']))}"
    return text


def cost_brief(cost: dict) -> str:
    """The shortest form, for a status area: '620 ms, 85.6 MB' per meta-step."""
    if not cost or (not cost.get("step_s") and cost.get("step_bytes") is None):
        return "measuring…"
    seconds = format_seconds(cost["step_s"]) if cost.get("step_s") else "timing"
    return f"{seconds}, {format_bytes(cost.get('step_bytes'))}"


def cost_details(label: str, cost: dict, up_to: int = 5) -> str:
    """Several lines for a tooltip or a log: the measured cost, what it measures, and the expectation at each inner
    step count up to max(up_to, trained + 2)."""
    if not cost or (not cost.get("step_s") and cost.get("step_bytes") is None):
        return f"{label}: measuring the cost of a meta-step"
    trained = int(cost.get("inner_steps") or 0)
    seconds, used = format_seconds(cost.get("step_s") or None), format_bytes(cost.get("step_bytes"))
    lines = [f"{label}: {seconds} and {used} per meta-step at "
             f"{trained} inner step{'s' if trained != 1 else ''} ({MEMORY_KINDS.get(cost.get('memory'), '')})"]
    expected = []
    for steps in range(trained + 1, max(up_to, trained + 2) + 1):
        seconds, used = expected_cost(cost, steps)
        if seconds is not None:
            expected.append(f"{steps}: {format_seconds(seconds)}, {format_bytes(used)}")
    if expected:
        lines.append("  expected with more inner steps: " + " · ".join(expected))
    return "\n".join(lines)
