"""Adaptation curves: the loss (and accuracy) after 0..N inner steps on held-out tasks, mean and 95% CI."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..algorithms.config import AlgorithmConfig, predict, test_trajectory
from ..models.batch_norm import PopulationStatistics, at_step
from ..tasks.losses import accuracy_per_task, is_classification, loss_function, model_loss


@dataclass
class AdaptationCurve:
    steps: np.ndarray  # 0..N
    loss_mean: np.ndarray
    loss_ci95: np.ndarray  # half-width: 1.96 std / sqrt(M), as in the MAML paper
    accuracy_mean: np.ndarray | None = None
    accuracy_ci95: np.ndarray | None = None
    num_tasks: int = 0

    def at(self, step: int) -> tuple[float, float]:
        return float(self.loss_mean[step]), float(self.loss_ci95[step])

    def to_dict(self) -> dict:
        out = {"steps": self.steps.tolist(), "loss_mean": self.loss_mean.tolist(),
               "loss_ci95": self.loss_ci95.tolist(), "num_tasks": self.num_tasks}
        if self.accuracy_mean is not None:
            out["accuracy_mean"] = self.accuracy_mean.tolist()
            out["accuracy_ci95"] = self.accuracy_ci95.tolist()
        return out


def mean_ci95(values: np.ndarray, axis: int = 0, skip_nan: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Mean and 95% half-width (1.96 std / sqrt(n), as the MAML paper) along `axis`.

    NaN propagates by default: a diverged task makes the evaluation's mean NaN, which the tables report as such.
    skip_nan=True counts only the finite entries (the Per layer view: a layer's CKA is NaN where undefined); the
    half-width is 0 where fewer than two remain."""
    values = np.asarray(values, dtype=np.float64)
    if not skip_nan:
        n = values.shape[axis]
        std = values.std(axis=axis, ddof=1) if n > 1 else np.zeros_like(values.mean(axis=axis))
        return values.mean(axis=axis), 1.96 * std / math.sqrt(max(n, 1))
    n = np.sum(~np.isnan(values), axis)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: mean NaN, as intended
        mean = np.nanmean(values, axis)
        std = np.nanstd(values, axis, ddof=1) if values.shape[axis] > 1 else np.zeros_like(mean)
        ci = np.where(n > 1, 1.96 * std / np.sqrt(np.maximum(n, 1)), 0.0)
    return mean, ci


def per_task_curve(model, loss_name: str, params, batch, max_steps: int, adaptation: AlgorithmConfig | float,
                   batch_norm=None):
    """Query loss (and accuracy) of every task after 0..max_steps test-time steps: arrays [steps + 1, B].

    `adaptation`: the algorithm's config (it fine-tunes as it was trained to, e.g. Reptile with Adam), or a step
    size for plain SGD. `batch_norm`: the predictions' batch-norm mode (models/batch_norm.py; None: the
    algorithm's own)."""
    if getattr(batch, "sampled", False):  # data sampled from the adapted parameters (RL): SGD, the test schedule
        from ..algorithms.config import adaptation_config
        from ..rl.objective import objective_curve, test_schedule

        config = adaptation_config(adaptation)
        lr = config.inner_lr if config else float(adaptation)
        return objective_curve(model, batch, params, max_steps, test_schedule(lr)), None
    loss_fn = loss_function(model_loss(loss_name, model))  # a conv-4 adapts with its own loss convention
    classification = is_classification(loss_name)
    losses, accs = [], []
    for step, fast in enumerate(test_trajectory(adaptation, model, loss_fn, params, batch.x_support, batch.y_support,
                                                max_steps)):
        with torch.no_grad():
            logits = predict(adaptation, model, fast, batch.x_support, batch.y_support, batch.x_query,
                             batch_norm=at_step(batch_norm, step))
            losses.append(loss_fn(logits, batch.y_query).double().cpu().numpy())
            if classification:
                accs.append(accuracy_per_task(logits, batch.y_query).double().cpu().numpy())
    return np.stack(losses), (np.stack(accs) if classification else None)


