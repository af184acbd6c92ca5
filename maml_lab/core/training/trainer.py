"""The Trainer: meta-trains one or several algorithms on the same stream of tasks, with no UI.

It reports through a callback, can be paused, resumed and stopped between iterations from another
thread, and stops on a non-finite loss with a clear reason, keeping the last finite parameters.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch

from ..algorithms.base import LearnedAdaptation, MetaAlgorithm
from ..algorithms.config import make_algorithm
from ..analysis.evaluation import per_task_curve
from ..analysis.trajectory import TrajectoryRecorder
from ..export import build_metadata, export_initialization
from ..tasks.registry import task_family
from .config import ExperimentConfig
from .cost import CostMeter
from .device import resolve_device, resolve_dtype
from .metrics import TRAIN_FIELDS, VAL_FIELDS, MetricsLog


def make_family(config: ExperimentConfig, progress=None, cancel=None):
    """The task family a config names, built by its registry entry (image sets load here, with progress and
    cancellation)."""
    return task_family(config.task).build(config, progress=progress, cancel=cancel)


def make_model(config: ExperimentConfig, family):
    return task_family(config.task).model(config, family)


def _training_shots(algorithm: MetaAlgorithm, shots: int) -> int:
    """Support examples per class an algorithm's training tasks have (its `training_shots` rule, e.g. Reptile's
    train_shots; the experiment's shots otherwise)."""
    rule = getattr(algorithm, "training_shots", None)
    return int(rule(algorithm.config, shots)) if rule is not None else int(shots)


def learned_tensors(algorithm: MetaAlgorithm) -> "OrderedDict[str, torch.Tensor] | None":
    """What `algorithm` learned besides theta now (Meta-SGD's `lr.*`, MAML++'s `lslr.*`/`bn_step.*`, Reptile's
    carried `inner_adam.*`), as detached CPU copies for its parameter path; None when it learns nothing else."""
    tensors = algorithm.export_tensors()
    if tensors:
        return OrderedDict((k, v.detach().to("cpu", copy=True)) for k, v in tensors.items())
    adaptation = algorithm.adaptation()  # a rule that carries tensors without exporting them
    if isinstance(adaptation, LearnedAdaptation) and adaptation.tensors:
        return OrderedDict((k, torch.as_tensor(v).detach().to("cpu", copy=True)) for k, v in adaptation.tensors.items())
    return None


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    """One reduction for all tensors: a NaN or inf anywhere makes its norm non-finite."""
    return bool(torch.isfinite(torch.stack(torch._foreach_norm(tensors))).all())


class Throughput:
    """Tasks per second and the time left, for progress messages (computed here once; the CLI and the app show
    them): the rate over windows of at least `window` seconds, smoothed (0.6 old, 0.4 new); before the first
    window, the iterations so far over the active time."""

    def __init__(self, tasks_per_iteration: int, iteration: int, window: float = 0.5, clock=time.perf_counter):
        self.tasks = int(tasks_per_iteration)
        self.window = window
        self.clock = clock
        self.rate = 0.0
        self._start_iteration = iteration
        self.restart(iteration)

    def restart(self, iteration: int) -> None:
        """A new window from here (after a pause: the paused time is no training)."""
        self._t, self._iteration = self.clock(), iteration

    def update(self, iteration: int, active: float) -> float:
        now = self.clock()
        if now - self._t >= self.window:
            rate = (iteration - self._iteration) * self.tasks / (now - self._t)
            self.rate = rate if self.rate == 0 else 0.6 * self.rate + 0.4 * rate
            self._t, self._iteration = now, iteration
        if self.rate == 0 and active > 0:
            return (iteration - self._start_iteration) * self.tasks / active
        return self.rate

    def eta(self, iteration: int, target: int, rate: float, active: float) -> float:
        """Seconds to `target`: at `rate`, else at the mean time per iteration so far."""
        if rate > 0:
            return (target - iteration) * self.tasks / rate
        done = iteration - self._start_iteration
        return active / done * (target - iteration) if done else 0.0


