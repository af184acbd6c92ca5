"""What every task family provides: batches of tasks (TaskBatch) and a registry entry (TaskFamilyKind) that
says how to build its sampler and model from a config, how to score it, and what its defaults are."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch


@dataclass
class TaskBatch:
    """B tasks, each with a support set (to adapt on) and a query set (to score the adaptation).

    Shapes: x_support [B, K, ...], y_support [B, K, ...], x_query [B, Q, ...], y_query [B, Q, ...].
    `info` carries per-task ground truth (e.g. sinusoid amplitude and phase) for plots.
    """

    x_support: torch.Tensor
    y_support: torch.Tensor
    x_query: torch.Tensor
    y_query: torch.Tensor
    info: dict = field(default_factory=dict)

    @property
    def num_tasks(self) -> int:
        return self.x_support.shape[0]

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "TaskBatch":
        def move(t: torch.Tensor) -> torch.Tensor:
            if dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device=device)

        return TaskBatch(move(self.x_support), move(self.y_support), move(self.x_query), move(self.y_query),
                         dict(self.info))

    def task(self, i: int) -> "TaskBatch":
        """The i-th task as a batch of one (keeps the leading dimension)."""
        sl = slice(i, i + 1)
        info = {k: v[sl] if isinstance(v, torch.Tensor) else v for k, v in self.info.items()}
        return TaskBatch(self.x_support[sl], self.y_support[sl], self.x_query[sl], self.y_query[sl], info)

    def first_shots(self, drawn: int, shots: int) -> "TaskBatch":
        """The same tasks with the first `shots` of every `drawn` consecutive support examples: support sets are
        laid out group by group (images: class by class, `drawn` per class; regression: one group of `drawn`
        points), so this is the batch `shots` would have drawn. Query sets are unchanged."""
        if not 1 <= shots <= drawn or self.x_support.shape[1] % drawn:
            raise ValueError(f"cannot take {shots} of {drawn} shots from support sets of {self.x_support.shape[1]}")

        def cut(t: torch.Tensor) -> torch.Tensor:
            b, n = t.shape[:2]
            return t.reshape(b, n // drawn, drawn, *t.shape[2:])[:, :, :shots].reshape(b, -1, *t.shape[2:])

        info = dict(self.info)
        if isinstance(info.get("support_rows"), torch.Tensor):
            info["support_rows"] = cut(info["support_rows"])
        return TaskBatch(cut(self.x_support), cut(self.y_support), self.x_query, self.y_query, info)

    def joint(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Support and query points of every task pooled, for the joint-training baseline."""
        x = torch.cat([self.x_support, self.x_query], dim=1)
        y = torch.cat([self.y_support, self.y_query], dim=1)
        return x, y


@dataclass(frozen=True)
class TaskField:
    """One parameter of a playground's task (a sinusoid's amplitude): a random task draws it uniformly from
    [low, high]; the Playground shows it as a numeric field within that range."""

    name: str  # the keyword `CurvePlayground.function` takes
    label: str  # the field's caption ("Amplitude")
    low: float
    high: float
    default: float  # the field's value before a random task sets it
    step: float = 0.1  # the field's arrow step
    decimals: int = 2
    tip: str = ""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low <= self.high):
            raise ValueError(f"task field {self.name}: need finite low <= high, got {(self.low, self.high)}")
        if not self.low <= self.default <= self.high:
            raise ValueError(f"task field {self.name}: default {self.default} is outside [{self.low}, {self.high}]")


@dataclass(frozen=True)
class CurvePlayground:
    """A Playground of 1-D regression: the user clicks support points onto x in `x_range` (or draws a curve, or
    asks for a random task), and every one-input one-output initialization adapts to them. A random task draws
    each of `fields` uniformly; its ground truth is `function(x, **values)` (numpy in, numpy out)."""

    noun: str  # what a task is, in captions: "Query MSE against the true sinusoid"
    formula: str  # the task's formula, for tooltips: "y = A sin(x - phase)"
    function: Callable[..., np.ndarray]
    fields: tuple[TaskField, ...]
    x_range: tuple[float, float] = (-5.0, 5.0)
    y_range: tuple[float, float] = (-6.0, 6.8)  # the canvas's y axis: every task of the family, and a legend above

    kind: ClassVar[str] = "curve"

    def __post_init__(self) -> None:
        for label, (lo, hi) in (("x_range", self.x_range), ("y_range", self.y_range)):
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"playground {label} must be finite with low < high, got {(lo, hi)}")
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise ValueError(f"playground fields repeat a name: {names}")

    def defaults(self) -> dict[str, float]:
        return {f.name: float(f.default) for f in self.fields}

    def random_values(self, rng: np.random.Generator) -> dict[str, float]:
        """A task from the family's distribution: each field uniform in its range."""
        return {f.name: float(rng.uniform(f.low, f.high)) for f in self.fields}

    def truth(self, values: dict) -> Callable[[np.ndarray], np.ndarray]:
        """The ground truth of the task with these field values: x -> y."""
        values = {f.name: float(values.get(f.name, f.default)) for f in self.fields}
        function = self.function
        return lambda x: np.asarray(function(np.asarray(x, dtype=np.float64), **values), dtype=np.float64)


