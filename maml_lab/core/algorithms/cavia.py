"""CAVIA, fast context adaptation (Zintgraf, Shiarlis, Kurin, Hofmann, Whiteson 2019): a few context parameters per
task are adapted in the inner loop, the network is shared and meta-trained in the outer loop.

    phi_i = 0 - alpha * grad_phi L_support_i(theta, phi = 0)        (k context parameters, reset to 0 per task)
    theta <- Adam step on mean_i L_query_i(theta, phi_i)             (second order through the context steps)

As the reference code (github.com/lmzintgraf/cavia) does it: on regression the context is concatenated to the
MLP's input (2 context parameters on the sinusoid, inner lr 1.0, one inner step, meta lr 0.001, each task's
meta-gradient clamped to [-10, 10] before averaging); on images a linear FiLM generator from the context
(100 parameters) scales and shifts the third conv block's feature maps (classification/models.py
`context_in=[False, False, True, False, False]`, inner lr 1.0, two steps in training and at test, meta lr 0.001
decayed by 0.9 every 5,000 iterations, the averaged meta-gradient clamped to [-10, 10]). The parts of the network
that read the context (the first layer's context columns, the FiLM generator: models/context.py) are what CAVIA
learns besides theta, exported beside it as `context.*` tensors; theta itself has the family's usual shapes, so CAVIA
trains side by side with MAML from the same initialization. docs/algorithms.md lists every difference from the
reference.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch

from ..models import context as ctx
from .adaptation import adapt, expand_params, sgd_trajectory
from .base import MetaAlgorithm
from .optim import Adam

DECAY_EVERY = 5000  # the reference's StepLR(meta_optimiser, 5000, lr_meta_decay) on images
CONTEXT_SEED = 20190  # the context network's initialization (the same for every run, as theta's follows the seed)


class CAVIA(MetaAlgorithm):
    """Zintgraf et al. 2019: adapt a context vector per task; theta and the context network are meta-learned."""

    name = "cavia"
    label = "CAVIA"
    color = "#DDCC77"  # Tol's sand
    description = ("CAVIA: a few context parameters adapted per task, the network shared and meta-trained, second "
                   "order (Zintgraf et al. 2019)")
    adapts = "context"
    adapts_batch_norm = False  # only the context moves in the inner loop
    option_defaults = {"num_context": 2, "film_block": 3, "clip": 10.0, "first_order": False, "meta_lr_decay": 1.0}
    # the reference code's settings: sinusoid (regression/arguments.py, with the paper's 2 context parameters) and
    # images (classification/arguments.py)
    task_defaults = {
        "*": {"inner_lr": 1.0, "inner_steps": 1, "test_inner_steps": 1, "meta_lr": 1e-3},
        "images": {"inner_steps": 2, "test_inner_steps": 2, "num_context": 100, "meta_lr_decay": 0.9},
    }
    settings_tip = ("num_context: context parameters per task (the only thing the inner loop adapts); film_block: "
                    "the conv-4 block whose feature maps the context scales and shifts (FiLM; MLPs take the context "
                    "at their input); clip: meta-gradient entries clamped to ±clip (0: none); first_order: "
                    "no second-order term through the context steps; meta_lr_decay: the meta lr is multiplied by it "
                    f"every {DECAY_EVERY:,} iterations (the reference's image setting 0.9; 1: constant)")

    @classmethod
    def check_config(cls, config) -> None:
        k = config.options.get("num_context", cls.option_defaults["num_context"])
        if not (isinstance(k, int) and not isinstance(k, bool) and k >= 1):
            raise ValueError(f"cavia.num_context must be an integer >= 1, got {k!r}")
        block = config.options.get("film_block", cls.option_defaults["film_block"])
        if not (isinstance(block, int) and not isinstance(block, bool) and 1 <= block <= 4):
            raise ValueError(f"cavia.film_block must be a conv-4 block, 1 to 4, got {block!r}")
        clip = config.options.get("clip", cls.option_defaults["clip"])
        if not (isinstance(clip, (int, float)) and not isinstance(clip, bool) and math.isfinite(clip) and clip >= 0):
            raise ValueError(f"cavia.clip must be a number >= 0 (0: no clamping), got {clip!r}")
        decay = config.options.get("meta_lr_decay", cls.option_defaults["meta_lr_decay"])
        if not (isinstance(decay, (int, float)) and not isinstance(decay, bool) and 0 < decay <= 1):
            raise ValueError(f"cavia.meta_lr_decay must be in (0, 1] (1: a constant meta lr), got {decay!r}")

    @classmethod
    def adapted_names(cls, model, params) -> tuple[str, ...]:
        return (ctx.CONTEXT,)

    def setup(self, params) -> None:
        init = getattr(self.model, "context_init", None)
        if init is None:
            raise ValueError(f"CAVIA needs a model that takes a context (the MLP, the conv-4), not a "
                             f"{type(self.model).__name__}")
        ref = next(iter(params.values()))
        net = init(self.config.option("num_context"), torch.Generator().manual_seed(CONTEXT_SEED),
                   layer=self.config.option("film_block"), dtype=ref.dtype)
        self.context_net = OrderedDict((k, v.to(ref.device).requires_grad_(True)) for k, v in net.items())
        self.optimizer = Adam([*params.values(), *self.context_net.values()], self.config.meta_lr)

    def meta_lr(self, iteration: int) -> float:
        """The configured meta lr (constant or cosine) times meta_lr_decay per DECAY_EVERY iterations, as the
        reference's StepLR, stepped before each update, gives it: iteration i (from 0) uses decay ** ((i + 1) //
        DECAY_EVERY)."""
        return super().meta_lr(iteration) * float(self.config.option("meta_lr_decay")) ** (
            (iteration + 1) // DECAY_EVERY)

    def export_tensors(self) -> "OrderedDict[str, torch.Tensor]":
        return self.context_net

    def meta_step(self, params, batch, iteration: int = 0) -> dict:
        grads, meta_loss, pre_loss, pre_logits, query_logits = self.meta_gradients(params, batch)
        self._apply(params, grads, iteration)
        return self._metrics(pre_loss, meta_loss, pre_logits, batch, query_logits)

    def meta_gradients(self, params, batch):
        """The meta-gradient with respect to theta, then the context network (`params`, then `export_tensors`
        order), clamped as the reference clamps it, and what the metrics need; no update.

        Regression (the reference's regression/cavia.py) clamps each task's gradient before averaging, so the
        gradient is taken with respect to per-task views of the shared tensors; classification
        (classification/main.py) clamps the average."""
        cfg = self.config
        shared = OrderedDict([*params.items(), *self.context_net.items()])
        clip = float(cfg.option("clip"))
        per_task = clip > 0 and not self.classification
        b = batch.num_tasks
        with torch.enable_grad():
            inputs = expand_params(shared, b) if per_task else shared
            start = torch.zeros(b, self._num_context(), dtype=batch.x_support.dtype, device=batch.x_support.device)
            fast = OrderedDict([*inputs.items(), (ctx.CONTEXT, start.requires_grad_(True))])
            res = adapt(self.model, self.loss_fn, fast, batch.x_support, batch.y_support, cfg.inner_steps,
                        cfg.inner_lr, create_graph=not cfg.option("first_order"), batched=True, names=(ctx.CONTEXT,))
            query_logits = self.model.forward(res.params, batch.x_query)
            losses = self.loss_fn(query_logits, batch.y_query)
            if per_task:
                grads = torch.autograd.grad(losses.sum(), list(inputs.values()))
                grads = [g.clamp(-clip, clip).mean(0) for g in grads]
            else:
                grads = torch.autograd.grad(losses.mean(), list(shared.values()))
                if clip > 0:
                    grads = [g.clamp(-clip, clip) for g in grads]
        pre_logits = None
        if self.classification:
            with torch.no_grad():
                pre_logits = self.model.forward(OrderedDict([*shared.items(), (ctx.CONTEXT, start.detach())]),
                                                batch.x_support)
        return grads, losses.detach().mean(), res.support_losses[0].mean(), pre_logits, query_logits.detach()

    def _num_context(self) -> int:
        return int(self.config.option("num_context"))

    @classmethod
    def test_trajectory(cls, config, model, loss_fn, params, x_support, y_support, steps, batched=False,
                        tensors=None):
        """Each task's context from zero, SGD at inner_lr on the support loss, theta and the context network
        (`tensors`, what `export_tensors` gave) held; yields theta with the context entries, every tensor per task.
        Without the context network (an initialization imported without it) the context reaches nothing: theta is
        yielded unchanged."""
        net = OrderedDict((k, v) for k, v in (tensors or {}).items() if ctx.is_context(k) and k != ctx.CONTEXT)
        theta = OrderedDict((k, v.detach()) for k, v in params.items() if not ctx.is_context(k))
        if not net:
            return sgd_trajectory(model, loss_fn, theta, x_support, y_support, steps, config.inner_lr, batched,
                                  names=())
        ref = next(iter(theta.values()))
        extra = OrderedDict((k, v.detach().to(device=ref.device, dtype=ref.dtype)) for k, v in net.items())
        k = next(iter(extra.values())).shape[-1]  # [hidden, k] or the FiLM generator's [2F, k]
        extra[ctx.CONTEXT] = torch.zeros(k, dtype=ref.dtype, device=ref.device)
        if batched:
            extra = expand_params(extra, x_support.shape[0])
        return sgd_trajectory(model, loss_fn, OrderedDict([*theta.items(), *extra.items()]), x_support, y_support,
                              steps, config.inner_lr, batched, names=(ctx.CONTEXT,))

    @classmethod
    def test_adaptation_text(cls, config) -> str:
        k = config.option("num_context")
        return (f"SGD on {k} context parameter{'s' if k != 1 else ''} from zero (CAVIA), inner lr "
                f"{config.inner_lr:g}")
