"""Baseline (Chen, Liu, Kira, Wang, Huang, "A Closer Look at Few-shot Classification", ICLR 2019).

Training is ordinary classification: the conv-4's body and a head over *every* training class are trained with
cross-entropy on the images of the batch, each label read as its class in the training set (the batch's
`info["classes"]`). No inner loop, no meta-gradient. At test time the body is frozen and a new N-way head is fit on
the support set's features (head_fit.py: the reference's 100 epochs of SGD in mini-batches of 4).

Reference code: wyharveychen/CloserLookFewShot, methods/baselinetrain.py (training: `nn.Linear(feat_dim,
num_class)` with a zero bias, cross-entropy, Adam at 1e-3) and methods/baselinefinetune.py (the head fit).

The all-class head is a learned tensor besides theta (`export_tensors`: "classifier.weight", "classifier.bias", the
reference's names), trained by its own Adam in step with theta's and resumed exactly. It is made at the first step,
when the batch says how many classes the training set has (`info["num_classes"]`), so nothing besides the batches
needs to tell the algorithm about the data (the Trainer, the cost meter's copies and tests build it alike). Theta
keeps the model's N-way head so that exports, the views and `eval` read the shapes they know; training never reads
or moves it (a head fit starts from a fresh head), and the test-time rule puts each task's fit head in its place.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque

import torch
import torch.nn.functional as F

from . import head_fit
from .base import MetaAlgorithm
from .optim import Adam

CLASSIFIER_SEED = 0  # the generator of the all-class head's initial values (theta and the tasks have the run's seed)


def linear_probe(task: str = "images"):
    """A linear probe of any initialization's features (`eval --probe`): Baseline's test-time rule, the body frozen
    and a new linear head fit on each task's support set for its 100 epochs (its AlgorithmConfig)."""
    from .config import AlgorithmConfig

    return AlgorithmConfig.defaults("baseline", task)


