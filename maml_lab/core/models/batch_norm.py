"""How batch norm normalizes the images a prediction is made for: the batch-norm *mode* of an evaluation.

MAML's conv-4 has batch norm without running statistics (cbfinn/maml, and the lab): every forward pass normalizes
with the statistics of the batch it is given. Where the batch is a task's query set this is *transductive*: a
query's prediction depends on the other queries (cbfinn/maml #9, learn2learn #207, HowToTrainYourMAML #3 and #24
trip on it). The modes, one concept each:

* "transductive": a task's queries in one batch, normalized with their own statistics (cbfinn/maml; the lab's
  default; supervised-reptile's `--transductive`, which its reported numbers use).
* "support": the support set's statistics only: each block's per-channel mean and (biased) variance over the task's
  support images, at the same parameters; queries can be classified one at a time with the same result.
* "support+query": each query classified in one batch with the support set (supervised-reptile without
  `--transductive`; Reptile's `transductive = false` option selects it as Reptile's default).
* "running": fixed population statistics, the same for every task (`PopulationStatistics`: pooled over training
  tasks after training, per test-time step count; core/analysis/evaluation.py `population_statistics`).

Adaptation (the inner loop on the support set) is the same in every mode: the support set is one batch and is
normalized with its own statistics, as in training. Only the prediction of the queries changes. Models take the
statistics through `forward(params, x, norm=...)` (and `features`): `norm` is None (the batch's own), an int S (the
first S images of each task give them) or a list of per-block (mean, var) tensors ([F] shared or [B, F] per task).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

BATCH_NORM_MODES = ("transductive", "support", "support+query", "running")

MODE_TEXT = {
    "transductive": "transductive (a task's queries normalized together, with their own batch statistics)",
    "support": "support-set statistics (queries normalized with the support set's per-channel mean and variance; "
               "one at a time or together alike)",
    "support+query": "each query with the support set (one batch of the support set and that query; "
                     "supervised-reptile without --transductive)",
    "running": "running statistics (population statistics pooled over training tasks after training, per "
               "test-time step; the same for every task)",
}


def check_mode(mode: str) -> str:
    if mode not in BATCH_NORM_MODES:
        raise ValueError(f"unknown batch-norm mode {mode!r} (one of {', '.join(BATCH_NORM_MODES)})")
    return mode


def has_batch_norm(model) -> bool:
    """Whether a model normalizes with batch statistics (conv-4), so that the mode changes its predictions."""
    return callable(getattr(model, "batch_norm_names", None))


@dataclass
class PopulationStatistics:
    """Fixed batch-norm statistics for the "running" mode: per test-time step count, one (mean, var) pair of [F]
    tensors per batch-norm layer. `source` says where they were pooled (evaluation cards)."""

    by_step: dict = field(default_factory=dict)  # step -> [(mean, var), ...] per block
    tasks: int = 0
    source: str = ""

    def at(self, step: int) -> list:
        if step not in self.by_step:
            raise ValueError(f"no running statistics for {step} test-time steps (collected for "
                             f"{', '.join(str(s) for s in sorted(self.by_step)) or 'none'})")
        return self.by_step[step]


def mode_name(batch_norm) -> str:
    """The mode's name for a mode string or a running-statistics object."""
    if isinstance(batch_norm, (PopulationStatistics, list)):
        return "running"
    return check_mode(str(batch_norm))


def at_step(batch_norm, step: int):
    """What `predict` takes at one step count: the mode string, or that step's running statistics."""
    return batch_norm.at(step) if isinstance(batch_norm, PopulationStatistics) else batch_norm


class NormalizedModel:
    """A model whose `forward` and `features` predict under a batch-norm mode for one batch of tasks (the support
    set `x_support` [B, S, ...] gives the statistics where the mode uses it). Everything else is the model's own,
    so an algorithm's `predict` hook (prototypes, a fitted head) gets the mode without knowing about it."""

    def __init__(self, model, batch_norm, x_support: torch.Tensor | None):
        self._model = model
        self._mode = mode_name(batch_norm)
        self._stats = batch_norm if isinstance(batch_norm, list) else None
        self._support = x_support
        if self._mode in ("support", "running") and not has_batch_norm(model):
            raise ValueError(f"batch-norm mode {self._mode!r} needs a model with batch norm "
                             f"({type(model).__name__} has none)")
        if self._mode == "running" and self._stats is None:
            raise ValueError("the running mode needs population statistics (PopulationStatistics.at(step))")

    def __getattr__(self, name):
        return getattr(self._model, name)

    def forward(self, params, x: torch.Tensor) -> torch.Tensor:
        return self._apply(self._model.forward, params, x)

    def features(self, params, x: torch.Tensor) -> torch.Tensor:
        return self._apply(self._model.features, params, x)

    def _apply(self, fn, params, x: torch.Tensor) -> torch.Tensor:
        if self._mode == "transductive":
            return fn(params, x)
        if self._mode == "running":
            return fn(params, x, norm=self._stats)
        xs = self._support
        s = xs.shape[1]
        if self._mode == "support":
            return fn(params, torch.cat([xs, x], dim=1), norm=s)[:, s:]
        # support+query: one batch of the support set and each query in turn
        outs = [fn(params, torch.cat([xs, x[:, j:j + 1]], dim=1))[:, -1:] for j in range(x.shape[1])]
        return torch.cat(outs, dim=1)