def adaptation_curve(model, family, params, shots: int, max_steps: int, adaptation: AlgorithmConfig | float,
                     num_tasks: int = 600, queries: int = 100, seed: int = 2017, device="cpu", dtype=torch.float32,
                     chunk: int = 600, batch_norm=None) -> AdaptationCurve:
    """Fine-tune `params` on `num_tasks` held-out tasks (seeded, independent of training) and score each step
    (batch_norm: the predictions' batch-norm mode, per_task_curve)."""
    if num_tasks < 1:
        raise ValueError(f"need at least one evaluation task, got {num_tasks}")
    generator = torch.Generator().manual_seed(seed)
    all_losses, all_accs = [], []
    remaining = num_tasks
    while remaining > 0:
        n = min(chunk, remaining)
        batch = family.sample(n, shots, queries, generator, device=device, dtype=dtype)
        losses, accs = per_task_curve(model, family.loss, params, batch, max_steps, adaptation, batch_norm)
        all_losses.append(losses)
        if accs is not None:
            all_accs.append(accs)
        remaining -= n
    losses = np.concatenate(all_losses, axis=1)
    mean, ci = mean_ci95(losses, axis=1)
    curve = AdaptationCurve(np.arange(max_steps + 1), mean, ci, num_tasks=num_tasks)
    if all_accs:
        curve.accuracy_mean, curve.accuracy_ci95 = mean_ci95(np.concatenate(all_accs, axis=1), axis=1)
    return curve


def population_statistics(model, family, params, adaptation, steps, num_tasks: int = 100, shots: int = 1,
                          queries: int = 15, seed: int = 0, device="cpu", dtype=torch.float32,
                          chunk: int = 25) -> PopulationStatistics:
    """Batch-norm statistics of the whole population of tasks, for the "running" mode: `num_tasks` tasks of
    `family` (the *training* classes: no held-out image enters them), each adapted by the algorithm's own rule, and
    every batch-norm layer's per-channel mean and variance over the task's support and query images at the
    parameters after each of `steps` test-time steps, pooled over tasks (mean of the means; variance = mean of
    (var + mean^2) - mean^2, every task the same size). Per step count, as HowToTrainYourMAML keeps a running mean
    and variance per inner step (which its code accumulates but never normalizes with: its F.batch_norm runs with
    training=True); here they are collected after training from the final parameters, not by momentum during it."""
    wanted = sorted({int(s) for s in steps})
    if num_tasks < 1 or not wanted:
        raise ValueError("running statistics need at least one task and one step count")
    loss_fn = loss_function(model_loss(family.loss, model))
    generator = torch.Generator().manual_seed(seed)
    theta = {k: v.detach().to(device, dtype) for k, v in params.items()}
    sums: dict[int, list] = {}
    done = 0
    while done < num_tasks:
        n = min(chunk, num_tasks - done)
        batch = family.sample(n, shots, queries, generator, device=device, dtype=dtype)
        images = torch.cat([batch.x_support, batch.x_query], dim=1)
        for step, fast in enumerate(test_trajectory(adaptation, model, loss_fn, theta, batch.x_support,
                                                    batch.y_support, wanted[-1])):
            if step not in wanted:
                continue
            with torch.no_grad():
                stats = model.batch_norm_stats(fast, images)
            block_sums = [(m.double().sum(0), (v.double() + m.double() ** 2).sum(0)) for m, v in stats]
            if step in sums:
                sums[step] = [(a + c, b + d) for (a, b), (c, d) in zip(sums[step], block_sums)]
            else:
                sums[step] = block_sums
        done += n
    by_step = {}
    for step, blocks in sums.items():
        by_step[step] = [((m / num_tasks).to(dtype), (sq / num_tasks - (m / num_tasks) ** 2).clamp_min(0).to(dtype))
                         for m, sq in blocks]
    return PopulationStatistics(by_step, tasks=num_tasks,
                                source=f"{num_tasks} training tasks ({shots}-shot, {queries} queries per class, seed "
                                       f"{seed}), after each test-time step count")
