"""Per-task losses: each maps batched predictions [B, N, ...] to one value per task [B]."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mse_per_task(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred - target).pow(2).flatten(1).mean(1)


def cross_entropy_per_task(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    b, n, c = logits.shape
    return F.cross_entropy(logits.reshape(b * n, c), labels.reshape(b * n), reduction="none").view(b, n).mean(1)


def cross_entropy_sum_per_task(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """cbfinn/maml's convention: the per-image cross-entropies summed and divided by the images per class (its
    `xent` divides by update_batch_size = K and tf.gradients sums the per-image vector), i.e. N (ways) times the
    per-task mean. Its inner SGD step alpha is therefore N times the same alpha on `cross_entropy_per_task`. On
    the query set the divisor is the queries per class, which cbfinn's data generator makes equal to K; the outer
    Adam step is invariant to that constant factor (up to its eps)."""
    return cross_entropy_per_task(logits, labels) * logits.shape[-1]


def policy_gradient_per_task(log_probs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The REINFORCE surrogate per task: -mean(log pi(a|s) * weight), weights = advantages x valid-step mask x
    steps / valid steps (reinforcement-learning families, rl/pg.py; their batches compute it themselves)."""
    return -(log_probs * weights).flatten(1).mean(1)


def accuracy_per_task(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(-1) == labels).to(logits.dtype).mean(1)


LOSSES = {"mse": mse_per_task, "cross_entropy": cross_entropy_per_task, "cross_entropy_sum": cross_entropy_sum_per_task}
LOSSES["policy_gradient"] = policy_gradient_per_task  # 2-D navigation (tasks/navigation.py)
CLASSIFICATION_LOSSES = ("cross_entropy", "cross_entropy_sum")

# loss name -> (convention, how a card states it)
LOSS_CONVENTIONS = {
    "mse": ("lab", "MSE, mean over the task's points"),
    "cross_entropy": ("lab", "cross-entropy, mean over the task's images"),
    "cross_entropy_sum": ("cbfinn", "cross-entropy summed over the task's images / images per class (K) "
                                    "= ways x mean (cbfinn/maml)"),
}


def is_classification(name: str) -> bool:
    """Whether a loss name is a classification loss (accuracy is reported beside it)."""
    return name in CLASSIFICATION_LOSSES


def model_loss(name: str, model) -> str:
    """The loss an initialization adapts with: a classification loss follows the model's own convention (a conv-4
    made under cbfinn's conventions fine-tunes on sum / K even on the lab's tasks, and the reverse)."""
    if name not in CLASSIFICATION_LOSSES or not hasattr(model, "convention"):
        return name
    return "cross_entropy_sum" if model.convention == "cbfinn" else "cross_entropy"


def loss_text(name: str) -> str:
    """The loss convention in words, for evaluation cards."""
    return LOSS_CONVENTIONS.get(name, ("", name))[1]


def loss_function(name: str):
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r} (one of {', '.join(LOSSES)})") from None
