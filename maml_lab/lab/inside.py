"""What the "looking inside" views compute, as plain functions with no Qt: parameter paths on a shared PCA
plane, each task's adaptation steps from a checkpoint, loss landscapes with their overlays, contour lines
and adaptation curves. The views run these on a BackgroundRunner thread.

The training worker hands over a `RunPaths`: per algorithm, the iterations, metrics and flattened theta
snapshots its TrajectoryRecorder kept, with, beside each snapshot, what the algorithm had learned besides theta at
that iteration (Meta-SGD's `lr.*`, MAML++'s `lslr.*` and `bn_step.*`, Reptile's carried `inner_adam.*`: one float32
vector per snapshot, `PathData.learned`), and copies of those tensors at the newest iteration (`learned`). The lists
are copies made on the training thread between two iterations; the arrays themselves are never modified after the
recorder creates them (thinning drops arrays, it does not change them) and are handed over read-only, so nothing is
shared mutably.

Every adaptation these views draw (the Landscape's post-adaptation surface, its task arrows and one-task path, the
Paths view's arrows) is the algorithm's own test-time rule (`RunPaths.adaptation`). The Paths view adapts from each
checkpoint with the learned tensors of that checkpoint (the newest ones only for a path that kept none, such as a
checkpoint written before they were kept); a Landscape surface over theta holds them fixed at their newest values,
at every grid point. An algorithm whose inner loop moves a context instead of theta (CAVIA: `adapts == "context"`)
has its Paths arrows drawn in that context's own coordinates (`TaskArrows.space`), not on the plane of theta.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..core.algorithms.base import LearnedAdaptation
from ..core.algorithms.config import (
    AlgorithmConfig,
    adaptation_config,
    adaptation_text,
    predict,
    test_adapt,
    test_trajectory,
)
from ..core.analysis.landscape import Surface, grid, surface
from ..core.analysis.trajectory import Plane, TensorLayout, pca_plane, random_plane, task_plane, unflatten
from ..core.models.context import CONTEXT
from ..core.tasks.losses import accuracy_per_task, is_classification, loss_function
from ..core.training.trainer import learned_tensors
from .jobs import for_each_request

ARROW_SEED = 4242  # the tasks whose adaptation steps the Paths view draws: the same at every checkpoint
LANDSCAPE_SEED = 2718
FIT_LIMIT = 400  # snapshots per algorithm that the PCA is fitted on (evenly spread; every snapshot is projected)


# -- what the worker hands over ------------------------------------------------------------------------------
@dataclass
class PathData:
    iterations: np.ndarray  # [N] int
    snapshots: list  # N read-only float32 vectors [P]
    metrics: list  # N dicts (pre_loss, post_loss, ...); {} for the initialization
    # N read-only float32 vectors (or None) of what the algorithm learned besides theta at each snapshot, read back by
    # `learned_layout`; empty when the path kept none
    learned: list = field(default_factory=list)
    learned_layout: TensorLayout | None = None

    def __len__(self) -> int:
        return len(self.snapshots)

    def has_learned(self, index: int) -> bool:
        """Whether the path kept the learned tensors of snapshot `index`."""
        n = len(self.learned)
        return self.learned_layout is not None and -n <= index < n and self.learned[index] is not None

    def learned_at(self, index: int) -> "OrderedDict[str, torch.Tensor] | None":
        """The learned tensors of snapshot `index` (fresh CPU tensors), None when the path kept none there."""
        return self.learned_layout.tensors(self.learned[index]) if self.has_learned(index) else None

    def array(self, rows=None) -> np.ndarray:
        rows = range(len(self.snapshots)) if rows is None else rows
        return np.stack([self.snapshots[i] for i in rows])

    def index_at(self, iteration: int) -> int:
        """The last snapshot at or before `iteration` (the first one if none is)."""
        return max(int(np.searchsorted(self.iterations, iteration, side="right")) - 1, 0)


@dataclass
class RunPaths:
    iteration: int
    total: int
    model_spec: dict
    loss: str
    task: str
    shots: int
    queries: int
    paths: "OrderedDict[str, PathData]"
    algorithms: dict  # name -> AlgorithmConfig.to_dict()
    family: object = None  # the training tasks (read-only objects, safe to sample from on any thread)
    eval_family: object = None  # held-out tasks (image sets: held-out classes), for adaptation curves
    # name -> {tensor name: CPU tensor}: what the algorithm learned besides theta (`export_tensors`), copied at
    # `learned_iteration` (an opened run: its latest checkpoint's; none: empty); each path's snapshots have their own
    # (PathData.learned), which the Paths view adapts with
    learned: dict = field(default_factory=dict)
    learned_iteration: int = 0

    @property
    def names(self) -> list[str]:
        return list(self.paths)

    def inner_lr(self, name: str) -> float:
        return float(self.algorithms.get(name, {}).get("inner_lr", 0.01))

    def adaptation(self, name: str, index: int | None = None):
        """How `name` fine-tunes at test time: its AlgorithmConfig, with the tensors it learned (a LearnedAdaptation)
        when the run has them; an SGD step size when the algorithm is not known. With `index`, the learned tensors
        are those of checkpoint `index` of its path (the newest when the path kept none there)."""
        config = self.algorithms.get(name)
        try:
            config = AlgorithmConfig.from_dict({**config, "name": name}) if config else None
        except ValueError:
            config = None
        if config is None:
            return self.inner_lr(name)
        tensors = self._learned_at(name, index)
        if tensors is None:
            tensors = self.learned.get(name)
        return LearnedAdaptation(config, dict(tensors)) if tensors else config

    def _learned_at(self, name: str, index: int | None):
        path = self.paths.get(name)
        return path.learned_at(index) if path is not None and index is not None else None

    def checkpoint_rule(self, name: str, index: int) -> tuple[object, str]:
        """The adaptation from checkpoint `index` of `name`'s path (`adaptation(name, index)`) and, in words, its rule
        and whose learned tensors it uses: that checkpoint's, or the newest ones when the path kept none there."""
        adaptation = self.adaptation(name, index)
        path = self.paths.get(name)
        if path is not None and path.has_learned(index) and isinstance(adaptation, LearnedAdaptation):
            return adaptation, rule_text(adaptation, int(path.iterations[index]), checkpoint=True)
        text = rule_text(adaptation, self.learned_iteration)
        if getattr(adaptation, "tensors", None):
            text += " (the newest: the path kept none per checkpoint)"
        return adaptation, text

    def inner_steps(self, name: str) -> int:
        return max(int(self.algorithms.get(name, {}).get("inner_steps", 1)), 1)

    def test_steps(self, name: str) -> int:
        return max(int(self.algorithms.get(name, {}).get("test_inner_steps", 10)), 1)


