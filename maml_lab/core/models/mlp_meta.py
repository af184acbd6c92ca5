"""MAML's exact meta-gradient for ReLU/tanh MLPs with the MSE loss, with no autograd at all.

Why this exists: on the small networks of the sinusoid benchmark (1-40-40-1, meta-batch 25, K = 10) a MAML
meta-step is a few hundred tiny kernels, and differentiating through `adapt` adds autograd's cost on top: ~190
dispatched ops (30 of them matmuls) plus building and walking a double-backward graph. Here the same numbers come
from explicit batched backpropagation plus Pearlmutter's R-operator (exact Hessian-vector products): ~135 ops
(the same 30 matmuls) with no graph, about half the time of the autograd path on one CPU thread
(benchmarks/bench_meta_step.py: the MAML meta-step went from ~10x to ~16x a per-task autograd loop). Steps:

* inner loop: phi_0 = theta, phi_{k+1} = phi_k - alpha * g_i(phi_k), g_i the gradient of task i's support loss.
  At phi_0 = theta the weights are shared, so the tasks are folded into the rows of one matmul;
* query: v_i = d(mean_j L_query_j)/d(phi_n,i), by an explicit backward pass with per-task weights (bmm);
* reverse through the inner steps: v_i <- v_i - alpha * H_i(phi_k) v_i for k = n-1 .. 0, where H_i(phi_k) v_i
  is an R-forward/R-backward pass at phi_k (reusing that step's activations and deltas). For ReLU sigma'' = 0
  but the cross-layer terms remain; tanh adds its sigma'' term. At k = 0 the sum over tasks is folded into
  the matmuls, so the meta-gradient sum_i v_i comes out directly;
* first order (FOMAML): the mean of the query gradients, also folded.

The result equals the autograd path (`adapt(create_graph=True)` + `autograd.grad`) to rounding error
(tests/core/test_mlp_meta.py). Only device-agnostic tensor ops: float32/float64, CPU or CUDA.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

SUPPORTED_ACTIVATIONS = ("relu", "tanh")


@dataclass
class ExplicitMetaGradient:
    grads: list[torch.Tensor]  # d(mean query loss)/d(theta), in the order of the parameter dict
    meta_loss: torch.Tensor  # mean post-adaptation query loss (scalar)
    support_losses: list[torch.Tensor]  # [B] per task before each inner step
    params: "OrderedDict[str, torch.Tensor]"  # adapted parameters phi_n per task, [B, ...]
    query_pred: torch.Tensor  # predictions of the adapted models on the query sets [B, Q, out]


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1])


def _linear(h, w, b):
    """h [B, N, in] times w^T plus b; w shared [out, in] (tasks folded into the rows) or per task [B, out, in]."""
    if w.dim() == 2:
        return torch.addmm(b, _flat(h), w.t()).view(h.shape[0], h.shape[1], w.shape[0])
    return torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))


def _times_weight(d, w):
    """d [B, N, out] times w (backpropagation through a linear layer), w shared or per task."""
    if w.dim() == 2:
        return torch.mm(_flat(d), w).view(d.shape[0], d.shape[1], w.shape[1])
    return torch.bmm(d, w)


class _Point:
    """Forward pass, per-task losses and (optionally) backward pass of the MLP at one parameter point.

    weights/biases: shared ([out, in]) or per task ([B, out, in]). scale: d(loss)/d(output) = scale * (out - y).
    reduce: weight gradients summed over tasks instead of per task. keep: keep what an R-pass needs.
    """

    def __init__(self, weights, biases, x, y, relu: bool, scale: float | None, reduce: bool = False,
                 keep: bool = False):
        self.weights, self.relu = weights, relu
        layers = len(weights)
        self.hs = [x]  # input of each layer
        self.dacts: list = [None]  # tanh: sigma'(z) = 1 - h^2 for each hidden layer's input
        h = x
        for i in range(layers):
            h = _linear(h, weights[i], biases[i])
            if i < layers - 1:
                h = torch.relu(h) if relu else torch.tanh(h)
                self.hs.append(h)
                if not relu:
                    self.dacts.append(1 - h * h)
        self.out = h
        diff = h - y
        self.losses = diff.square().mean((1, 2))
        self.deltas: list = [None] * layers  # d(loss)/d(z_i), z_i the output of linear layer i
        self.curv: list = [None] * layers  # tanh: -2 h_i * delta_{i-1}, the sigma'' term of the R-backward
        self.grad_w: list = [None] * layers
        self.grad_b: list = [None] * layers
        if scale is None:
            return
        delta = diff.mul_(scale)
        for i in reversed(range(layers)):
            if keep:
                self.deltas[i] = delta
            if reduce:
                self.grad_w[i] = torch.mm(_flat(delta).t(), _flat(self.hs[i]))
                self.grad_b[i] = delta.sum((0, 1))
            else:
                self.grad_w[i] = torch.bmm(delta.transpose(1, 2), self.hs[i])
                self.grad_b[i] = delta.sum(1)
            if i > 0:
                e = _times_weight(delta, weights[i])
                if relu:
                    delta = torch.ops.aten.threshold_backward(e, self.hs[i], 0.0)
                else:
                    delta = e.mul_(self.dacts[i])
                    if keep:
                        self.curv[i] = self.hs[i] * delta * -2.0

    def hvp(self, dw, db, scale: float, reduce: bool):
        """Hessian of the per-task losses (scaled like the gradients) times per-task directions (dw, db).

        Pearlmutter's R-operator: an R-forward pass (directional derivatives of the pre-activations z and
        activations h) then an R-backward pass (directional derivatives of the deltas and of the gradients).
        reduce: the products summed over tasks.
        """
        hs, weights, relu, layers = self.hs, self.weights, self.relu, len(self.weights)
        r_h: list = [None] * layers
        r_z: list = [None] * layers
        for i in range(layers):
            rz = torch.baddbmm(db[i].unsqueeze(1), hs[i], dw[i].transpose(1, 2))
            if i > 0:
                if weights[i].dim() == 2:
                    _flat(rz).addmm_(_flat(r_h[i]), weights[i].t())
                else:
                    rz.baddbmm_(r_h[i], weights[i].transpose(1, 2))
            r_z[i] = rz
            if i < layers - 1:
                if relu:
                    r_h[i + 1] = torch.ops.aten.threshold_backward(rz, hs[i + 1], 0.0)
                else:
                    r_h[i + 1] = rz * self.dacts[i + 1]
        r_delta = r_z[-1].mul_(scale)
        out_w: list = [None] * layers
        out_b: list = [None] * layers
        for i in reversed(range(layers)):
            delta = self.deltas[i]
            if reduce:
                hw = torch.mm(_flat(r_delta).t(), _flat(hs[i]))
                if i > 0:
                    hw.addmm_(_flat(delta).t(), _flat(r_h[i]))
                out_b[i] = r_delta.sum((0, 1))
            else:
                hw = torch.bmm(r_delta.transpose(1, 2), hs[i])
                if i > 0:
                    hw.baddbmm_(delta.transpose(1, 2), r_h[i])
                out_b[i] = r_delta.sum(1)
            out_w[i] = hw
            if i > 0:
                t = _times_weight(r_delta, weights[i])
                t.baddbmm_(delta, dw[i])
                if relu:
                    r_delta = torch.ops.aten.threshold_backward(t, hs[i], 0.0)
                else:
                    r_delta = torch.addcmul(t.mul_(self.dacts[i]), self.curv[i], r_z[i - 1])
        return out_w, out_b


def supports(model, loss_fn) -> bool:
    from ..tasks.losses import mse_per_task

    return loss_fn is mse_per_task and getattr(model, "activation", None) in SUPPORTED_ACTIVATIONS


def meta_gradient(model, params, x_support, y_support, x_query, y_query, steps: int, lr: float,
                  first_order: bool) -> ExplicitMetaGradient:
    """MAML (or FOMAML) meta-gradient of the mean query loss after `steps` inner SGD steps of size `lr`.

    model: an MLP with activation relu or tanh, loss: MSE per task (see `supports`). params: theta, shared.
    """
    if steps < 0:
        raise ValueError(f"adaptation steps must be >= 0, got {steps}")
    names = list(params)
    layers = len(names) // 2
    relu = model.activation == "relu"
    num_tasks = x_support.shape[0]
    s_scale = 2.0 / (y_support.shape[1] * y_support.shape[2])  # d(per-task support MSE)/d(output) / (out - y)
    q_scale = 2.0 / (y_query.shape[1] * y_query.shape[2] * num_tasks)  # of the mean over tasks
    with torch.no_grad():
        weights = [params[f"{2 * i}.weight"].detach() for i in range(layers)]
        biases = [params[f"{2 * i}.bias"].detach() for i in range(layers)]
        points = []
        losses = []
        for _ in range(steps):
            point = _Point(weights, biases, x_support, y_support, relu, s_scale, keep=not first_order)
            losses.append(point.losses)
            if not first_order:
                points.append(point)
            weights = torch._foreach_add(weights, point.grad_w, alpha=-lr)
            biases = torch._foreach_add(biases, point.grad_b, alpha=-lr)
        if steps == 0:
            losses.append(_Point(weights, biases, x_support, y_support, relu, None).losses)
        per_task = not first_order and steps > 0
        query = _Point(weights, biases, x_query, y_query, relu, q_scale, reduce=not per_task)
        grad_w, grad_b = query.grad_w, query.grad_b
        if per_task:
            for k in reversed(range(steps)):
                reduce = k == 0  # at theta: sum over tasks folded into the matmuls
                hw, hb = points[k].hvp(grad_w, grad_b, s_scale, reduce)
                if reduce:
                    grad_w = [g.sum(0) for g in grad_w]
                    grad_b = [g.sum(0) for g in grad_b]
                torch._foreach_add_(grad_w, hw, alpha=-lr)
                torch._foreach_add_(grad_b, hb, alpha=-lr)
        grads = {}
        for i in range(layers):
            grads[f"{2 * i}.weight"] = grad_w[i]
            grads[f"{2 * i}.bias"] = grad_b[i]
        phi = OrderedDict()
        for i in range(layers):
            for key, value in ((f"{2 * i}.weight", weights[i]), (f"{2 * i}.bias", biases[i])):
                phi[key] = value if value.dim() > params[key].dim() else value.unsqueeze(0).expand(
                    num_tasks, *value.shape)
        phi = OrderedDict((k, phi[k]) for k in names)
        return ExplicitMetaGradient([grads[k] for k in names], query.losses.mean(), losses, phi, query.out)
