"""Reptile (Nichol, Achiam, Schulman 2018): move theta toward each task's adapted parameters."""

from __future__ import annotations

import warnings

import torch

from ..models.mlp import detach_params
from .adaptation import adam_trajectory, adapt, adapt_adam
from .base import MetaAlgorithm


class Reptile(MetaAlgorithm):
    """Nichol et al. 2018: theta <- theta + eps * mean_i(phi_i - theta), phi_i after k inner steps."""

    name = "reptile"
    label = "Reptile"
    color = "#009E73"  # Okabe-Ito bluish green
    description = "Reptile: theta moves toward each task's parameters after k inner steps (Nichol et al. 2018)"
    # k = 5 inner steps (k = 1 is joint training), epsilon annealed 1 -> 0; on images a smaller step than MAML's
    # 0.4 (0.4 five times over diverges early on), tested with MAML's three steps
    task_defaults = {"*": {"inner_steps": 5, "outer_lr_start": 1.0, "outer_lr_end": 0.0},
                     "images": {"inner_lr": 0.1, "test_inner_steps": 3}}
    sampled_tasks = True  # sampled (RL) batches: rl/objective.py reptile_step
    outer_lr_field = "outer_lr_start"
    outer_lr_label = "outer step ε"
    outer_lr_tip = "Reptile's outer step ε at the first iteration (annealed linearly to 0)"

    @classmethod
    def test_trajectory(cls, config, model, loss_fn, params, x_support, y_support, steps, batched=False,
                        tensors=None):
        """Fine-tunes as it trained: Adam (beta1 = 0, fresh moments per task) when inner_optimizer is adam."""
        if config.inner_optimizer == "adam":
            return adam_trajectory(model, loss_fn, params, x_support, y_support, steps, config.inner_lr, batched)
        return super().test_trajectory(config, model, loss_fn, params, x_support, y_support, steps, batched)

    @classmethod
    def test_adaptation_text(cls, config) -> str:
        if config.inner_optimizer == "adam":
            return f"Adam (beta1 0, fresh moments per task), inner lr {config.inner_lr:g}"
        return super().test_adaptation_text(config)

    def __init__(self, model, loss, config, total_iterations=1):
        super().__init__(model, loss, config, total_iterations)
        if config.inner_steps == 1:
            warnings.warn("Reptile with one inner step is plain joint training; use inner-steps > 1",
                          stacklevel=2)

    def setup(self, params) -> None:
        self.optimizer = None  # Reptile's outer update is a plain interpolation

    def epsilon(self, iteration: int) -> float:
        frac = min(max(iteration / self.total_iterations, 0.0), 1.0)
        return self.config.outer_lr_start + frac * (self.config.outer_lr_end - self.config.outer_lr_start)

    def meta_step(self, params, batch, iteration: int = 0) -> dict:
        if getattr(batch, "sampled", False):  # data sampled from the adapted parameters (RL)
            from ..rl.objective import reptile_step

            return reptile_step(self, params, batch, iteration)
        cfg = self.config
        if cfg.inner_optimizer == "adam":
            res = adapt_adam(self.model, self.loss_fn, params, batch.x_support, batch.y_support,
                             cfg.inner_steps, cfg.inner_lr)
        else:
            res = adapt(self.model, self.loss_fn, detach_params(params), batch.x_support, batch.y_support,
                        cfg.inner_steps, cfg.inner_lr)
        eps = self.epsilon(iteration)
        with torch.no_grad():
            query_logits = self.model.forward(res.params, batch.x_query)
            post_loss = self.loss_fn(query_logits, batch.y_query).mean()
            pre_logits = self.model.forward(params, batch.x_support) if self.classification else None
            deltas = [(res.params[k] - p).mean(0) for k, p in params.items()]
            if self.sync is not None:
                self.sync(deltas)
            for p, delta in zip(params.values(), deltas):
                p.add_(delta, alpha=eps)
        return self._metrics(res.support_losses[0].mean(), post_loss, pre_logits, batch, query_logits) | {
            "epsilon": eps}
