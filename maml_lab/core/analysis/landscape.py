"""Loss landscapes on a 2D plane of parameter space, batched over grid points and tasks.

Each grid point is a parameter set theta + a d1 + b d2. A chunk of grid points times the tasks of a
batch becomes one batch of per-(point, task) parameters, so the whole grid runs through the same
vectorized forward and adaptation code as meta-training, with no Python loop over points or tasks.

Surfaces:
- "pre": the loss before adaptation, averaged over tasks (what the pretrained baseline minimizes);
- "post": the query loss after k inner steps started from each point (MAML's meta-objective), each step taken by
  the algorithm's own test-time rule (`adaptation`: Meta-SGD's learned per-parameter rates, MAML++'s per-step rates
  and batch-norm rows, ANIL's head only, Reptile's inner optimizer...). The surface is over theta: whatever else the
  rule learned is held at the values it is given, the same at every grid point;
- "task": one task's loss, to draw with that task's adaptation path.

A rule that is plain SGD at one step size (MAML, FOMAML, the pretrained baseline, ANIL and BOIL on their subset, or a
bare step size) takes the fast paths: one step on a ReLU/tanh MLP with the MSE loss never forms the adapted weights
(the rank-K form below); any other rule runs the algorithm's `test_trajectory`, batched over every (point, task).
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..algorithms.adaptation import adapt
from ..algorithms.base import MetaAlgorithm
from ..algorithms.config import adaptation_config, predict, test_adapt, test_trajectory
from ..algorithms.registry import algorithm_class
from ..export import atomic_write_bytes
from ..tasks.losses import loss_function
from .trajectory import Plane

KINDS = ("pre", "post", "task")


class LandscapeCancelled(Exception):
    """Raised when a surface computation is cancelled."""


@dataclass
class Surface:
    alphas: np.ndarray
    betas: np.ndarray
    values: np.ndarray  # [len(betas), len(alphas)]: row j is b = betas[j]
    kind: str
    meta: dict = field(default_factory=dict)

    def save_npz(self, path) -> None:
        buf = io.BytesIO()
        np.savez(buf, alphas=self.alphas, betas=self.betas, values=self.values, kind=self.kind,
                 **{f"meta_{k}": np.asarray(v) for k, v in self.meta.items()})
        atomic_write_bytes(path, buf.getvalue())


def grid(extent: float | tuple[float, float, float, float], resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates of a resolution x resolution grid over [a0, a1] x [b0, b1] (or +-extent)."""
    if not 2 <= resolution <= 401:
        raise ValueError(f"grid resolution must be between 2 and 401, got {resolution}")
    a0, a1, b0, b1 = (-extent, extent, -extent, extent) if np.isscalar(extent) else extent
    return np.linspace(a0, a1, resolution), np.linspace(b0, b1, resolution)


def _point_params(plane: Plane, like, coords: np.ndarray, device, dtype, repeat: int):
    """Per-(point, task) parameters [C * repeat, ...] for the points `coords` [C, 2]."""
    origin = torch.as_tensor(plane.origin, dtype=dtype, device=device)
    d = torch.as_tensor(np.stack([plane.d1, plane.d2]), dtype=dtype, device=device)  # [2, P]
    c = torch.as_tensor(coords, dtype=dtype, device=device)  # [C, 2]
    flat = torch.addmm(origin, c, d)  # [C, P]
    if repeat > 1:
        flat = flat.repeat_interleave(repeat, dim=0)
    out, start = {}, 0
    for k, v in like.items():
        n = v.numel()
        out[k] = flat[:, start:start + n].reshape(flat.shape[0], *v.shape)
        start += n
    return out


def sgd_rule(adaptation, model, params) -> "tuple[float, tuple[str, ...] | None] | None":
    """(step size, adapted names or None for all) when `adaptation` fine-tunes by plain SGD at one step size and
    predicts with one forward pass (a number; an algorithm that keeps MetaAlgorithm's test_trajectory and has no
    `predict` or `inner_loss` of its own), else None: the rule is the algorithm's own (learned rates, another
    optimizer, another inner objective...)."""
    config = adaptation_config(adaptation)
    if config is None:
        return float(adaptation), None
    cls = algorithm_class(config.name)
    own = getattr(cls.test_trajectory, "__func__", None) is not MetaAlgorithm.test_trajectory.__func__
    if own or getattr(cls, "predict", None) is not None or cls.own_inner_loss():
        return None
    return float(config.inner_lr), cls.adapted_names(model, params)


