"""TRPO's outer step (cbfinn/maml_rl's MAMLTRPO) for a Gaussian ReLU MLP policy, by explicit passes instead of autograd.

Why: the default navigation run spends most of its time in the TRPO step, and autograd builds and walks graphs of
[goals, 2,000, 100] tensors for every one of its products: the gradient through the inner step (double backward),
each of the ten conjugate-gradient products (a third-order graph, or the Gauss-Newton form's double-backward
tricks) and each line-search candidate. Here the same numbers come from explicit backpropagation and Pearlmutter's
R-operator (rl/policy_grad.py) on the activations the two rollouts kept, so no forward pass is run again across the
conjugate-gradient iterations, and the matmuls run on one goal's [2,000, 100] blocks at a time. What is computed is
what rl/objective.py's trpo_objective computes by autograd (equal in float64, tests/core/test_trpo.py), with one inner
policy-gradient step (MAML; FOMAML without its second-order term) or none (a policy for all goals):

- the gradient of the ratio surrogate at theta_old: there the ratio's gradient is the log-likelihood's, so it is
  MAML's REINFORCE meta-gradient g = sum_i (I - lr H_i) v_i, v_i the gradient of goal i's post-update surrogate / B
  at phi_i, H_i the Hessian of its pre-update surrogate at theta (FOMAML: sum_i v_i);
- the KL's Hessian at theta_old in its Gauss-Newton form (exact there: kl_hessian_product's docstring),
  A v = sum_{i < n} (I - lr H_i) J_i^T M_i J_i (I - lr H_i) v, J_i the Jacobian of goal i's post-update outputs (its
  action means on the post-update rows, its log std) at phi_i, M_i the KL's Hessian in them, on the first n goals
  (TRPOSettings.hvp_fraction): two inner Hessian-vector products on the pre-update rows and one J^T M J product on
  the post-update rows per goal, on kept activations;
- a line-search candidate theta_c: the inner step at theta_c (a forward and a backward pass on the pre-update rows),
  then the means at phi_c (a forward pass on the post-update rows), the ratio surrogate and the mean KL, no graph.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from . import policy_grad
from .trpo import flatten, gaussian_kl, unflatten

# samples (`smp`, `support`, `query`, `pre`) are rl/objective.py's PolicySamples with the rollout's activations (their
# `hidden` and `means`); not imported, since objective.py builds its TRPO objective from this module


def supported(model, batch, inner_steps: int) -> bool:
    """The explicit step covers the ReLU policy, at most one inner step, and batches whose rollouts keep their
    activations (navigation); anything else takes rl/objective.py's autograd objective."""
    return policy_grad.supported(model) and inner_steps in (0, 1) and getattr(batch, "keeps_activations", False)


def surrogate_weights(smp, scale: float = 1.0) -> torch.Tensor:
    """c = advantage * mask / valid steps of the task (the surrogate is -sum c log pi), [B, M]."""
    return smp.advantages * smp.mask / smp.mask.sum(1, keepdim=True).clamp_min(1) * scale


def _kl_weights(smp, log_std: torch.Tensor):
    """M of the mean KL over these samples' valid steps at the old policy: (1 / var on each mean coordinate, each
    step weighted 1 / all valid steps) [B, M, A], and 2 x the task's share of the steps on each log std [B, 1]."""
    weight = smp.mask / smp.mask.sum().clamp_min(1)
    log_std = log_std.view(-1, 1, log_std.shape[-1]) if log_std.dim() == 2 else log_std
    return weight.unsqueeze(-1) * torch.exp(-2 * log_std), 2 * weight.sum(1, keepdim=True)


def _log_likelihood(mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """log pi(a | s) up to its constant (which cancels in the ratio): [B, M]."""
    log_std = log_std.view(-1, 1, log_std.shape[-1]) if log_std.dim() == 2 else log_std
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std).sum(-1)


