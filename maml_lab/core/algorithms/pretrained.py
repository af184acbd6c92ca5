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

    def meta_step(self, params, batch, iteration: int = 0) -> dict:
        if getattr(batch, "sampled", False):  # data sampled from the adapted parameters (RL)
            from ..rl.objective import pretrained_step

            return pretrained_step(self, params, batch, iteration)
        cfg = self.config
        x, y = batch.joint()
        # models that compute it without autograd (conv-4 on the CPU: 2.6x faster, conv4_meta.mean_loss_grad)
        explicit = getattr(self.model, "mean_loss_grad", None)
        explicit = explicit(params, x, y, self.loss_fn) if explicit is not None else None
        if explicit is not None:
            grads = explicit[1]
        else:
            with torch.enable_grad():
                loss = self.loss_fn(self.model.forward(params, x), y).mean()
                grads = torch.autograd.grad(loss, list(params.values()))
        steps = max(cfg.inner_steps, 1)
        fast = getattr(self.model, "adapted_logits", None)  # without autograd (conv-4 on the CPU, one step)
        fast = fast(params, batch, self.loss_fn, steps, cfg.inner_lr) if fast is not None else None
        with torch.no_grad():
            if fast is not None:
                pre_logits, pre_losses, query_logits = fast
                pre_loss = pre_losses.mean()
            else:
                pre_logits = self.model.forward(params, batch.x_support)
                pre_loss = self.loss_fn(pre_logits, batch.y_support).mean()
        if fast is None:
            res = adapt(self.model, self.loss_fn, detach_params(params), batch.x_support, batch.y_support, steps,
                        cfg.inner_lr)
            with torch.no_grad():
                query_logits = self.model.forward(res.params, batch.x_query)
        with torch.no_grad():
            post_loss = self.loss_fn(query_logits, batch.y_query).mean()
        self._apply(params, grads, iteration)
        return self._metrics(pre_loss, post_loss, pre_logits, batch, query_logits)
