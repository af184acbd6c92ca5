"""The MAML paper's transfer baseline: one initialization trained jointly on every task's data."""

from __future__ import annotations

import torch

from ..models.mlp import detach_params
from .adaptation import adapt
from .base import MetaAlgorithm


class Pretrained(MetaAlgorithm):
    """The MAML paper's transfer baseline: theta trained jointly on all tasks' data, no adaptation inside.

    Its post-adaptation metric fine-tunes a detached copy with the test-time rule, for comparison only.
    """

    name = "pretrained"
    label = "Pretrained"
    color = "#D55E00"  # Okabe-Ito vermillion
    description = "the MAML paper's baseline: one network trained on all tasks' data, fine-tuned at test time"
    min_inner_steps = 0  # inner steps only score it (post-adaptation metrics), training never adapts
    sampled_tasks = True  # sampled (RL) batches: rl/objective.py pretrained_step
    # navigation: cbfinn/maml_rl's pretrained policy (MAMLTRPO with use_maml=False) takes one Adam step of 1e-3 per
    # iteration on the pre-update surrogate (FirstOrderOptimizer, max_epochs 1, the whole batch), not TRPO
    task_defaults = {"navigation": {"outer_optimizer": "adam", "meta_lr": 1e-3}}

    def meta_step(self, params, batch, iteration: int = 0) -> dict:
        if getattr(batch, "sampled", False):  # data sampled from the adapted parameters (RL)
            from ..rl.objective import objective_trpo_step, pretrained_step

            if self.config.outer_optimizer == "trpo":  # TRPO on the pre-update surrogate, on request
                return objective_trpo_step(self, params, batch, inner=False)
            return pretrained_step(self, params, batch, iteration)
        if self.config.outer_optimizer == "trpo":
            raise ValueError("outer-optimizer trpo applies to tasks sampled from the policy (RL), e.g. navigation")
        grads = self._joint_gradient(params, batch)
        pre_logits, pre_loss, query_logits = self._scored_adaptation(params, batch)
        with torch.no_grad():
            post_loss = self.loss_fn(query_logits, batch.y_query).mean()
        self._apply(params, grads, iteration)
        return self._metrics(pre_loss, post_loss, pre_logits, batch, query_logits)

    def _joint_gradient(self, params, batch) -> list[torch.Tensor]:
        """d(mean loss on every task's support and query data)/d(theta), per-task batch statistics: without autograd
        where the model offers it (conv-4 on the CPU: conv4_meta.mean_loss_grad)."""
        x, y = batch.joint()
        explicit = getattr(self.model, "mean_loss_grad", None)
        out = explicit(params, x, y, self.loss_fn) if explicit is not None else None
        if out is not None:
            return out[1]
        with torch.enable_grad():
            loss = self.loss_fn(self.model.forward(params, x), y).mean()
            return list(torch.autograd.grad(loss, list(params.values())))

    def _scored_adaptation(self, params, batch):
        """What the post-adaptation metrics need, for comparison only (theta is not touched): support logits at
        theta, their mean loss, and query logits after the test-time rule's inner steps from a detached copy;
        without autograd where the model offers it (conv-4 on the CPU, one step: conv4_meta.adapted_logits)."""
        cfg = self.config
        steps = max(cfg.inner_steps, 1)
        fast = getattr(self.model, "adapted_logits", None)
        out = fast(params, batch, self.loss_fn, steps, cfg.inner_lr) if fast is not None else None
        if out is not None:
            pre_logits, pre_losses, query_logits = out
            return pre_logits, pre_losses.mean(), query_logits
        with torch.no_grad():
            pre_logits = self.model.forward(params, batch.x_support)
            pre_loss = self.loss_fn(pre_logits, batch.y_support).mean()
        res = adapt(self.model, self.loss_fn, detach_params(params), batch.x_support, batch.y_support, steps,
                    cfg.inner_lr)
        with torch.no_grad():
            return pre_logits, pre_loss, self.model.forward(res.params, batch.x_query)
