"""The one interface every meta-learning algorithm implements, and the hyperparameters they share.

An algorithm owns what makes it different: its defaults per task family, its meta-update (`meta_step`, which
updates the shared initialization theta, a dict of leaf tensors, in place and returns the step's metrics), its
test-time adaptation (`test_trajectory`: what evaluation, validation and every view call), its extra state
(`state_dict`, `export_tensors`), its label and colour. The built-in ones live one per file (maml.py,
reptile.py, pretrained.py) and are listed in registry.py; a plug-in adds one through the `maml_lab.algorithms`
entry point group (docs/extending.md).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar

import torch

from ..tasks.losses import accuracy_per_task, loss_function
from .adaptation import AdaptResult, adapt, expand_params, sgd_trajectory
from .optim import Adam


@dataclass
class AlgorithmConfig:
    """Hyperparameters of one algorithm. Names follow cbfinn/maml and supervised-reptile."""

    name: str = "maml"
    inner_lr: float = 0.01  # alpha: inner SGD step size, also used to fine-tune at test time
    inner_steps: int = 1  # inner steps during meta-training (Reptile's k)
    test_inner_steps: int = 10  # steps used when evaluating
    meta_lr: float = 1e-3  # outer Adam learning rate (MAML, FOMAML, pretrained)
    inner_optimizer: str = "sgd"  # Reptile only: sgd or adam
    outer_lr_start: float = 1.0  # Reptile only: epsilon at the first iteration ...
    outer_lr_end: float = 0.0  # ... annealed linearly to this at the last
    meta_lr_schedule: str = "constant"  # or "cosine": meta-lr annealed to 0 over the run (MAML++)
    # MAML/FOMAML: meta-loss = sum_s w_s * query loss after inner step s, one weight per inner step (MAML++'s
    # multi-step loss); empty: the query loss after the last step only (the MAML paper)
    step_loss_weights: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.validate()

    # algorithm-specific settings a registered algorithm declares in `option_defaults` (plug-ins); TOML keys
    options: dict = field(default_factory=dict)

    def validate(self) -> None:
        cls = algorithm_class(self.name)  # unknown names: "unknown algorithm 'x' (one of ...)"
        for key in ("inner_lr", "meta_lr"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{key.replace('_', '-')} must be a positive number, got {value}")
        for key in ("outer_lr_start", "outer_lr_end"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{key.replace('_', '-')} must be >= 0, got {value}")
        if self.inner_steps < 1 and self.name != "pretrained":
            raise ValueError(f"inner-steps must be >= 1, got {self.inner_steps}")
        if self.test_inner_steps < 0:
            raise ValueError(f"test-inner-steps must be >= 0, got {self.test_inner_steps}")
        if self.meta_lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"meta-lr-schedule must be constant or cosine, got {self.meta_lr_schedule!r}")
        if self.inner_optimizer not in ("sgd", "adam"):
            raise ValueError(f"inner-optimizer must be sgd or adam, got {self.inner_optimizer!r}")
        self.step_loss_weights = [float(w) for w in self.step_loss_weights]
        unknown = sorted(set(self.options) - set(cls.option_defaults))
        if unknown:
            raise ValueError(f"{self.name} has no option(s) {', '.join(unknown)}"
                             + (f" (it takes {', '.join(cls.option_defaults)})" if cls.option_defaults else ""))
        if self.step_loss_weights:
            weights = self.step_loss_weights
            if not cls.multi_step_loss:
                raise ValueError(f"step-loss-weights apply to {', '.join(multi_step_names())} only, not {self.name}")
            if len(weights) != self.inner_steps:
                raise ValueError(f"step-loss-weights needs one weight per inner step ({self.inner_steps}), "
                                 f"got {len(weights)}")
            if not (all(math.isfinite(w) and w >= 0 for w in weights) and sum(weights) > 0):
                raise ValueError(f"step-loss-weights must be >= 0 with a positive sum, got {weights}")
        cls.check_config(self)

    def option(self, key: str):
        """An algorithm-specific setting: the config's value, else the algorithm's declared default."""
        return self.options.get(key, algorithm_class(self.name).option_defaults[key])

    @classmethod
    def defaults(cls, name: str, task: str = "sinusoid", **overrides) -> "AlgorithmConfig":
        """An algorithm's settings on a task family, then `overrides` (None means unset): the dataclass defaults
        (the MAML paper's sinusoid regression), then what the task family sets for every algorithm (images: the
        Omniglot 5-way alpha 0.4, one inner step in training, three at test), then the algorithm's own defaults
        for any family ("*") and for this one. Keys an algorithm declares as options go to `options`."""
        from ..tasks.registry import task_family

        algo = algorithm_class(name)
        base: dict = {"name": name}
        base.update(task_family(task).algorithm_defaults)
        base.update(algo.task_defaults.get("*", {}))
        base.update(algo.task_defaults.get(task, {}))
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(base, strict=True)

    def to_dict(self) -> dict:
        data = asdict(self)
        if not data["options"]:
            del data["options"]  # the TOML/metadata of the built-in algorithms stays as it was
        else:
            data.update(data.pop("options"))
        return data

    @classmethod
    def from_dict(cls, data: dict, strict: bool = False) -> "AlgorithmConfig":
        """Known fields as such, an algorithm's declared options into `options`; other keys are dropped (or
        refused, when `strict`: a typo in a TOML file should not pass silently)."""
        known = {f.name for f in fields(cls)}
        name = data.get("name", "maml")
        declared = algorithm_class(name).option_defaults
        values = {k: v for k, v in data.items() if k in known}
        options = dict(values.pop("options", None) or {})
        options.update({k: v for k, v in data.items() if k in declared})
        extra = sorted(set(data) - known - set(declared))
        if strict and extra:
            raise ValueError(f"unknown setting(s) for {name}: {', '.join(extra)}")
        return cls(**values, options=options)


class MetaAlgorithm:
    """One meta-learning algorithm: `meta_step` on a TaskBatch updates `params` in place.

    Subclasses set the class attributes below and implement `meta_step`; everything else has a default that
    fits gradient-based meta-learning with SGD fine-tuning at test time.
    """

    name: ClassVar[str] = ""  # the registry key: CLI, TOML, checkpoints, exports
    label: ClassVar[str] = ""  # how plots, tables and the panel name it
    color: ClassVar[str] = "#CC79A7"  # hex, one per algorithm in every plot (built-ins: Okabe-Ito)
    description: ClassVar[str] = ""  # one line for `maml-lab list` and the panel's tooltip
    # settings per task family: {"*": {...}, "images": {...}}, on top of the family's own algorithm defaults
    task_defaults: ClassVar[dict[str, dict]] = {}
    option_defaults: ClassVar[dict] = {}  # algorithm-specific settings (AlgorithmConfig.options) and defaults
    multi_step_loss: ClassVar[bool] = False  # takes step_loss_weights (MAML++'s multi-step loss)
    # the panel's outer-step field: which config field, and its name there
    outer_lr_field: ClassVar[str] = "meta_lr"
    outer_lr_label: ClassVar[str] = "meta lr β"
    outer_lr_tip: ClassVar[str] = "meta learning rate β: the outer Adam step size"

    def __init__(self, model, loss: str, config: AlgorithmConfig, total_iterations: int = 1):
        self.model = model
        self.loss_name = loss
        self.loss_fn = loss_function(loss)
        self.config = config
        self.total_iterations = max(1, int(total_iterations))
        self.classification = loss == "cross_entropy"
        self.optimizer: Adam | None = None
        # data-parallel training: all-reduces a list of tensors in place to their global mean (None: one process)
        self.sync: Callable[[list[torch.Tensor]], None] | None = None

    # -- what the registry and the views read ----------------------------------------------------------
    @classmethod
    def check_config(cls, config: AlgorithmConfig) -> None:
        """Refuse settings this algorithm cannot train with (ValueError with the reason)."""

    @classmethod
    def test_trajectory(cls, config: AlgorithmConfig, model, loss_fn, params, x_support, y_support, steps: int,
                        batched: bool = False) -> Iterator["OrderedDict[str, torch.Tensor]"]:
        """Test-time adaptation as this algorithm was trained to adapt: yields each task's parameters [B, ...]
        after 0, 1, ..., `steps` steps, detached. The default is plain SGD with step size inner_lr (MAML paper)."""
        return sgd_trajectory(model, loss_fn, params, x_support, y_support, steps, config.inner_lr, batched)

    @classmethod
    def test_adaptation_text(cls, config: AlgorithmConfig) -> str:
        """How `test_trajectory` fine-tunes, for evaluation tables."""
        return f"SGD, inner lr {config.inner_lr:g}"

    @classmethod
    def test_adapt(cls, config: AlgorithmConfig, model, loss_fn, params, x_support, y_support, steps: int,
                   batched: bool = False) -> "OrderedDict[str, torch.Tensor]":
        """The parameters after `steps` test-time steps (the last item of `test_trajectory`)."""
        return deque(cls.test_trajectory(config, model, loss_fn, params, x_support, y_support, steps, batched),
                     maxlen=1)[0]

    def export_tensors(self) -> "OrderedDict[str, torch.Tensor]":
        """Learned tensors besides theta that an export carries (Meta-SGD's learning rates and the like)."""
        return OrderedDict()

    def setup(self, params) -> None:
        """Create the outer optimizer over the leaf tensors of theta."""
        self.optimizer = Adam(list(params.values()), self.config.meta_lr)

    def meta_lr(self, iteration: int) -> float:
        """The outer learning rate at `iteration`: constant, or cosine-annealed to 0 (MAML++'s stabilizer)."""
        if self.config.meta_lr_schedule == "cosine":
            frac = min(max(iteration / self.total_iterations, 0.0), 1.0)
            return self.config.meta_lr * 0.5 * (1.0 + math.cos(math.pi * frac))
        return self.config.meta_lr

    def _apply(self, params, grads, iteration: int = 0) -> None:
        if self.sync is not None:
            grads = list(grads)
            self.sync(grads)
        self.optimizer.lr = self.meta_lr(iteration)
        self.optimizer.step(grads)

    def _metrics(self, pre_loss, post_loss, pre_logits=None, batch=None, post_logits=None) -> dict:
        out = {"pre_loss": float(pre_loss), "post_loss": float(post_loss)}
        if self.classification and pre_logits is not None:
            out["pre_accuracy"] = float(accuracy_per_task(pre_logits, batch.y_support).mean())
            out["post_accuracy"] = float(accuracy_per_task(post_logits, batch.y_query).mean())
        return out

    def meta_gradient(self, params, batch, first_order: bool):
        """Gradient of the mean post-adaptation query loss with respect to theta (no update).

        Models that can compute it without autograd (`explicit_meta_gradient`: ReLU/tanh MLPs with the MSE
        loss, see mlp_meta.py) do so; every other model differentiates through `adapt`. With step_loss_weights it
        is the gradient of sum_s w_s * (mean query loss after inner step s), by autograd; the returned loss and
        logits are still those after the last step.
        """
        cfg = self.config
        if cfg.step_loss_weights:
            return self._multi_step_meta_gradient(params, batch, first_order)
        explicit = getattr(self.model, "explicit_meta_gradient", None)
        if explicit is not None:
            out = explicit(params, batch, self.loss_fn, cfg.inner_steps, cfg.inner_lr, first_order)
            if out is not None:
                res = AdaptResult(out.params, out.support_losses, support_pred=getattr(out, "support_pred", None))
                return out.grads, out.meta_loss, res, out.query_pred
        res = adapt(self.model, self.loss_fn, params, batch.x_support, batch.y_support, cfg.inner_steps,
                    cfg.inner_lr, create_graph=not first_order)
        query_logits = self.model.forward(res.params, batch.x_query)
        meta_loss = self.loss_fn(query_logits, batch.y_query).mean()
        grads = torch.autograd.grad(meta_loss, list(params.values()))
        return grads, meta_loss.detach(), res, query_logits

    def _multi_step_meta_gradient(self, params, batch, first_order: bool):
        cfg = self.config
        fast = expand_params(params, batch.num_tasks)
        support_losses, objective = [], 0.0
        for weight in cfg.step_loss_weights:
            res = adapt(self.model, self.loss_fn, fast, batch.x_support, batch.y_support, 1, cfg.inner_lr,
                        create_graph=not first_order, batched=True)
            fast = res.params
            support_losses += res.support_losses
            query_logits = self.model.forward(fast, batch.x_query)
            step_loss = self.loss_fn(query_logits, batch.y_query).mean()
            if weight:
                objective = objective + weight * step_loss
        grads = torch.autograd.grad(objective, list(params.values()))
        return grads, step_loss.detach(), AdaptResult(fast, support_losses), query_logits

    def meta_step(self, params, batch, iteration: int = 0) -> dict:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict() if self.optimizer else None}

    def load_state_dict(self, state: dict) -> None:
        if state.get("optimizer") is not None:
            self.optimizer.load_state_dict(state["optimizer"])




