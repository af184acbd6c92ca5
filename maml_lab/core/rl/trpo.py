"""TRPO's outer step as cbfinn/maml_rl takes it (rllab's ConjugateGradientOptimizer inside MAMLTRPO).

Given a differentiable surrogate L(theta) and the mean KL divergence D(theta) between the policies sampled with
(old) and the ones theta gives (new), one step:
1. g = dL/dtheta at theta_old;
2. x = CG(H + reg I, g), 10 conjugate-gradient iterations on Hessian-vector products of D (reg_coeff 1e-2, the
   damping of pytorch-maml-rl and OpenAI baselines' TRPO; the reference's 1e-5 let seed 1 run away, see
   TRPOSettings). The products are exact: autograd of autograd of D, so for MAML they run through the inner
   policy-gradient step (the reference approximates them by finite differences of dD/dtheta), or the caller's
   exact Gauss-Newton product (rl/objective.py by autograd, rl/explicit_trpo.py by explicit passes);
3. the full step s = sqrt(2 max_kl / (x^T H x + 1e-8)) x, then a backtracking line search over 0.8^k s, k = 0..14:
   the first candidate whose surrogate is below L(theta_old) and whose KL is <= max_kl is taken; when none is, theta
   stays (the reference's "Line search condition violated. Rejecting the step!").
Everything here is on flat vectors over the tensors of theta; the objective that builds L and D (and the inner step
they go through) is rl/objective.py's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TRPOSettings:
    """The reference's ConjugateGradientOptimizer defaults and MAMLTRPO's step size (max KL 0.01)."""

    max_kl: float = 0.01
    cg_iters: int = 10
    # the damping: 1e-2, not the reference's 1e-5. For MAML the KL's Hessian J^T M J (I - lr H) has near-null
    # directions, the ones the inner step cancels ((I - lr H) v ~ 0): CG at 1e-5 amplifies them, theta moves far
    # along them without moving the post-update policies the KL bounds, and the pre-update policy, which samples the
    # inner step's data, drifts (seed 1 ran away at 20 goals, and at 40 with every goal's products). 1e-2 is the
    # damping of pytorch-maml-rl's MetaLearner and OpenAI baselines' TRPO; measured on seeds 0-2 at the defaults,
    # MAML after two steps -4.5 / -4.8 / -4.5 in the paper's protocol against -4.8 / -7.5 / -5.0 at 1e-5
    # (docs/navigation.md, Numbers)
    reg_coeff: float = 1e-2
    backtrack_ratio: float = 0.8
    max_backtracks: int = 15
    # the share of the meta-batch's tasks the KL's Hessian-vector products use (the reference: subsample_factor 1).
    # A quarter (5 of 20 goals, 10,000 post-update steps) makes the step about 2.5x cheaper on a CPU; the line
    # search still checks every task's KL and surrogate
    hvp_fraction: float = 0.25
    # also bound the pre-update policies' KL (added to the post-update one): the reference bounds the post-update
    # policies only (kl_constrain_step -1), which leaves theta free along directions the inner step cancels
    pre_update_kl: bool = False
    # a line-search check only (the step's direction and scale stay the reference's): a candidate is taken only when
    # the pre-update policies' mean KL(pi_theta_old || pi_theta) on the pre-update samples is at most this (None: no
    # check, the reference). The post-update bound leaves the pre-update policy free to move far (KL 0.15-0.39 in
    # the steps that sent seed 1's pre-update policy away, docs/navigation.md)
    pre_update_max_kl: float | None = None


@dataclass
class TRPOResult:
    accepted: bool
    loss_before: float
    loss_after: float
    kl: float  # the mean KL of the accepted step (0 when rejected)
    backtracks: int  # line-search candidates tried before the accepted one (or all of them)


def flatten(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vector: torch.Tensor, like) -> list[torch.Tensor]:
    out, start = [], 0
    for t in like:
        out.append(vector[start:start + t.numel()].view_as(t))
        start += t.numel()
    return out


def conjugate_gradient(hvp: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iters: int = 10,
                       residual_tol: float = 1e-10, with_residual: bool = False):
    """Approximately solve A x = b for symmetric positive definite A given as `hvp` (rllab's krylov.cg). With
    `with_residual`: (x, b - A x), so a caller reads x^T A x without one more product."""
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rdotr = r.dot(r)
    for _ in range(iters):
        z = hvp(p)
        alpha = rdotr / p.dot(z)
        x = x + alpha * p
        r = r - alpha * z
        new_rdotr = r.dot(r)
        p = r + (new_rdotr / rdotr) * p
        rdotr = new_rdotr
        if float(rdotr) < residual_tol:
            break
    return (x, r) if with_residual else x


def gaussian_kl(mean_old: torch.Tensor, log_std_old: torch.Tensor, mean_new: torch.Tensor,
                log_std_new: torch.Tensor) -> torch.Tensor:
    """KL(old || new) of diagonal Gaussians, summed over the last (action) dimension (rllab's DiagonalGaussian.kl)."""
    var_old, var_new = torch.exp(2 * log_std_old), torch.exp(2 * log_std_new)
    kl = (mean_old - mean_new).pow(2) + var_old - var_new
    return (kl / (2 * var_new + 1e-8) + log_std_new - log_std_old).sum(-1)


def kl_hvp(kl: torch.Tensor, params: list[torch.Tensor], reg_coeff: float = 0.0):
    """v -> (d^2 kl / d theta^2) v + reg v, exact (double backward); `kl` must be built from `params` with its graph
    (and through any inner step with create_graph=True)."""
    grads = torch.autograd.grad(kl, params, create_graph=True)
    flat_grad = flatten(grads)

    def hvp(v: torch.Tensor) -> torch.Tensor:
        hv = torch.autograd.grad(flat_grad.dot(v), params, retain_graph=True, allow_unused=True)
        hv = [torch.zeros_like(p) if h is None else h for h, p in zip(hv, params)]
        return flatten(hv).detach() + reg_coeff * v

    return hvp


Evaluate = Callable[[list[torch.Tensor], bool], tuple[torch.Tensor, torch.Tensor]]


def trpo_step(params: list[torch.Tensor], evaluate: Evaluate,
              settings: TRPOSettings = TRPOSettings(),
              hvp: Callable[[torch.Tensor], torch.Tensor] | None = None,
              gradient: tuple[float, torch.Tensor] | None = None,
              admissible: Callable[[list[torch.Tensor]], bool] | None = None) -> TRPOResult:
    """One TRPO step on the leaf tensors `params` (updated in place when the line search accepts).

    evaluate(tensors, differentiable) -> (surrogate, mean KL), scalars: with differentiable=True built from `tensors`
    with their graph (the gradient, and the KL's Hessian unless `hvp` is given); otherwise only their values are used
    (the line search's candidates). `hvp`: v -> (d^2 KL / d theta^2 at params) v, when the caller has a cheaper exact
    product than double backward (rl/objective.py's Gauss-Newton form, rl/explicit_trpo.py's); the damping is added
    here. `gradient`: (the surrogate at params, its gradient as a flat vector), when the caller has them (then
    evaluate is called on the line search's candidates only; `hvp` must be given too). `admissible`: one more
    condition a line-search candidate must meet (TRPOSettings.pre_update_max_kl)."""
    if gradient is not None and hvp is None:
        raise ValueError("trpo_step: a given gradient needs the KL's Hessian-vector product (hvp) too")
    with torch.enable_grad():
        if gradient is not None:
            loss, g = torch.as_tensor(gradient[0]), gradient[1].detach()
        else:
            loss, kl = evaluate(params, True)
            g = flatten(torch.autograd.grad(loss, params, retain_graph=hvp is None)).detach()
        if hvp is None:
            product = kl_hvp(kl, params, settings.reg_coeff)
        else:
            def product(v):
                return hvp(v) + settings.reg_coeff * v
        direction, residual = conjugate_gradient(product, g, settings.cg_iters, with_residual=True)
        shs = float(direction.dot(g - residual))  # x^T A x
    loss_before = float(loss.detach())
    scale = math.sqrt(2.0 * settings.max_kl / (shs + 1e-8)) if shs >= 0 else float("nan")
    if not math.isfinite(scale):
        scale = 1.0
    full_step = scale * direction
    old = [p.detach().clone() for p in params]
    tried, new_loss, new_kl = 0, float("nan"), float("nan")
    for k in range(settings.max_backtracks):
        tried = k + 1
        step = unflatten(full_step * settings.backtrack_ratio ** k, old)
        candidate = [(p - s).detach() for p, s in zip(old, step)]
        loss_k, kl_k = evaluate(candidate, False)
        new_loss, new_kl = float(loss_k), float(kl_k)
        if new_loss < loss_before and new_kl <= settings.max_kl and (admissible is None or admissible(candidate)):
            with torch.no_grad():
                for p, c in zip(params, candidate):
                    p.copy_(c)
            return TRPOResult(True, loss_before, new_loss, new_kl, k)
    return TRPOResult(False, loss_before, loss_before, 0.0, tried)
