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
from . import pg
from .policy import LOG_2PI


@dataclass
class ObjectiveBatch(TaskBatch):
    """A TaskBatch whose support and query data are sampled from given parameters (see the module docstring).

    x_support holds what identifies each task (navigation: its goal, [B, 1, 2]); the other tensors may be empty."""

    sampled = True  # the algorithms' test: `getattr(batch, "sampled", False)`

    def support_loss(self, model, params, step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def query_loss(self, model, params) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def samples(self, model, params, step: int | None) -> "PolicySamples":
        """The data of support step `step` (None: the query sampling), sampled once with `params` and kept, so an
        objective can be evaluated on them at other parameters (TRPO's surrogate, KL and line search)."""
        raise NotImplementedError

    def joint(self):
        raise TypeError("this needs fixed task data; it does not apply to tasks whose data are sampled from the "
                        "policy (reinforcement learning, e.g. 2-D navigation)")


@dataclass
class PolicySamples:
    """Sampled steps of B tasks, flattened per task (M = trajectories x time steps), with their fixed advantages."""

    obs: torch.Tensor  # [B, M, obs_dim]
    actions: torch.Tensor  # [B, M, action_dim]
    advantages: torch.Tensor  # [B, M] (constant)
    mask: torch.Tensor  # [B, M]: 1 on steps of a running episode
    cost: torch.Tensor  # [B]: minus the average return of the trajectories
    # what the rollout computed on these rows (the ReLU policy, when asked for): the hidden layers' outputs
    # [B, M, width] and the means [B, M, action_dim] at the sampling parameters (rl/explicit_trpo.py)
    hidden: list[torch.Tensor] | None = None
    means: torch.Tensor | None = None

    def head(self, n: int) -> "PolicySamples":
        """The samples of the first n tasks."""
        return PolicySamples(self.obs[:n], self.actions[:n], self.advantages[:n], self.mask[:n], self.cost[:n],
                             None if self.hidden is None else [h[:n] for h in self.hidden],
                             None if self.means is None else self.means[:n])

    def surrogate(self, model, params) -> torch.Tensor:
        """The REINFORCE surrogate of each task at `params` on these samples [B] (pg.surrogate)."""
        return pg.surrogate(model.log_prob(params, self.obs, self.actions), self.advantages, self.mask)


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


def pretrained_step(algorithm, params, batch: ObjectiveBatch, iteration: int = 0, explicit: bool = True) -> dict:
    """The pretrained baseline on sampled tasks: one outer step on the mean support surrogate at theta (one policy
    for all tasks); its post-update cost fine-tunes a detached copy, for comparison only."""
    cfg = algorithm.config
    grads, pre_cost, post_cost = pretrained_gradient(algorithm.model, params, batch, cfg.inner_lr,
                                                     max(cfg.inner_steps, 1), explicit)
    algorithm._apply(params, grads, iteration)
    return algorithm._metrics(pre_cost.mean(), post_cost.mean())


def pretrained_gradient(model, params, batch: ObjectiveBatch, lr: float, steps: int, explicit: bool = True):
    """(d(mean support surrogate at theta)/d(theta), the support cost [B], the cost [B] after `steps` test-time steps
    from a detached copy). `explicit` (the ReLU policy on navigation's rollouts): the per-task gradients of the one
    sampling at theta by explicit backpropagation on the rollout's kept activations (rl/policy_grad.py), their mean
    the outer gradient and each the first test-time step, so theta's trajectories are sampled once (autograd's
    route samples them twice, for the outer gradient and for the adaptation, and recomputes the log-likelihoods)."""
    if explicit and _explicit_adaptation(model, batch):
        from .policy_grad import PolicyGradient

        pg = PolicyGradient(model)
        fast = OrderedDict((k, v.detach()) for k, v in params.items())
        for s in range(steps):
            grads, cost = _explicit_step(pg, model, batch, fast, s)
            if s == 0:
                outer, pre_cost = [g.sum(0) / batch.num_tasks for g in grads], cost
            fast = OrderedDict((k, v - lr * g) for (k, v), g in zip(fast.items(), grads))
        return outer, pre_cost, batch.samples(model, fast, None).cost
    with torch.enable_grad():
        surr, pre_cost = batch.support_loss(model, expand_params(params, batch.num_tasks), 0)
        grads = torch.autograd.grad(surr.mean(), list(params.values()))
    res = adapt_objective(model, batch, OrderedDict((k, v.detach()) for k, v in params.items()), steps, lr)
    with torch.no_grad():
        _, post_cost = batch.query_loss(model, res.params)
    return list(grads), pre_cost, post_cost


def _explicit_adaptation(model, batch) -> bool:
    """Policy-gradient steps without autograd apply: the ReLU policy on a batch whose rollouts keep its activations."""
    from . import policy_grad

    return policy_grad.supported(model) and getattr(batch, "keeps_activations", False)


def _explicit_step(pg, model, batch: ObjectiveBatch, fast, step: int):
    """Support step `step`'s sampling with `fast` (shared or per task): (each task's surrogate gradient [B, ...] by
    explicit backpropagation on the rollout's kept activations, the sampling's cost [B])."""
    from .explicit_trpo import surrogate_weights

    smp = batch.samples(model, fast, step, keep_activations=True)
    grads, _ = pg.run(fast, smp.obs, smp.actions, surrogate_weights(smp), forward=(smp.hidden, smp.means), keep=False)
    return grads, smp.cost


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


def step_sizes(lr, steps: int) -> list[float]:
    """The step size of each of `steps` steps: a number for all, or a schedule (its last entry repeats; the
    reference's test: 0.5 then 0.25)."""
    if isinstance(lr, (int, float)):
        return [float(lr)] * steps
    lr = [float(x) for x in lr]
    return [lr[min(k, len(lr) - 1)] for k in range(steps)]


def test_schedule(lr: float) -> list[float]:
    """The step sizes of test-time policy-gradient steps: the trained step first, half of it for every later one, as
    the reference's test (rllab VPG: init_learning_rate, then 0.5 x). Why not the trained step every time: the step
    is taken on advantages centred and scaled per goal, so its size does not shrink as the policy nears the goal (a
    supervised loss's gradient does), and a policy trained for one step at 0.5 overshoots when 0.5 is repeated
    (docs/navigation.md, Evaluation protocols). Every policy (MAML, the baselines, a random one) gets the same rule;
    `eval --protocol`, the Adaptation view and the Arena use it."""
    return [float(lr), float(lr) / 2]


def test_schedule_text(lr: float) -> str:
    """test_schedule for cards: 'SGD 0.5 then 0.25'."""
    return "SGD " + " then ".join(f"{x:g}" for x in test_schedule(lr))


def objective_trajectory(model, batch: ObjectiveBatch, params, steps: int, lr, batched: bool = False,
                         explicit: bool = True):
    """Test-time adaptation on sampled tasks, one step at a time: yields (each task's detached parameters [B, ...]
    after k steps, the cost [B] of the trajectories sampled with them) for k = 0..steps. `lr`: a step size, or one
    per step (step_sizes). `explicit` (the ReLU policy on navigation's rollouts): each step's gradients by explicit
    backpropagation on the rollout's kept activations instead of autograd on recomputed log-likelihoods."""
    if steps < 0:
        raise ValueError(f"adaptation steps must be >= 0, got {steps}")
    lrs = step_sizes(lr, steps)
    fast = OrderedDict((k, v.detach()) for k, v in params.items())
    if not batched:
        fast = expand_params(fast, batch.num_tasks)
    if explicit and _explicit_adaptation(model, batch):
        from .policy_grad import PolicyGradient

        pg = PolicyGradient(model)
        for k in range(steps + 1):
            if k == steps:  # the last sampling: its cost only
                yield fast, batch.samples(model, fast, k).cost
                return
            grads, cost = _explicit_step(pg, model, batch, fast, k)
            yield fast, cost
            fast = OrderedDict((name, v - lrs[k] * g) for (name, v), g in zip(fast.items(), grads))
    for k in range(steps + 1):
        with torch.enable_grad():
            inputs = _leaves(fast)
            surr, cost = batch.support_loss(model, inputs, k)
            if k < steps:
                grads = torch.autograd.grad(surr.sum(), list(inputs.values()))
        yield fast, cost.detach()
        if k < steps:
            fast = OrderedDict((name, (v - lrs[k] * g).detach()) for (name, v), g in zip(inputs.items(), grads))


def objective_curve(model, batch: ObjectiveBatch, params, max_steps: int, lr) -> np.ndarray:
    """The cost of every task after 0..max_steps test-time steps: [max_steps + 1, B] (float64)."""
    return np.stack([cost.double().cpu().numpy()
                     for _, cost in objective_trajectory(model, batch, params, max_steps, lr)])


def _inner_steps(model, fast, support: list[PolicySamples], lr: float, create_graph: bool):
    """Policy-gradient steps on fixed samples, one per entry of `support` ([B, ...] parameters in and out)."""
    for smp in support:
        grads = torch.autograd.grad(smp.surrogate(model, fast).sum(), list(fast.values()), create_graph=create_graph)
        fast = OrderedDict((k, v - lr * (g if create_graph else g.detach())) for (k, v), g in zip(fast.items(), grads))
    return fast


def _gaussian(model, params, obs, actions):
    """(mean, log std, log-likelihood of `actions`) of a Gaussian policy: one forward pass for all three."""
    mean = model.forward(params, obs)
    log_std = model.log_std(params, mean).expand_as(mean)
    z = (actions - mean) * torch.exp(-log_std)
    return mean, log_std, (-0.5 * z.pow(2) - log_std - 0.5 * LOG_2PI).sum(-1)


def kl_hessian_product(model, theta, support: list[PolicySamples], query: PolicySamples, old_log_std: torch.Tensor,
                       lr: float, first_order: bool):
    """v -> (d^2 D / d theta^2) v at theta = theta_old, exact, for D the mean KL of the post-update steps (see
    trpo_objective). At theta_old the KL's gradient with respect to the policy's outputs is zero, so its Hessian is
    J^T M J there (the Gauss-Newton form is exact): J = J_out(phi_i) (I - lr H_i,S) ... (I - lr H_i,1) the Jacobian
    of the post-update policy's outputs (action means on the post-update steps, log std) through the inner steps,
    H_i,s the Hessian of task i's inner surrogate at step s (FOMAML: J = J_out), M the KL's Hessian in the outputs
    (1 / var per mean coordinate, 2 per log std coordinate, each step weighted 1 / valid steps). One product costs
    two inner Hessian-vector products per inner step and a forward and a backward product of the policy, instead of
    the third-order double backward through the inner step that autograd of autograd of D takes (trpo.kl_hvp, what
    the tests compare it with)."""
    from .trpo import flatten, unflatten

    names = list(theta.keys())
    b = query.obs.shape[0]
    through_inner = bool(support) and not first_order
    steps = []  # per inner step: (its starting parameters as leaves, the inner gradient's graph)
    with torch.enable_grad():
        phi = OrderedDict((k, v.detach().unsqueeze(0).expand(b, *v.shape).clone().requires_grad_(True))
                          for k, v in theta.items())
        for smp in support:
            grads = torch.autograd.grad(smp.surrogate(model, phi).sum(), list(phi.values()), create_graph=through_inner)
            steps.append((phi, grads))
            phi = OrderedDict((k, (v - lr * g).detach().requires_grad_(True)) for (k, v), g in zip(phi.items(), grads))
        mean = model.forward(phi, query.obs)
    weight = query.mask / query.mask.sum().clamp_min(1)  # [B, M]
    mean_weight = weight.unsqueeze(-1) * torch.exp(-2 * old_log_std)  # [B, M, act]
    std_weight = 2 * weight.sum(1, keepdim=True)  # [B, 1]
    ls = names.index("log_std")

    def inner_step_jacobian(step, vs):  # (I - lr H_i,s) v per task: symmetric, so also its transpose
        start, grads = step
        hv = torch.autograd.grad(grads, list(start.values()), grad_outputs=vs, retain_graph=True)
        return [v - lr * h for v, h in zip(vs, hv)]

    def inner_jacobian(vs, transpose: bool = False):
        if through_inner:
            for step in (reversed(steps) if transpose else steps):
                vs = inner_step_jacobian(step, vs)
        return vs

    # J_out w by the double-backward trick: J_out^T u is linear in a dummy u, so its gradient in u along w is J_out w
    # (autograd only: forward-mode AD's tensors do not pass the cost meter's dispatch mode)
    with torch.enable_grad():
        dummy = torch.zeros_like(mean, requires_grad=True)
        transposed = torch.autograd.grad(mean, list(phi.values()), grad_outputs=dummy, create_graph=True,
                                         allow_unused=True)

    def mean_tangent(ws):
        with torch.enable_grad():
            dot = sum((t * w).sum() for t, w in zip(transposed, ws) if t is not None)
            return torch.autograd.grad(dot, dummy, retain_graph=True)[0]

    def hvp(v: torch.Tensor) -> torch.Tensor:
        vs = [x.unsqueeze(0).expand(b, *x.shape) for x in unflatten(v, list(theta.values()))]
        ws = inner_jacobian(vs)
        d_mean = mean_tangent(ws)
        with torch.enable_grad():
            us = torch.autograd.grad(mean, list(phi.values()), grad_outputs=d_mean * mean_weight, retain_graph=True,
                                     allow_unused=True)
        us = [torch.zeros_like(p) if u is None else u for u, p in zip(us, phi.values())]
        us[ls] = us[ls] + std_weight * ws[ls]
        return flatten([u.sum(0) for u in inner_jacobian(us, transpose=True)]).detach()

    return hvp


@dataclass
class TRPOObjective:
    """What one TRPO outer step works on: the samples (fixed), evaluate(tensors, differentiable) -> (surrogate, mean
    KL) and the KL's exact Hessian-vector product at theta_old (None: trpo_step's double backward)."""

    support: list[PolicySamples]
    query: PolicySamples
    evaluate: object
    hvp: object
    gradient: object = None  # () -> (surrogate at theta_old, its flat gradient), where cheaper than autograd's


def trpo_objective(model, params, batch: ObjectiveBatch, inner_lr: float, inner_steps: int,
                   first_order: bool = False, hvp_fraction: float = 1.0, pre_update_kl: bool = False,
                   explicit: bool = True) -> TRPOObjective:
    """The surrogate and KL of cbfinn/maml_rl's MAMLTRPO on a batch of sampled tasks, at theta = `params`.

    With inner_steps >= 1 (MAML, FOMAML): the pre-update trajectories are sampled with theta_old and the post-update
    ones with the adapted policies phi_i(theta_old); both are then fixed. The surrogate is the mean over tasks of
    -mean over valid steps of pi_phi_i(theta)(a|s) / pi_phi_i(theta_old)(a|s) x A on the post-update trajectories,
    where phi_i(theta) takes the inner policy-gradient step(s) from theta on the pre-update samples (with its graph
    for MAML, so the gradient and the KL's Hessian are exact second order through it; FOMAML: the inner gradient is a
    constant, the reference's stop_grad). The KL is the mean over every task's post-update steps of
    KL(pi_phi_i(theta_old) || pi_phi_i(theta)) (the reference's kl_constrain_step -1). With inner_steps 0 (a policy
    trained on every goal at once): the same on the pre-update trajectories at theta. `hvp_fraction` < 1: the KL's
    Hessian-vector products on the first ceil(fraction x B) tasks only (the goals are independent draws), as the
    reference optimizer's subsample_factor (it used 1); the line search's KL is always every task's.
    `pre_update_kl`: the KL also counts the pre-update policies' change, mean KL(pi_theta_old || pi_theta) over the
    pre-update steps, added to the post-update one (the reference constrains one of the two: kl_constrain_step).
    `explicit`: the same objective by explicit passes (rl/explicit_trpo.py) where it applies (the ReLU policy, at
    most one inner step, navigation's rollouts); the products and the line search then run without autograd."""
    import math

    from . import explicit_trpo

    names = list(params.keys())
    b = batch.num_tasks
    if explicit and explicit_trpo.supported(model, batch, inner_steps):
        def autograd_evaluate(support, query, fast):
            with torch.no_grad():
                old = _gaussian(model, fast, query.obs, query.actions)
            return _trpo_evaluate(model, names, b, params, support, query, inner_lr, first_order, old, pre_update_kl)

        return TRPOObjective(*explicit_trpo.trpo_objective(model, params, batch, inner_lr, inner_steps, first_order,
                                                           hvp_fraction, pre_update_kl, autograd_evaluate))
    support: list[PolicySamples] = []
    with torch.no_grad():
        fast = expand_params(OrderedDict((k, v.detach()) for k, v in params.items()), b)
    for s in range(inner_steps):
        smp = batch.samples(model, fast, s)
        support.append(smp)
        with torch.enable_grad():
            fast = _inner_steps(model, _leaves(fast), [smp], inner_lr, create_graph=False)
        fast = OrderedDict((k, v.detach()) for k, v in fast.items())
    query = batch.samples(model, fast, None if inner_steps else 0)
    with torch.no_grad():
        old = _gaussian(model, fast, query.obs, query.actions)
    old_log_std = old[1]
    evaluate = _trpo_evaluate(model, names, b, params, support, query, inner_lr, first_order, old, pre_update_kl)
    pre = support[0] if (pre_update_kl and support) else None
    if pre is not None:
        with torch.no_grad():
            theta_old = expand_params(OrderedDict((k, v.detach()) for k, v in params.items()), b)
            pre_log_std = _gaussian(model, theta_old, pre.obs, pre.actions)[1]

    n = max(1, math.ceil(hvp_fraction * b))
    theta_d = OrderedDict((k, v.detach()) for k, v in params.items())
    hvp = kl_hessian_product(model, theta_d, [smp.head(n) for smp in support], query.head(n), old_log_std[:n],
                             inner_lr, first_order)
    if pre is not None:
        post_hvp = hvp
        pre_hvp = kl_hessian_product(model, theta_d, [], pre.head(n), pre_log_std[:n], inner_lr, first_order)

        def hvp(v):
            return post_hvp(v) + pre_hvp(v)
    return TRPOObjective(support, query, evaluate, hvp)


def _trpo_evaluate(model, names, b, params, support, query, inner_lr, first_order, old, pre_update_kl):
    """trpo_objective's evaluate(tensors, differentiable) -> (surrogate, mean KL) by autograd, on fixed samples;
    `old`: (mean, log std, log-likelihood) of the post-update policies that sampled `query`."""
    from .trpo import gaussian_kl

    old_mean, old_log_std, old_logp = old
    count = query.mask.sum(1).clamp_min(1)
    total = query.mask.sum().clamp_min(1)
    pre = support[0] if (pre_update_kl and support) else None
    if pre is not None:
        with torch.no_grad():
            theta_old = expand_params(OrderedDict((k, v.detach()) for k, v in params.items()), b)
            pre_mean, pre_log_std, _ = _gaussian(model, theta_old, pre.obs, pre.actions)
        pre_total = pre.mask.sum().clamp_min(1)

    def evaluate(tensors, differentiable: bool):
        with torch.enable_grad():
            theta = OrderedDict(zip(names, tensors if differentiable else
                                    [t.detach().requires_grad_(True) for t in tensors]))
            new = _inner_steps(model, expand_params(theta, b), support, inner_lr,
                               create_graph=differentiable and not first_order)
            if not differentiable:
                new = OrderedDict((k, v.detach()) for k, v in new.items())
        with torch.set_grad_enabled(differentiable):
            mean, log_std, logp = _gaussian(model, new, query.obs, query.actions)
            ratio = torch.exp(logp - old_logp)
            surr = -((ratio * query.advantages * query.mask).sum(1) / count).mean()
            kl = (gaussian_kl(old_mean, old_log_std, mean, log_std) * query.mask).sum() / total
            if pre is not None:
                mean0, log_std0, _ = _gaussian(model, expand_params(theta, b), pre.obs, pre.actions)
                kl = kl + (gaussian_kl(pre_mean, pre_log_std, mean0, log_std0) * pre.mask).sum() / pre_total
        return surr, kl

    return evaluate


def pre_update_kl(model, params, pre: PolicySamples):
    """tensors -> the pre-update policies' mean KL(pi_theta_old || pi_theta) over the valid pre-update steps `pre`
    (sampled with theta_old = `params`): what TRPOSettings.pre_update_max_kl bounds in the line search."""
    from .trpo import gaussian_kl

    names, b = list(params.keys()), pre.obs.shape[0]
    with torch.no_grad():
        start = expand_params(OrderedDict((k, v.detach()) for k, v in params.items()), b)
        start_mean, start_log_std, _ = _gaussian(model, start, pre.obs, pre.actions)
    total = pre.mask.sum().clamp_min(1)

    def kl(tensors) -> float:
        with torch.no_grad():
            theta = expand_params(OrderedDict(zip(names, [t.detach() for t in tensors])), b)
            mean, log_std, _ = _gaussian(model, theta, pre.obs, pre.actions)
            return float((gaussian_kl(start_mean, start_log_std, mean, log_std) * pre.mask).sum() / total)

    return kl


def objective_trpo_step(algorithm, params, batch: ObjectiveBatch, first_order: bool = False, inner: bool = True,
                        settings=None) -> dict:
    """A TRPO outer step (rl/trpo.py) on `trpo_objective`: MAML's and FOMAML's (`inner`), or the surrogate at theta
    (the pretrained baseline, when asked for TRPO). Returns the step's metrics, with its mean KL and whether the line
    search accepted it."""
    from .trpo import TRPOSettings, trpo_step

    cfg, model = algorithm.config, algorithm.model
    if cfg.step_loss_weights:
        raise ValueError("outer-optimizer trpo takes the surrogate after the last inner step: drop step-loss-weights")
    if algorithm.sync is not None:
        raise ValueError("outer-optimizer trpo runs in one process (its line search needs every task's samples)")
    settings = settings or TRPOSettings()
    obj = trpo_objective(model, params, batch, cfg.inner_lr, cfg.inner_steps if inner else 0, first_order,
                         settings.hvp_fraction, settings.pre_update_kl)
    admissible = None
    if settings.pre_update_max_kl is not None and obj.support:
        pre_kl = pre_update_kl(model, params, obj.support[0])

        def admissible(candidate):
            return pre_kl(candidate) <= settings.pre_update_max_kl
    res = trpo_step(list(params.values()), obj.evaluate, settings, obj.hvp,
                    obj.gradient() if obj.gradient is not None else None, admissible)
    pre_cost = obj.support[0].cost.mean() if obj.support else obj.query.cost.mean()
    if inner:
        post_cost = obj.query.cost.mean()
    else:  # the pretrained policy's post-update cost: a detached copy fine-tuned by the test-time rule, for comparison
        scored = adapt_objective(model, batch, OrderedDict((k, v.detach()) for k, v in params.items()),
                                 max(cfg.inner_steps, 1), cfg.inner_lr)
        with torch.no_grad():
            post_cost = batch.query_loss(model, scored.params)[1].mean()
    return algorithm._metrics(pre_cost, post_cost) | {"mean_kl": res.kl, "trpo_accepted": float(res.accepted)}
