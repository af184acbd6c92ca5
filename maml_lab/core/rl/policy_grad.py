"""The REINFORCE surrogate's gradient and Hessian-vector products for the Gaussian ReLU MLP policy, without autograd.

Why: MAML's meta-gradient on 2-D navigation differentiates a policy-gradient step (second order) over 20 goals x
20 trajectories x 100 steps = 40,000 state-action pairs before and after the step. Autograd builds and walks a
double-backward graph over [goals, steps, 100] tensors whose elementwise passes (ReLU masks, gradient sums) cost
about as much as the matmuls. The same numbers come from one explicit backward pass per sampling and Pearlmutter's
R-operator (an exact Hessian-vector product) at theta, where every weight is shared by the tasks so that the sums
over tasks fold into single matmuls. The arithmetic is what autograd does; what goes is the graph.

The surrogate of task i (core/rl/pg.py's surrogate, rllab's VPG) is S_i = -sum_j c_ij log pi(a_j | s_j) with
c_ij = advantage * mask / number of valid steps, constant. With z = (a - mu(s)) exp(-log_std):
    dS/dmu = c (mu - a) exp(-2 log_std),    dS/dlog_std = sum_j c_j (1 - z_j^2),
and mu is the MLP, backpropagated as usual. The R-operator pushes a direction V (per task) through the forward
pass (R(mu)), through both derivatives above and back through the network (ReLU' is piecewise constant, so only the
cross terms of the weights remain). Shapes: obs [B, M, in], actions [B, M, A], c [B, M]; parameters shared
([out, in]) or per task ([B, out, in]), in the policy's order (`0.weight`, `0.bias`, ..., `log_std`).
Equal to autograd in float64 (tests/core/test_policy_grad.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def supported(policy) -> bool:
    """The explicit path covers the Gaussian MLP policy with ReLU hidden layers (others take autograd)."""
    from .policy import GaussianMLPPolicy

    return isinstance(policy, GaussianMLPPolicy) and policy.activation == "relu"


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1])


def _times(x: torch.Tensor, w: torch.Tensor, transpose: bool, bias: torch.Tensor | None = None,
           into: torch.Tensor | None = None) -> torch.Tensor:
    """x [B, M, k] times w^T (transpose) or w, plus bias, or added into `into` (in place, contiguous). w shared
    [a, b] (the tasks folded into the rows of one matmul) or per task [B, a, b]; bias [out] or [B, out]."""
    wt = w.transpose(-2, -1) if transpose else w
    if w.dim() == 2:
        if into is not None:
            _flat(into).addmm_(_flat(x), wt)
            return into
        out = _flat(x) @ wt if bias is None else torch.addmm(bias, _flat(x), wt)
        return out.view(x.shape[0], x.shape[1], wt.shape[-1])
    if into is not None:
        return into.baddbmm_(x, wt)
    return torch.bmm(x, wt) if bias is None else torch.baddbmm(bias.unsqueeze(1), x, wt)


def _outer(d: torch.Tensor, h: torch.Tensor, summed: bool, into: torch.Tensor | None = None) -> torch.Tensor:
    """sum over rows of d^T h: per task [B, out, in], or summed over the tasks too [out, in] (one matmul); added
    into `into` in place when given."""
    if summed:
        return _flat(d).t() @ _flat(h) if into is None else into.addmm_(_flat(d).t(), _flat(h))
    dt = d.transpose(1, 2)
    return torch.bmm(dt, h) if into is None else into.baddbmm_(dt, h)


def _rows(d: torch.Tensor, summed: bool) -> torch.Tensor:
    return d.sum((0, 1)) if summed else d.sum(1)


@dataclass
class Pass:
    """One forward and backward pass of the surrogate at some parameters on some samples, kept for the R-operator."""

    inputs: list[torch.Tensor]  # the input of each linear layer [B, M, width] (obs, then the hidden activations)
    masks: list[torch.Tensor | None]  # ReLU' of each hidden layer's output, as 0/1 in the dtype (None for obs)
    deltas: list[torch.Tensor]  # dS/d(output of each linear layer) [B, M, width]
    mean: torch.Tensor  # [B, M, A]
    diff: torch.Tensor  # (mu - a) exp(-2 log_std) [B, M, A]
    inv_var: torch.Tensor  # exp(-2 log_std), broadcastable against [B, M, A]
    weights: torch.Tensor  # c [B, M, 1]


class PolicyGradient:
    """Explicit surrogate gradients and Hessian-vector products of a Gaussian ReLU MLP policy (module docstring)."""

    def __init__(self, policy):
        if not supported(policy):
            raise ValueError("the explicit policy gradient takes a GaussianMLPPolicy with ReLU hidden layers")
        self.names = list(policy.param_shapes())
        self.layers = policy.num_layers

    @staticmethod
    def _log_std(params):
        s = params["log_std"]
        return s.unsqueeze(1) if s.dim() == 2 else s  # per task [B, 1, A] or shared [A]

    def run(self, params, obs: torch.Tensor, actions: torch.Tensor, c: torch.Tensor, summed: bool = False,
            forward: tuple[list[torch.Tensor], torch.Tensor] | None = None):
        """(gradient of sum_i S_i, the pass): gradients per task [B, ...] (summed: of the sum over tasks, shared
        shapes), in the policy's parameter order. `forward`: the hidden layers' outputs and the means at `params`
        on these rows, where the caller has them (the rollout that sampled them computed them)."""
        if forward is None:
            inputs, h = [obs], obs
            for i in range(self.layers):
                h = _times(h, params[f"{2 * i}.weight"], True, params[f"{2 * i}.bias"])
                if i < self.layers - 1:
                    h = h.clamp_min_(0)
                    inputs.append(h)
            mean = h
        else:
            inputs, mean = [obs, *forward[0]], forward[1]
        masks = [None] + [torch.sign(h) for h in inputs[1:]]  # ReLU outputs are >= 0: sign is ReLU' (0 at 0)
        inv_var = torch.exp(-2 * self._log_std(params))
        weights = c.unsqueeze(-1)
        err = mean - actions
        diff = err * inv_var
        d = diff * weights  # dS/dmu
        grads: dict[str, torch.Tensor] = {"log_std": _rows(weights * (1 - err * diff), summed)}  # z^2 = err * diff
        deltas: list[torch.Tensor] = [d] * self.layers
        for i in range(self.layers - 1, -1, -1):
            deltas[i] = d
            grads[f"{2 * i}.weight"] = _outer(d, inputs[i], summed)
            grads[f"{2 * i}.bias"] = _rows(d, summed)
            if i > 0:
                d = _times(d, params[f"{2 * i}.weight"], False).mul_(masks[i])
        return [grads[k] for k in self.names], Pass(inputs, masks, deltas, mean, diff, inv_var, weights)

    def hvp(self, params, p: Pass, actions: torch.Tensor, direction, summed: bool = True):
        """sum_i H_i V_i (summed) or each H_i V_i, H_i the Hessian of S_i at `params` (the pass `p` was taken there),
        V_i = direction (per task [B, ...] or shared, in the policy's order)."""
        v = dict(zip(self.names, direction))
        # R-forward: R(input of each layer) (the observations are constant) and R(mu)
        r_inputs: list[torch.Tensor | None] = [None]
        for i in range(self.layers):
            rz = _times(p.inputs[i], v[f"{2 * i}.weight"], True, v[f"{2 * i}.bias"])
            if i > 0:
                rz = _times(r_inputs[i], params[f"{2 * i}.weight"], True, into=rz)
            if i < self.layers - 1:
                r_inputs.append(rz.mul_(p.masks[i + 1]))
        r_mean = rz
        v_log_std = self._log_std(v)
        # R of dS/dmu = c (mu - a) exp(-2 log_std) and of dS/dlog_std = sum c (1 - z^2)
        rd = (r_mean * p.inv_var - 2 * p.diff * v_log_std) * p.weights
        out: dict[str, torch.Tensor] = {
            "log_std": _rows(2 * p.weights * p.diff * ((p.mean - actions) * v_log_std - r_mean), summed)}
        for i in range(self.layers - 1, -1, -1):
            d = p.deltas[i]
            rw = _outer(rd, p.inputs[i], summed)
            if i > 0:
                rw = _outer(d, r_inputs[i], summed, into=rw)
            out[f"{2 * i}.weight"] = rw
            out[f"{2 * i}.bias"] = _rows(rd, summed)
            if i > 0:  # R(d_{i-1}) = (R(d_i) W_i + d_i V_i) * ReLU'
                t = _times(d, v[f"{2 * i}.weight"], False)
                rd = _times(rd, params[f"{2 * i}.weight"], False, into=t).mul_(p.masks[i])
        return [out[k] for k in self.names]
