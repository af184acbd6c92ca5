"""What a training run tells the outside, as typed messages: the CLI's progress line, the app's worker and views,
and notebooks read the same fields. Metric names inside them are those of core.training.metrics."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RunStatus:
    """Where a run stands: what every progress message says."""

    state: str  # starting (before a run's first iteration ends), running, paused, finished, stopped, diverged, failed
    iteration: int
    total: int
    tasks_per_s: float
    eta_s: float
    elapsed_s: float
    reason: str = ""


@dataclass(frozen=True)
class Progress(RunStatus):
    """After every iteration (the listener throttles, not the session)."""

    metrics: dict = field(default_factory=dict)  # algorithm -> TRAIN_FIELDS (+ "iteration") of this iteration
    val: dict = field(default_factory=dict)  # algorithm -> VAL_FIELDS (+ "iteration"), when it validated
    # algorithm -> the cost meter's numbers (core.training.cost.AlgorithmCost.as_dict(): metrics.COST_FIELDS, the
    # memory kind, the trained inner steps, the forecast's state)
    cost: dict = field(default_factory=dict)
    stage: str = ""  # state "starting": what runs now before the first iteration ("first meta-iteration")

    @classmethod
    def from_trainer(cls, p: dict) -> "Progress":
        """From the Trainer's callback dict: rate, ETA and cost as the Trainer computed them (never again)."""
        return cls(p["state"], p["iteration"], p["total"], p["tasks_per_s"], p["eta_s"], p["elapsed_s"],
                   p.get("reason", ""), p.get("metrics") or {}, p.get("val") or {}, p.get("cost") or {},
                   p.get("stage", ""))

    @property
    def final(self) -> bool:
        return self.state not in ("running", "starting")


@dataclass(frozen=True)
class RunStarted:
    device: str
    algorithms: list
    total: int
    model: dict  # the model spec
    run_folder: str | None = None
    run_folder_error: str = ""  # why the run trains without a folder
    config: object = None  # a resumed run: its ExperimentConfig (None for a new run)
    resumed_at: int | None = None  # a resumed run: the checkpoint's iteration (None: started over)
    history: dict | None = None  # a resumed run: its metrics so far, as a metrics chunk


@dataclass(frozen=True)
class RunProgress(RunStatus):
    """Throttled progress for a UI: the metrics since the last message as a chunk
    ({"train": {algorithm: {"iteration": [...], field: [...]}}, "val": {...}}) and each algorithm's latest row."""

    chunk: dict = field(default_factory=dict)
    latest: dict = field(default_factory=dict)
    cost: dict = field(default_factory=dict)  # algorithm -> the cost meter's numbers, as in Progress


@dataclass(frozen=True)
class Snapshot:
    """Detached CPU copies of every algorithm's current initialization, with what it takes to use them."""

    iteration: int
    params: dict  # algorithm -> OrderedDict of tensors
    metadata: dict  # algorithm -> export metadata
    model: dict  # the model spec
    algorithms: dict  # algorithm -> how it adapts at test time (AlgorithmConfig, or LearnedAdaptation)


@dataclass(frozen=True)
class Loading:
    """The task family loads (an image set) before training starts."""

    done: int
    total: int


@dataclass(frozen=True)
class Preparing:
    """What runs before training's first iteration, named while it runs (after loading: "building the model", then
    "first meta-iteration"), for the progress area."""

    what: str


@dataclass(frozen=True)
class RunEnded:
    state: str  # finished, stopped, diverged, failed, refused
    reason: str
    iteration: int
    total: int
    cancelled: bool = False  # stopped while the task family was still loading
