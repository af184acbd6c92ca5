"""The one interface every meta-learning algorithm implements (its hyperparameters: config.AlgorithmConfig).

An algorithm owns what makes it different: its defaults per task family, its meta-update (`meta_step`, which
updates the shared initialization theta, a dict of leaf tensors, in place and returns the step's metrics), its
test-time adaptation (`test_trajectory`: what evaluation, validation and every view call), its extra state
(`state_dict`, `export_tensors`), its label and colour. The built-in ones live one per file in this
folder and are listed in registry.py (`maml-lab list` prints them); a plug-in adds one through the `maml_lab.algorithms`
entry point group (docs/extending.md).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..tasks.losses import accuracy_per_task, loss_function
from .adaptation import AdaptResult, adapt, adapted_subset, expand_params, sgd_trajectory
from .optim import Adam


@dataclass(frozen=True)
class LearnedAdaptation:
    """An algorithm's test-time rule together with the tensors it learned for it (Meta-SGD's per-parameter learning
    rates and the like: `MetaAlgorithm.export_tensors()`, exported beside theta)."""

    config: object  # its AlgorithmConfig
    tensors: dict = field(default_factory=dict)  # name -> tensor (detached, CPU)


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
    min_inner_steps: ClassVar[int] = 1  # the pretrained baseline trains without inner steps (0)
    # trains on batches whose data are sampled from the parameters being adapted (`batch.sampled`: reinforcement
    # learning, e.g. 2-D navigation; core/rl/objective.py): families refuse algorithms without it
    sampled_tasks: ClassVar[bool] = False
    # which parameters the inner loop adapts, in training and at test time: "all", "head" (the model's
    # `head_names`: ANIL) or "body" (all but the head: BOIL); the others are held at theta in the inner loop.
    # "context": a context vector the model reads besides theta is adapted, theta held (CAVIA: models/context.py)
    adapts: ClassVar[str] = "all"
    # whether the inner loop steps batch norm's scale and shift (evaluation cards state it): None follows `adapts`
    # (adapted unless only the head is); MAML++ sets False (its per-step rows are learned in the outer loop only)
    adapts_batch_norm: ClassVar[bool | None] = None
    # how test-time adaptation works, for the views that draw it: "gradient" (steps on the support loss), or a rule
    # that is not gradient steps on theta ("prototypes": ProtoNets; "head_fit": Baseline's head on frozen features)
    adaptation_kind: ClassVar[str] = "gradient"
    # AlgorithmConfig fields the algorithm does not read (ProtoNets: no inner loop, no test-time steps): the panel
    # greys them out and says so, rather than offering settings that change nothing
    unused_fields: ClassVar[tuple[str, ...]] = ()
    # classifies only (ProtoNets' prototypes, Baseline's class head): families that regress or act (sinusoids,
    # navigation) refuse it, and the panel says why
    classification_only: ClassVar[bool] = False
    # the panel's outer-step field: which config field, and its name there
    outer_lr_field: ClassVar[str] = "meta_lr"
    outer_lr_label: ClassVar[str] = "meta lr β"
    outer_lr_tip: ClassVar[str] = "meta learning rate β: the outer Adam step size"

    def __init__(self, model, loss: str, config, total_iterations: int = 1):
        self.model = model
        self.loss_name = loss
        self.loss_fn = loss_function(loss)
        self.config = config
        self.total_iterations = max(1, int(total_iterations))
        self.classification = loss in ("cross_entropy", "cross_entropy_sum")  # tasks.losses.CLASSIFICATION_LOSSES
        self.optimizer: Adam | None = None
        # data-parallel training: all-reduces a list of tensors in place to their global mean (None: one process)
        self.sync: Callable[[list[torch.Tensor]], None] | None = None

    # -- what the registry and the views read ----------------------------------------------------------
    @classmethod
    def check_config(cls, config) -> None:
        """Refuse settings this algorithm cannot train with (ValueError with the reason)."""

    def check_data_parallel(self) -> None:
        """Refuse (ValueError with the reason) settings under which splitting a meta-batch across processes
        (torchrun) would not give one process's result: tasks that depend on the ones before them."""

    @classmethod
    def inner_loss(cls, config, model, loss_fn, params, start, x_support, y_support,
                   tensors: dict | None = None) -> torch.Tensor:
        """Each task's inner-loop objective [B] at its parameters `params` ([B, ...]), adapting from `start` (the
        parameters adaptation began from, theta per task [B, ...]); `tensors`: what it learned besides theta
        (`export_tensors`). The default inner loop, MAML's meta-gradient and test-time adaptation all descend it, so
        an objective of its own (iMAML's proximal term, a context, a regularizer) is this one method. Default: the
        support loss, which models may differentiate without autograd (explicit paths: used only for it)."""
        return loss_fn(model.forward(params, x_support), y_support)

    @classmethod
    def own_inner_loss(cls) -> bool:
        """Whether `inner_loss` is not the support loss (explicit paths, which know only that one, then stand aside)."""
        return getattr(cls.inner_loss, "__func__", None) is not MetaAlgorithm.inner_loss.__func__

    @classmethod
    def inner_objective(cls, config, model, loss_fn, tensors: dict | None = None):
        """`inner_loss` bound to a config, a model, a loss and learned tensors: the `inner_loss(params, start,
        x_support, y_support)` callable `adapt` and `sgd_trajectory` take; None for the plain support loss."""
        if not cls.own_inner_loss():
            return None
        return functools.partial(cls.inner_loss, config, model, loss_fn, tensors=tensors)

    def training_objective(self):
        """`inner_objective` with this run's config, model, loss and live learned tensors (None: the support loss)."""
        return type(self).inner_objective(self.config, self.model, self.loss_fn, dict(self.export_tensors()))

    @classmethod
    def test_trajectory(cls, config, model, loss_fn, params, x_support, y_support, steps: int,
                        batched: bool = False, tensors: dict | None = None
                        ) -> Iterator["OrderedDict[str, torch.Tensor]"]:
        """Test-time adaptation as this algorithm was trained to adapt: yields each task's parameters [B, ...]
        after 0, 1, ..., `steps` steps, detached. `tensors`: what it learned besides theta (`export_tensors`).
        The default is plain SGD with step size inner_lr (MAML paper) on `inner_loss`, on the parameters `adapts`
        names."""
        return sgd_trajectory(model, loss_fn, params, x_support, y_support, steps, config.inner_lr, batched,
                              names=cls.adapted_names(model, params),
                              inner_loss=cls.inner_objective(config, model, loss_fn, tensors or {}))

    @classmethod
    def batch_norm_mode(cls, config) -> str:
        """How batch norm treats a task's queries when this algorithm predicts, unless an evaluation chooses
        (models/batch_norm.py: "transductive", "support", "support+query", "running"): transductive, as cbfinn/maml.
        An algorithm's `predict(config, model, ...)` hook gets the chosen mode through `model`, whose `forward` and
        `features` apply it."""
        return "transductive"

    @classmethod
    def adapted_names(cls, model, params) -> "tuple[str, ...] | None":
        """The parameters this algorithm's inner loop adapts (`adapts`); None: all of them."""
        return adapted_subset(model, params, cls.adapts)

    @classmethod
    def test_adaptation_text(cls, config) -> str:
        """How `test_trajectory` fine-tunes, for evaluation tables."""
        return f"SGD, inner lr {config.inner_lr:g}"

    def export_tensors(self) -> "OrderedDict[str, torch.Tensor]":
        """Learned tensors besides theta that checkpoints, exports, snapshots and test-time adaptation carry
        (Meta-SGD's learning rates and the like): the live tensors (load_state_dict copies into them; callers that
        keep them copy them); names must not collide with theta's."""
        return OrderedDict()

    def adaptation(self):
        """How this algorithm fine-tunes at test time, with what it learned: its config, or a LearnedAdaptation
        when it has export_tensors (what validation, snapshots and exports hand on)."""
        tensors = {k: v.detach().to("cpu").clone() for k, v in self.export_tensors().items()}
        return LearnedAdaptation(self.config, tensors) if tensors else self.config

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
        loss, see mlp_meta.py) do so, unless the algorithm has an `inner_loss` of its own (those paths know the
        support loss only); every other model and objective differentiates through `adapt`. With step_loss_weights it
        is the gradient of sum_s w_s * (mean query loss after inner step s), by autograd; the returned loss and
        logits are still those after the last step.

        It is MAML's meta-gradient (SGD at inner_lr on the adapted parameters). An algorithm that adapts with
        tensors it learns besides theta (`export_tensors`: Meta-SGD's rates, MAML++'s per-step rates and rows,
        Reptile's carried inner Adam state) and does not override this method gets a TypeError, never plain MAML's
        gradient in its name.
        """
        cfg = self.config
        if type(self).export_tensors is not MetaAlgorithm.export_tensors:
            raise TypeError(f"{self.label or self.name} adapts with tensors it learns besides theta, so MAML's "
                            "meta-gradient is not its own; its meta_step computes the real one")
        if getattr(batch, "sampled", False):  # data sampled from the adapted parameters (RL): rl/objective.py
            if self.own_inner_loss():
                raise TypeError(f"{self.label or self.name} has an inner loss of its own, which the sampled tasks' "
                                "surrogate objective does not take")
            from ..rl.objective import objective_meta_gradient

            return objective_meta_gradient(self, params, batch, first_order)
        if cfg.step_loss_weights:
            return self._multi_step_meta_gradient(params, batch, first_order)
        names = self.adapted_names(self.model, params)
        objective = self.training_objective()
        # a subset (ANIL, BOIL): models whose explicit path takes `names` (conv-4) compute it there too; an inner
        # loss of the algorithm's own is differentiated by autograd (the explicit paths know the support loss only)
        explicit = getattr(self.model, "explicit_meta_gradient", None) if objective is None else None
        if explicit is not None and names is not None and "names" not in inspect.signature(explicit).parameters:
            explicit = None
        if explicit is not None:
            kwargs = {} if names is None else {"names": names}
            out = explicit(params, batch, self.loss_fn, cfg.inner_steps, cfg.inner_lr, first_order, **kwargs)
            if out is not None:
                res = AdaptResult(out.params, out.support_losses, support_pred=getattr(out, "support_pred", None))
                return out.grads, out.meta_loss, res, out.query_pred
        res = adapt(self.model, self.loss_fn, params, batch.x_support, batch.y_support, cfg.inner_steps,
                    cfg.inner_lr, create_graph=not first_order, names=names, inner_loss=objective)
        query_logits = self.model.forward(res.params, batch.x_query)
        meta_loss = self.loss_fn(query_logits, batch.y_query).mean()
        grads = torch.autograd.grad(meta_loss, list(params.values()))
        return grads, meta_loss.detach(), res, query_logits

    def _multi_step_meta_gradient(self, params, batch, first_order: bool):
        cfg = self.config
        fast = start = expand_params(params, batch.num_tasks)
        names = self.adapted_names(self.model, params)
        inner_loss = self.training_objective()
        support_losses, objective = [], 0.0
        for weight in cfg.step_loss_weights:
            res = adapt(self.model, self.loss_fn, fast, batch.x_support, batch.y_support, 1, cfg.inner_lr,
                        create_graph=not first_order, batched=True, names=names, inner_loss=inner_loss,
                        start=start)
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
        """Everything besides theta that training continues from (checkpoints save this): the outer optimizer's
        state (Adam: lr, betas, eps and the moment and step tensors; None without one) and the learned tensors
        `export_tensors` names. Tensors are the live ones: a caller that keeps them copies them."""
        return {"optimizer": self.optimizer.state_dict() if self.optimizer else None,
                "tensors": dict(self.export_tensors())}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` gave (tensors are copied in place); ValueError when it does not fit."""
        saved = state.get("optimizer")
        if (saved is None) != (self.optimizer is None):
            raise ValueError(f"{self.name}: the saved state has {'no' if saved is None else 'an'} outer optimizer "
                             f"state, this algorithm {'has' if self.optimizer is not None else 'has none'}")
        if saved is not None:
            mine = self.optimizer.state_dict()
            for key in ("exp_avg", "exp_avg_sq", "steps"):
                theirs = list(saved.get(key) or [])
                if len(theirs) != len(mine[key]) or any(tuple(a.shape) != tuple(b.shape)
                                                        for a, b in zip(mine[key], theirs)):
                    raise ValueError(f"{self.name}: the saved optimizer state ({key}) does not match the parameters")
            self.optimizer.load_state_dict(saved)
        own = self.export_tensors()
        saved_tensors = state.get("tensors") or {}
        if set(saved_tensors) != set(own):
            raise ValueError(f"{self.name}: the saved state has tensors {sorted(saved_tensors)}, "
                             f"this algorithm {sorted(own)}")
        with torch.no_grad():
            for k, t in own.items():
                if tuple(saved_tensors[k].shape) != tuple(t.shape):
                    raise ValueError(f"{self.name}: the saved tensor {k} has another shape")
                t.copy_(saved_tensors[k])
