"""A Gaussian MLP policy as a functional model (parameters are an ordered dict of tensors).

The mean network's tensors have the names of the equivalent `torch.nn.Sequential` (`0.weight`, `0.bias`, `2.weight`,
...), and the state-independent log standard deviation is one more tensor, `log_std` [action_dim], so an exported
policy loads into plain PyTorch: for the default sizes, `nn.Sequential(nn.Linear(2, 100), nn.ReLU(), nn.Linear(100,
100), nn.ReLU(), nn.Linear(100, 2))` takes every tensor but `log_std` (`spec()["sizes"]` and `["activation"]`, recorded
in an export's metadata as `model`, give the layers of any other), and an action is `mean + exp(log_std) * N(0, 1)`.
Like the engine's other models it runs on a batch of parameter sets (a leading task dimension on every tensor).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from ..models.mlp import ACTIVATIONS, MLP

LOG_2PI = math.log(2 * math.pi)


class GaussianMLPPolicy:
    """pi(a | s) = N(mean_theta(s), diag(exp(log_std))^2): the MAML paper's 2-100-100-2 ReLU policy (Sec. 5.3) and
    rllab's GaussianMLPPolicy (learned, state-independent log std, initial std 1; Xavier weights, zero biases)."""

    def __init__(self, sizes=(2, 100, 100, 2), activation: str = "relu", init_log_std: float = 0.0):
        sizes = tuple(int(s) for s in sizes)
        if len(sizes) < 2 or any(s < 1 for s in sizes):
            raise ValueError(f"policy sizes must be at least two positive integers, got {list(sizes)}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown policy activation {activation!r} (one of {', '.join(ACTIVATIONS)})")
        if not math.isfinite(init_log_std):
            raise ValueError(f"init_log_std must be finite, got {init_log_std}")
        self.sizes = sizes
        self.activation = activation
        self.init_log_std = float(init_log_std)
        self.mean_net = MLP(sizes, activation)  # the mean network: the engine's MLP, the same tensors and names

    @classmethod
    def from_spec(cls, spec: dict) -> "GaussianMLPPolicy":
        return cls(spec.get("sizes", (2, 100, 100, 2)), spec.get("activation", "relu"),
                   float(spec.get("init_log_std", 0.0)))

    def spec(self) -> dict:
        return {"kind": "gaussian_mlp_policy", "sizes": list(self.sizes), "activation": self.activation,
                "init_log_std": self.init_log_std}

    @property
    def num_layers(self) -> int:
        return len(self.sizes) - 1

    @property
    def action_dim(self) -> int:
        return self.sizes[-1]

    def param_shapes(self) -> "OrderedDict[str, tuple[int, ...]]":
        shapes = self.mean_net.param_shapes()
        shapes["log_std"] = (self.action_dim,)
        return shapes

    def init_params(self, generator: torch.Generator, device=None, dtype=None) -> "OrderedDict[str, torch.Tensor]":
        """The reference's initialization (cbfinn/maml_rl's policies: Xavier-uniform weights, zero biases), drawn
        from `generator`; log std constant."""
        params = OrderedDict()
        for name, shape in self.mean_net.param_shapes().items():
            if name.endswith(".bias"):
                params[name] = torch.zeros(shape, dtype=dtype or torch.float32, device=device)
            else:  # Glorot uniform: U(-b, b), b = sqrt(6 / (fan_in + fan_out))
                bound = math.sqrt(6.0 / (shape[0] + shape[1]))
                t = (torch.rand(shape, generator=generator, dtype=dtype or torch.float32) * 2 - 1) * bound
                params[name] = t.to(device)
        params["log_std"] = torch.full((self.action_dim,), self.init_log_std, dtype=dtype or torch.float32,
                                       device=device)
        return params

    def forward(self, params, x: torch.Tensor) -> torch.Tensor:
        """The action mean. params: shared or per-task [B, ...]; x: [B, N, obs_dim] -> [B, N, action_dim]."""
        return self.mean_net.forward(params, x)

    def log_std(self, params, like: torch.Tensor) -> torch.Tensor:
        """log_std broadcastable against [B, N, action_dim] (`like`)."""
        s = params["log_std"]
        return s.view(s.shape[0], *([1] * (like.dim() - 2)), s.shape[-1]) if s.dim() == 2 else s

    def log_prob(self, params, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """log pi(actions | obs) summed over action dimensions: obs [B, N, obs_dim], actions [B, N, act] -> [B, N]."""
        mean = self.forward(params, obs)
        log_std = self.log_std(params, mean)
        z = (actions - mean) * torch.exp(-log_std)
        return (-0.5 * z.pow(2) - log_std - 0.5 * LOG_2PI).sum(-1)

    def torch_module(self) -> nn.Module:
        """The mean network as plain PyTorch (load every exported tensor but `log_std` into it)."""
        return self.mean_net.torch_module()