def _read_only(a: np.ndarray) -> np.ndarray:
    v = a.view()
    v.flags.writeable = False
    return v


def collect_paths(trainer) -> RunPaths:
    """A RunPaths of a Trainer's recorders. Call it on the training thread, between iterations."""
    paths = OrderedDict()
    for name, rec in trainer.recorders.items():
        learned = [None if v is None else _read_only(v) for v in rec.learned]
        paths[name] = PathData(np.asarray(rec.iterations, dtype=np.int64), [_read_only(s) for s in rec.snapshots],
                               [dict(m) for m in rec.metrics],
                               learned if len(learned) == len(rec.snapshots) else [], rec.learned_layout)
    c = trainer.config
    learned = {}
    for name, run in trainer.runs.items():  # copies (CPU) of the newest learned tensors, as the path keeps them
        tensors = learned_tensors(run.algorithm)
        if tensors:
            learned[name] = dict(tensors)
    return RunPaths(trainer.iteration, c.iterations, trainer.model.spec(), trainer.family.loss, c.task, c.shots,
                    c.queries, paths, {n: r.algorithm.config.to_dict() for n, r in trainer.runs.items()},
                    trainer.family, trainer.validation_family, learned, trainer.iteration)


def build_model_and_like(spec: dict):
    """A model from its spec and a parameter dict of its shapes (for unflatten)."""
    from ..core.models.build import build_model

    model = build_model(spec)
    like = model.init_params(torch.Generator().manual_seed(0))
    return model, like