@dataclass(frozen=True)
class NoPlayground:
    """A family whose tasks are no 1-D curve: the Playground says `reason` (where its tasks are shown) instead.
    `kind` "images" marks image families (the panel's image-set rows, the conv-4 network, the Tasks view)."""

    reason: str
    kind: str = "none"


Playground = CurvePlayground | NoPlayground


class TaskFamilyKind:
    """A task family's registry entry: config, CLI, panel, run library, evaluation and views read it.

    `build` returns the sampler: an object with `sample(num_tasks, shots, queries, generator, device, dtype) ->
    TaskBatch`, `describe() -> dict` (recorded in exports) and `loss`; it may offer `validation_family` (held-out
    tasks for validation and evaluation).
    """

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    short_label: ClassVar[str] = ""  # for table columns (default: label)
    description: ClassVar[str] = ""
    loss: ClassVar[str] = "mse"  # a name in tasks.losses.LOSSES: what inner and outer loops minimize
    loss_label: ClassVar[str] = "MSE"  # how plots name that loss
    metric: ClassVar[str | None] = None  # "accuracy" where the family is classification
    # ExperimentConfig fields left unset take these (meta_batch_size, shots, queries, iterations, hidden, val_every)
    experiment_defaults: ClassVar[dict] = {}
    # exports are the run's best by validation (the lowest validation cost after adaptation), or the last
    # iteration's policy when that best is the latest validated point (Trainer.export_choice)
    export_best: ClassVar[bool] = False
    # what this family sets for every algorithm (AlgorithmConfig fields), under the algorithms' own defaults
    algorithm_defaults: ClassVar[dict] = {}
    # named sets of settings one flag away (`maml-lab train --preset NAME`): name -> {"description": str,
    # "experiment": {ExperimentConfig fields}, "algorithm": {AlgorithmConfig fields, for every algorithm}}; they sit
    # under anything set explicitly (see training.config.apply_preset)
    presets: ClassVar[dict] = {}
    # what the Playground shows: a CurvePlayground (click points onto a 1-D function, with the family's ground truth
    # and random-task fields), or NoPlayground with the reason (kind "images": an image family, shown in Tasks)
    playground: ClassVar[Playground] = NoPlayground("this task family has no 1-D curve to click points onto")
    # settings of this family beyond ExperimentConfig's fields, and their defaults: ExperimentConfig.task_options
    # (TOML [task_options], CLI --task-option KEY=VALUE), read with config.task_option(key)
    option_defaults: ClassVar[dict] = {}
    # True when `build` takes milliseconds (nothing to load): views and the run library rebuild it at will
    cheap_to_build: ClassVar[bool] = True
    # True where a meta-step's ops are large enough (convolutions over batches of images) that torch's intra-op
    # threads pay even beside a GUI thread; False: small ops (an MLP on a few points), where an extra thread
    # costs more than it gives. The app sizes its training thread by it (lab/threads.py)
    parallel_ops: ClassVar[bool] = False
    # the model kind (spec "kind") this family trains: an export of another kind is refused for it (its metadata
    # cannot name this family); None: not checked (plug-in families)
    model_kind: ClassVar[str | None] = None
    # how the Adaptation view and Training curves plot the loss: (label, sign) of a metric it stands for, e.g.
    # ("average return", -1) where the loss is a cost; None: the loss itself, as `loss_label`
    plot_metric: ClassVar[tuple[str, float] | None] = None

    @classmethod
    def reference_curves(cls, family, model, shots: int, max_steps: int, adaptation, num_tasks: int, queries: int,
                         dtype=torch.float32) -> dict:
        """Reference curves the Adaptation view draws beside every initialization, on the same held-out tasks
        (adaptation_curve's seed): label -> core.analysis.evaluation.AdaptationCurve in the loss's units. None by
        default; 2-D navigation: a random initialization and the oracle (the MAML paper's Figure 5)."""
        return {}

    @classmethod
    def playground_for(cls, config) -> Playground:
        """What the Playground shows for a run of `config` (default: `playground`; a family whose task ranges are
        options narrows its fields to them)."""
        return cls.playground

    @classmethod
    def tasks_text(cls, config) -> str:
        """What a run trains on, in a few words (CLI and status lines), e.g. '5-way 1-shot images'."""
        return cls.name

    @classmethod
    def loading_label(cls, config) -> str | None:
        """What `build` loads, for a progress line ('loading images_background.zip'); None: nothing to load."""
        return None

    @classmethod
    def build_report(cls, config, family) -> str | None:
        """One line the CLI prints once the family is built (what was loaded, how it was split); None: nothing."""
        return None

    @classmethod
    def validate(cls, config) -> None:
        """Refuse configs this family cannot run (ValueError naming the field)."""

    @classmethod
    def build(cls, config, progress=None, cancel=None):
        raise NotImplementedError

    @classmethod
    def model(cls, config, family):
        """The functional model this family trains (parameters are dicts of tensors)."""
        raise NotImplementedError

    @classmethod
    def from_description(cls, description: dict, data=None, progress=None, cancel=None, hint: str = ""):
        """Held-out tasks for an initialization trained on this family, from its export's `task` metadata."""
        raise NotImplementedError

    @classmethod
    def heldout(cls, family):
        """Where evaluation tasks come from: the family's held-out part when it has one."""
        return getattr(family, "validation_family", None) or family
