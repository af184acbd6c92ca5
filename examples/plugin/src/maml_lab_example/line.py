"""1-D linear regression tasks: y = a x + b with a, b ~ U[-2, 2] and x ~ U[-5, 5], scored by the MSE.

Two parts, as in every task family: the sampler (`LineFamily`: batches of tasks, and the description an export
records) and the registry entry (`LineTasks`: how MAML Lab builds the sampler and the model from a config, and
the family's defaults). Registered by the entry point `line = "maml_lab_example.line:LineTasks"` in group
`maml_lab.tasks`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from maml_lab.core.tasks.base import CurvePlayground, TaskBatch, TaskFamilyKind, TaskField


@dataclass(frozen=True)
class LineFamily:
    """y = slope * x + intercept, each drawn uniformly from its range per task."""

    slope: tuple[float, float] = (-2.0, 2.0)
    intercept: tuple[float, float] = (-2.0, 2.0)
    x_range: tuple[float, float] = (-5.0, 5.0)

    name = "line"
    loss = "mse"  # what the inner and outer loops minimize (a name in maml_lab.core.tasks.losses.LOSSES)
    input_shape = (1,)
    output_dim = 1

    def __post_init__(self) -> None:
        for label in ("slope", "intercept", "x_range"):
            lo, hi = getattr(self, label)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise ValueError(f"line {label} range must be finite with low <= high, got {(lo, hi)}")

    def describe(self) -> dict:
        """What an export records as its `task`: enough for `from_description` to rebuild these tasks."""
        return {"name": self.name, "slope": list(self.slope), "intercept": list(self.intercept),
                "x_range": list(self.x_range)}

    @staticmethod
    def _uniform(shape, bounds, generator, dtype) -> torch.Tensor:
        lo, hi = bounds
        return torch.rand(shape, generator=generator, dtype=dtype) * (hi - lo) + lo

    def sample(self, num_tasks: int, shots: int, queries: int, generator: torch.Generator,
               device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> TaskBatch:
        """B tasks of K support and Q query points, drawn on the CPU generator (reproducible), then moved."""
        if num_tasks < 1 or shots < 1 or queries < 0:
            raise ValueError(f"need num_tasks >= 1, shots >= 1, queries >= 0; got {num_tasks}, {shots}, {queries}")
        a = self._uniform((num_tasks, 1, 1), self.slope, generator, dtype)
        b = self._uniform((num_tasks, 1, 1), self.intercept, generator, dtype)
        x = self._uniform((num_tasks, shots + queries, 1), self.x_range, generator, dtype)
        y = a * x + b
        return TaskBatch(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:],
                         {"slope": a.view(-1), "intercept": b.view(-1)}).to(device)


def _line(x: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    return slope * x + intercept


def line_playground(family: LineFamily) -> CurvePlayground:
    """What the app's Playground shows: lines over the family's x range, with slope and intercept fields (a random
    task draws both from the family's ranges) and a y axis that holds every line of the family."""
    (a_lo, a_hi), (b_lo, b_hi), (x_lo, x_hi) = family.slope, family.intercept, family.x_range
    top = max(abs(a) * abs(x) for a in (a_lo, a_hi) for x in (x_lo, x_hi)) + max(abs(b_lo), abs(b_hi))
    top = max(top, 1.0)
    return CurvePlayground(
        "line", "y = a x + b", _line,
        (TaskField("slope", "Slope a", a_lo, a_hi, min(max(1.0, a_lo), a_hi), 0.1, 2, "Slope a of y = a x + b"),
         TaskField("intercept", "Intercept b", b_lo, b_hi, min(max(0.0, b_lo), b_hi), 0.1, 2,
                   "Intercept b of y = a x + b")),
        family.x_range, (-1.1 * top, 1.3 * top))  # room above the steepest line for the legend


class LineTasks(TaskFamilyKind):
    """The registry entry: an MLP (`hidden`, `activation`) regressing lines with the MSE loss."""

    name = "line"
    label = "Line regression"
    description = "y = a x + b, a, b ~ U[-2, 2], x ~ U[-5, 5] (example plug-in)"
    loss = "mse"
    loss_label = "MSE"
    # lines are easier than sinusoids: fewer points and iterations suffice
    experiment_defaults = {"meta_batch_size": 10, "shots": 5, "queries": 10, "iterations": 5000}
    # the app's Playground: click points onto lines (random tasks draw slope and intercept); playground_for follows
    # the run's task options
    playground = line_playground(LineFamily())
    # this family's own settings (TOML [task_options], CLI --task-option slope=[-1,1]), read with config.task_option
    option_defaults = {"slope": [-2.0, 2.0], "intercept": [-2.0, 2.0]}

    @classmethod
    def validate(cls, config) -> None:
        for key in cls.option_defaults:
            value = config.task_option(key)
            if not (isinstance(value, (list, tuple)) and len(value) == 2
                    and all(isinstance(v, (int, float)) for v in value)):
                raise ValueError(f"task option {key} must be a range [low, high], got {value!r}")
            LineFamily(**{key: tuple(float(v) for v in value)})  # finite, low <= high, else a clear ValueError

    @classmethod
    def playground_for(cls, config) -> CurvePlayground:
        return line_playground(cls.build(config))

    @classmethod
    def build(cls, config, progress=None, cancel=None) -> LineFamily:
        return LineFamily(slope=tuple(config.task_option("slope")), intercept=tuple(config.task_option("intercept")))

    @classmethod
    def model(cls, config, family):
        from maml_lab.core.models.mlp import MLP

        return MLP([family.input_shape[0], *config.hidden, family.output_dim], config.activation)

    @classmethod
    def from_description(cls, description: dict, data=None, progress=None, cancel=None, hint: str = ""):
        """The tasks an export was trained on (`maml-lab eval`), from the `task` metadata `describe` wrote."""
        d = LineFamily()
        return LineFamily(*(tuple(description.get(key, getattr(d, key))) for key in ("slope", "intercept", "x_range")))