def fit_rows(n: int, limit: int = FIT_LIMIT) -> np.ndarray:
    """Up to `limit` evenly spread row indices of n, first and last included."""
    if n <= limit:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(int))


def full_batch(adaptation):
    """`adaptation` with every step on the whole support set: Reptile's test-time mini-batches of eval_batch are drawn
    per (grid point, task), so on a landscape neighbouring points would see different data (its rule otherwise
    unchanged: its inner optimizer and carried moments). Other rules are returned as they are."""
    from ..core.algorithms.registry import algorithm_class

    config = adaptation_config(adaptation)
    if config is None or "eval_batch" not in algorithm_class(config.name).option_defaults:
        return adaptation
    if not config.option("eval_batch"):
        return adaptation
    config = replace(config, options={**config.options, "eval_batch": 0})
    return LearnedAdaptation(config, adaptation.tensors) if isinstance(adaptation, LearnedAdaptation) else config


def rule_text(adaptation, learned_iteration: int | None = None, checkpoint: bool = False) -> str:
    """How a view adapts an initialization, in words: the algorithm's test-time rule (`adaptation_text`), and which
    learned tensors it holds fixed, from which iteration ('learned per-parameter step sizes (Meta-SGD), lr.* held
    fixed at their iteration-1,000 values'); checkpoint=True: they are those of the checkpoint adapted from
    ('..., lr.* as learned by this checkpoint (iteration 200)')."""
    import re

    text = adaptation_text(adaptation)
    tensors = getattr(adaptation, "tensors", None) or {}
    if not tensors:
        return text
    text = re.sub(r"; SGD at inner lr [^;)]* without them", "", text)  # they are at hand
    groups = ", ".join(sorted({k.split(".")[0] + ".*" for k in tensors}))
    if checkpoint and learned_iteration is not None:
        return f"{text}, {groups} as learned by this checkpoint (iteration {learned_iteration:,})"
    when = f"their iteration-{learned_iteration:,} values" if learned_iteration is not None else "their trained values"
    return f"{text}, {groups} held fixed at {when}"


# -- parameter paths -----------------------------------------------------------------------------------------
@dataclass
class ProjectedPaths:
    plane: Plane
    coords: "OrderedDict[str, np.ndarray]"  # name -> [N, 2]
    iterations: "OrderedDict[str, np.ndarray]"
    metrics: "OrderedDict[str, list]"
    origin_label: str


def project_paths(run: RunPaths, origin: str = "init", reference: str | None = None) -> ProjectedPaths:
    """Every algorithm's path on one PCA plane of theta_t - origin.

    origin: "init" (the shared initialization: every path starts at (0, 0)) or "final" (the last theta of
    `reference`, as in Li et al. 2018: that path ends at (0, 0)).
    """
    names = [n for n in run.names if len(run.paths[n])]
    if not names:
        raise ValueError("no parameter path recorded yet")
    reference = reference if reference in names else names[0]
    if origin == "final":
        center = np.asarray(run.paths[reference].snapshots[-1], np.float64)
        label = f"final θ of {reference}"
    else:
        center = np.asarray(run.paths[reference].snapshots[0], np.float64)
        label = "shared initialization"
    fit = [run.paths[n].array(fit_rows(len(run.paths[n]))) for n in names]
    plane = pca_plane(fit, center)
    coords = OrderedDict((n, plane.project(run.paths[n].array())) for n in names)
    return ProjectedPaths(plane, coords, OrderedDict((n, run.paths[n].iterations) for n in names),
                          OrderedDict((n, run.paths[n].metrics) for n in names), label)


@dataclass
class TaskArrows:
    start: np.ndarray  # [2]: the checkpoint on the plane
    steps: list  # per task: [k + 1, 2], the inner-loop path theta -> theta'_i
    optimum: list  # per task: [M + 1, 2], a long fine-tuning path (empty without it)
    losses: np.ndarray | None = None  # [tasks, k + 1] query loss along the adaptation
    iteration: int = 0
    algorithm: str = ""
    rule: str = ""  # how the tasks adapted, in words (rule_text)
    # "theta": the points are on the plane of theta; "context": in the context's own coordinates (CAVIA: each task's
    # context from 0, its two parameters as they are, or a PCA plane of more), `labels` naming the axes
    space: str = "theta"
    labels: tuple[str, str] = ("", "")