def _tile(t: torch.Tensor, times: int) -> torch.Tensor:
    return t.repeat(times, *([1] * (t.dim() - 1)))


def _one_step_mlp_supported(model, loss: str, kind: str, inner_steps: int) -> bool:
    from ..models.mlp import MLP

    return (kind == "post" and inner_steps == 1 and loss == "mse" and isinstance(model, MLP)
            and model.activation in ("relu", "tanh"))


def _one_step_mlp_query_losses(model, params, batch, lr: float) -> torch.Tensor:
    """Query loss after one inner SGD step for every (grid point, task): [G, T], without forming phi.

    One SGD step changes a dense layer by a rank-K matrix, lr * delta^T a (K support points), so the
    adapted layer's output on the queries is h W^T + b - lr * ((h a^T) delta + sum_k delta). Each grid
    point's theta is shared by all its tasks, so nothing of size [points x tasks x weights] is ever built.
    """
    first = next(iter(params.values()))
    g = first.shape[0]
    t, k, q = batch.num_tasks, batch.x_support.shape[1], batch.x_query.shape[1]
    act = torch.relu_ if model.activation == "relu" else torch.tanh_  # in place: fewer allocations
    last = model.num_layers - 1
    weights = [(params[f"{2 * i}.weight"], params[f"{2 * i}.bias"]) for i in range(model.num_layers)]
    a = batch.x_support.reshape(1, t * k, -1).expand(g, -1, -1)
    acts = []
    for i, (w, b) in enumerate(weights):
        acts.append(a)
        z = torch.baddbmm(b.unsqueeze(1), a, w.transpose(1, 2))
        a = z if i == last else act(z)
    out_dim = a.shape[-1]
    delta = (a - batch.y_support.reshape(1, t * k, -1)) * (2.0 / (k * out_dim))
    deltas = [None] * model.num_layers
    for i in reversed(range(model.num_layers)):
        deltas[i] = delta
        if i > 0:
            delta = torch.bmm(delta, weights[i][0])
            delta = (torch.ops.aten.threshold_backward(delta, acts[i], 0.0) if model.activation == "relu"
                     else delta * (1 - acts[i] * acts[i]))
    h = batch.x_query.reshape(1, t * q, -1).expand(g, -1, -1)
    for i, (w, b) in enumerate(weights):
        d_s = deltas[i].reshape(g * t, k, -1)
        # z = h W^T + b, then in place: z -= lr * (h a^T) delta and z -= lr * sum_k delta (rank-K update)
        z = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2)).view(g * t, q, -1)
        z.baddbmm_(torch.bmm(h.reshape(g * t, q, -1), acts[i].reshape(g * t, k, -1).transpose(1, 2)), d_s,
                   alpha=-lr)
        z.sub_(d_s.sum(1, keepdim=True), alpha=lr)
        z = z.view(g, t * q, -1)
        h = z if i == last else act(z)
    err = (h - batch.y_query.reshape(1, t * q, -1)).reshape(g, t, q * out_dim)
    return err.pow(2).mean(2)