@dataclass
class Run:
    """One algorithm's state inside a Trainer. Its metrics are kept in bounded memory (metrics.MetricsLog: the
    last rows raw plus bin means of all of them); every row of a run lives in its run folder's metrics.csv."""

    algorithm: MetaAlgorithm
    params: "OrderedDict[str, torch.Tensor]"
    log: MetricsLog = field(default_factory=lambda: MetricsLog(TRAIN_FIELDS))  # training rows, every iteration
    val_log: MetricsLog = field(default_factory=lambda: MetricsLog(VAL_FIELDS))  # validation rows
    backup: list[torch.Tensor] = field(default_factory=list)  # last finite parameters, refreshed every step
    # the best validated point so far, kept where the family exports its best (TaskFamilyKind.export_best)
    best: "BestSnapshot | None" = None

    def __post_init__(self) -> None:
        self.backup = [v.detach().clone() for v in self.params.values()]

    @property
    def name(self) -> str:
        return self.algorithm.name

    @property
    def last_metrics(self) -> dict:
        """The last training row ({} before the first): iteration and TRAIN_FIELDS values."""
        return self.log.last

    @property
    def last_val(self) -> dict:
        """The last validation row ({} before the first): iteration and VAL_FIELDS values."""
        return self.val_log.last


@dataclass
class BestSnapshot:
    """The parameters (and exported extras) of the iteration with the lowest validation cost after adaptation so
    far, with that validation's row and the training row of the same iteration."""

    iteration: int
    val: dict  # the validation row (val_post_loss decides)
    metrics: dict  # the training row of that iteration
    params: "OrderedDict[str, torch.Tensor]"
    extras: "OrderedDict[str, torch.Tensor] | None" = None

    @property
    def score(self) -> float:
        return float(self.val["val_post_loss"])


