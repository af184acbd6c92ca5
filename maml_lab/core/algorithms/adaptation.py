"""Adaptation as a pure function: initial parameters + a support set -> adapted parameters, per task.

All tasks of a batch adapt at once. The shared initialization theta is expanded to a per-task copy
[B, ...] (a view, no copy); because each task's loss depends only on its own slice, the gradient of the
*sum* of task losses with respect to the expanded tensor is exactly each task's own gradient. With
`create_graph=True` the inner gradients stay differentiable, which is MAML's exact second-order term.
MAML/FOMAML training on ReLU/tanh MLPs with the MSE loss, and on conv-4 with one inner step (CPU, strided
downsampling, cross-entropy), does not differentiate through here: those models compute the meta-gradient
without autograd (mlp_meta.py, conv4_meta.py); other models and settings do.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch


@dataclass
class AdaptResult:
    params: "OrderedDict[str, torch.Tensor]"  # per task, [B, ...]
    support_losses: list[torch.Tensor]  # [B] before each step, plus after the last one when asked for
    path: list["OrderedDict[str, torch.Tensor]"] = field(default_factory=list)  # detached, steps + 1 entries
    # predictions of the initial parameters on the support sets, where they came for free (explicit meta-gradients)
    support_pred: torch.Tensor | None = None


def expand_params(params, num_tasks: int) -> "OrderedDict[str, torch.Tensor]":
    """A per-task view [B, ...] of shared parameters."""
    return OrderedDict((k, v.unsqueeze(0).expand(num_tasks, *v.shape)) for k, v in params.items())


def _detached_leaves(params) -> "OrderedDict[str, torch.Tensor]":
    return OrderedDict((k, v.detach().requires_grad_(True)) for k, v in params.items())


def adapt(model, loss_fn, params, x_support: torch.Tensor, y_support: torch.Tensor, steps: int, lr: float,
          create_graph: bool = False, keep_path: bool = False, batched: bool = False,
          final_loss: bool = False, names=None, inner_loss=None, start=None) -> AdaptResult:
    """`steps` SGD steps with step size `lr` on each task's support set, from `params`.

    params: shared (theta, no task dim) unless `batched`. With create_graph=False the result is cut from
    the graph of the inner gradients (first-order / evaluation), but when theta requires grad the
    adapted parameters still depend on it through the identity path, which is what FOMAML needs.
    final_loss: also compute the support loss after the last step (one extra forward pass).
    names: adapt only these parameters (ANIL: the head, BOIL: the body; `adapted_subset`); the others keep their
    values and no inner gradient is taken for them. None: all of them.
    inner_loss: the objective the steps descend, `inner_loss(params, start, x_support, y_support) -> [B]` per task
    (an algorithm's `MetaAlgorithm.inner_objective`: iMAML's proximal term, a context, a regularizer); None: the
    support loss, where models' explicit gradient paths (`batched_loss_grad`) apply. start: the per-task parameters
    [B, ...] adaptation began from, which inner_loss sees (default: `params` as given, expanded).
    """
    if steps < 0:
        raise ValueError(f"adaptation steps must be >= 0, got {steps}")
    num_tasks = x_support.shape[0]
    fast = OrderedDict(params) if batched else expand_params(params, num_tasks)
    subset = _without_frozen(model, _check_subset(names, fast), fast)
    tracks_theta = any(v.requires_grad for v in fast.values()) and torch.is_grad_enabled()
    # an algorithm's own objective is differentiated by autograd: models' explicit paths know the support loss only
    explicit_grad = getattr(model, "batched_loss_grad", None) if inner_loss is None else None
    if inner_loss is not None and start is None:
        start = fast if tracks_theta else OrderedDict((k, v.detach()) for k, v in fast.items())

    def objective(p):
        if inner_loss is None:
            return loss_fn(model.forward(p, x_support), y_support)
        return inner_loss(p, start, x_support, y_support)

    losses: list[torch.Tensor] = []
    path = [OrderedDict((k, v.detach().clone()) for k, v in fast.items())] if keep_path else []
    with torch.enable_grad():
        for _ in range(steps):
            inputs = fast if tracks_theta else _detached_leaves(fast)
            if subset is not None:
                fast = _subset_step(objective, inputs, subset, lr, create_graph, tracks_theta, losses)
                if keep_path:
                    path.append(OrderedDict((k, v.detach().clone()) for k, v in fast.items()))
                continue
            explicit = None
            if explicit_grad is not None:
                with torch.set_grad_enabled(create_graph):
                    explicit = explicit_grad(inputs, x_support, y_support, loss_fn)
            if explicit is not None:
                task_losses, grads = explicit
            else:
                task_losses = objective(inputs)
                grads = torch.autograd.grad(task_losses.sum(), list(inputs.values()), create_graph=create_graph)
            losses.append(task_losses.detach())
            values = list(inputs.values())
            if not create_graph:
                grads = [g.detach() for g in grads]
                if not tracks_theta:
                    values = [v.detach() for v in values]
            # one multi-tensor op for the whole update (differentiable; fewer dispatches than per-tensor ops)
            fast = OrderedDict(zip(inputs.keys(), torch._foreach_add(values, grads, alpha=-lr)))
            if keep_path:
                path.append(OrderedDict((k, v.detach().clone()) for k, v in fast.items()))
    if final_loss or steps == 0:
        with torch.no_grad():
            losses.append(objective(fast))
    return AdaptResult(fast, losses, path)


def _check_subset(names, params) -> "tuple[str, ...] | None":
    """The adapted names in parameter order (None: all); ValueError for names the parameters do not have."""
    if names is None:
        return None
    names = set(names)
    unknown = sorted(names - set(params))
    if unknown:
        raise ValueError(f"cannot adapt unknown parameter(s) {', '.join(unknown)}")
    subset = tuple(k for k in params if k in names)
    return None if len(subset) == len(params) else subset


def _without_frozen(model, subset, params) -> "tuple[str, ...] | None":
    """`subset` less the parameters the model never adapts in an inner loop (`model.inner_frozen`, e.g. conv-4's
    batch-norm shifts in cbfinn's convention)."""
    frozen = set(getattr(model, "inner_frozen", ()) or ())
    if not frozen & set(params):
        return subset
    return tuple(k for k in (params if subset is None else subset) if k not in frozen)


def zero_frozen(model, names, grads) -> list:
    """Inner-loop gradients with those of `model.inner_frozen` parameters zeroed (optimizers other than `adapt`'s
    SGD: a zero gradient leaves Adam's iterate where it is)."""
    frozen = set(getattr(model, "inner_frozen", ()) or ())
    return [torch.zeros_like(g) if k in frozen else g for k, g in zip(names, grads)]


def _subset_step(objective, inputs, subset, lr, create_graph, tracks_theta, losses):
    """One SGD step on the parameters in `subset` only (autograd, gradients of the others never taken);
    objective(params) -> per-task losses [B]."""
    if not subset:  # nothing to adapt (BOIL on a model that is all head): the loss, no step
        with torch.no_grad():
            losses.append(objective(inputs))
        return inputs
    if not tracks_theta:  # evaluation: only the adapted tensors need to be leaves
        inputs = OrderedDict((k, v.detach().requires_grad_(k in subset)) for k, v in inputs.items())
    task_losses = objective(inputs)
    grads = torch.autograd.grad(task_losses.sum(), [inputs[k] for k in subset], create_graph=create_graph)
    losses.append(task_losses.detach())
    grads = dict(zip(subset, grads))
    out = OrderedDict()
    for k, v in inputs.items():
        if k not in grads:
            out[k] = v
            continue
        g = grads[k] if create_graph else grads[k].detach()
        out[k] = v - lr * g if (create_graph or tracks_theta) else (v - lr * g).detach()
    return out


def adapted_subset(model, params, rule: str) -> "tuple[str, ...] | None":
    """Which parameters an inner loop adapts: 'all' (None: every one), 'head' (the model's `head_names`: ANIL) or
    'body' (every parameter but the head: BOIL)."""
    if rule in ("all", None):
        return None
    head_names = getattr(model, "head_names", None)
    if head_names is None:
        raise ValueError(f"{type(model).__name__} does not name its head, so it cannot adapt the {rule} only")
    head = set(head_names(params))
    if rule == "head":
        return tuple(k for k in params if k in head)
    if rule == "body":
        return tuple(k for k in params if k not in head)
    raise ValueError(f"unknown adaptation rule {rule!r} (all, head or body)")


def adapt_adam(model, loss_fn, params, x_support: torch.Tensor, y_support: torch.Tensor, steps: int, lr: float,
               betas: tuple[float, float] = (0.0, 0.999), eps: float = 1e-8) -> AdaptResult:
    """`steps` of Adam on each task (Reptile's inner optimizer), all tasks at once, no graph kept.

    Each task has its own moment estimates, exactly as a separate torch.optim.Adam per task would.
    """
    num_tasks = x_support.shape[0]
    fast = OrderedDict((k, v.detach().unsqueeze(0).expand(num_tasks, *v.shape).clone()) for k, v in params.items())
    m = {k: torch.zeros_like(v) for k, v in fast.items()}
    s = {k: torch.zeros_like(v) for k, v in fast.items()}
    b1, b2 = betas
    losses: list[torch.Tensor] = []
    with torch.enable_grad():
        for t in range(1, steps + 1):
            inputs = _detached_leaves(fast)
            task_losses = loss_fn(model.forward(inputs, x_support), y_support)
            grads = torch.autograd.grad(task_losses.sum(), list(inputs.values()))
            grads = zero_frozen(model, inputs, grads)
            losses.append(task_losses.detach())
            with torch.no_grad():
                for (k, v), g in zip(inputs.items(), grads):
                    m[k].mul_(b1).add_(g, alpha=1 - b1)
                    s[k].mul_(b2).addcmul_(g, g, value=1 - b2)
                    m_hat = m[k] / (1 - b1 ** t)
                    s_hat = s[k] / (1 - b2 ** t)
                    fast[k] = v.detach() - lr * m_hat / (s_hat.sqrt() + eps)
    with torch.no_grad():
        losses.append(loss_fn(model.forward(fast, x_support), y_support))
    return AdaptResult(fast, losses)


def sgd_trajectory(model, loss_fn, params, x_support: torch.Tensor, y_support: torch.Tensor, steps: int, lr: float,
                   batched: bool = False, names=None, inner_loss=None):
    """Test-time SGD, one step at a time: yields each task's detached parameters [B, ...] after 0..steps steps.
    names: adapt only these; inner_loss: the objective descended, seeing the parameters the trajectory started
    from (see `adapt`)."""
    if steps < 0:
        raise ValueError(f"adaptation steps must be >= 0, got {steps}")
    fast = OrderedDict((k, v.detach()) for k, v in params.items())
    if not batched:
        fast = expand_params(fast, x_support.shape[0])
    start = fast
    yield fast
    for _ in range(steps):
        fast = adapt(model, loss_fn, fast, x_support, y_support, 1, lr, batched=True, names=names,
                     inner_loss=inner_loss, start=start).params
        fast = OrderedDict((k, v.detach()) for k, v in fast.items())
        yield fast


def adam_trajectory(model, loss_fn, params, x_support: torch.Tensor, y_support: torch.Tensor, steps: int, lr: float,
                    batched: bool = False, betas: tuple[float, float] = (0.0, 0.999), eps: float = 1e-8):
    """Test-time Adam (Reptile's inner optimizer, fresh moments per task), one step at a time: yields each task's
    parameters [B, ...] after 0..steps steps, exactly the iterates of `adapt_adam`."""
    if steps < 0:
        raise ValueError(f"adaptation steps must be >= 0, got {steps}")
    num_tasks = x_support.shape[0]
    fast = OrderedDict((k, (v.detach() if batched else v.detach().unsqueeze(0).expand(num_tasks, *v.shape)).clone())
                       for k, v in params.items())
    yield fast
    m = {k: torch.zeros_like(v) for k, v in fast.items()}
    s = {k: torch.zeros_like(v) for k, v in fast.items()}
    b1, b2 = betas
    for t in range(1, steps + 1):
        with torch.enable_grad():
            inputs = _detached_leaves(fast)
            task_losses = loss_fn(model.forward(inputs, x_support), y_support)
            grads = torch.autograd.grad(task_losses.sum(), list(inputs.values()))
            grads = zero_frozen(model, inputs, grads)
        with torch.no_grad():
            new = OrderedDict()
            for (k, v), g in zip(inputs.items(), grads):
                m[k].mul_(b1).add_(g, alpha=1 - b1)
                s[k].mul_(b2).addcmul_(g, g, value=1 - b2)
                new[k] = v.detach() - lr * (m[k] / (1 - b1 ** t)) / ((s[k] / (1 - b2 ** t)).sqrt() + eps)
        fast = new
        yield fast