def sample_tasks(family, num_tasks: int, shots: int, queries: int, seed: int):
    return family.sample(num_tasks, shots, queries, torch.Generator().manual_seed(seed))


def adaptation_points(model, loss: str, theta, batch, steps: int, adaptation, plane: Plane | None = None,
                      cancel: threading.Event | None = None, space: str = "theta") -> tuple[np.ndarray, np.ndarray]:
    """Every task's parameters along `steps` test-time steps from theta (`adaptation`: the algorithm's config, so
    each adapts by its own rule, or an SGD step size): flattened [tasks, steps + 1, P], or with `plane` their
    projections [tasks, steps + 1, 2] (a long fine-tuning of a big model never holds every step in memory); and
    each step's query loss [tasks, steps + 1]. Stops early (raising Cancelled) when `cancel` is set, so a long
    fine-tuning never holds up a newer request. space "theta": the points are theta's entries (a context the rule
    adapts besides is left out: theta stays where it is); "context": the adapted context vector [tasks, steps + 1, k]
    (CAVIA), no plane."""
    from .jobs import Cancelled

    loss_fn = loss_function(loss)
    points, losses = [], []
    if getattr(batch, "sampled", False):  # data sampled from the adapted parameters (RL): SGD at the inner lr
        from ..core.algorithms.config import adaptation_config
        from ..core.rl.objective import objective_trajectory

        config = adaptation_config(adaptation)
        steps_taken = objective_trajectory(model, batch, theta, steps, config.inner_lr if config else float(adaptation))
    else:
        steps_taken = ((p, None) for p in test_trajectory(adaptation, model, loss_fn, theta, batch.x_support,
                                                           batch.y_support, steps))
    for p, cost in steps_taken:
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        if space == "context":
            flat = p[CONTEXT].detach().double().reshape(p[CONTEXT].shape[0], -1).numpy()
        else:
            flat = torch.cat([p[k].detach().reshape(p[k].shape[0], -1).double() for k in theta], 1).numpy()
        points.append(flat if plane is None else plane.project(flat))
        if cost is not None:
            losses.append(cost.double().numpy())
            continue
        with torch.no_grad():
            pred = predict(adaptation, model, p, batch.x_support, batch.y_support, batch.x_query)
            losses.append(loss_fn(pred, batch.y_query).double().numpy())
    return np.stack(points, 1), np.stack(losses, 1)


def task_arrows(run: RunPaths, plane: Plane, name: str, index: int, num_tasks: int = 5,
                optimum_steps: int = 0, cancel: threading.Event | None = None) -> TaskArrows:
    """The adaptation steps (the algorithm's own inner steps and test-time rule, with its learned tensors as they were
    at that checkpoint: `RunPaths.checkpoint_rule`) of `num_tasks` fixed tasks from the checkpoint `index` of
    `name`'s path, projected on `plane`; with optimum_steps, also a long fine-tuning by the same rule."""
    model, like = build_model_and_like(run.model_spec)
    path = run.paths[name]
    flat = np.asarray(path.snapshots[index], np.float64)
    theta = unflatten(flat, like)
    start = plane.project(flat[None])[0]
    adaptation, rule = run.checkpoint_rule(name, index)
    out = TaskArrows(start, [], [], None, int(path.iterations[index]), name, rule)
    if num_tasks < 1 or run.family is None:
        return out
    if adapts_context(adaptation):
        return _context_arrows(out, model, run, theta, adaptation, num_tasks, optimum_steps, cancel)
    batch = sample_tasks(run.family, num_tasks, run.shots, run.queries, ARROW_SEED)
    points, losses = adaptation_points(model, run.loss, theta, batch, run.inner_steps(name), adaptation, plane,
                                       cancel)
    out.losses = losses
    out.steps = list(points)
    optimum_losses = []
    if optimum_steps > 0:
        points, optimum_losses = adaptation_points(model, run.loss, theta, batch, optimum_steps, adaptation, plane,
                                                   cancel)
        out.optimum = list(points)
    for s in out.steps + out.optimum:  # every path starts exactly at the checkpoint
        s[0] = start
    out.steps = [_until_diverged(s) for s in out.steps]
    # a rule fit for a few steps can diverge over many (Meta-SGD's and MAML++'s learned rates, trained for one or a
    # few): the long fine-tuning is drawn up to where its query loss leaves DIVERGED times its starting value
    out.optimum = [_until_diverged(s, loss) for s, loss in zip(out.optimum, optimum_losses)]
    return out


