"""The REINFORCE surrogate's gradient and Hessian-vector products for the Gaussian ReLU MLP policy, without autograd.

Why: MAML's meta-gradient on 2-D navigation differentiates a policy-gradient step (second order) over 20 goals x
20 trajectories x 100 steps = 40,000 state-action pairs before and after the step. Autograd builds and walks a
double-backward graph over [goals, 2,000, 100] tensors: 16 MB each, so its elementwise passes (ReLU masks,
gradient sums) run from memory and cost about as much as the matmuls. Here the same numbers come from one explicit
backward pass per sampling and Pearlmutter's R-operator (an exact Hessian-vector product), taken one task at a time:
a task's [2,000, 100] blocks (800 KB) stay in cache from one matmul to the next. The forward pass is not run again:
the rollout that sampled the steps kept the activations (core/tasks/navigation.py). Measured on a shared 2-core
CPU, a task at a time took half the time of the same passes over all tasks at once.

The surrogate of task i (core/rl/pg.py's surrogate, rllab's VPG) is S_i = -sum_j c_ij log pi(a_j | s_j) with
c_ij = advantage * mask / number of valid steps, constant. With z = (a - mu(s)) exp(-log_std):
    dS/dmu = c (mu - a) exp(-2 log_std),    dS/dlog_std = sum_j c_j (1 - z_j^2),
and mu is the MLP, backpropagated as usual. The R-operator pushes a direction V through the forward pass (R(mu)),
through both derivatives above and back through the network (ReLU' is piecewise constant, so only the cross terms
of the weights remain). Shapes: obs [B, M, in], actions [B, M, A], c [B, M]; parameters shared ([out, in]) or per
task ([B, out, in]), in the policy's order (`0.weight`, `0.bias`, ..., `log_std`). Results per task [B, ...] or
summed over the tasks (shared shapes). Equal to autograd in float64 (tests/core/test_policy_grad.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def supported(policy) -> bool:
    """The explicit path covers the Gaussian MLP policy with ReLU hidden layers (others take autograd)."""
    from .policy import GaussianMLPPolicy

    return isinstance(policy, GaussianMLPPolicy) and policy.activation == "relu"


@dataclass
class Pass:
    """One forward and backward pass of the surrogates at some parameters on some samples, kept for the R-operator."""

    inputs: list[torch.Tensor]  # the input of each linear layer [B, M, width] (obs, then the hidden activations)
    deltas: list[torch.Tensor]  # dS/d(output of each linear layer) [B, M, width]
    mean: torch.Tensor  # [B, M, A]
    actions: torch.Tensor  # [B, M, A]
    c: torch.Tensor  # [B, M]


class PolicyGradient:
    """Explicit surrogate gradients and Hessian-vector products of a Gaussian ReLU MLP policy (module docstring)."""

    def __init__(self, policy):
        if not supported(policy):
            raise ValueError("the explicit policy gradient takes a GaussianMLPPolicy with ReLU hidden layers")
        self.shapes = policy.param_shapes()
        self.names = list(self.shapes)
        self.layers = policy.num_layers

    def _task(self, params, i: int) -> dict:
        """Task i's tensors: a per-task tensor's slice, a shared one as it is."""
        return {k: v[i] if v.dim() > len(self.shapes[k]) else v for k, v in params.items()}

    def _outputs(self, b: int, summed: bool, like: torch.Tensor) -> dict:
        lead = () if summed else (b,)
        return {k: like.new_zeros(*lead, *shape) for k, shape in self.shapes.items()}

    @staticmethod
    def _accumulate(out: dict, i: int, summed: bool, name: str, value: torch.Tensor) -> None:
        (out[name] if summed else out[name][i]).add_(value)

    def forward(self, params, obs: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The hidden layers' outputs [B, M, width] and the means [B, M, A] (when the caller does not have them)."""
        hidden, means = [], []
        for i in range(obs.shape[0]):
            p, h, outs = self._task(params, i), obs[i], []
            for layer in range(self.layers):
                h = torch.addmm(p[f"{2 * layer}.bias"], h, p[f"{2 * layer}.weight"].t())
                if layer < self.layers - 1:
                    outs.append(h.clamp_min_(0))
            hidden.append(outs)
            means.append(h)
        return [torch.stack([t[k] for t in hidden]) for k in range(self.layers - 1)], torch.stack(means)

    def run(self, params, obs: torch.Tensor, actions: torch.Tensor, c: torch.Tensor, summed: bool = False,
            forward: tuple[list[torch.Tensor], torch.Tensor] | None = None, keep: bool = True):
        """(gradient of each S_i, or of their sum when `summed`; the pass for `hvp` when `keep`), in the policy's
        parameter order. `forward`: the hidden layers' outputs and the means at `params` on these rows, where the
        caller has them (the rollout that sampled them computed them)."""
        hidden, mean = forward if forward is not None else self.forward(params, obs)
        inputs = [obs, *hidden]
        deltas = [x.new_empty(*x.shape[:-1], self.shapes[f"{2 * k}.weight"][0]) for k, x in enumerate(inputs)
                  ] if keep else None
        b = obs.shape[0]
        out = self._outputs(b, summed, obs)
        for i in range(b):
            p = self._task(params, i)
            inv_var = torch.exp(-2 * p["log_std"])
            err = mean[i] - actions[i]
            diff = err * inv_var
            ci = c[i].unsqueeze(-1)
            d = diff * ci  # dS/dmu
            self._accumulate(out, i, summed, "log_std", (ci * (1 - err * diff)).sum(0))  # z^2 = err * diff
            for layer in range(self.layers - 1, -1, -1):
                if keep:
                    deltas[layer][i] = d
                x = inputs[layer][i]
                self._accumulate(out, i, summed, f"{2 * layer}.weight", d.t() @ x)
                self._accumulate(out, i, summed, f"{2 * layer}.bias", d.sum(0))
                if layer > 0:
                    d = (d @ p[f"{2 * layer}.weight"]).mul_(x > 0)
        grads = [out[k] for k in self.names]
        return grads, (Pass(inputs, deltas, mean, actions, c) if keep else None)

    def hvp(self, params, p: Pass, direction, summed: bool = True):
        """sum_i H_i V_i (summed) or each H_i V_i, H_i the Hessian of S_i at `params` (where the pass `p` was
        taken), V_i the direction (per task [B, ...] or shared, in the policy's order)."""
        b = p.mean.shape[0]
        out = self._outputs(b, summed, p.mean)
        direction = dict(zip(self.names, direction))
        for i in range(b):
            w, v = self._task(params, i), self._task(direction, i)
            inputs = [x[i] for x in p.inputs]
            # R-forward: R(input of each layer) (the observations are constant) and R(mu)
            r_inputs: list[torch.Tensor | None] = [None]
            for layer in range(self.layers):
                rz = torch.addmm(v[f"{2 * layer}.bias"], inputs[layer], v[f"{2 * layer}.weight"].t())
                if layer > 0:
                    rz.addmm_(r_inputs[layer], w[f"{2 * layer}.weight"].t())
                if layer < self.layers - 1:
                    r_inputs.append(rz.mul_(inputs[layer + 1] > 0))
            r_mean = rz
            # R of dS/dmu = c (mu - a) exp(-2 log_std) and of dS/dlog_std = sum c (1 - z^2)
            inv_var = torch.exp(-2 * w["log_std"])
            err = p.mean[i] - p.actions[i]
            diff = err * inv_var
            ci = p.c[i].unsqueeze(-1)
            rd = (r_mean * inv_var - 2 * diff * v["log_std"]) * ci
            self._accumulate(out, i, summed, "log_std", (2 * ci * diff * (err * v["log_std"] - r_mean)).sum(0))
            for layer in range(self.layers - 1, -1, -1):
                d, x = p.deltas[layer][i], inputs[layer]
                rw = rd.t() @ x
                if layer > 0:
                    rw.addmm_(d.t(), r_inputs[layer])
                self._accumulate(out, i, summed, f"{2 * layer}.weight", rw)
                self._accumulate(out, i, summed, f"{2 * layer}.bias", rd.sum(0))
                if layer > 0:  # R(d_{layer-1}) = (R(d) W + d V) * ReLU'
                    rd = (rd @ w[f"{2 * layer}.weight"]).addmm_(d, v[f"{2 * layer}.weight"]).mul_(x > 0)
        return [out[k] for k in self.names]
