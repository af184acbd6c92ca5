"""What the playground shows of an initialization: its prediction before and after each of k test-time steps
on the user's support points, and the query error against the true (or drawn) curve. No Qt here. The x range
and the true functions are the task family's (its CurvePlayground, core/tasks/base.py).

One task, one small MLP and 20 steps take a few milliseconds, so this runs on the GUI thread.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..core.tasks.losses import mse_per_task
from .initializations import Initialization

X_RANGE = (-5.0, 5.0)  # the sinusoid's, where a task names none
MAX_STEPS = 20


@dataclass
class SupportTask:
    """The user's task: support points and, when known, the true function on [lo, hi]; predictions are drawn over
    the family's `x_range`."""

    x: np.ndarray
    y: np.ndarray
    truth: Callable[[np.ndarray], np.ndarray] | None = None
    truth_range: tuple[float, float] = X_RANGE
    x_range: tuple[float, float] = X_RANGE


@dataclass
class Prediction:
    grid: np.ndarray  # [G] x values
    curves: np.ndarray  # [steps + 1, G]: prediction after 0..steps inner steps
    mse: np.ndarray | None  # [steps + 1]: query MSE against the truth (or the support fit without one)
    mse_kind: str  # "query", "support" or "none"


def prediction_grid(points: int = 241, x_range: tuple[float, float] = X_RANGE) -> np.ndarray:
    return np.linspace(x_range[0], x_range[1], points)


def predict(init: Initialization, task: SupportTask, steps: int = MAX_STEPS, grid: np.ndarray | None = None,
            query_points: int = 200) -> Prediction:
    """Adapt `init` on the task's support points for `steps` steps (its own rule) and evaluate each step."""
    grid = prediction_grid(x_range=task.x_range) if grid is None else grid
    model = init.model
    params = OrderedDict((k, v.detach()) for k, v in init.params.items())
    dtype = next(iter(params.values())).dtype
    xs = torch.as_tensor(np.asarray(task.x, dtype=np.float64), dtype=dtype).reshape(1, -1, 1)
    ys = torch.as_tensor(np.asarray(task.y, dtype=np.float64), dtype=dtype).reshape(1, -1, 1)
    k = xs.shape[1]
    if k:
        path = list(init.trajectory(mse_per_task, xs, ys, steps))
    else:
        path = [OrderedDict((name, v.unsqueeze(0)) for name, v in params.items())] * (steps + 1)
    batched = OrderedDict((name, torch.cat([p[name] for p in path], 0)) for name in path[0])  # a context too
    if task.truth is not None:
        lo, hi = task.truth_range
        xq = np.linspace(lo, hi, query_points)
        yq = np.asarray(task.truth(xq), dtype=np.float64)
        kind = "query"
    elif k:
        xq, yq = np.asarray(task.x, dtype=np.float64), np.asarray(task.y, dtype=np.float64)
        kind = "support"
    else:
        xq = yq = np.empty(0)
        kind = "none"
    xs_all = np.concatenate([grid, xq])
    x_all = torch.as_tensor(xs_all, dtype=dtype).reshape(1, -1, 1).expand(steps + 1, -1, -1)
    with torch.no_grad():
        out = model.forward(batched, x_all)[..., 0].double().numpy()
    with np.errstate(over="ignore", invalid="ignore"):
        curves = out[:, : len(grid)]
        mse = ((out[:, len(grid):] - yq[None, :]) ** 2).mean(1) if kind != "none" else None
    return Prediction(grid, curves, mse, kind)


def mlp_for_playground(spec: dict) -> str | None:
    """Why a model cannot be used on the playground (1-D regression curves), or None when it can."""
    if spec.get("kind") != "mlp":
        return (f"it holds a {spec.get('kind')} model, not a regression MLP; the playground needs an MLP "
                "with one input and one output")
    sizes = list(spec.get("sizes", []))
    if len(sizes) < 2 or sizes[0] != 1 or sizes[-1] != 1:
        return (f"its MLP has sizes {'-'.join(map(str, sizes))}; the playground needs one input and "
                "one output")
    return None