def algorithm_class(name: str) -> type[MetaAlgorithm]:
    from .registry import ALGORITHMS

    return ALGORITHMS.get(name)


def multi_step_names() -> list[str]:
    from .registry import ALGORITHMS

    return [a.name for a in ALGORITHMS if a.multi_step_loss]


def test_trajectory(adaptation: AlgorithmConfig | float, model, loss_fn, params, x_support, y_support, steps: int,
                    batched: bool = False) -> Iterator["OrderedDict[str, torch.Tensor]"]:
    """Test-time adaptation by an algorithm's own rule (an AlgorithmConfig), or plain SGD with a step size (a
    number: initializations of unknown origin). Yields each task's parameters after 0..steps steps."""
    if isinstance(adaptation, AlgorithmConfig):
        return algorithm_class(adaptation.name).test_trajectory(adaptation, model, loss_fn, params, x_support,
                                                                y_support, steps, batched)
    return sgd_trajectory(model, loss_fn, params, x_support, y_support, steps, float(adaptation), batched)


def adaptation_text(adaptation: AlgorithmConfig | float) -> str:
    """How test-time adaptation runs, for tables and cards: 'SGD, inner lr 0.4', 'Adam (beta1 0, ...), inner lr 0.1'."""
    if isinstance(adaptation, AlgorithmConfig):
        return algorithm_class(adaptation.name).test_adaptation_text(adaptation)
    return f"SGD, inner lr {float(adaptation):g}"


def test_adapt(adaptation: AlgorithmConfig | float, model, loss_fn, params, x_support, y_support, steps: int,
               batched: bool = False) -> "OrderedDict[str, torch.Tensor]":
    """The parameters after `steps` test-time steps (see test_trajectory)."""
    return deque(test_trajectory(adaptation, model, loss_fn, params, x_support, y_support, steps, batched),
                 maxlen=1)[0]


def make_algorithm(model, loss: str, config: AlgorithmConfig, total_iterations: int = 1) -> MetaAlgorithm:
    config.validate()
    return algorithm_class(config.name)(model, loss, config, total_iterations)
