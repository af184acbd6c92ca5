"""Sinusoid regression (MAML paper, Sec. 5.1): the task sampler, tasks a user picks, and the family's registry entry."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .base import CurvePlayground, TaskBatch, TaskFamilyKind, TaskField


@dataclass(frozen=True)
class SinusoidFamily:
    """y = A sin(x - phase) with A ~ U[0.1, 5], phase ~ U[0, pi], x ~ U[-5, 5] (MAML paper, Sec. 5.1)."""

    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)

    name = "sinusoid"
    loss = "mse"
    input_shape = (1,)
    output_dim = 1

    def __post_init__(self) -> None:
        for label, (lo, hi) in (("amplitude", self.amplitude), ("phase", self.phase), ("x_range", self.x_range)):
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise ValueError(f"sinusoid {label} range must be finite with low <= high, got {(lo, hi)}")

    def describe(self) -> dict:
        return {"name": self.name, "amplitude": list(self.amplitude), "phase": list(self.phase),
                "x_range": list(self.x_range)}

    def _uniform(self, shape: tuple[int, ...], bounds: tuple[float, float], generator: torch.Generator,
                 dtype: torch.dtype) -> torch.Tensor:
        lo, hi = bounds
        return torch.rand(shape, generator=generator, dtype=dtype) * (hi - lo) + lo

    def sample(self, num_tasks: int, shots: int, queries: int, generator: torch.Generator,
               device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> TaskBatch:
        """Sample B tasks on the CPU generator (reproducible on any device), then move them."""
        if num_tasks < 1 or shots < 1 or queries < 0:
            raise ValueError(f"need num_tasks >= 1, shots >= 1, queries >= 0; got {num_tasks}, {shots}, {queries}")
        amp = self._uniform((num_tasks, 1, 1), self.amplitude, generator, dtype)
        phase = self._uniform((num_tasks, 1, 1), self.phase, generator, dtype)
        x = self._uniform((num_tasks, shots + queries, 1), self.x_range, generator, dtype)
        y = amp * torch.sin(x - phase)
        batch = TaskBatch(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:],
                          {"amplitude": amp.view(-1), "phase": phase.view(-1)})
        return batch.to(device)

    @staticmethod
    def curve(amplitude: float, phase: float) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda x: amplitude * torch.sin(x - phase)


def _sine(x: np.ndarray, amplitude: float, phase: float) -> np.ndarray:
    return amplitude * np.sin(x - phase)


def sinusoid_playground(family: SinusoidFamily | None = None) -> CurvePlayground:
    """The Playground of sinusoids: amplitude and phase fields over the family's ranges, x over its x range."""
    family = family or SinusoidFamily()
    (a_lo, a_hi), (p_lo, p_hi) = family.amplitude, family.phase
    top = max(abs(a_lo), abs(a_hi))
    return CurvePlayground(
        "sinusoid", "y = A sin(x - phase)", _sine,
        (TaskField("amplitude", "Amplitude", a_lo, a_hi, min(max(1.0, a_lo), a_hi), 0.1, 2,
                   "Amplitude A of y = A sin(x - phase)"),
         TaskField("phase", "Phase", p_lo, p_hi, p_lo, 0.05, 2, "Phase of y = A sin(x - phase), in radians")),
        family.x_range, (-1.2 * top, 1.36 * top))  # room above the largest sinusoid for the legend


def user_task(x_support, y_support, truth: Callable[[torch.Tensor], torch.Tensor] | None = None,
              x_range: tuple[float, float] = (-5.0, 5.0), num_query: int = 200,
              dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> TaskBatch:
    """A one-task batch from points a user picked; the query set is `truth` on a dense grid, if given.

    Without a ground truth the support points are their own query set (the error then measures fit).
    """
    xs = torch.as_tensor(x_support, dtype=dtype).reshape(1, -1, 1)
    ys = torch.as_tensor(y_support, dtype=dtype).reshape(1, -1, 1)
    if xs.shape != ys.shape:
        raise ValueError(f"support x and y differ in length: {xs.shape[1]} vs {ys.shape[1]}")
    if xs.shape[1] == 0:
        raise ValueError("a task needs at least one support point")
    if not (torch.isfinite(xs).all() and torch.isfinite(ys).all()):
        raise ValueError("support points must be finite numbers")
    if truth is None:
        xq, yq = xs.clone(), ys.clone()
    else:
        xq = torch.linspace(x_range[0], x_range[1], num_query, dtype=dtype).reshape(1, -1, 1)
        yq = torch.as_tensor(truth(xq), dtype=dtype).reshape(1, -1, 1)
    return TaskBatch(xs, ys, xq, yq).to(device)


class SinusoidTasks(TaskFamilyKind):
    """The registry entry of sinusoid regression: an MLP (`hidden`, `activation`) trained with the MSE loss."""

    name = "sinusoid"
    label = "Sinusoid regression"
    short_label = "Sinusoid"
    description = "y = A sin(x - phase), A ~ U[0.1, 5], phase ~ U[0, pi], x ~ U[-5, 5] (MAML paper, Sec. 5.1)"
    loss = "mse"
    loss_label = "MSE"
    # the MAML paper's regression: meta-batch 25, K = 10, 70,000 iterations
    experiment_defaults = {"meta_batch_size": 25, "shots": 10, "queries": 10, "iterations": 70000}
    playground = sinusoid_playground()

    model_kind = "mlp"

    @classmethod
    def validate(cls, config) -> None:
        from ..validation import check_training_memory, mlp_parameters

        sizes = [1, *config.hidden, 1]
        per_task = (config.shots + config.queries) * 2 * sum(sizes)  # pre- and post-activation of every point
        check_training_memory(config, mlp_parameters(sizes), per_task, per_task,
                              f"an MLP {'-'.join(map(str, sizes))} on meta-batches of {config.meta_batch_size} x "
                              f"{config.shots + config.queries} points")

    @classmethod
    def build(cls, config, progress=None, cancel=None) -> SinusoidFamily:
        return SinusoidFamily()

    @classmethod
    def from_description(cls, description: dict, data=None, progress=None, cancel=None, hint: str = ""):
        """The tasks an initialization was trained on, from its metadata's task description."""
        from ..validation import check_value, fail

        d = SinusoidFamily()
        ranges = []
        for key in ("amplitude", "phase", "x_range"):
            pair = check_value("metadata", f"task.{key}", description.get(key, list(getattr(d, key))), list[float])
            if len(pair) != 2 or pair[0] > pair[1]:
                raise fail("metadata", f"task.{key}", pair, "[low, high] with low <= high")
            ranges.append(tuple(pair))
        return SinusoidFamily(*ranges)

    @classmethod
    def model(cls, config, family):
        from ..models.mlp import MLP

        return MLP([family.input_shape[0], *config.hidden, family.output_dim], config.activation)
