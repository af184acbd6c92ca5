"""The per-layer view of adaptation, as plain functions (no Qt): for an initialization and a set of tasks, how far
each layer moves in the inner loop and how much each layer's representation changes (Raghu et al. 2020, "Rapid
learning or feature reuse?").

Per layer l (the model's `layer_groups`: an MLP's linear layers, conv-4's blocks and head) and inner step s:

* relative change  ||theta_l^(s) - theta_l^(0)|| / ||theta_l^(0)||  (all of the layer's tensors as one vector), the
  mean over tasks;
* linear CKA (Kornblith et al. 2019) between the layer's activations on the task's query inputs before adaptation
  and after s steps: with centred activation matrices X, Y [examples, features],
  CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F), computed from the examples' Gram matrices; 1 means the
  representation is the same up to an orthogonal transform and a scale (feature reuse), lower means it changed.
  The mean over tasks (a layer whose activations are constant on a task has no CKA there: NaN, left out).

`rule` chooses how the inner loop adapts: "own" (the initialization's own test-time rule: MAML's SGD, ANIL's head
only, Meta-SGD's learned rates, ...) or, to test the feature-reuse claim on any initialization, SGD with its
inner learning rate on the head only ("head"), on the body only ("body") or on every layer ("all").
"""

from __future__ import annotations

import csv
import io
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.algorithms.adaptation import adapted_subset, sgd_trajectory
from ..core.algorithms.config import adaptation_config, test_trajectory
from ..core.analysis.evaluation import mean_ci95
from ..core.tasks.losses import loss_function
from .inside import rule_text
from .jobs import for_each_request

RULES = ("own", "head", "body", "all")
RULE_LABELS = {"own": "its own rule", "head": "head only", "body": "body only", "all": "every layer"}
SEED = 31415  # the tasks every initialization is measured on


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear CKA of activations x [..., N, p] and y [..., N, q] over their N examples (batched over leading
    dimensions), in float64; NaN where either is constant over the examples."""
    if x.dim() < 2 or y.dim() < 2 or x.shape[-2] != y.shape[-2]:
        raise ValueError(f"CKA needs activations of the same examples, got {tuple(x.shape)} and {tuple(y.shape)}")
    x, y = x.to(torch.float64), y.to(torch.float64)
    x = x - x.mean(-2, keepdim=True)
    y = y - y.mean(-2, keepdim=True)
    k = x @ x.transpose(-1, -2)  # Gram matrices [.., N, N]: cheaper than feature covariances for wide layers
    g = y @ y.transpose(-1, -2)
    hsic = (k * g).sum((-1, -2))
    norm = torch.sqrt((k * k).sum((-1, -2)) * (g * g).sum((-1, -2)))
    scale = torch.maximum((k * k).sum((-1, -2)), (g * g).sum((-1, -2))).clamp_min(1e-300)
    degenerate = norm <= 1e-24 * scale
    return torch.where(degenerate, torch.full_like(hsic, float("nan")), hsic / norm.clamp_min(1e-300))


def relative_change(theta, fast, groups) -> torch.Tensor:
    """[B, L]: per task and layer, ||fast_l - theta_l|| / ||theta_l|| (theta shared, fast per task [B, ...])."""
    out = []
    for names in groups.values():
        diff = sum(((fast[k] - theta[k].unsqueeze(0)).to(torch.float64) ** 2).flatten(1).sum(1) for k in names)
        norm = sum((theta[k].to(torch.float64) ** 2).sum() for k in names)
        out.append(diff.sqrt() / norm.sqrt().clamp_min(1e-300))
    return torch.stack(out, 1)


def trajectory(rule: str, adaptation, model, loss_fn, params, x_support, y_support, steps: int):
    """Each task's parameters after 0..steps steps by `rule` (see the module docstring)."""
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r} (one of {', '.join(RULES)})")
    if rule == "own":
        return test_trajectory(adaptation, model, loss_fn, params, x_support, y_support, steps)
    config = adaptation_config(adaptation)
    lr = config.inner_lr if config is not None else float(adaptation)
    return sgd_trajectory(model, loss_fn, params, x_support, y_support, steps, lr,
                          names=adapted_subset(model, params, rule))


def layer_rule_text(rule: str, adaptation) -> str:
    """How the inner loop ran, for titles and CSV files: the algorithm's own rule in the words every view uses
    (inside.rule_text), or the SGD rule the user picked."""
    if rule == "own":
        return rule_text(adaptation)
    config = adaptation_config(adaptation)
    lr = config.inner_lr if config is not None else float(adaptation)
    return f"SGD on {RULE_LABELS[rule]}, inner lr {lr:g}"