def adapts_context(adaptation) -> bool:
    """Whether the rule's inner loop moves a context vector instead of theta (CAVIA)."""
    from ..core.algorithms.registry import ALGORITHMS

    config = adaptation_config(adaptation)
    return config is not None and config.name in ALGORITHMS and ALGORITHMS.get(config.name).adapts == "context"


def _context_arrows(out: TaskArrows, model, run: RunPaths, theta, adaptation, num_tasks: int, optimum_steps: int,
                    cancel) -> TaskArrows:
    """`task_arrows` for a rule that adapts a context: each task's context path from 0 in the context's own
    coordinates (two parameters as they are; one against 0; more on the PCA plane of every point drawn)."""
    batch = sample_tasks(run.family, num_tasks, run.shots, run.queries, ARROW_SEED)
    steps, losses = adaptation_points(model, run.loss, theta, batch, run.inner_steps(out.algorithm), adaptation,
                                      cancel=cancel, space="context")
    optimum, optimum_losses = np.empty((0, 0, steps.shape[-1])), []
    if optimum_steps > 0:
        optimum, optimum_losses = adaptation_points(model, run.loss, theta, batch, optimum_steps, adaptation,
                                                    cancel=cancel, space="context")
    project, out.labels = context_plane(np.concatenate([steps.reshape(-1, steps.shape[-1]),
                                                        optimum.reshape(-1, steps.shape[-1])]))
    out.space, out.start, out.losses = "context", np.zeros(2), losses
    out.steps = [_until_diverged(project(s)) for s in steps]
    out.optimum = [_until_diverged(project(s), loss) for s, loss in zip(optimum, optimum_losses)]
    return out


def context_plane(points: np.ndarray):
    """(project, axis labels) for context vectors [N, k]: two parameters are their own plane; one is drawn against
    0; more are projected on the PCA plane of `points` about 0 (the context every task starts from)."""
    k = points.shape[-1]
    if k == 2:
        return (lambda p: np.asarray(p, np.float64)), ("context parameter 1", "context parameter 2")
    if k == 1:
        return (lambda p: np.concatenate([p, np.zeros_like(p)], -1)), ("context parameter", "")
    finite = points[np.isfinite(points).all(1)]
    try:
        plane = pca_plane([finite], np.zeros(k))
    except ValueError:  # the contexts did not move: the first two parameters
        return (lambda p: np.asarray(p, np.float64)[..., :2]), ("context parameter 1", "context parameter 2")
    first, second = plane.axis_labels()
    return plane.project, (f"context {first} of {k} parameters", f"context {second}")


DIVERGED = 10.0  # a fine-tuning path is cut where its query loss exceeds this many times the loss it started at


def _until_diverged(points: np.ndarray, losses: np.ndarray | None = None) -> np.ndarray:
    """The rows of `points` [steps + 1, 2] before the first non-finite one, or before the first step whose loss is
    not finite or above DIVERGED times the first loss; at least the first row."""
    bad = ~np.isfinite(points).all(axis=1)
    if losses is not None:
        losses = np.asarray(losses, np.float64)
        with np.errstate(invalid="ignore"):
            bad |= ~np.isfinite(losses) | (losses > DIVERGED * max(float(losses[0]), 1e-12))
    bad[0] = False
    return points[:int(np.argmax(bad))] if bad.any() else points


