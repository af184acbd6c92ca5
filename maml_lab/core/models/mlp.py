"""Functional models: parameters are an ordered dict of tensors, the forward pass is a pure function.

Every model also works on a *batch of parameter sets* (a leading task dimension on every tensor), which is
how a meta-batch of adapted models runs as one vectorized computation. Parameter names are those of the
equivalent `torch.nn.Sequential`, so an exported initialization loads into plain PyTorch.
ReLU/tanh MLPs with the MSE loss also offer `explicit_meta_gradient`: the MAML/FOMAML meta-gradient by explicit
backpropagation and Hessian-vector products (mlp_meta.py), without the autograd graph that dominates the cost
of a meta-step on networks this small.
A parameter dict may also carry CAVIA's context (`context`, `context.0.weight`: models/context.py): the context
then enters the first layer as extra inputs, as the reference concatenates it to x.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from . import context as ctx

Params = "OrderedDict[str, torch.Tensor]"

ACTIVATIONS = {
    "relu": (F.relu, nn.ReLU),
    "tanh": (torch.tanh, nn.Tanh),
    "gelu": (F.gelu, nn.GELU),
    "silu": (F.silu, nn.SiLU),
}


class MLP:
    """Fully connected network, e.g. the MAML paper's 1-40-40-1 ReLU regressor."""

    def __init__(self, sizes=(1, 40, 40, 1), activation: str = "relu"):
        sizes = tuple(int(s) for s in sizes)
        if len(sizes) < 2 or any(s < 1 for s in sizes):
            raise ValueError(f"MLP sizes must be at least two positive integers, got {list(sizes)}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r} (one of {', '.join(ACTIVATIONS)})")
        self.sizes = sizes
        self.activation = activation
        self._act = ACTIVATIONS[activation][0]

    def spec(self) -> dict:
        return {"kind": "mlp", "sizes": list(self.sizes), "activation": self.activation}

    @property
    def num_layers(self) -> int:
        return len(self.sizes) - 1

    def context_init(self, num_context: int, generator: torch.Generator, layer: int | None = None, device=None,
                     dtype=None) -> "OrderedDict[str, torch.Tensor]":
        """CAVIA's context network for `num_context` context inputs: the first layer's context columns. An MLP takes
        its context at the input, where the reference puts it (`layer`, which conv-4 block a FiLM layer modulates,
        does not apply)."""
        return OrderedDict((k, v.to(device)) for k, v in
                           ctx.mlp_init(self.sizes, num_context, generator, dtype or torch.float32).items())

    def param_shapes(self) -> "OrderedDict[str, tuple[int, ...]]":
        shapes = OrderedDict()
        for i in range(self.num_layers):
            fan_in, fan_out = self.sizes[i], self.sizes[i + 1]
            shapes[f"{2 * i}.weight"] = (fan_out, fan_in)
            shapes[f"{2 * i}.bias"] = (fan_out,)
        return shapes

    def init_params(self, generator: torch.Generator, device=None, dtype=None) -> "OrderedDict[str, torch.Tensor]":
        """nn.Linear's default initialization, drawn from `generator` so runs are reproducible."""
        dtype = dtype or torch.float32
        params = OrderedDict()
        for name, shape in self.param_shapes().items():
            fan_in = self.sizes[int(name.split(".")[0]) // 2]
            bound = 1.0 / math.sqrt(fan_in)
            t = (torch.rand(shape, generator=generator, dtype=dtype) * 2 - 1) * bound
            params[name] = t.to(device)
        return params

    def forward(self, params, x: torch.Tensor) -> torch.Tensor:
        return self._layers(params, x, 0, self.num_layers)

    def _layers(self, params, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Layers start..stop-1 on x (the input of layer `start`); params shared or per-task ([B, ...])."""
        h = x
        last = self.num_layers - 1
        context = self._context_term(params, x) if start == 0 else None
        for i in range(start, stop):
            w = params[f"{2 * i}.weight"]
            b = params[f"{2 * i}.bias"]
            if w.dim() == 3:  # per-task weights [B, out, in]
                h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            else:
                h = torch.addmm(b, h.reshape(-1, h.shape[-1]), w.t()).view(*h.shape[:-1], w.shape[0])
            if i == 0 and context is not None:
                h = h + context
            if i != last:
                h = self._act(h)
        return h

    @staticmethod
    def _context_term(params, x: torch.Tensor) -> torch.Tensor | None:
        """What the context adds to the first layer's pre-activation, [B, 1, hidden] (None without a context): the
        layer's context columns times the task's context, i.e. `Linear(inputs + k)` on [x, context]."""
        if ctx.CONTEXT not in params:
            return None
        c = ctx.per_task(params[ctx.CONTEXT], x.shape[0])
        return ctx.linear(c, params[ctx.MLP_WEIGHT]).unsqueeze(1)

    def features(self, params, x: torch.Tensor) -> torch.Tensor:
        """The last hidden layer's output, the head's input [..., sizes[-2]] (the input itself without hidden
        layers): a linear probe's or a prototype classifier's features. The head's entries are not read."""
        return self._layers(params, x, 0, self.num_layers - 1)

    def apply_head(self, params, feats: torch.Tensor) -> torch.Tensor:
        """The last linear layer on `features` (shared or per-task [B, ...] head)."""
        return self._layers(params, feats, self.num_layers - 1, self.num_layers)

    def head_names(self, params=None) -> tuple[str, ...]:
        """The head: the last linear layer (what ANIL adapts and BOIL holds fixed in the inner loop)."""
        last = 2 * (self.num_layers - 1)
        return (f"{last}.weight", f"{last}.bias")

    def layer_groups(self) -> "OrderedDict[str, tuple[str, ...]]":
        """Each layer's label and parameter names, input to output (the per-layer view)."""
        groups = OrderedDict()
        for i in range(self.num_layers):
            label = "head" if i == self.num_layers - 1 else f"layer {i + 1}"
            groups[label] = (f"{2 * i}.weight", f"{2 * i}.bias")
        return groups

    def layer_activations(self, params, x: torch.Tensor) -> list[torch.Tensor]:
        """Each layer's output [B, N, features] (after its nonlinearity; the head's: the predictions), in
        `layer_groups` order. params: shared or per-task, as `forward`."""
        out = []
        h = x
        last = self.num_layers - 1
        context = self._context_term(params, x)
        for i in range(self.num_layers):
            w = params[f"{2 * i}.weight"]
            b = params[f"{2 * i}.bias"]
            if w.dim() == 3:  # per-task weights [B, out, in]
                h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            else:
                h = torch.addmm(b, h.reshape(-1, h.shape[-1]), w.t()).view(*h.shape[:-1], w.shape[0])
            if i == 0 and context is not None:
                h = h + context
            if i != last:
                h = self._act(h)
            out.append(h)
        return out

    def batched_loss_grad(self, params, x: torch.Tensor, y: torch.Tensor, loss_fn):
        """Per-task MSE losses [B] and their gradients, by explicit backpropagation; None if unsupported.

        Written with differentiable tensor ops, so autograd can differentiate *through* the gradient
        (MAML's second-order term) without a double-backward pass: about 10% fewer dispatched ops than
        `autograd.grad(create_graph=True)` on the small networks where dispatch overhead dominates.
        params: per-task tensors [B, ...]. Only ReLU/tanh MLPs with the MSE loss take this path.
        """
        from ..tasks.losses import mse_per_task

        if loss_fn is not mse_per_task or self.activation not in ("relu", "tanh") or ctx.has_context(params):
            return None
        acts = [x]
        h = x
        last = self.num_layers - 1
        for i in range(self.num_layers):
            w, b = params[f"{2 * i}.weight"], params[f"{2 * i}.bias"]
            z = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            if i == last:
                h = z
                break
            h = torch.relu(z) if self.activation == "relu" else torch.tanh(z)
            acts.append(h)
        diff = h - y
        with torch.no_grad():  # reported, never differentiated
            losses = diff.pow(2).flatten(1).mean(1)
        delta = diff.mul_(2.0 / (diff.shape[1] * diff.shape[2]))  # d(mean squared error)/d(output)
        grads = {}
        for i in reversed(range(self.num_layers)):
            grads[f"{2 * i}.weight"] = torch.bmm(delta.transpose(1, 2), acts[i])
            grads[f"{2 * i}.bias"] = delta.sum(1)
            if i > 0:
                delta = torch.bmm(delta, params[f"{2 * i}.weight"])
                h = acts[i]
                if self.activation == "relu":  # relu's backward as one differentiable kernel
                    delta = torch.ops.aten.threshold_backward(delta, h, 0.0)
                else:
                    delta = delta * (1 - h * h)
        return losses, [grads[k] for k in params]

    def explicit_meta_gradient(self, params, batch, loss_fn, steps: int, lr: float, first_order: bool,
                               names=None):
        """MAML/FOMAML meta-gradient without autograd (`mlp_meta`), or None where unsupported.

        Supported: ReLU/tanh with the MSE loss, every parameter adapted (names None). The algorithms use it when
        it is not None: on the small sinusoid networks it is about twice as fast as differentiating through `adapt`
        (no graph to build).
        """
        from . import mlp_meta

        if names is not None or not mlp_meta.supports(self, loss_fn) or ctx.has_context(params):
            return None
        return mlp_meta.meta_gradient(self, params, batch.x_support, batch.y_support, batch.x_query,
                                      batch.y_query, steps, lr, first_order)

    def torch_module(self) -> nn.Module:
        act = ACTIVATIONS[self.activation][1]
        layers: list[nn.Module] = []
        for i in range(self.num_layers):
            layers.append(nn.Linear(self.sizes[i], self.sizes[i + 1]))
            if i != self.num_layers - 1:
                layers.append(act())
        return nn.Sequential(*layers)


def clone_params(params) -> "OrderedDict[str, torch.Tensor]":
    return OrderedDict((k, v.detach().clone()) for k, v in params.items())


def detach_params(params) -> "OrderedDict[str, torch.Tensor]":
    """The same values cut from the autograd graph (no copy)."""
    return OrderedDict((k, v.detach()) for k, v in params.items())