class ExplicitTRPO:
    """The TRPO objective's pieces at theta_old on fixed samples (the module docstring): `gradient`, `hvp` (the KL's
    Hessian-vector product, undamped) and `evaluate` (the line search's surrogate and KL at candidate parameters)."""

    def __init__(self, model, theta, support: list, query, lr: float,
                 first_order: bool = False, hvp_fraction: float = 1.0, pre_update_kl: bool = False, inner=None):
        """`inner`: inner_step's (phi, pass) when the caller took the step already (to sample with phi)."""
        import math

        self.pg = policy_grad.PolicyGradient(model)
        self.names = list(theta)
        self.theta = OrderedDict((k, v.detach()) for k, v in theta.items())
        self.lr, self.first_order = float(lr), first_order
        self.pre = support[0] if support else None
        self.query = query
        b = query.obs.shape[0]
        n = max(1, math.ceil(hvp_fraction * b))
        if self.pre is not None:  # the inner step's pass is what H_i v needs
            self.phi, self.pre_pass = inner or inner_step(self.pg, self.theta, self.pre, self.lr)
        else:
            self.pre_pass, self.phi = None, self.theta
        self.through_inner = self.pre is not None and not first_order
        # the KL's Gauss-Newton factors on the first n goals, at the old (sampling) policy phi_i
        self.n = n
        self.phi_n = OrderedDict((k, v[:n] if self.pre is not None else v) for k, v in self.phi.items())
        q = query.head(n)
        self.post_inputs = [q.obs, *q.hidden]
        self.mean_weight, self.std_weight = _kl_weights(q, self.phi_n["log_std"])
        self.pre_pass_n = self.pre_pass.head(n) if self.through_inner else None
        self.pre_kl = None
        if pre_update_kl and self.pre is not None:
            p = self.pre.head(n)
            self.pre_kl = ([p.obs, *p.hidden], *_kl_weights(p, self.theta["log_std"]))
        self.old_log_std = self.phi["log_std"]
        self.old_logp = _log_likelihood(query.means, self.old_log_std, query.actions)
        self.count = query.mask.sum(1).clamp_min(1)
        self.total = query.mask.sum().clamp_min(1)
        self.pre_total = self.pre.mask.sum().clamp_min(1) if self.pre is not None else None
        self.pre_weights = surrogate_weights(self.pre) if self.pre is not None else None

    @torch.no_grad()
    def gradient(self) -> tuple[float, torch.Tensor]:
        """(the ratio surrogate at theta_old, its gradient as a flat vector)."""
        q, b = self.query, self.query.obs.shape[0]
        c = surrogate_weights(q, 1.0 / b)
        v, _ = self.pg.run(self.phi, q.obs, q.actions, c, summed=not self.through_inner, forward=(q.hidden, q.means),
                           keep=False)
        if self.through_inner:
            hv = self.pg.hvp(self.theta, self.pre_pass, v, summed=True)
            v = [vi.sum(0) - self.lr * h for vi, h in zip(v, hv)]
        loss = -float(c.sum())  # the ratio is 1 at theta_old
        return loss, flatten(v)

    def _inner_jacobian(self, direction, summed: bool):
        """(I - lr H_i) V on the first n goals: per goal, or summed over them."""
        hv = self.pg.hvp(self.theta, self.pre_pass_n, direction, summed=summed)
        return [(d.sum(0) if summed and d.dim() > h.dim() else d) - self.lr * h for d, h in zip(direction, hv)]

    @torch.no_grad()
    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """(d^2 KL / d theta^2 at theta_old) v, exact, without damping."""
        vs = unflatten(v, list(self.theta.values()))
        ws = self._inner_jacobian(vs, summed=False) if self.through_inner else vs
        us = self.pg.gauss_newton(self.phi_n, self.post_inputs, ws, self.mean_weight, self.std_weight,
                                  summed=not self.through_inner)
        if self.through_inner:
            us = self._inner_jacobian(us, summed=True)
        if self.pre_kl is not None:
            inputs, mean_weight, std_weight = self.pre_kl
            us = [u + h for u, h in zip(us, self.pg.gauss_newton(self.theta, inputs, vs, mean_weight, std_weight))]
        return flatten(us)

    @torch.no_grad()
    def evaluate(self, tensors) -> tuple[torch.Tensor, torch.Tensor]:
        """(the ratio surrogate, the mean KL of the post-update policies, plus the pre-update ones' when asked) at
        theta = `tensors`, on the fixed samples."""
        theta = OrderedDict(zip(self.names, (t.detach() for t in tensors)))
        q = self.query
        if self.pre is not None:
            forward = self.pg.forward(theta, self.pre.obs) if self.pre_kl is not None else None  # mean0 needed
            grads, _ = self.pg.run(theta, self.pre.obs, self.pre.actions, self.pre_weights, forward=forward,
                                   keep=False)
            phi = OrderedDict((k, v - self.lr * g) for (k, v), g in zip(theta.items(), grads))
        else:
            phi = theta
        _, mean = self.pg.forward(phi, q.obs)
        log_std = phi["log_std"]
        ratio = torch.exp(_log_likelihood(mean, log_std, q.actions) - self.old_logp)
        surr = -((ratio * q.advantages * q.mask).sum(1) / self.count).mean()
        log_std = log_std.view(-1, 1, log_std.shape[-1]).expand_as(mean)
        old_log_std = self.old_log_std.view(-1, 1, log_std.shape[-1]).expand_as(mean) \
            if self.old_log_std.dim() == 2 else self.old_log_std.expand_as(mean)
        kl = (gaussian_kl(q.means, old_log_std, mean, log_std) * q.mask).sum() / self.total
        if self.pre_kl is not None:
            mean0 = forward[1]
            kl = kl + (gaussian_kl(self.pre.means, self.theta["log_std"].expand_as(mean0), mean0,
                                   theta["log_std"].expand_as(mean0)) * self.pre.mask).sum() / self.pre_total
        return surr, kl