# -- loss landscapes -----------------------------------------------------------------------------------------
PLANES = ("pca", "random", "tasks")
PLANE_LABELS = {"pca": "Parameter path (PCA)", "random": "Random directions (filter-normalized)",
                "tasks": "θ and two tasks' adapted parameters"}


@dataclass
class LandscapeRequest:
    run: RunPaths
    center: str  # the algorithm whose current theta is the centre
    plane: str = "pca"
    mode: str = "compare"  # "compare": pre and post side by side; "task": one task and its adaptation
    resolution: int = 51
    tasks: int = 25
    inner_steps: int = 1
    zoom: float = 1.0
    task_index: int = 0
    task_steps: int = 10  # live adaptation: steps of the task's path
    seed: int = 0  # random plane


@dataclass
class LandscapeResult:
    request: LandscapeRequest
    plane: Plane
    extent: tuple[float, float, float, float]
    surfaces: "OrderedDict[str, Surface]"
    path: np.ndarray  # the centre algorithm's path [N, 2]
    path_iterations: np.ndarray
    markers: dict  # name -> [2]: each algorithm's current theta
    arrows: list  # per task: [k + 1, 2] (compare mode)
    task_path: np.ndarray | None = None  # [steps + 1, 2] (task mode)
    task_losses: np.ndarray | None = None  # [steps + 1] query loss along it
    task_accuracy: np.ndarray | None = None
    prediction: dict | None = None  # sinusoid: x, curves [steps + 1, G], support x/y, truth y
    labels: tuple[str, str] = ("direction 1", "direction 2")
    iteration: int = 0
    rule: str = ""  # how the post surface, the arrows and the task path adapt (rule_text)


def _extent_around(points: np.ndarray, zoom: float) -> tuple[float, float, float, float]:
    """A box around `points` [N, 2] and the origin, 25% wider on each side, scaled by 1 / zoom."""
    pts = np.vstack([points, np.zeros((1, 2))])
    lo, hi = pts.min(0), pts.max(0)
    span = np.maximum(hi - lo, 1e-12)
    span = np.maximum(span, 0.15 * span.max())  # a path along PC1 alone still gets some PC2 range
    mid = 0.5 * (lo + hi)
    half = 0.5 * span * 1.5 / zoom
    return float(mid[0] - half[0]), float(mid[0] + half[0]), float(mid[1] - half[1]), float(mid[1] + half[1])