@dataclass
class LayerStats:
    """One initialization's per-layer measures: arrays [layers, steps + 1] (step 0 included)."""

    layers: list[str]
    change: np.ndarray  # mean relative change over tasks
    change_ci95: np.ndarray
    cka: np.ndarray  # mean linear CKA (before vs after s steps) over tasks
    cka_ci95: np.ndarray
    rule: str
    rule_text: str
    num_tasks: int

    @property
    def steps(self) -> int:
        return self.change.shape[1] - 1


def layer_stats(model, loss: str, params, adaptation, x_support, y_support, x_query, steps: int,
                rule: str = "own") -> LayerStats:
    """The per-layer measures of one initialization on a batch of tasks ([B, ...] inputs)."""
    groups_fn = getattr(model, "layer_groups", None)
    acts_fn = getattr(model, "layer_activations", None)
    if groups_fn is None or acts_fn is None:
        raise ValueError(f"{type(model).__name__} does not list its layers (layer_groups, layer_activations)")
    if steps < 1:
        raise ValueError(f"need at least one inner step, got {steps}")
    groups = groups_fn()
    loss_fn = loss_function(loss)
    theta = OrderedDict((k, v.detach()) for k, v in params.items())
    with torch.no_grad():
        before = acts_fn(theta, x_query)
    changes, ckas = [], []
    for fast in trajectory(rule, adaptation, model, loss_fn, theta, x_support, y_support, steps):
        with torch.no_grad():
            changes.append(relative_change(theta, fast, groups))  # [B, L]
            after = acts_fn(fast, x_query)
            ckas.append(torch.stack([linear_cka(b, a) for b, a in zip(before, after)], 1))  # [B, L]
    change = torch.stack(changes, 2).cpu().numpy()  # [B, L, S+1]
    cka = torch.stack(ckas, 2).cpu().numpy()
    change_mean, change_ci = mean_ci95(change, skip_nan=True)
    cka_mean, cka_ci = mean_ci95(cka, skip_nan=True)
    return LayerStats(list(groups), change_mean, change_ci, cka_mean, cka_ci, rule, layer_rule_text(rule, adaptation),
                      int(x_support.shape[0]))


@dataclass
class LayerRequest:
    key: str
    label: str
    algorithm: str
    model: object
    params: "OrderedDict[str, torch.Tensor]"
    adaptation: object  # AlgorithmConfig / LearnedAdaptation, or an SGD step size


@dataclass
class PerLayerSet:
    stats: "OrderedDict[str, LayerStats]" = field(default_factory=OrderedDict)
    labels: dict = field(default_factory=dict)
    algorithms: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)
    rule: str = "own"
    shots: int = 0
    steps: int = 0
    num_tasks: int = 0


def compute_per_layer(requests: list[LayerRequest], family, shots: int, steps: int, num_tasks: int, queries: int,
                      rule: str = "own", progress=None, cancel: threading.Event | None = None,
                      seed: int = SEED) -> PerLayerSet:
    """`layer_stats` for each initialization on the same seeded tasks of `family`."""
    out = PerLayerSet(rule=rule, shots=shots, steps=steps, num_tasks=num_tasks)

    def compute(r):
        dtype = next(iter(r.params.values())).dtype
        batch = family.sample(num_tasks, shots, queries, torch.Generator().manual_seed(seed), dtype=dtype)
        return layer_stats(r.model, family.loss, r.params, r.adaptation, batch.x_support, batch.y_support,
                           batch.x_query, steps, rule)

    return for_each_request(requests, compute, out, out.stats, progress, cancel)


def to_csv(result: PerLayerSet) -> str:
    """One row per initialization, layer and step: the numbers the view plots."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["initialization", "algorithm", "rule", "layer", "step", "relative_change", "relative_change_ci95",
                "cka", "cka_ci95", "tasks", "shots"])
    for key, s in result.stats.items():
        for li, layer in enumerate(s.layers):
            for step in range(s.steps + 1):
                w.writerow([result.labels.get(key, key), result.algorithms.get(key, key), s.rule_text, layer, step,
                            f"{s.change[li, step]:.6g}", f"{s.change_ci95[li, step]:.3g}", f"{s.cka[li, step]:.6g}",
                            f"{s.cka_ci95[li, step]:.3g}", s.num_tasks, result.shots])
    return buf.getvalue()
