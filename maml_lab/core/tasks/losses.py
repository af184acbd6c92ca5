"""Per-task losses: each maps batched predictions [B, N, ...] to one value per task [B]."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mse_per_task(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred - target).pow(2).flatten(1).mean(1)


def cross_entropy_per_task(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    b, n, c = logits.shape
    return F.cross_entropy(logits.reshape(b * n, c), labels.reshape(b * n), reduction="none").view(b, n).mean(1)


def accuracy_per_task(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(-1) == labels).to(logits.dtype).mean(1)


LOSSES = {"mse": mse_per_task, "cross_entropy": cross_entropy_per_task}


def loss_function(name: str):
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r} (one of {', '.join(LOSSES)})") from None