class Baseline(MetaAlgorithm):
    """Chen et al. 2019's Baseline: a classifier over all training classes, then a linear head fit per task."""

    name = "baseline"
    label = "Baseline"
    color = "#CC6677"
    description = ("Baseline (Chen et al. 2019): conv-4 trained as one classifier over all training classes; at test "
                   "a new linear head fit on the frozen body's support features")
    head = "linear"  # the kind of head: the all-class one in training and the one fit at test time (head_fit.HEADS)
    adaptation_kind = "head_fit"
    adapts = "head"  # at test time only the head changes (a new one, fit on the frozen body: test_trajectory)
    adapts_batch_norm = False
    classification_only = True
    min_inner_steps = 0  # no inner loop in training; inner steps are head-fit epochs that score it
    # the head fit's step size is inner_lr, its epochs are inner_steps (scoring training tasks and validation) and
    # test_inner_steps (eval): the reference's 0.01 and 100; the outer step is the reference's Adam at 1e-3
    task_defaults = {"*": {"inner_lr": 0.01, "inner_steps": 100, "test_inner_steps": 100, "meta_lr": 1e-3,
                           "meta_lr_schedule": "constant"}}
    outer_lr_tip = "learning rate of the Adam step on the body and the all-class head (the reference's 1e-3)"

    def __init__(self, model, loss: str, config, total_iterations: int = 1):
        super().__init__(model, loss, config, total_iterations)
        self.classifier: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.classifier_optimizer: Adam | None = None
        self._like: torch.Tensor | None = None

    # -- the all-class head ----------------------------------------------------------------------------------------
    def setup(self, params) -> None:
        super().setup(params)
        self._like = next(iter(params.values())).detach()

    def _new_classifier(self, shapes: dict) -> None:
        like = self._like if self._like is not None else torch.zeros(())
        self.classifier = OrderedDict((k, torch.zeros(s, dtype=like.dtype, device=like.device).requires_grad_(True))
                                      for k, s in shapes.items())
        self.classifier_optimizer = Adam(list(self.classifier.values()), self.config.meta_lr)

    def classifier_shapes(self, classes: int, dim: int) -> "OrderedDict[str, tuple[int, ...]]":
        return OrderedDict([("classifier.weight", (classes, dim)), ("classifier.bias", (classes,))])

    def _init_classifier(self, classes: int, dim: int) -> None:
        """The reference's head: nn.Linear's initial weight (U(+-1/sqrt(F))) and a zero bias."""
        self._new_classifier(self.classifier_shapes(classes, dim))
        generator = torch.Generator().manual_seed(CLASSIFIER_SEED)
        weight = (torch.rand(classes, dim, generator=generator, dtype=torch.float64) * 2 - 1) / math.sqrt(dim)
        with torch.no_grad():
            self.classifier["classifier.weight"].copy_(weight)

    def classifier_logits(self, feats: torch.Tensor) -> torch.Tensor:
        """Logits over every training class [..., C] of features [..., F]."""
        return F.linear(feats, self.classifier["classifier.weight"], self.classifier["classifier.bias"])

    def export_tensors(self) -> "OrderedDict[str, torch.Tensor]":
        return self.classifier

    def adaptation(self):
        """The test-time head fit needs nothing learned besides theta's body: its config."""
        return self.config

    # -- training ------------------------------------------------------------------------------------------------
    def _classes(self, batch) -> tuple[torch.Tensor, int]:
        info = getattr(batch, "info", None) or {}
        classes, count = info.get("classes"), info.get("num_classes")
        if not isinstance(classes, torch.Tensor) or count is None:
            raise ValueError(f"{self.label} trains one classifier over all training classes: it needs tasks that "
                             f"name each label's class in the training set (image tasks do)")
        return classes, int(count)

    def all_class_gradients(self, params, batch) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """The training loss (mean cross-entropy of every image of the batch, support and query, over all training
        classes; batch norm per task as the model computes it) and its gradients: theta's in theta's order (zero
        for theta's N-way head, which it does not read) and the all-class head's."""
        classes, count = self._classes(batch)
        head = set(self.model.head_names(params))
        body = OrderedDict((k, v) for k, v in params.items() if k not in head)
        x, y = batch.joint()
        labels = classes.to(y.device).gather(1, y)  # each image's class in the training set
        with torch.enable_grad():
            feats = self.model.features(body, x)
            if not self.classifier:
                self._init_classifier(count, feats.shape[-1])
            rows = next(iter(self.classifier.values())).shape[0]
            if rows != count:
                raise ValueError(f"{self.label}'s classifier has {rows} classes, the training set {count}")
            logits = self.classifier_logits(feats)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
            grads = torch.autograd.grad(loss, [*body.values(), *self.classifier.values()])
        body_grads = dict(zip(body, grads[:len(body)]))
        theta_grads = [body_grads[k] if k in body_grads else torch.zeros_like(v) for k, v in params.items()]
        return loss.detach(), theta_grads, list(grads[len(body):])

    def meta_step(self, params, batch, iteration: int = 0) -> dict:
        _, theta_grads, classifier_grads = self.all_class_gradients(params, batch)
        pre_loss, pre_logits, post_loss, post_logits = self._scores(params, batch)
        if self.sync is not None:  # data-parallel: the all-class head's gradient is a global mean too
            self.sync(classifier_grads)
        self._apply(params, theta_grads, iteration)
        self.classifier_optimizer.lr = self.meta_lr(iteration)
        self.classifier_optimizer.step(classifier_grads)
        return self._metrics(pre_loss, post_loss, pre_logits, batch, post_logits)

    def _scores(self, params, batch):
        """The step's metrics, before the update: before adaptation, the all-class head restricted to each task's
        classes on its support images; after, the test-time rule's head (inner_steps epochs) on its queries."""
        with torch.no_grad():
            support = head_fit.features(self.model, params, batch.x_support)
            logits = self.classifier_logits(support)
            index = batch.info["classes"].to(logits.device).unsqueeze(1).expand(-1, logits.shape[1], -1)
            pre_logits = logits.gather(2, index)
            pre_loss = self.loss_fn(pre_logits, batch.y_support).mean()
            fast = deque(self.test_trajectory(self.config, self.model, self.loss_fn, params, batch.x_support,
                                              batch.y_support, self.config.inner_steps), maxlen=1)[0]
            post_logits = self.predict(self.config, self.model, fast, batch.x_support, batch.y_support, batch.x_query)
            post_loss = self.loss_fn(post_logits, batch.y_query).mean()
        return pre_loss, pre_logits, post_loss, post_logits

    # -- test time -------------------------------------------------------------------------------------------------
    @classmethod
    def test_trajectory(cls, config, model, loss_fn, params, x_support, y_support, steps: int,
                        batched: bool = False, tensors: dict | None = None):
        """A new head per task fit on the frozen body's support features; step k is the head after k epochs."""
        return head_fit.model_trajectory(cls.head, model, params, x_support, y_support, steps, config.inner_lr)

    @classmethod
    def predict(cls, config, model, params, x_support, y_support, x_query) -> torch.Tensor:
        return head_fit.model_predict(cls.head, model, params, x_query)

    @classmethod
    def test_adaptation_text(cls, config) -> str:
        return head_fit.rule_text(cls.head, config.inner_lr)

    # -- checkpoints -----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = super().state_dict()
        state["classifier_optimizer"] = (self.classifier_optimizer.state_dict() if self.classifier_optimizer
                                         else None)
        return state

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("tensors") or {}
        if saved and not self.classifier:  # a run resumed before its first step here: the saved head's shapes
            if set(saved) != set(self.classifier_shapes(1, 1)):
                raise ValueError(f"{self.name}: the saved state has tensors {sorted(saved)}, this algorithm "
                                 f"{sorted(self.classifier_shapes(1, 1))}")
            self._new_classifier(OrderedDict((k, tuple(saved[k].shape)) for k in self.classifier_shapes(1, 1)))
        super().load_state_dict(state)
        head_state = state.get("classifier_optimizer")
        if (head_state is None) != (self.classifier_optimizer is None):
            raise ValueError(f"{self.name}: the saved state and this run differ in whether the all-class head "
                             f"has been trained")
        if head_state is not None:
            mine = self.classifier_optimizer.state_dict()
            theirs = list(head_state.get("exp_avg") or [])
            if len(theirs) != len(mine["exp_avg"]) or any(tuple(a.shape) != tuple(b.shape)
                                                         for a, b in zip(mine["exp_avg"], theirs)):
                raise ValueError(f"{self.name}: the saved optimizer state of the all-class head does not match it")
            self.classifier_optimizer.load_state_dict(head_state)
