"""Tasks whose data are sampled from the parameters being adapted: the engine's one generalisation for RL.

Design. In supervised families a task's support and query sets are fixed tensors, so the inner loss is
`loss_fn(model(params, x_support), y_support)`. In reinforcement learning the data are trajectories sampled with
the very parameters being adapted: the pre-update trajectories with theta, the post-update ones with each task's
adapted parameters phi_i. The smallest generalisation that keeps every supervised path as it is (its tensors, its
explicit meta-gradients, its speed) is a TaskBatch subclass, `ObjectiveBatch`, whose data are drawn lazily from
given parameters. It offers two per-task objectives:

    support_loss(model, params, step) -> (surrogate [B], cost [B])   # the inner loss at inner step `step`
    query_loss(model, params)         -> (surrogate [B], cost [B])   # the outer (meta) loss

`params` are per-task parameters [B, ...]; each call samples fresh data with them (detached: sampling is not
differentiated) and returns a differentiable surrogate whose gradient is the estimator the inner and outer steps
follow (for policies: the REINFORCE surrogate), and the cost it reports (detached; navigation: minus the average
return). Each call's randomness is fixed by the batch's seed, the task and the call (`step`, or the query), so
the algorithms trained side by side see the same goals and common random numbers, and a rerun is identical.

The algorithms that declare `sampled_tasks = True` (MAML, FOMAML, Reptile, pretrained) turn to the functions
below when `batch.sampled` is true; they are the same algorithms written against the two objectives:
- MAML: `adapt_objective` takes the inner policy-gradient steps with create_graph=True, so the meta-gradient
  differentiates the post-update surrogate through the inner step (second order, as in the MAML paper; the
  dependence of the pre-update trajectories' distribution on theta is not differentiated, as in the paper's
  code). FOMAML: the same without the graph of the inner gradient.
- Reptile: k inner steps (fresh trajectories each), then theta += eps * mean_i(phi_i - theta).
- pretrained: the mean over tasks of the support surrogate at theta (one policy trained on all goals).
Test-time adaptation (`objective_curve`, what validation and evaluation call) is SGD with the algorithm's inner
learning rate, one sampling per step; the cost at step k is that of the trajectories sampled with phi_k, the ones
the next step learns from (what rllab reports as AverageReturn).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from ..algorithms.adaptation import AdaptResult, expand_params
from ..tasks.base import TaskBatch


@dataclass
class ObjectiveBatch(TaskBatch):
    """A TaskBatch whose support and query data are sampled from given parameters (see the module docstring).

    x_support holds what identifies each task (navigation: its goal, [B, 1, 2]); the other tensors may be empty."""

    sampled = True  # the algorithms' test: `getattr(batch, "sampled", False)`

    def support_loss(self, model, params, step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def query_loss(self, model, params) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def joint(self):
        raise TypeError("this needs fixed task data; it does not apply to tasks whose data are sampled from the "
                        "policy (reinforcement learning, e.g. 2-D navigation)")


def _leaves(params) -> "OrderedDict[str, torch.Tensor]":
    return OrderedDict((k, v.detach().requires_grad_(True)) for k, v in params.items())


def adapt_objective(model, batch: ObjectiveBatch, params, steps: int, lr: float, create_graph: bool = False,
                    batched: bool = False, first_step: int = 0) -> AdaptResult:
    """`steps` gradient steps of size `lr` on each task's support surrogate, from `params` (shared unless
    `batched`); support_losses holds each step's reported cost [B]. Mirrors adaptation.adapt: with create_graph
    the inner gradients stay differentiable (MAML's second-order term); without it the result still depends on
    theta through the identity path when theta requires grad (FOMAML)."""
    if steps < 0:
        raise ValueError(f"adaptation steps must be >= 0, got {steps}")
    fast = OrderedDict(params) if batched else expand_params(params, batch.num_tasks)
    tracks_theta = any(v.requires_grad for v in fast.values()) and torch.is_grad_enabled()
    costs: list[torch.Tensor] = []
    with torch.enable_grad():
        for s in range(steps):
            inputs = fast if tracks_theta else _leaves(fast)
            surr, cost = batch.support_loss(model, inputs, first_step + s)
            grads = torch.autograd.grad(surr.sum(), list(inputs.values()), create_graph=create_graph)
            costs.append(cost.detach())
            values = list(inputs.values())
            if not create_graph:
                grads = [g.detach() for g in grads]
                if not tracks_theta:
                    values = [v.detach() for v in values]
            fast = OrderedDict((k, v - lr * g) for k, v, g in zip(inputs.keys(), values, grads))
    return AdaptResult(fast, costs)


def objective_meta_gradient(algorithm, params, batch: ObjectiveBatch, first_order: bool):
    """MAML's (first_order: FOMAML's) meta-gradient on sampled tasks: the gradient of the mean post-update
    surrogate with respect to theta. Returns (grads, mean post-update cost, AdaptResult, None) like
    MetaAlgorithm.meta_gradient (no predictions). With step_loss_weights: sum_s w_s * surrogate after step s."""
    cfg, model = algorithm.config, algorithm.model
    weights = list(cfg.step_loss_weights) or [0.0] * (cfg.inner_steps - 1) + [1.0]
    explicit = getattr(batch, "explicit_meta_gradient", None)  # one inner step without autograd's graph
    if explicit is not None and weights == [1.0]:
        out = explicit(model, params, cfg.inner_lr, first_order)
        if out is not None:
            return out
    fast = expand_params(params, batch.num_tasks)
    costs: list[torch.Tensor] = []
    objective = 0.0
    with torch.enable_grad():
        for s, weight in enumerate(weights):
            res = adapt_objective(model, batch, fast, 1, cfg.inner_lr, create_graph=not first_order, batched=True,
                                  first_step=s)
            fast = res.params
            costs += res.support_losses
            if weight or s == len(weights) - 1:
                surr, post_cost = batch.query_loss(model, fast)
                if weight:
                    objective = objective + weight * surr.mean()
        grads = torch.autograd.grad(objective, list(params.values()))
    return grads, post_cost.mean(), AdaptResult(fast, costs), None


def pretrained_step(algorithm, params, batch: ObjectiveBatch, iteration: int = 0) -> dict:
    """The pretrained baseline on sampled tasks: one outer step on the mean support surrogate at theta (one policy
    for all tasks); its post-update cost fine-tunes a detached copy, for comparison only."""
    cfg, model = algorithm.config, algorithm.model
    with torch.enable_grad():
        surr, pre_cost = batch.support_loss(model, expand_params(params, batch.num_tasks), 0)
        grads = torch.autograd.grad(surr.mean(), list(params.values()))
    res = adapt_objective(model, batch, OrderedDict((k, v.detach()) for k, v in params.items()),
                          max(cfg.inner_steps, 1), cfg.inner_lr)
    with torch.no_grad():
        _, post_cost = batch.query_loss(model, res.params)
    algorithm._apply(params, grads, iteration)
    return algorithm._metrics(pre_cost.mean(), post_cost.mean())


def reptile_step(algorithm, params, batch: ObjectiveBatch, iteration: int = 0) -> dict:
    """Reptile on sampled tasks: k inner steps per task, then theta += eps * mean_i(phi_i - theta)."""
    cfg, model = algorithm.config, algorithm.model
    if cfg.inner_optimizer != "sgd":
        raise ValueError("Reptile on sampled (RL) tasks takes inner-optimizer sgd")
    res = adapt_objective(model, batch, OrderedDict((k, v.detach()) for k, v in params.items()),
                          cfg.inner_steps, cfg.inner_lr)
    eps = algorithm.epsilon(iteration)
    with torch.no_grad():
        _, post_cost = batch.query_loss(model, res.params)
        deltas = [(res.params[k] - p).mean(0) for k, p in params.items()]
        if algorithm.sync is not None:
            algorithm.sync(deltas)
        for p, delta in zip(params.values(), deltas):
            p.add_(delta, alpha=eps)
    return algorithm._metrics(res.support_losses[0].mean(), post_cost.mean()) | {"epsilon": eps}


def objective_trajectory(model, batch: ObjectiveBatch, params, steps: int, lr: float, batched: bool = False):
    """Test-time adaptation on sampled tasks, one step at a time: yields (each task's detached parameters [B, ...]
    after k steps, the cost [B] of the trajectories sampled with them) for k = 0..steps."""
    if steps < 0:
        raise ValueError(f"adaptation steps must be >= 0, got {steps}")
    fast = OrderedDict((k, v.detach()) for k, v in params.items())
    if not batched:
        fast = expand_params(fast, batch.num_tasks)
    for k in range(steps + 1):
        with torch.enable_grad():
            inputs = _leaves(fast)
            surr, cost = batch.support_loss(model, inputs, k)
            if k < steps:
                grads = torch.autograd.grad(surr.sum(), list(inputs.values()))
        yield fast, cost.detach()
        if k < steps:
            fast = OrderedDict((name, (v - lr * g).detach()) for (name, v), g in zip(inputs.items(), grads))


def objective_curve(model, batch: ObjectiveBatch, params, max_steps: int, lr: float) -> np.ndarray:
    """The cost of every task after 0..max_steps test-time steps: [max_steps + 1, B] (float64)."""
    return np.stack([cost.double().cpu().numpy()
                     for _, cost in objective_trajectory(model, batch, params, max_steps, lr)])
