"""Prototypical Networks (Snell, Swersky, Zemel 2017): a task's classes are the means of their support embeddings.

The network's body (the model's `features`: conv-4 without its linear head) embeds support and query images of
one task in one forward pass (batch norm on the task's batch, as the reference code's training does); each
class's prototype is the mean embedding of its support images, and a query's logits are minus its squared
Euclidean distances to the prototypes. Meta-training is plain autograd of the episodes' mean query cross-entropy
through the body: no inner loop. The model's head stays in theta untouched (no gradient reaches it), so exports
keep the model's layout and load into the same `nn.Sequential`; no prediction reads it.

Reference code: jakesnell/prototypical-networks (`protonets/models/few_shot.py`, `scripts/train/few_shot/`):
Adam at 1e-3 halved every 20 epochs of 100 episodes (`halve_lr_every`, in outer steps), conv-4 with 2x2
max-pooling and a 64-d embedding on 28x28 Omniglot. docs/algorithms.md says what differs here.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F

from ..tasks.losses import accuracy_per_task
from .adaptation import expand_params
from .base import MetaAlgorithm


def prototype_logits(model, params, x_support: torch.Tensor, y_support: torch.Tensor, x_query: torch.Tensor,
                     ways: int | None = None) -> torch.Tensor:
    """Minus the squared Euclidean distances [B, Q, ways] from each query's embedding to each class's prototype
    (the mean embedding of its support examples). x_*: [B, N, ...]; params: shared or per-task [B, ...]. A class
    absent from a task's support set gets a zero prototype.

    Batch norm: a plain model embeds a task's support and queries in one batch (the reference code's training
    episode; the lab's transductive mode for ProtoNet). A model that predicts under another batch-norm mode
    (models/batch_norm.NormalizedModel: support-set or running statistics, each query with the support set)
    embeds the support set and the queries as that mode says, separately."""
    from ..models.batch_norm import NormalizedModel

    ways = int(ways if ways is not None else getattr(model, "ways", int(y_support.max()) + 1))
    s = x_support.shape[1]
    if isinstance(model, NormalizedModel):
        zs, zq = model.features(params, x_support), model.features(params, x_query)
    else:
        z = model.features(params, torch.cat([x_support, x_query], 1))
        zs, zq = z[:, :s], z[:, s:]
    onehot = F.one_hot(y_support.long(), ways).to(zs.dtype)  # [B, S, ways]
    counts = onehot.sum(1).clamp_min(1.0).unsqueeze(-1)  # [B, ways, 1]
    prototypes = torch.bmm(onehot.transpose(1, 2), zs) / counts  # [B, ways, D]
    return -(zq.unsqueeze(2) - prototypes.unsqueeze(1)).pow(2).sum(-1)


class ProtoNet(MetaAlgorithm):
    """Snell et al. 2017: episodic training of an embedding whose class means classify a task's queries."""

    name = "protonet"
    label = "ProtoNet"
    color = "#117733"
    description = ("Prototypical Networks: queries take the class of the nearest mean support embedding "
                   "(Snell et al. 2017)")
    adaptation_kind = "prototypes"
    classification_only = True
    min_inner_steps = 0  # no inner loop: inner_lr and inner_steps are not read
    unused_fields = ("inner_lr", "inner_steps", "test_inner_steps")  # the panel greys them out
    adapts_batch_norm = False  # nothing is adapted at test time (evaluation cards say so)
    # the reference code's Adam step (its lr halving: the option below); no inner or test-time steps
    task_defaults = {"*": {"meta_lr": 1e-3, "meta_lr_schedule": "constant", "inner_steps": 0,
                           "test_inner_steps": 0}}
    # outer steps between halvings of the Adam rate (the reference: StepLR, 20 epochs x 100 episodes); 0: constant
    option_defaults = {"halve_lr_every": 2000}
    outer_lr_label = "lr (Adam)"
    outer_lr_tip = ("ProtoNet's Adam learning rate (the reference code's 1e-3), halved every halve_lr_every outer "
                    "steps (setting below; 0 keeps it constant)")
    settings_tip = "halve_lr_every: outer steps between halvings of the Adam rate (reference: 2000 episodes)"

    @classmethod
    def check_config(cls, config) -> None:
        every = config.option("halve_lr_every")
        if isinstance(every, bool) or not isinstance(every, int) or every < 0:
            raise ValueError(f"protonet: halve_lr_every must be a whole number of outer steps >= 0, got {every!r}")

    def meta_lr(self, iteration: int) -> float:
        """The reference's StepLR (halved every `halve_lr_every` steps), or the base class's cosine when chosen."""
        every = int(self.config.option("halve_lr_every"))
        if self.config.meta_lr_schedule == "cosine" or every <= 0:
            return super().meta_lr(iteration)
        return self.config.meta_lr * 0.5 ** (max(int(iteration), 0) // every)

    @classmethod
    def predict(cls, config, model, params, x_support, y_support, x_query) -> torch.Tensor:
        return prototype_logits(model, params, x_support, y_support, x_query)

    @classmethod
    def test_trajectory(cls, config, model, loss_fn, params, x_support, y_support, steps: int,
                        batched: bool = False, tensors: dict | None = None):
        """No test-time steps: theta itself, `steps + 1` times (so a curve over steps is one flat line); the
        prototypes are computed in `predict` from the support set."""
        if steps < 0:
            raise ValueError(f"adaptation steps must be >= 0, got {steps}")
        fast = OrderedDict((k, v.detach()) for k, v in params.items())
        if not batched:
            fast = expand_params(fast, x_support.shape[0])
        for _ in range(steps + 1):
            yield fast

    @classmethod
    def test_adaptation_text(cls, config) -> str:
        return ("prototypes (class means of the support embeddings; support and queries embedded in one batch "
                "where batch norm is transductive), no steps")

    def episode_loss(self, params, batch):
        """The episodes' query logits [B, Q, ways] and mean query loss (autograd reaches the body)."""
        logits = prototype_logits(self.model, params, batch.x_support, batch.y_support, batch.x_query)
        return logits, self.loss_fn(logits, batch.y_query).mean()

    def meta_gradient(self, params, batch, first_order: bool = False):
        """d(mean query loss of the episodes)/d(theta): plain autograd, no inner loop (`first_order` does not
        apply); the head's gradient is zero. Returns (grads, loss, None, query logits)."""
        with torch.enable_grad():
            logits, loss = self.episode_loss(params, batch)
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params.values())]
        return grads, loss.detach(), None, logits.detach()

    def meta_step(self, params, batch, iteration: int = 0) -> dict:
        if getattr(batch, "sampled", False):
            raise ValueError("protonet classifies only: tasks sampled from a policy (RL) have no classes")
        grads, loss, _, logits = self.meta_gradient(params, batch)
        self._apply(params, grads, iteration)
        # no adaptation: before and after are the same prototype classifier
        out = {"pre_loss": float(loss), "post_loss": float(loss)}
        if self.classification:
            accuracy = float(accuracy_per_task(logits, batch.y_query).mean())
            out.update(pre_accuracy=accuracy, post_accuracy=accuracy)
        return out