class Trainer:
    STATES = ("idle", "running", "paused", "stopped", "finished", "diverged", "failed")

    def __init__(self, config: ExperimentConfig, family=None, model=None, initial_params=None,
                 record_every: int = 1, record_capacity: int = 2000, world=None):
        config.validate()
        self.config = config
        # world (distributed.World): this process trains its share of each meta-batch, gradients all-reduced
        self.world = world
        self._world_weight = world.local_weight(config.meta_batch_size) if world is not None else 1.0
        self.device = world.device if world is not None else resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype)
        self.family = family if family is not None else make_family(config)
        self.model = model if model is not None else make_model(config, self.family)
        self.generator = torch.Generator().manual_seed(config.seed)
        init = initial_params or self.model.init_params(self.generator, dtype=self.dtype)
        self.runs: OrderedDict[str, Run] = OrderedDict()
        for algo_config in config.algorithms:
            params = OrderedDict((k, v.detach().to(self.device, self.dtype).clone().requires_grad_(True))
                                 for k, v in init.items())
            algorithm = make_algorithm(self.model, self.family.loss, algo_config, config.iterations)
            algorithm.setup(params)
            if world is not None:
                algorithm.check_data_parallel()
                algorithm.sync = partial(world.allreduce_weighted_, weight=self._world_weight)
            self.runs[algo_config.name] = Run(algorithm, params)
        # support examples per class each run trains on (Reptile's train_shots); one batch of the most is drawn and
        # each run takes the first of every class's (or regression task's) examples
        self.run_shots = {name: _training_shots(run.algorithm, config.shots) for name, run in self.runs.items()}
        self.sample_shots = max([config.shots, *self.run_shots.values()])
        if self.sample_shots != config.shots and hasattr(self.family, "validate"):
            wanting = ", ".join(f"{n} trains on {k}" for n, k in self.run_shots.items() if k != config.shots)
            try:
                self.family.validate(self.sample_shots, config.queries)
            except ValueError as exc:
                raise ValueError(f"training tasks of {self.sample_shots} shots ({wanting}): {exc}") from None
        # parameter paths for the "looking inside" views: bounded memory however long the run, each snapshot with
        # what the algorithm learned besides theta at that iteration (record_every=0: no recording)
        self.recorders: dict[str, TrajectoryRecorder] = {}
        if record_every:
            for name in self.runs:
                self.recorders[name] = TrajectoryRecorder(record_capacity, record_every)
                self._record(name, 0)
        self.iteration = 0
        self.state = "idle"
        self.stop_reason = ""
        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self._val_batch = None
        # time and memory per meta-step of each algorithm (cost.py); sessions (CLI, app) also forecast the cost of
        # more inner steps (cost.probe): measured between steps on task slices, within a few percent of the time
        self.cost = CostMeter(probe=False)
        # validation may take at most this fraction of the training time (None: every val_every iterations, as
        # configured): a due validation is skipped while the time spent validating exceeds the budget, so runs
        # whose validation is costly for their meta-step (the app's) keep it off the critical path
        self.val_budget: float | None = None
        self.train_seconds = 0.0  # time in step() during run(), and in validate() (the budget's two clocks)
        self.val_seconds = 0.0
        # told about every iteration and the end of each run() (e.g. runs.RunLogger: metrics, checkpoints)
        self.observers: list = []

    # -- control, safe to call from any thread --------------------------------------------------------
    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def stop(self) -> None:
        self._stop.set()
        self._running.set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    # -- training -------------------------------------------------------------------------------------
    def sample_batch(self):
        c = self.config
        batch = self.family.sample(c.meta_batch_size, self.sample_shots, c.queries, self.generator, self.device,
                                   self.dtype)
        # distributed: every rank draws the same global batch (same generator state) and keeps its own slice
        return batch if self.world is None else self.world.shard(batch)

    def step(self) -> dict[str, dict]:
        """One meta-iteration of every algorithm on the same batch of tasks; returns their metrics.

        Raises FloatingPointError (after restoring that algorithm's last finite parameters) on divergence.
        """
        batch = self.sample_batch()
        out = {}
        for name, run in self.runs.items():
            values = list(run.params.values())
            with torch.no_grad():
                torch._foreach_copy_(run.backup, values)
            shots = self.run_shots[name]
            run_batch = batch if shots == self.sample_shots else batch.first_shots(self.sample_shots, shots)
            metrics = self.cost.meta_step(name, run.algorithm, run.params, run_batch, self.iteration)
            if self.world is not None:  # global means, so every rank agrees on divergence
                metrics = self.world.reduce_metrics(metrics, self._world_weight)
            if not (all(math.isfinite(v) for v in metrics.values()) and _all_finite(values)):
                with torch.no_grad():
                    torch._foreach_copy_(values, run.backup)
                raise FloatingPointError(
                    f"{name} produced a non-finite loss at iteration {self.iteration + 1} "
                    f"(inner or meta learning rate too large?); the last finite parameters were kept")
            metrics["iteration"] = self.iteration + 1
            run.log.append(metrics)
            self._record(name, self.iteration + 1, metrics)
            out[name] = metrics
        self.iteration += 1
        return out

    def _record(self, name: str, iteration: int, metrics: dict | None = None, force: bool = False) -> None:
        """A snapshot of `name`'s theta and learned tensors on its path, when its recorder keeps this iteration (the
        learned tensors are copied only then)."""
        recorder = self.recorders.get(name)
        if recorder is None or not recorder.due(iteration, force):
            return
        run = self.runs[name]
        recorder.record(iteration, run.params, metrics, force=force, learned=learned_tensors(run.algorithm))

    @property
    def validation_family(self):
        """Where validation tasks come from: the family's held-out classes when it has them (image sets)."""
        return task_family(self.config.task).heldout(self.family)

    def validation_batch(self):
        if self._val_batch is None:
            c = self.config
            gen = torch.Generator().manual_seed(c.seed + 7919)
            self._val_batch = self.validation_family.sample(max(c.val_tasks, 1), c.shots, c.queries, gen,
                                                            self.device, self.dtype)
        return self._val_batch

    def validate(self) -> dict[str, dict]:
        """Query loss (and accuracy) of fresh tasks before and after adaptation with each algorithm's training
        inner steps; for image sets the tasks use held-out classes."""
        batch = self.validation_batch()
        out = {}
        for name, run in self.runs.items():
            steps = max(run.algorithm.config.inner_steps, 1)
            losses, accs = per_task_curve(self.model, self.family.loss, run.params, batch, steps,
                                          run.algorithm.adaptation())
            entry = {"iteration": self.iteration, "val_pre_loss": float(losses[0].mean()),
                     "val_post_loss": float(losses[-1].mean())}
            if accs is not None:
                entry["val_pre_accuracy"] = float(accs[0].mean())
                entry["val_post_accuracy"] = float(accs[-1].mean())
            run.val_log.append(entry)
            self._keep_best(run, entry)
            out[name] = entry
        return out

    @property
    def exports_best(self) -> bool:
        """Whether exports are the run's best by validation (the family's `export_best`, with validation on)."""
        return bool(getattr(task_family(self.config.task), "export_best", False)) and self.config.val_every > 0

    def _keep_best(self, run: Run, entry: dict) -> None:
        """Keep a copy of this iteration's policy when its validation cost after adaptation is the lowest so far
        (ties keep the later one, so a run that levels off exports its last)."""
        if not self.exports_best:
            return
        score = entry["val_post_loss"]
        if not math.isfinite(score) or (run.best is not None and score > run.best.score):
            return
        extras = run.algorithm.export_tensors()
        run.best = BestSnapshot(
            self.iteration, dict(entry), {k: v for k, v in run.last_metrics.items() if k != "iteration"},
            OrderedDict((k, v.detach().to("cpu").clone()) for k, v in run.params.items()),
            OrderedDict((k, v.detach().to("cpu").clone()) for k, v in extras.items()) if extras else None)

    def export_choice(self, name: str) -> dict | None:
        """What `export(name)` writes where the family exports its best (None elsewhere, or before any
        validation): the best by validation, or the last iteration's policy when the best is the latest
        validated point (the two agree). A dict with `chosen` ("best" | "last"), the chosen `iteration` and
        `val_return`-style numbers in the family's cost units: `val_post_loss` of the chosen point and of the
        last validation, `last_iteration` the run's."""
        run = self.runs[name]
        if not self.exports_best or run.best is None:
            return None
        last_val = run.last_val
        agree = run.best.iteration == last_val.get("iteration")
        return {"rule": "best by validation", "chosen": "last" if agree else "best",
                "iteration": self.iteration if agree else run.best.iteration, "last_iteration": self.iteration,
                "best_iteration": run.best.iteration, "val_post_loss": run.best.score,
                "last_val_iteration": int(last_val.get("iteration", 0)),
                "last_val_post_loss": float(last_val.get("val_post_loss", float("nan")))}

    def _scheduled_validation(self) -> dict[str, dict]:
        """validate() when due: every config.val_every iterations, within val_budget when one is set; a due
        validation at the run's last iteration always runs (it is the one a run's result is read from), and so does
        every due one where the family exports its best (validation decides the export)."""
        every = self.config.val_every
        if not every or self.iteration % every:
            return {}
        last = self.iteration >= self.config.iterations or self.exports_best
        if not last and self.val_budget is not None and self.val_seconds > self.val_budget * self.train_seconds:
            return {}
        t0 = time.perf_counter()
        out = self.validate()
        self.val_seconds += time.perf_counter() - t0
        return out

    def run(self, iterations: int | None = None, callback: Callable[[dict], None] | None = None,
            report_every: int = 1) -> str:
        """Train until `iterations` more (default: to config.iterations) or stop(); returns the final state.

        Observers hear of every iteration and of the end, also when training fails with an exception.
        """
        try:
            state = self._run(iterations, callback, report_every)
        except BaseException as exc:
            self.state = "failed"
            self.stop_reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
            self._notify_end()
            raise
        self._notify_end()
        return state

    def _notify_end(self) -> None:
        for observer in list(self.observers):
            observer.on_end(self)

    def _run(self, iterations, callback, report_every) -> str:
        target = self.config.iterations if iterations is None else min(self.iteration + iterations,
                                                                         self.config.iterations)
        self._stop.clear()
        self.state = "running"
        self.stop_reason = ""
        start_iteration = self.iteration
        active = 0.0
        throughput = Throughput(self.config.meta_batch_size, self.iteration)
        if callback is not None and self.iteration < target:  # named while it runs: the first step may take a while
            self._emit(callback, throughput, active, 0.0, target, {}, stage="first meta-iteration")
        while self.iteration < target:
            if not self._running.is_set():
                self.state = "paused"
                self._emit(callback, throughput, active, 0.0, target, {})
                self._running.wait()
                throughput.restart(self.iteration)
                self.state = "running"
            if self._stop.is_set():
                break
            t0 = time.perf_counter()
            try:
                metrics = self.step()
            except FloatingPointError as exc:
                self.state = "diverged"
                self.stop_reason = str(exc)
                self._emit(callback, throughput, active, 0.0, target, {})
                return self.state
            self.train_seconds += time.perf_counter() - t0
            val = self._scheduled_validation()
            for observer in self.observers:
                observer.on_step(self, metrics, val)
            took = time.perf_counter() - t0
            active += took
            self.cost.count_active(took)  # the cost meter's budget is a share of this
            done = self.iteration == target
            rate = throughput.update(self.iteration, active)
            if callback is not None and (done or val or (self.iteration - start_iteration) % report_every == 0):
                self._emit(callback, throughput, active, rate, target, metrics, val)
        for name in self.recorders:  # paths end where the run ends
            self._record(name, self.iteration, self.runs[name].last_metrics, force=True)
        if self.iteration >= self.config.iterations:
            self.state = "finished"
            self.cost.finish()  # the forecast a short run had no time for, when it is cheap
        else:
            self.state = "stopped"
            self.stop_reason = "stopped by the user" if self._stop.is_set() else ""
        self._emit(callback, throughput, active, 0.0, target, {})
        return self.state

    def _emit(self, callback, throughput, active, rate, target, metrics, val=None, stage: str = "") -> None:
        """A progress message: rate, ETA and cost are computed here once (lab.messages.Progress carries them).
        With `stage`: state "starting", what runs before the first iteration of this run() ends."""
        if callback is None:
            return
        callback({
            "state": "starting" if stage else self.state, "iteration": self.iteration, "total": self.config.iterations,
            "tasks_per_s": rate, "eta_s": throughput.eta(self.iteration, target, rate, active), "elapsed_s": active,
            "metrics": metrics, "val": val or {}, "reason": self.stop_reason, "cost": self.cost.summary(),
            "stage": stage,
        })

    # -- results --------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, "OrderedDict[str, torch.Tensor]"]:
        """Detached copies of every algorithm's current initialization (safe to hand to another thread)."""
        return {name: OrderedDict((k, v.detach().to("cpu").clone()) for k, v in run.params.items())
                for name, run in self.runs.items()}

    def metadata(self, name: str, choice: dict | None = None) -> dict:
        """The export's metadata; with `choice` (export_choice) of the best: that iteration's metrics, and
        `export` saying which policy this is."""
        run = self.runs[name]
        c = self.config
        hyper = run.algorithm.config.to_dict()
        hyper.update(meta_batch_size=c.meta_batch_size, shots=c.shots, queries=c.queries, seed=c.seed,
                     dtype=c.dtype)
        best = choice is not None and choice["chosen"] == "best"
        metrics = dict(run.best.metrics) if best else {k: v for k, v in run.last_metrics.items() if k != "iteration"}
        metrics.update({k: v for k, v in (run.best.val if best else run.last_val).items() if k != "iteration"})
        return build_metadata(name, self.model.spec(), self.family.describe(), hyper,
                              choice["iteration"] if best else self.iteration, metrics,
                              extra={"export": choice} if choice is not None else None)

    def export(self, name: str, path) -> dict | None:
        """Write `name`'s initialization to `path`: the last iteration's, or the run's best by validation where
        the family exports its best (export_choice); returns that choice (None: the last, no choice made)."""
        run = self.runs[name]
        choice = self.export_choice(name)
        if choice is not None and choice["chosen"] == "best":
            export_initialization(path, run.best.params, self.metadata(name, choice), extra_tensors=run.best.extras)
        else:
            export_initialization(path, run.params, self.metadata(name, choice),
                                  extra_tensors=run.algorithm.export_tensors())
        return choice


def export_choice_text(choice: dict, task: str) -> str:
    """One line saying which policy an export is (Trainer.export_choice), in the family's plotted metric (the
    average return for navigation), for the CLI's last lines and the evaluation card."""
    label, sign = task_family(task).plot_metric or ("loss", 1.0)
    what = f"validation {label} after adaptation"
    best = sign * choice["val_post_loss"]
    if choice["chosen"] == "last":
        return (f"the last iteration's ({choice['last_iteration']}), also the best by validation ({what} "
                f"{best:.2f} at iteration {choice['best_iteration']})")
    return (f"the run's best by validation: iteration {choice['best_iteration']} of {choice['last_iteration']} "
            f"({what} {best:.2f}; at iteration {choice['last_val_iteration']}: "
            f"{sign * choice['last_val_post_loss']:.2f})")
