"""FOMAML with an SGD + Nesterov momentum outer step: the whole algorithm, in one file.

The meta-gradient is FOMAML's (the query gradient at the adapted parameters, `MetaAlgorithm.meta_gradient`
with first_order=True); only the outer update differs: instead of Adam,

    v <- mu * v + g,    theta <- theta - beta * (g + mu * v)      (Nesterov; plain momentum: theta -= beta * v)

with beta the config's meta_lr (its schedule included) and mu the option `momentum`. Registered by the entry point
`fomaml_momentum = "maml_lab_example.fomaml_momentum:FOMAMLMomentum"` in group `maml_lab.algorithms`.
"""

from __future__ import annotations

import math

import torch

from maml_lab.core.algorithms.base import MetaAlgorithm


class SGDMomentum:
    """The outer optimizer: what `MetaAlgorithm._apply` calls (`lr`, `step(grads)`) plus its state for checkpoints."""

    def __init__(self, params: list[torch.Tensor], lr: float, momentum: float, nesterov: bool):
        self.params = list(params)
        self.lr, self.momentum, self.nesterov = float(lr), float(momentum), bool(nesterov)
        self.velocity = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self, grads) -> None:
        for p, g, v in zip(self.params, grads, self.velocity):
            v.mul_(self.momentum).add_(g)
            p.sub_(g + self.momentum * v if self.nesterov else v, alpha=self.lr)

    def state_dict(self) -> dict:
        return {"lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov, "velocity": self.velocity}

    def load_state_dict(self, state: dict) -> None:
        saved = list(state.get("velocity") or [])
        if len(saved) != len(self.velocity) or any(a.shape != b.shape for a, b in zip(self.velocity, saved)):
            raise ValueError("fomaml_momentum: the saved velocity does not match the parameters")
        for mine, theirs in zip(self.velocity, saved):
            mine.copy_(theirs)
        self.lr = float(state["lr"])


class FOMAMLMomentum(MetaAlgorithm):
    """First-order MAML whose outer step is SGD with Nesterov momentum instead of Adam."""

    name = "fomaml_momentum"
    label = "FOMAML + momentum"
    color = "#E69F00"  # Okabe-Ito orange: apart from the built-ins' blues, green and vermillion
    description = "first-order MAML with an SGD + Nesterov momentum outer step instead of Adam (example plug-in)"
    # no `task_defaults`: each family's own settings apply. beta stays the config's 1e-3: with momentum 0.9 the
    # steady-state step is 10 beta, which on lines trains faster than FOMAML's Adam
    option_defaults = {"momentum": 0.9, "nesterov": True}
    outer_lr_label = "meta lr β (SGD)"
    outer_lr_tip = "meta learning rate β: the outer SGD step size (with Nesterov momentum, option 'momentum')"

    @classmethod
    def check_config(cls, config) -> None:
        momentum = config.option("momentum")
        if not (isinstance(momentum, (int, float)) and math.isfinite(momentum) and 0 <= momentum < 1):
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        if not isinstance(config.option("nesterov"), bool):
            raise ValueError(f"nesterov must be true or false, got {config.option('nesterov')!r}")

    def setup(self, params) -> None:
        self.optimizer = SGDMomentum(list(params.values()), self.config.meta_lr, self.config.option("momentum"),
                                     self.config.option("nesterov"))

    def meta_step(self, params, batch, iteration: int = 0) -> dict:
        grads, meta_loss, res, query_logits = self.meta_gradient(params, batch, first_order=True)
        pre_logits = res.support_pred
        if self.classification and pre_logits is None:
            with torch.no_grad():
                pre_logits = self.model.forward(params, batch.x_support)
        self._apply(params, grads, iteration)  # syncs data-parallel gradients, sets the scheduled lr, steps
        return self._metrics(res.support_losses[0].mean(), meta_loss, pre_logits, batch, query_logits.detach())

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("optimizer")
        if saved is None or self.optimizer is None:
            raise ValueError("fomaml_momentum: the saved state has no outer optimizer state")
        self.optimizer.load_state_dict(saved)
