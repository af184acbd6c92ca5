"""Meta-SGD (Li, Zhou, Chen, Li 2017): the inner step size is learned too, one per parameter entry.

    theta'_i = theta - alpha * grad L_support_i(theta)      (alpha has theta's shapes; * is element-wise)
    (theta, alpha) <- Adam step on mean_i L_query_i(theta'_i)

alpha starts at the config's inner_lr everywhere (learn2learn's MetaSGD does the same; the paper draws it from
U[0.005, 0.1]) and is meta-trained with theta through the exact second-order meta-gradient. Exports carry alpha
beside theta as `lr.<parameter name>` tensors (listed in the metadata's "extra_tensors"); test-time adaptation
uses them, with the trained number of steps by default.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from .adaptation import expand_params, zero_frozen
from .base import MetaAlgorithm
from .optim import Adam

PREFIX = "lr."


def learned_step(fast, grads, lrs):
    """One Meta-SGD step for every task: fast [B, ...] - alpha * grad (alpha broadcast over tasks)."""
    return OrderedDict((k, v - lrs[k] * g) for (k, v), g in zip(fast.items(), grads))


class MetaSGD(MetaAlgorithm):
    """Li et al. 2017: a learned per-parameter inner learning rate, meta-trained with theta."""

    name = "metasgd"
    label = "Meta-SGD"
    color = "#CC79A7"  # Okabe-Ito reddish purple
    description = "Meta-SGD: MAML with a learned inner learning rate per parameter (Li et al. 2017)"
    # the rates are fit for the trained number of steps: more steps at test time can overshoot (and diverge), so
    # the app and validation fine-tune as many steps as training took, as the paper evaluates
    task_defaults = {"*": {"test_inner_steps": 1}}

    def setup(self, params) -> None:
        self.lrs = OrderedDict((k, torch.full_like(v, self.config.inner_lr).requires_grad_(True))
                               for k, v in params.items())
        self.optimizer = Adam([*params.values(), *self.lrs.values()], self.config.meta_lr)

    def meta_step(self, params, batch, iteration: int = 0) -> dict:
        meta_grads, meta_loss, pre_loss, pre_logits, query_logits = self.meta_gradients(params, batch)
        self._apply(params, meta_grads, iteration)
        return self._metrics(pre_loss, meta_loss, pre_logits, batch, query_logits)

    def meta_gradients(self, params, batch):
        """Gradients of the mean query loss after the learned inner steps with respect to theta, then alpha (in
        `params`, then `lrs` order), and what the metrics need; no update."""
        cfg = self.config
        with torch.enable_grad():
            fast = expand_params(params, batch.num_tasks)
            pre_logits = None
            for step in range(cfg.inner_steps):
                logits = self.model.forward(fast, batch.x_support)
                losses = self.loss_fn(logits, batch.y_support)
                if step == 0:
                    pre_loss, pre_logits = losses.detach().mean(), logits.detach()
                grads = torch.autograd.grad(losses.sum(), list(fast.values()), create_graph=True)
                grads = zero_frozen(self.model, fast, grads)  # e.g. cbfinn's batch-norm shifts
                fast = learned_step(fast, grads, self.lrs)
            query_logits = self.model.forward(fast, batch.x_query)
            meta_loss = self.loss_fn(query_logits, batch.y_query).mean()
            meta_grads = torch.autograd.grad(meta_loss, [*params.values(), *self.lrs.values()])
        return meta_grads, meta_loss.detach(), pre_loss, pre_logits, query_logits.detach()

    def export_tensors(self) -> OrderedDict:
        return OrderedDict((PREFIX + k, v) for k, v in self.lrs.items())

    @classmethod
    def test_trajectory(cls, config, model, loss_fn, params, x_support, y_support, steps, batched=False,
                        tensors=None):
        """Steps with the learned per-parameter rates (plain SGD with inner_lr when they are not at hand)."""
        lrs = {k[len(PREFIX):]: v for k, v in (tensors or {}).items() if k.startswith(PREFIX)}
        if set(lrs) != set(params):
            return super().test_trajectory(config, model, loss_fn, params, x_support, y_support, steps, batched)
        return cls._trajectory(model, loss_fn, params, x_support, y_support, steps, batched, lrs)

    @staticmethod
    def _trajectory(model, loss_fn, params, x_support, y_support, steps, batched, lrs):
        fast = OrderedDict((k, v.detach()) for k, v in params.items())
        if not batched:
            fast = expand_params(fast, x_support.shape[0])
        lrs = {k: v.to(device=fast[k].device, dtype=fast[k].dtype) for k, v in lrs.items()}
        yield fast
        for _ in range(steps):
            with torch.enable_grad():
                leaves = OrderedDict((k, v.detach().requires_grad_(True)) for k, v in fast.items())
                losses = loss_fn(model.forward(leaves, x_support), y_support)
                grads = torch.autograd.grad(losses.sum(), list(leaves.values()))
                grads = zero_frozen(model, leaves, grads)
            with torch.no_grad():
                fast = learned_step(leaves, grads, lrs)
                fast = OrderedDict((k, v.detach()) for k, v in fast.items())
            yield fast

    @classmethod
    def test_adaptation_text(cls, config) -> str:
        return f"learned per-parameter step sizes (Meta-SGD; SGD at inner lr {config.inner_lr:g} without them)"
