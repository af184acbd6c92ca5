"""MAML, first-order MAML, Reptile and the 'pretrained on all tasks' baseline behind one interface.

An algorithm owns its outer optimizer and updates the shared initialization theta (a dict of leaf
tensors) in place, one meta-batch of tasks at a time; `meta_step` returns the step's metrics.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

import torch

from .adaptation import AdaptResult, adapt, adapt_adam, expand_params
from .losses import accuracy_per_task, loss_function
from .models import detach_params
from .optim import Adam

ALGORITHMS = ("maml", "fomaml", "reptile", "pretrained")

# Per task family: defaults for every algorithm ("*"), then per algorithm. Unlisted fields keep the dataclass
# defaults below (the MAML paper's sinusoid regression).
TASK_DEFAULTS: dict[str, dict[str, dict]] = {
    "sinusoid": {
        "reptile": {"inner_steps": 5, "outer_lr_start": 1.0, "outer_lr_end": 0.0},
    },
    "images": {  # MAML paper, Omniglot 5-way: alpha 0.4, 1 inner step in training, 3 at test, Adam 1e-3
        "*": {"inner_lr": 0.4, "inner_steps": 1, "test_inner_steps": 3, "meta_lr": 1e-3},
        # Reptile: k = 5 SGD steps with a smaller step (0.4 five times over diverges early on), tested like MAML
        "reptile": {"inner_lr": 0.1, "inner_steps": 5, "test_inner_steps": 3, "outer_lr_start": 1.0,
                    "outer_lr_end": 0.0},
    },
}


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

    def validate(self) -> None:
        if self.name not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {self.name!r} (one of {', '.join(ALGORITHMS)})")
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
        if self.step_loss_weights:
            weights = self.step_loss_weights
            if self.name not in ("maml", "fomaml"):
                raise ValueError(f"step-loss-weights apply to maml and fomaml only, not {self.name}")
            if len(weights) != self.inner_steps:
                raise ValueError(f"step-loss-weights needs one weight per inner step ({self.inner_steps}), "
                                 f"got {len(weights)}")
            if not (all(math.isfinite(w) and w >= 0 for w in weights) and sum(weights) > 0):
                raise ValueError(f"step-loss-weights must be >= 0 with a positive sum, got {weights}")

    @classmethod
    def defaults(cls, name: str, task: str = "sinusoid", **overrides) -> "AlgorithmConfig":
        """Defaults for an algorithm on a task family (TASK_DEFAULTS), then `overrides` (None means unset).

        Sinusoid: the MAML paper's regression (alpha 0.01, 10 test steps). Images: its Omniglot 5-way setting
        (alpha 0.4, one inner step in training, three at test). Reptile needs k > 1 inner steps to differ from
        joint training.
        """
        if task not in TASK_DEFAULTS:
            raise ValueError(f"unknown task {task!r} (one of {', '.join(TASK_DEFAULTS)})")
        base = {"name": name}
        base.update(TASK_DEFAULTS[task].get("*", {}))
        base.update(TASK_DEFAULTS[task].get(name, {}))
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "AlgorithmConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class MetaAlgorithm:
    """One meta-learning algorithm: `meta_step` on a TaskBatch updates `params` in place."""

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

    @property
    def name(self) -> str:
        return self.config.name

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


class MAML(MetaAlgorithm):
    """Finn et al. 2017: differentiate the query loss through the inner SGD steps (exact second order)."""

    first_order = False

    def meta_step(self, params, batch, iteration: int = 0) -> dict:
        grads, meta_loss, res, query_logits = self.meta_gradient(params, batch, self.first_order)
        pre_loss = res.support_losses[0].mean()
        pre_logits = res.support_pred
        if self.classification and pre_logits is None:
            with torch.no_grad():
                pre_logits = self.model.forward(params, batch.x_support)
        self._apply(params, grads, iteration)
        return self._metrics(pre_loss, meta_loss, pre_logits, batch, query_logits.detach())


class FOMAML(MAML):
    """First-order MAML: the inner gradients are treated as constants (no Hessian-vector products)."""

    first_order = True


class Reptile(MetaAlgorithm):
    """Nichol et al. 2018: theta <- theta + eps * mean_i(phi_i - theta), phi_i after k inner steps."""

    def __init__(self, model, loss, config, total_iterations=1):
        super().__init__(model, loss, config, total_iterations)
        if config.inner_steps == 1:
            warnings.warn("Reptile with one inner step is plain joint training; use inner-steps > 1",
                          stacklevel=2)

    def setup(self, params) -> None:
        self.optimizer = None  # Reptile's outer update is a plain interpolation

    def epsilon(self, iteration: int) -> float:
        frac = min(max(iteration / self.total_iterations, 0.0), 1.0)
        return self.config.outer_lr_start + frac * (self.config.outer_lr_end - self.config.outer_lr_start)

    def meta_step(self, params, batch, iteration: int = 0) -> dict:
        cfg = self.config
        if cfg.inner_optimizer == "adam":
            res = adapt_adam(self.model, self.loss_fn, params, batch.x_support, batch.y_support,
                             cfg.inner_steps, cfg.inner_lr)
        else:
            res = adapt(self.model, self.loss_fn, detach_params(params), batch.x_support, batch.y_support,
                        cfg.inner_steps, cfg.inner_lr)
        eps = self.epsilon(iteration)
        with torch.no_grad():
            query_logits = self.model.forward(res.params, batch.x_query)
            post_loss = self.loss_fn(query_logits, batch.y_query).mean()
            pre_logits = self.model.forward(params, batch.x_support) if self.classification else None
            deltas = [(res.params[k] - p).mean(0) for k, p in params.items()]
            if self.sync is not None:
                self.sync(deltas)
            for p, delta in zip(params.values(), deltas):
                p.add_(delta, alpha=eps)
        return self._metrics(res.support_losses[0].mean(), post_loss, pre_logits, batch, query_logits) | {
            "epsilon": eps}


class Pretrained(MetaAlgorithm):
    """The MAML paper's transfer baseline: theta trained jointly on all tasks' data, no adaptation inside.

    Its post-adaptation metric fine-tunes a detached copy with the test-time rule, for comparison only.
    """

    def meta_step(self, params, batch, iteration: int = 0) -> dict:
        cfg = self.config
        x, y = batch.joint()
        with torch.enable_grad():
            loss = self.loss_fn(self.model.forward(params, x), y).mean()
            grads = torch.autograd.grad(loss, list(params.values()))
        with torch.no_grad():
            pre_logits = self.model.forward(params, batch.x_support)
            pre_loss = self.loss_fn(pre_logits, batch.y_support).mean()
        res = adapt(self.model, self.loss_fn, detach_params(params), batch.x_support, batch.y_support,
                    max(cfg.inner_steps, 1), cfg.inner_lr)
        with torch.no_grad():
            query_logits = self.model.forward(res.params, batch.x_query)
            post_loss = self.loss_fn(query_logits, batch.y_query).mean()
        self._apply(params, grads, iteration)
        return self._metrics(pre_loss, post_loss, pre_logits, batch, query_logits)


_CLASSES = {"maml": MAML, "fomaml": FOMAML, "reptile": Reptile, "pretrained": Pretrained}


def make_algorithm(model, loss: str, config: AlgorithmConfig, total_iterations: int = 1) -> MetaAlgorithm:
    config.validate()
    return _CLASSES[config.name](model, loss, config, total_iterations)
