"""Initializations the lab holds: trained ones (live snapshots of a run), imported files, checkpoints and past runs.

An Initialization knows how it adapts at test time (its algorithm's own rule and settings, from the run or the
file's metadata), so the playground, the Tasks view, the adaptation curves and the CLI's eval all fine-tune it
the same way.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from ..core.algorithms.base import LearnedAdaptation
from ..core.algorithms.config import AlgorithmConfig, adaptation_config, test_trajectory
from ..core.algorithms.registry import ALGORITHMS

DEFAULT_INNER_LR = 0.01


@dataclass
class Initialization:
    """A set of initial parameters and how to adapt them: a trained algorithm's, an imported file's, a checkpoint's."""

    key: str  # unique among what the views show: the algorithm name, or "file:<path>"
    algorithm: str  # a registered algorithm name (or 'unknown'); decides colour and adaptation rule
    label: str
    model: object
    params: "OrderedDict[str, torch.Tensor]"
    # the algorithm's AlgorithmConfig (or a LearnedAdaptation with what it learned), or an SGD step size for files
    # of unknown origin
    adaptation: object
    source: str = "trained"  # "trained", "imported" or "checkpoint"
    metadata: dict = field(default_factory=dict)

    @property
    def inner_lr(self) -> float:
        config = adaptation_config(self.adaptation)
        return config.inner_lr if config is not None else float(self.adaptation)

    def trajectory(self, loss_fn, x_support: torch.Tensor, y_support: torch.Tensor, steps: int):
        """Each task's parameters after 0..steps test-time steps (x/y: [B, K, ...])."""
        params = OrderedDict((k, v.detach()) for k, v in self.params.items())
        return test_trajectory(self.adaptation, self.model, loss_fn, params, x_support, y_support, steps)


def adaptation_from_metadata(meta: dict, inner_lr: float | None = None, tensors: dict | None = None):
    """How an exported initialization fine-tunes: its algorithm's config from the recorded hyperparameters, with
    the learned `tensors` exported beside theta (a LearnedAdaptation); an unknown algorithm or unreadable settings:
    plain SGD with the recorded step size. `inner_lr` overrides the step size."""
    hyper = meta.get("hyperparameters")
    hyper = dict(hyper) if isinstance(hyper, dict) else {}  # load_initialization has checked it; others may not
    name = meta.get("algorithm")
    if inner_lr is not None:
        hyper["inner_lr"] = inner_lr
    if name in ALGORITHMS:
        try:
            config = AlgorithmConfig.from_dict({**hyper, "name": name})
            return LearnedAdaptation(config, dict(tensors)) if tensors else config
        except (TypeError, ValueError):
            pass
    try:
        lr = float(hyper.get("inner_lr", DEFAULT_INNER_LR))
    except (TypeError, ValueError):
        lr = DEFAULT_INNER_LR
    return lr if math.isfinite(lr) and lr > 0 else DEFAULT_INNER_LR


def fits_family(model, family) -> bool:
    """Whether `model` can adapt to `family`'s tasks (what the views that compare initializations on held-out tasks
    keep): regression MLPs to sinusoid-like (MSE) families, image models to classification, and a model of another
    kind (2-D navigation's policy) to a family of another loss."""
    from ..core.tasks.losses import is_classification

    kind = model.spec().get("kind") if hasattr(model, "spec") else None
    if family.loss == "mse":
        return kind == "mlp"
    if is_classification(family.loss):
        return kind != "mlp"
    return kind not in ("mlp", "conv4")


def heldout_family(run, queries: int, inits=()):
    """The held-out tasks a view evaluates on, and the queries per task: the run's (image sets: its held-out
    classes, with the run's queries per class). Without a run, the tasks the first of `inits` whose metadata names a
    family that builds at once was trained on (an export records its task: sinusoids, the example plug-in's lines),
    with `queries` points; sinusoids when none does."""
    from ..core.tasks.losses import is_classification

    if run is not None and run.eval_family is not None:
        return run.eval_family, run.queries if is_classification(run.loss) else queries
    for init in inits:
        family = described_family((getattr(init, "metadata", None) or {}).get("task"))
        if family is not None:
            return family, queries
    from ..core.tasks.sinusoid import SinusoidFamily

    return SinusoidFamily(), queries