def compute_landscape(req: LandscapeRequest, progress=None, cancel: threading.Event | None = None
                      ) -> LandscapeResult:
    run = req.run
    model, like = build_model_and_like(run.model_spec)
    name = req.center if req.center in run.paths else run.names[0]
    path = run.paths[name]
    theta_flat = np.asarray(path.snapshots[-1], np.float64)
    theta = unflatten(theta_flat, like)
    # the algorithm's own test-time rule (ANIL's head, BOIL's body, Meta-SGD's and MAML++'s learned rates, Reptile's
    # inner optimizer), its learned tensors held at the run's newest values, every step on the whole support set
    rule = full_batch(run.adaptation(name))
    k = max(int(req.inner_steps), 1)
    batch = sample_tasks(run.family, max(req.tasks, 2 if req.plane == "tasks" else 1), run.shots, run.queries,
                         LANDSCAPE_SEED)
    task_mode = req.mode == "task"
    index = min(max(req.task_index, 0), batch.num_tasks - 1)
    if req.plane == "pca":
        plane = pca_plane([path.array(fit_rows(len(path)))], theta_flat)
    elif req.plane == "random":
        plane = random_plane(theta, seed=req.seed)
    elif req.plane == "tasks":
        if adapts_context(rule):
            from ..core.algorithms.registry import algorithm_label

            raise ValueError(f"{algorithm_label(name)}'s adaptation moves its context, not θ: both tasks' adapted "
                             "θ' are θ, so there is no plane through them (the Paths view draws the context's own "
                             "plane)")
        # task A: the task shown (one-task mode: adapted for its whole path, which then ends at (1, 0)); task B:
        # the next one. Before vs after: tasks 1 and 2, adapted k steps, as in training.
        pair = [index, (index + 1) % batch.num_tasks] if task_mode else [0, 1]
        steps = req.task_steps if task_mode else k
        adapted = test_adapt(rule, model, loss_function(run.loss), theta, batch.x_support[pair],
                             batch.y_support[pair], steps)
        phi = [OrderedDict((key, adapted[key][i].detach()) for key in theta) for i in range(2)]
        plane = task_plane(theta, phi[0], phi[1])
    else:
        raise ValueError(f"unknown plane {req.plane!r} (one of {', '.join(PLANES)})")
    path_xy = plane.project(path.array())
    markers = {n: plane.project(np.asarray(p.snapshots[-1], np.float64)[None])[0]
               for n, p in run.paths.items() if len(p)}
    result = LandscapeResult(req, plane, (0.0, 0.0, 0.0, 0.0), OrderedDict(), path_xy, path.iterations, markers,
                             [], labels=_plane_labels(req.plane, plane), iteration=int(path.iterations[-1]),
                             rule=rule_text(rule, run.learned_iteration))
    if task_mode:
        one = batch.task(index)
        pts, losses = adaptation_points(model, run.loss, theta, one, req.task_steps, rule, plane, cancel)
        result.task_path = pts[0]
        result.task_losses = losses[0]
        result.prediction = _predictions(model, run, theta, one, req.task_steps, rule)
        if run.loss in ("cross_entropy", "cross_entropy_sum"):
            result.task_accuracy = _accuracies(model, run, theta, one, req.task_steps, rule)
        # the slice the task sees: around its adaptation path (on the tasks plane, with the other task too)
        around = result.task_path if req.plane != "tasks" else np.vstack([result.task_path, [[0.0, 1.0]]])
        extent = _extent_around(around, req.zoom)
    elif req.plane == "pca":
        extent = _extent_around(path_xy, req.zoom)
    elif req.plane == "tasks":
        e = 1.5 / req.zoom
        extent = (0.5 - e, 0.5 + e, 0.5 - e, 0.5 + e)  # theta at (0, 0), the two tasks at (1, 0) and (0, 1)
    else:
        e = 1.0 / req.zoom
        extent = (-e, e, -e, e)
    result.extent = extent
    alphas, betas = grid(extent, req.resolution)
    kinds = ["task"] if task_mode else ["pre", "post"]
    points = len(alphas) * len(betas)
    for i, kind in enumerate(kinds):
        def part(done, total, i=i):
            if progress is not None:
                progress(i * points + done, len(kinds) * points)

        result.surfaces[kind] = surface(model, run.loss, like, plane, batch, alphas, betas, kind=kind,
                                        inner_steps=k, task_index=index, progress=part, cancel=cancel,
                                        adaptation=rule)
        result.surfaces[kind].meta.update(center=name, iteration=int(path.iterations[-1]),
                                          plane_origin=plane.origin, plane_d1=plane.d1, plane_d2=plane.d2)
    if not task_mode:
        arrows = min(5, batch.num_tasks)
        pts, _ = adaptation_points(model, run.loss, theta, _first(batch, arrows), k, rule, plane, cancel)
        result.arrows = list(pts)
    return result


def _plane_labels(kind: str, plane: Plane) -> tuple[str, str]:
    if kind == "pca":
        return plane.axis_labels()
    if kind == "tasks":
        return ("toward task A's adapted θ'", "toward task B's adapted θ'")
    return ("random direction 1 (filter-normalized)", "random direction 2 (filter-normalized)")


def _first(batch, n: int):
    from ..core.tasks.base import TaskBatch

    info = {k: v[:n] if isinstance(v, torch.Tensor) else v for k, v in batch.info.items()}
    return TaskBatch(batch.x_support[:n], batch.y_support[:n], batch.x_query[:n], batch.y_query[:n], info)