def surface(model, loss: str, like, plane: Plane, batch, alphas, betas, kind: str = "post",
            inner_steps: int = 1, inner_lr: float = 0.01, task_index: int = 0, chunk_floats: int = 8_000_000,
            progress: Callable[[int, int], None] | None = None, cancel: threading.Event | None = None,
            names=None, adaptation=None) -> Surface:
    """The loss surface over the grid `alphas` x `betas` on `plane` (see the module doc for `kind`). names: the
    parameters the inner loop adapts (ANIL: the head, BOIL: the body; None: all). adaptation: the test-time rule
    ("post"; an AlgorithmConfig, a LearnedAdaptation with its learned tensors, or a step size), which then
    replaces inner_lr and names; None: SGD at inner_lr on `names`."""
    if kind not in KINDS:
        raise ValueError(f"unknown surface kind {kind!r} (one of {', '.join(KINDS)})")
    rule = None  # the algorithm's own rule (not plain SGD): its test_trajectory
    if adaptation is not None and kind == "post":
        sgd = sgd_rule(adaptation, model, like)
        if sgd is None:
            rule = adaptation
        else:
            inner_lr, names = sgd
    if kind == "task":
        batch = batch.task(task_index)
    loss_fn = loss_function(loss)
    first = next(iter(like.values()))
    device, dtype = batch.x_support.device, first.dtype
    num_params = sum(v.numel() for v in like.values())
    tasks = batch.num_tasks
    aa, bb = np.meshgrid(np.asarray(alphas, np.float64), np.asarray(betas, np.float64))
    coords = np.stack([aa.ravel(), bb.ravel()], axis=1)
    low_rank = rule is None and names is None and _one_step_mlp_supported(model, loss, kind, inner_steps)
    if low_rank:  # activations, not weights, are what grows with the chunk
        width = max(model.sizes)
        shots = batch.x_support.shape[1] + batch.x_query.shape[1]
        per_point = max(num_params, tasks * shots * width * 2 * model.num_layers)
    else:
        per_point = tasks * num_params
    per_chunk = max(1, min(len(coords), chunk_floats // max(per_point, 1)))
    x_pre, y_pre = batch.joint()
    values = np.empty(len(coords))
    for start in range(0, len(coords), per_chunk):
        if cancel is not None and cancel.is_set():
            raise LandscapeCancelled("landscape computation cancelled")
        part = coords[start:start + per_chunk]
        n = len(part)
        params = _point_params(plane, like, part, device, dtype, 1 if low_rank else tasks)
        with torch.no_grad():
            if low_rank:
                task_losses = _one_step_mlp_query_losses(model, params, batch, inner_lr)
            elif kind == "post" and rule is not None:
                xs = _tile(batch.x_support, n)
                adapted = test_adapt(rule, model, loss_fn, params, xs, _tile(batch.y_support, n), inner_steps,
                                     batched=True)
                task_losses = loss_fn(predict(rule, model, adapted, xs, _tile(batch.y_support, n),
                                              _tile(batch.x_query, n)),
                                      _tile(batch.y_query, n))
            elif kind == "post":
                xs, ys = _tile(batch.x_support, n), _tile(batch.y_support, n)
                adapted = adapt(model, loss_fn, params, xs, ys, inner_steps, inner_lr, batched=True,
                                names=names).params
                task_losses = loss_fn(model.forward(adapted, _tile(batch.x_query, n)), _tile(batch.y_query, n))
            else:
                task_losses = loss_fn(model.forward(params, _tile(x_pre, n)), _tile(y_pre, n))
        values[start:start + n] = task_losses.view(n, tasks).mean(1).double().cpu().numpy()
        if progress is not None:
            progress(min(start + n, len(coords)), len(coords))
    meta = {"inner_steps": inner_steps, "inner_lr": inner_lr, "tasks": tasks, "plane": plane.kind,
            "rule": "sgd" if rule is None else adaptation_config(rule).name}
    return Surface(np.asarray(alphas), np.asarray(betas), values.reshape(len(betas), len(alphas)), kind, meta)


def adaptation_path(model, loss: str, params, batch, steps: int, inner_lr: float, plane: Plane,
                    task_index: int = 0, adaptation=None) -> np.ndarray:
    """One task's inner-loop path theta -> phi_1 -> ... -> phi_steps, projected on `plane`: [steps + 1, 2].
    adaptation: the test-time rule (see `surface`); None: SGD at inner_lr."""
    from .trajectory import flatten

    task = batch.task(task_index)
    theta = {k: v.detach() for k, v in params.items()}
    rule = inner_lr if adaptation is None else adaptation
    steps_taken = test_trajectory(rule, model, loss_function(loss), theta, task.x_support, task.y_support, steps)
    points = np.stack([flatten({k: p[k][0] for k in theta}) for p in steps_taken])  # theta's entries (no context)
    return plane.project(points)