def described_family(description):
    """The held-out tasks of an export's `task` description, when its family is registered and cheap to build (no
    data to load); None otherwise."""
    from ..core.tasks.registry import task_family

    if not isinstance(description, dict):
        return None
    try:
        kind = task_family(description.get("name"))
        if not kind.cheap_to_build:
            return None
        return kind.heldout(kind.from_description(description))
    except (NotImplementedError, TypeError, ValueError):
        return None


def compared(init: Initialization) -> bool:
    """Whether the views that compare initializations on held-out tasks (Adaptation, Per layer) show `init`: trained
    ones and imported MLPs (an imported conv-4 is the Tasks view's; a Paths checkpoint preview is the playground's)."""
    return init.source == "trained" or (init.source == "imported" and init.model.spec().get("kind") == "mlp")


def follow_store(inits: dict, changed: list[Initialization], removed: list[str], keep=compared) -> bool:
    """Apply an InitializationStore change (a subscriber's `changed`, `removed`) to a view's own `inits` (key ->
    Initialization): the changed ones `keep(init)` accepts are put in; removed keys, and changed ones it no longer
    accepts (a key that became another kind of model), leave. True when the view's `inits` changed."""
    kept = [keep(init) for init in changed]
    gone = [k for k in removed + [i.key for i, ok in zip(changed, kept) if not ok] if k in inits]
    for init, ok in zip(changed, kept):
        if ok:
            inits[init.key] = init
    for key in gone:
        del inits[key]
    return any(kept) or bool(gone)


def dtype_of(params) -> torch.dtype:
    """The floating-point precision parameters were saved in (evaluation runs at it: float64 stays float64)."""
    return next((v.dtype for v in params.values() if v.is_floating_point()), torch.float32)


class InitializationStore:
    """Every initialization the lab holds, by key. Views subscribe to it (napari's evented model, without Qt): a
    subscriber is called with (changed inits, removed keys) after each change, on the thread that made it (the
    app changes the store on the GUI thread only). One model per model spec is shared by everything in it."""

    def __init__(self):
        self._items: OrderedDict[str, Initialization] = OrderedDict()
        self._models: dict[str, object] = {}
        self._subscribers: list = []

    # -- reading ----------------------------------------------------------------------------------------
    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __getitem__(self, key: str) -> Initialization:
        return self._items[key]

    def __iter__(self):
        return iter(list(self._items.values()))

    def __len__(self) -> int:
        return len(self._items)

    def keys(self) -> list[str]:
        return list(self._items)

    def model_for(self, spec: dict):
        """The functional model of a spec, built once (ValueError for specs no model takes)."""
        from ..core.models.build import build_model

        key = repr(spec)
        if key not in self._models:
            self._models[key] = build_model(spec)
        return self._models[key]

    # -- subscribing -------------------------------------------------------------------------------------
    def subscribe(self, callback):
        """callback(changed: list[Initialization], removed: list[str]); returns a function that unsubscribes."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback) if callback in self._subscribers else None

    def _notify(self, changed: list[Initialization], removed: list[str]) -> None:
        if changed or removed:
            for callback in list(self._subscribers):
                callback(changed, removed)

    # -- changing ----------------------------------------------------------------------------------------
    def put(self, *inits: Initialization) -> None:
        for init in inits:
            self._items[init.key] = init
        self._notify(list(inits), [])

    def remove(self, *keys: str) -> None:
        removed = [k for k in keys if self._items.pop(k, None) is not None]
        self._notify([], removed)

    def clear(self, source: str | None = None) -> None:
        """Forget every initialization (of one source: "trained", "imported", "checkpoint")."""
        self.remove(*[k for k, v in self._items.items() if source is None or v.source == source])

    def update_from_snapshot(self, snap) -> list[Initialization]:
        """A training run's latest parameters (a messages.Snapshot) become the "trained" initializations, one per
        algorithm, each adapting by its own algorithm's rule."""
        try:
            model = self.model_for(snap.model or {})
        except ValueError:
            return []
        inits = []
        for name, params in snap.params.items():
            adaptation = snap.algorithms.get(name)  # AlgorithmConfig or LearnedAdaptation
            if isinstance(adaptation, dict):
                adaptation = AlgorithmConfig.from_dict({**adaptation, "name": name})
            if adaptation is None:
                adaptation = DEFAULT_INNER_LR
            inits.append(Initialization(name, name, _label(name), model, params, adaptation, "trained",
                                        snap.metadata.get(name, {})))
        self.put(*inits)
        return inits


def _label(name: str) -> str:
    from ..core.algorithms.registry import algorithm_label

    return algorithm_label(name)