def _predictions(model, run: RunPaths, theta, task, steps: int, rule) -> dict | None:
    """A one-input regression task: the prediction on a dense x grid after 0..steps inner steps by `rule`."""
    if run.loss != "mse" or task.x_support.shape[-1] != 1:
        return None
    path = list(test_trajectory(rule, model, loss_function(run.loss), theta, task.x_support, task.y_support, steps))
    batched = OrderedDict((k, torch.cat([p[k] for p in path], 0)) for k in path[0])  # a context (CAVIA) too
    lo, hi = getattr(run.family, "x_range", (-5.0, 5.0))
    xs = np.linspace(lo, hi, 241)
    x = torch.as_tensor(xs, dtype=next(iter(theta.values())).dtype).reshape(1, -1, 1).expand(steps + 1, -1, -1)
    with torch.no_grad():
        curves = model.forward(batched, x)[..., 0].double().numpy()
    truth = None
    if "amplitude" in task.info and "phase" in task.info:
        a, ph = float(task.info["amplitude"][0]), float(task.info["phase"][0])
        truth = a * np.sin(xs - ph)
    return {"x": xs, "curves": curves, "truth": truth, "support_x": task.x_support[0, :, 0].double().numpy(),
            "support_y": task.y_support[0, :, 0].double().numpy()}


def _accuracies(model, run: RunPaths, theta, task, steps: int, rule) -> np.ndarray:
    out = []
    for p in test_trajectory(rule, model, loss_function(run.loss), theta, task.x_support, task.y_support, steps):
        with torch.no_grad():
            pred = predict(rule, model, p, task.x_support, task.y_support, task.x_query)
            out.append(float(accuracy_per_task(pred, task.y_query)[0]))
    return np.asarray(out)


def contour_levels(lo: float, hi: float, count: int = 12) -> np.ndarray:
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return np.empty(0)
    return np.linspace(lo, hi, count + 2)[1:-1]


# -- adaptation curves ---------------------------------------------------------------------------------------
@dataclass
class CurveRequest:
    key: str
    label: str
    algorithm: str
    model: object
    params: "OrderedDict[str, torch.Tensor]"
    adaptation: object  # AlgorithmConfig (the algorithm's own test-time rule) or an SGD step size


@dataclass
class CurveSet:
    curves: "OrderedDict[str, object]" = field(default_factory=OrderedDict)  # key -> AdaptationCurve
    labels: dict = field(default_factory=dict)
    algorithms: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)
    shots: int = 0
    steps: int = 0
    num_tasks: int = 0
    classification: bool = False
    references: dict = field(default_factory=dict)  # label -> AdaptationCurve (the family's reference_curves)
    batch_norm: str | None = None  # the predictions' batch-norm mode (None: each algorithm's own)


def compute_curves(requests: list[CurveRequest], family, shots: int, steps: int, num_tasks: int, queries: int,
                   progress=None, cancel: threading.Event | None = None, batch_norm: str | None = None) -> CurveSet:
    """core.evaluation.adaptation_curve for each initialization on the same held-out tasks (same seed); batch_norm:
    the predictions' batch-norm mode for models with batch norm (core/models/batch_norm.py; None: each one's own)."""
    from ..core.analysis.evaluation import adaptation_curve
    from ..core.models.batch_norm import has_batch_norm

    out = CurveSet(shots=shots, steps=steps, num_tasks=num_tasks,
                   classification=is_classification(family.loss), batch_norm=batch_norm)

    def compute(r):
        dtype = next(iter(r.params.values())).dtype
        return adaptation_curve(r.model, family, r.params, shots, steps, r.adaptation, num_tasks, queries=queries,
                                dtype=dtype, chunk=min(num_tasks, 200),
                                batch_norm=batch_norm if has_batch_norm(r.model) else None)

    for_each_request(requests, compute, out, out.curves, progress, cancel)
    kind = _family_kind(family)
    if kind is not None and out.curves and not (cancel is not None and cancel.is_set()):
        first = next(r for r in requests if r.key in out.curves)
        try:
            out.references = kind.reference_curves(family, first.model, shots, steps, first.adaptation, num_tasks,
                                                   queries, dtype=next(iter(first.params.values())).dtype)
        except (ValueError, RuntimeError) as exc:
            out.errors["references"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return out


def _family_kind(family):
    """The registry entry of a built family (None for families the registry does not know)."""
    from ..core.tasks.registry import task_family

    try:
        return task_family(getattr(family, "name", ""))
    except ValueError:
        return None
