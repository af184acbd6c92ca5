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

TRPO's KL Hessian (core/rl/explicit_trpo.py) takes one more product here, `gauss_newton`: J^T M J V with J the
Jacobian of the policy's outputs (the means on given rows, and log std) and M diagonal, the R-forward pass followed
by an ordinary backward pass. ReLU's derivative is applied with `threshold_backward` (what autograd's ReLU uses):
one pass over the [M, width] block, where `x > 0` and a multiplication by the boolean mask took six times as long.
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

    def head(self, n: int) -> "Pass":
        """The pass of the first n tasks."""
        return Pass([x[:n] for x in self.inputs], [d[:n] for d in self.deltas], self.mean[:n], self.actions[:n],
                    self.c[:n])


def _relu_grad(grad: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """grad where the ReLU's output is positive, else 0 (its derivative applied; one fused pass)."""
    return torch.ops.aten.threshold_backward(grad, output, 0)


# Products with a narrow side (the 2-D observations, the 2-D means) run several times faster in the orientation
# whose output is wide: [100, 2,000] x [2,000, 2] took 265 us where [2, 2,000] x [2,000, 100] took 48 us, and
# [2,000, 100] x [100, 2] 70 us where [2, 100] x [100, 2,000] took 50 us (one core, float32). The results are
# transposed views; the values are the same products.
NARROW = 8


def _weight_grad(d: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """d^T x (a layer's weight gradient: deltas [M, out], inputs [M, in])."""
    return (x.t() @ d).t() if x.shape[1] < d.shape[1] and x.shape[1] <= NARROW else d.t() @ x


def _affine(bias: torch.Tensor, x: torch.Tensor, w: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """bias + x w^T (x [M, in], w [out, in]); into `out` when given."""
    if w.shape[0] <= NARROW < x.shape[1]:
        y = torch.addmm(bias.unsqueeze(1), w, x.t()).t()
        return out.copy_(y) if out is not None else y
    return torch.addmm(bias, x, w.t(), out=out) if out is not None else torch.addmm(bias, x, w.t())


def _add_product_(acc: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """acc += x w^T in place, acc as _affine made it."""
    if acc.stride(0) == 1 and acc.dim() == 2 and acc.shape[1] > 1:  # a transposed view from _affine
        acc.t().addmm_(w, x.t())
        return acc
    return acc.addmm_(x, w.t())


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
        b, m = obs.shape[:2]
        outs = [obs.new_empty(b, m, self.shapes[f"{2 * layer}.weight"][0]) for layer in range(self.layers)]
        for i in range(b):
            p, h = self._task(params, i), obs[i]
            for layer in range(self.layers):
                h = _affine(p[f"{2 * layer}.bias"], h, p[f"{2 * layer}.weight"], out=outs[layer][i])
                if layer < self.layers - 1:
                    h.clamp_min_(0)
        return outs[:-1], outs[-1]

    def _backward(self, w: dict, inputs: list[torch.Tensor], d: torch.Tensor, out: dict, i: int, summed: bool,
                  deltas: list[torch.Tensor] | None = None) -> None:
        """Backpropagate d = dS/dmu [M, A] of one task through its layers (parameters w, layer inputs `inputs`),
        adding the weights' and biases' gradients to `out`; each layer's delta into `deltas` when given."""
        for layer in range(self.layers - 1, -1, -1):
            if deltas is not None:
                deltas[layer][i] = d
            x = inputs[layer]
            self._accumulate(out, i, summed, f"{2 * layer}.weight", _weight_grad(d, x))
            self._accumulate(out, i, summed, f"{2 * layer}.bias", d.sum(0))
            if layer > 0:
                d = _relu_grad(d @ w[f"{2 * layer}.weight"], x)

    def _r_forward(self, w: dict, v: dict, inputs: list[torch.Tensor]):
        """Pearlmutter's R-forward pass of one task: (R(input) of each layer, None for the observations; R(mu))."""
        r_inputs: list[torch.Tensor | None] = [None]
        for layer in range(self.layers):
            rz = _affine(v[f"{2 * layer}.bias"], inputs[layer], v[f"{2 * layer}.weight"])
            if layer > 0:
                rz = _add_product_(rz, r_inputs[layer], w[f"{2 * layer}.weight"])
            if layer < self.layers - 1:
                r_inputs.append(_relu_grad(rz, inputs[layer + 1]))
        return r_inputs, rz

    def run(self, params, obs: torch.Tensor, actions: torch.Tensor, c: torch.Tensor, summed: bool = False,
            forward: tuple[list[torch.Tensor], torch.Tensor] | None = None, keep: bool = True):
        """(gradient of each S_i, or of their sum when `summed`; the pass for `hvp` when `keep`), in the policy's
        parameter order. `forward`: the hidden layers' outputs and the means at `params` on these rows, where the
        caller has them (the rollout that sampled them computed them). Without `forward` and `keep`, each task's
        forward pass runs just before its backward pass (its blocks still in cache) and is not kept."""
        fused = forward is None and not keep
        if not fused:
            hidden, mean = forward if forward is not None else self.forward(params, obs)
            inputs = [obs, *hidden]
        deltas = [x.new_empty(*x.shape[:-1], self.shapes[f"{2 * k}.weight"][0]) for k, x in enumerate(inputs)
                  ] if keep else None
        b = obs.shape[0]
        out = self._outputs(b, summed, obs)
        for i in range(b):
            p = self._task(params, i)
            if fused:
                task_inputs = [obs[i]]
                for layer in range(self.layers):
                    h = _affine(p[f"{2 * layer}.bias"], task_inputs[-1], p[f"{2 * layer}.weight"])
                    task_inputs.append(h.clamp_min_(0) if layer < self.layers - 1 else h)
                mean_i = task_inputs.pop()
            else:
                task_inputs, mean_i = [x[i] for x in inputs], mean[i]
            inv_var = torch.exp(-2 * p["log_std"])
            err = mean_i - actions[i]
            diff = err * inv_var
            ci = c[i].unsqueeze(-1)
            self._accumulate(out, i, summed, "log_std", (ci * (1 - err * diff)).sum(0))  # z^2 = err * diff
            self._backward(p, task_inputs, diff * ci, out, i, summed, deltas)  # dS/dmu = c diff
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
            r_inputs, r_mean = self._r_forward(w, v, inputs)
            # R of dS/dmu = c (mu - a) exp(-2 log_std) and of dS/dlog_std = sum c (1 - z^2)
            inv_var = torch.exp(-2 * w["log_std"])
            err = p.mean[i] - p.actions[i]
            diff = err * inv_var
            ci = p.c[i].unsqueeze(-1)
            rd = (r_mean * inv_var - 2 * diff * v["log_std"]) * ci
            self._accumulate(out, i, summed, "log_std", (2 * ci * diff * (err * v["log_std"] - r_mean)).sum(0))
            for layer in range(self.layers - 1, -1, -1):
                d, x = p.deltas[layer][i], inputs[layer]
                rw = _weight_grad(rd, x)
                if layer > 0:
                    rw.addmm_(d.t(), r_inputs[layer])
                self._accumulate(out, i, summed, f"{2 * layer}.weight", rw)
                self._accumulate(out, i, summed, f"{2 * layer}.bias", rd.sum(0))
                if layer > 0:  # R(d_{layer-1}) = (R(d) W + d V) * ReLU'
                    rd = _relu_grad((rd @ w[f"{2 * layer}.weight"]).addmm_(d, v[f"{2 * layer}.weight"]), x)
        return [out[k] for k in self.names]

    def gauss_newton(self, params, inputs: list[torch.Tensor], direction, mean_weight: torch.Tensor,
                     std_weight: torch.Tensor, summed: bool = True):
        """sum_i J_i^T M_i J_i V_i (summed) or each, J_i the Jacobian of task i's outputs at `params` (its action
        means on the rows of `inputs`, the layers' inputs there [B, M, width], and its log std), M_i diagonal:
        `mean_weight` [B, M, A] on the means, `std_weight` [B, A] (or broadcastable) on log std. TRPO's KL Hessian
        at the old policy has this form (core/rl/explicit_trpo.py)."""
        b = inputs[0].shape[0]
        out = self._outputs(b, summed, inputs[0])
        direction = dict(zip(self.names, direction))
        std_weight = std_weight.expand(b, self.shapes["log_std"][0])
        for i in range(b):
            w, v = self._task(params, i), self._task(direction, i)
            task_inputs = [x[i] for x in inputs]
            _, r_mean = self._r_forward(w, v, task_inputs)
            self._accumulate(out, i, summed, "log_std", std_weight[i] * v["log_std"])
            self._backward(w, task_inputs, r_mean.mul_(mean_weight[i]), out, i, summed)
        return [out[k] for k in self.names]
