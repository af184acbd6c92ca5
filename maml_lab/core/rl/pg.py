"""The vanilla policy gradient (REINFORCE with a baseline) on batches of tasks x trajectories x time.

Conventions follow rllab as used by cbfinn/maml_rl (VPG inside MAML): discounted returns-to-go (discount 0.99,
GAE lambda 1), a linear feature baseline fitted per task on that task's own trajectories (rllab's
LinearFeatureBaseline: features clip(obs, -10, 10), obs^2, t/100, (t/100)^2, (t/100)^3, 1; ridge regression with
coefficient 1e-5, raised tenfold while the solution is not finite, up to 5 tries), advantages centred and scaled
per task over its valid steps (center_adv), and the surrogate -mean over valid steps of log pi(a|s) * advantage,
whose gradient is the policy gradient. Steps after an episode ended are masked out everywhere.
Shapes: obs [B, N, T, obs_dim], rewards and mask [B, N, T] (B tasks, N trajectories, T steps).
"""

from __future__ import annotations

import torch

BASELINE_REG = 1e-5


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, discount: float) -> torch.Tensor:
    """sum_{t' >= t} discount^(t' - t) r_t' over each trajectory's valid steps: [B, N, T]."""
    r = rewards * mask
    out = torch.empty_like(r)
    running = torch.zeros_like(r[..., 0])
    for t in range(r.shape[-1] - 1, -1, -1):
        running = r[..., t] + discount * running
        out[..., t] = running
    return out * mask


def baseline_features(obs: torch.Tensor) -> torch.Tensor:
    """rllab's LinearFeatureBaseline features per step: [B, N, T, 2 obs_dim + 4] (in the dtype of obs)."""
    t = torch.arange(obs.shape[-2], dtype=obs.dtype, device=obs.device) / 100.0
    t = t.view(*([1] * (obs.dim() - 2)), -1, 1).expand(*obs.shape[:-1], 1)
    o = obs.clamp(-10.0, 10.0)
    return torch.cat([o, o * o, t, t * t, t * t * t, torch.ones_like(t)], dim=-1)


def linear_baseline(obs: torch.Tensor, mask: torch.Tensor, returns: torch.Tensor, reg: float = BASELINE_REG,
                    tries: int = 5) -> torch.Tensor:
    """Per task, the ridge fit of the returns on the features of its valid steps, predicted at every step: [B, N, T].

    Solved in float64 (the normal equations of t^3 features are badly conditioned in float32)."""
    feats = baseline_features(obs.double())
    b = feats.shape[0]
    f = (feats * mask.double().unsqueeze(-1)).reshape(b, -1, feats.shape[-1])
    y = (returns.double() * mask.double()).reshape(b, -1, 1)
    gram = f.transpose(1, 2) @ f
    rhs = f.transpose(1, 2) @ y
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    # a task whose rollouts went non-finite (a diverged policy) is not fitted (LAPACK asserts on NaN): its baseline
    # is NaN, so its cost is too and the trainer stops the run as diverged
    finite = torch.isfinite(gram).all(dim=(1, 2)) & torch.isfinite(rhs).all(dim=(1, 2))
    gram = torch.where(finite.view(-1, 1, 1), gram, eye)
    rhs = torch.where(finite.view(-1, 1, 1), rhs, torch.zeros_like(rhs))
    coeffs = torch.where(finite.view(-1, 1, 1), torch.zeros_like(rhs), torch.full_like(rhs, float("nan")))
    todo = finite.clone()
    for _ in range(tries):
        sol = torch.linalg.lstsq(gram + reg * eye, rhs).solution
        ok = torch.isfinite(sol).all(dim=(1, 2)) & todo
        coeffs = torch.where(ok.view(-1, 1, 1), sol, coeffs)
        todo = todo & ~ok
        if not bool(todo.any()):
            break
        reg *= 10
    return (feats @ coeffs.unsqueeze(1)).squeeze(-1).to(returns.dtype)


def advantages(rewards: torch.Tensor, obs: torch.Tensor, mask: torch.Tensor, discount: float,
               center: bool = True, reg: float = BASELINE_REG) -> torch.Tensor:
    """Returns-to-go minus the per-task linear baseline, centred and scaled per task over valid steps (rllab's
    center_adv: (A - mean) / (std + 1e-8), population std); zero on masked steps. Constant (no gradient)."""
    with torch.no_grad():
        returns = discounted_returns(rewards, mask, discount)
        adv = (returns - linear_baseline(obs, mask, returns, reg)) * mask
        if center:
            dims = tuple(range(1, adv.dim()))
            count = mask.sum(dims, keepdim=True).clamp_min(1)
            mean = adv.sum(dims, keepdim=True) / count
            var = ((adv - mean).pow(2) * mask).sum(dims, keepdim=True) / count
            adv = (adv - mean) / (var.sqrt() + 1e-8) * mask
    return adv


def surrogate(log_probs: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per task: -sum(mask * log pi * A) / sum(mask), i.e. rllab's -mean over valid steps; [B]. Its gradient with
    respect to the policy parameters is the REINFORCE policy-gradient estimate (descent direction)."""
    dims = tuple(range(1, log_probs.dim()))
    return -(log_probs * adv * mask).sum(dims) / mask.sum(dims).clamp_min(1)