def inner_step(pg: policy_grad.PolicyGradient, theta, pre, lr: float):
    """The inner policy-gradient step from theta on the pre-update samples: (phi [B, ...], the pass H_i v needs)."""
    grads, pre_pass = pg.run(theta, pre.obs, pre.actions, surrogate_weights(pre), forward=(pre.hidden, pre.means))
    return OrderedDict((k, v - lr * g) for (k, v), g in zip(theta.items(), grads)), pre_pass


def trpo_objective(model, params, batch, inner_lr: float, inner_steps: int, first_order: bool = False,
                   hvp_fraction: float = 1.0, pre_update_kl: bool = False, autograd_evaluate=None):
    """rl/objective.py's trpo_objective with explicit products (`supported` must hold): the samples drawn as there
    (pre-update with theta_old, post-update with phi_i(theta_old)), their activations kept. Returns TRPOObjective's
    fields (support, query, evaluate, hvp, gradient). evaluate(tensors, False)
    is the explicit line-search evaluation; evaluate(tensors, True) takes `autograd_evaluate(support, query, phi)`'s
    closure, built on first use (tests differentiate it; training does not)."""
    from ..algorithms.adaptation import expand_params

    theta = OrderedDict((k, v.detach()) for k, v in params.items())
    pg = policy_grad.PolicyGradient(model)
    support, fast, inner = [], expand_params(theta, batch.num_tasks), None
    if inner_steps:
        support.append(batch.samples(model, fast, 0, keep_activations=True))
        inner = inner_step(pg, theta, support[0], inner_lr)
        fast = inner[0]
    query = batch.samples(model, fast, None if inner_steps else 0, keep_activations=True)
    explicit = ExplicitTRPO(model, theta, support, query, inner_lr, first_order, hvp_fraction, pre_update_kl, inner)
    cached = []

    def evaluate(tensors, differentiable: bool):
        if not differentiable:
            return explicit.evaluate(tensors)
        if not cached:
            if autograd_evaluate is None:
                raise ValueError("this TRPO objective was built without its differentiable (autograd) form")
            cached.append(autograd_evaluate(support, query, explicit.phi))
        return cached[0](tensors, True)

    return support, query, evaluate, explicit.hvp, explicit.gradient
