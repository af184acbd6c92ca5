"""MAML++ (Antoniou, Edwards, Storkey 2019, "How to train your MAML"), as its reference code trains it
(github.com/AntreasAntoniou/HowToTrainYourMAMLPytorch: few_shot_learning_system.py, inner_loop_optimizers.py,
meta_neural_network_architectures.py, experiment_config/omniglot_maml++-*.json).

With S inner steps, for each task i and step s = 0 .. S-1:

    theta_{s+1} = theta_s - lslr[p][s] * grad_p L_support_i(theta_s; bn_step[s])   for every inner parameter p
    meta-loss   = sum_s w_s(epoch) * mean_i L_query_i(theta_{s+1}; bn_step[s])
    (theta, lslr, bn_step) <- Adam step on the meta-loss, outer lr cosine-annealed

What it adds to MAML, and where this file follows the code rather than the paper's text:

* LSLR, learned per-layer per-step inner learning rates: one rate per parameter tensor (a conv weight and its
  bias each have their own) and per step, all starting at the config's inner_lr (the code's
  init_inner_loop_learning_rate; Omniglot configs 0.1), meta-learned with theta by Adam at the meta lr, not
  clamped (the code neither clamps nor keeps them positive). The code allocates S + 1 rates per tensor and
  uses the first S (the last one never receives a gradient); here there are S. Option `learn_lrs` = false
  keeps them fixed at inner_lr (the code's learnable_per_layer_per_step_inner_loop_learning_rate).
* The inner loop never adapts the batch-norm weights and biases (the code's
  enable_inner_loop_optimizable_bn_params = false in every config); they are meta-learned only.
* Per-step batch norm (`per_step_bn`, models with batch norm: conv-4): a gamma and beta row per step,
  [S, C] per batch-norm layer, learned in the outer loop, initialised to 1 and 0 (theta's initial values). Step s
  uses row s for its support forward pass and for the query pass after its update (the code's num_step
  indexing). Per-step *statistics*: the code keeps per-step running means and variances, but it always calls
  F.batch_norm(training=True), so they are collected and never used to normalise, in training and evaluation
  alike. This engine's batch norm always uses the statistics of the batch it sees, so its outputs are those of
  the code and no running statistics are kept. Theta's own batch-norm entries are not trained by this algorithm:
  after every meta-step they are set to row 0 (so theta alone is the network MAML++ starts adapting from, and
  the views, exports and plain PyTorch see it). Without batch norm (the sinusoid MLP) this part is absent.
* The multi-step loss with the code's annealed weights (get_per_step_loss_importance_vector): at epoch e,
  w_s = max(1/S - e/(S*E), 0.03/S) for s < S-1 and w_{S-1} = min(1/S + e*(S-1)/(S*E), 1 - 0.03*(S-1)/S),
  E = `msl_epochs` (Omniglot 5-way configs: 10); from epoch E on, the last step's query loss only (the code's
  `epoch < multi_step_loss_num_epochs` switch; 0 turns the multi-step loss off). The weights jump from
  1 - 0.03*(S-1)/S to 1 at epoch E, as in the code.
* Derivative-order annealing: first order for the first `first_order_epochs` epochs, second order after (the
  code's first_order_to_second_order_epoch + 1). The paper's text trains the first 50 epochs first order; every
  config of the code sets -1, i.e. second order from the start, which is this default (0).
* An epoch is `epoch_iterations` meta-iterations (the code's total_iter_per_epoch: 500); the epoch is
  floor(iteration / epoch_iterations), 0 at the first meta-step.
* Cosine-annealed outer learning rate: meta_lr_schedule = "cosine" by default. The code anneals per epoch to
  min_learning_rate 1e-5 (CosineAnnealingLR, T_max = total epochs); here it anneals per iteration to 0 over the
  run (MetaAlgorithm.meta_lr).

Exports carry the learned tensors beside theta (listed in the metadata's "extra_tensors"):
`lslr.<parameter>` [S] (the step sizes of that parameter tensor, one per step) and `bn_step.<parameter>` [S, C]
(the gamma or beta row of each step, for "<i>.weight" / "<i>.bias" of a batch-norm layer). Test-time
adaptation (`test_trajectory`) uses them; beyond the S trained steps it keeps using the last step's rates and
batch-norm row (the code evaluates with S steps: `test_inner_steps` defaults to the trained number).
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from .adaptation import expand_params
from .base import MetaAlgorithm
from .optim import Adam

LR_PREFIX = "lslr."
BN_PREFIX = "bn_step."


def step_loss_weights(steps: int, epoch: int, msl_epochs: int) -> list[float]:
    """The code's per-step importance of the query losses (get_per_step_loss_importance_vector), and its switch
    to the last step only from epoch `msl_epochs` on."""
    if msl_epochs <= 0 or epoch >= msl_epochs:
        return [0.0] * (steps - 1) + [1.0]
    decay = 1.0 / steps / msl_epochs
    floor = 0.03 / steps
    weights = [max(1.0 / steps - epoch * decay, floor) for _ in range(steps - 1)]
    weights.append(min(1.0 / steps + epoch * (steps - 1) * decay, 1.0 - (steps - 1) * floor))
    return weights


def batch_norm_names(model) -> list[str]:
    """The parameter names of a model's batch-norm layers (none for models without `batch_norm_names`)."""
    names = getattr(model, "batch_norm_names", None)
    return list(names()) if names is not None else []


def with_step(fast, bn_rows: dict, step: int) -> "OrderedDict[str, torch.Tensor]":
    """A forward's parameters: the inner (adapted) ones, and each batch-norm entry from its row `step` (clamped
    to the rows there are)."""
    if not bn_rows:
        return fast
    out = OrderedDict(fast)
    for k, rows in bn_rows.items():
        out[k] = rows[min(step, rows.shape[0] - 1)]
    return out


class MAMLPlusPlus(MetaAlgorithm):
    """Antoniou et al. 2019: MAML with learned per-layer per-step learning rates, per-step batch norm, the annealed
    multi-step loss, derivative-order annealing and a cosine outer learning rate."""

    name = "mamlpp"
    label = "MAML++"
    color = "#332288"  # Tol's indigo: a dark blue beside MAML's, apart from every other built-in
    description = "MAML++: learned per-step per-layer inner rates, per-step batch norm, annealed multi-step loss " \
                  "(Antoniou et al. 2019)"
    adapts_batch_norm = False  # the code never steps batch norm in the inner loop
    option_defaults = {"learn_lrs": True, "per_step_bn": True, "msl_epochs": 10, "first_order_epochs": 0,
                       "epoch_iterations": 500}
    # the code's Omniglot configs: 5 steps of 0.1 in training and at evaluation, cosine outer lr
    task_defaults = {"*": {"meta_lr_schedule": "cosine", "test_inner_steps": 1},
                     "images": {"inner_steps": 5, "inner_lr": 0.1, "test_inner_steps": 5}}

    @classmethod
    def check_config(cls, config) -> None:
        opts = {**cls.option_defaults, **config.options}
        for key in ("learn_lrs", "per_step_bn"):
            if not isinstance(opts[key], bool):
                raise ValueError(f"mamlpp.{key} must be true or false, got {opts[key]!r}")
        for key, low in (("msl_epochs", 0), ("first_order_epochs", 0), ("epoch_iterations", 1)):
            value = opts[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"mamlpp.{key} must be an integer >= {low}, got {value!r}")

    # -- training ---------------------------------------------------------------------------------------
    def setup(self, params) -> None:
        cfg = self.config
        steps = cfg.inner_steps
        bn = [k for k in batch_norm_names(self.model) if k in params] if cfg.option("per_step_bn") else []
        self.bn_names = set(batch_norm_names(self.model)) & set(params)
        self.inner_names = [k for k in params if k not in self.bn_names]
        learn = cfg.option("learn_lrs")
        self.lrs = OrderedDict((k, torch.full((steps,), float(cfg.inner_lr), dtype=params[k].dtype,
                                              device=params[k].device).requires_grad_(learn))
                               for k in self.inner_names)
        self.bn_rows = OrderedDict((k, params[k].detach().unsqueeze(0).repeat(steps, *([1] * params[k].dim()))
                                    .requires_grad_(True)) for k in bn)
        self.trained = self._trained_tensors(params)
        self.optimizer = Adam(self.trained, cfg.meta_lr)

    def _trained_tensors(self, params) -> list[torch.Tensor]:
        """What the outer Adam updates, in a fixed order: theta (less the batch-norm entries that per-step rows
        replace), the learned rates, the per-step batch-norm rows."""
        theta = [v for k, v in params.items() if k not in self.bn_rows]
        lrs = [v for v in self.lrs.values() if v.requires_grad]
        return [*theta, *lrs, *self.bn_rows.values()]

    def epoch(self, iteration: int) -> int:
        return int(iteration) // int(self.config.option("epoch_iterations"))

    def second_order(self, iteration: int) -> bool:
        return self.epoch(iteration) >= int(self.config.option("first_order_epochs"))

    def loss_weights(self, iteration: int) -> list[float]:
        return step_loss_weights(self.config.inner_steps, self.epoch(iteration), int(self.config.option("msl_epochs")))

    def meta_step(self, params, batch, iteration: int = 0) -> dict:
        grads, meta_loss, pre_loss, pre_logits, query_logits = self.meta_gradients(params, batch, iteration)
        self._apply(params, grads, iteration)
        with torch.no_grad():  # theta's batch-norm entries: the network adaptation starts from (row 0)
            for k, rows in self.bn_rows.items():
                params[k].copy_(rows[0])
        return self._metrics(pre_loss, meta_loss, pre_logits, batch, query_logits)

    def meta_gradients(self, params, batch, iteration: int = 0):
        """Gradients of the weighted multi-step query loss with respect to `self.trained` (theta less the replaced
        batch-norm entries, the learned rates, the batch-norm rows, in that order), the last step's query loss,
        the support loss and logits before adaptation, the last query logits; no update."""
        cfg = self.config
        create_graph = self.second_order(iteration)
        weights = self.loss_weights(iteration)
        explicit = getattr(self.model, "batched_loss_grad", None)
        with torch.enable_grad():
            inner = expand_params(OrderedDict((k, params[k]) for k in self.inner_names), batch.num_tasks)
            fixed = OrderedDict((k, params[k]) for k in self.bn_names if k not in self.bn_rows)
            objective = 0.0
            for step in range(cfg.inner_steps):
                forward_params = with_step(OrderedDict({**inner, **fixed}), self.bn_rows, step)
                forward_params = OrderedDict((k, forward_params[k]) for k in params)  # the model's order
                out = None
                if step == 0 and explicit is not None:  # shared theta: the model's explicit per-task gradients
                    with torch.set_grad_enabled(create_graph):
                        out = explicit(forward_params, batch.x_support, batch.y_support, self.loss_fn)
                    if out is not None:
                        losses, all_grads = out
                        grads = [all_grads[list(forward_params).index(k)] for k in self.inner_names]
                        if step == 0 and self.classification:
                            with torch.no_grad():
                                pre_logits = self.model.forward(forward_params, batch.x_support)
                if out is None:
                    logits = self.model.forward(forward_params, batch.x_support)
                    losses = self.loss_fn(logits, batch.y_support)
                    grads = torch.autograd.grad(losses.sum(), list(inner.values()), create_graph=create_graph)
                    if step == 0:
                        pre_logits = logits.detach()
                if step == 0:
                    pre_loss = losses.detach().mean()
                if not create_graph:
                    grads = [g.detach() for g in grads]
                inner = OrderedDict((k, v - self.lrs[k][step] * g) for (k, v), g in zip(inner.items(), grads))
                if weights[step] or step == cfg.inner_steps - 1:
                    query_params = with_step(OrderedDict({**inner, **fixed}), self.bn_rows, step)
                    query_logits = self.model.forward(OrderedDict((k, query_params[k]) for k in params),
                                                      batch.x_query)
                    step_loss = self.loss_fn(query_logits, batch.y_query).mean()
                    if weights[step]:
                        objective = objective + weights[step] * step_loss
            grads = torch.autograd.grad(objective, self.trained, allow_unused=True)
        grads = [torch.zeros_like(t) if g is None else g for t, g in zip(self.trained, grads)]
        return grads, step_loss.detach(), pre_loss, pre_logits if self.classification else None, query_logits.detach()

    def export_tensors(self) -> OrderedDict:
        out = OrderedDict((LR_PREFIX + k, v) for k, v in self.lrs.items())
        out.update((BN_PREFIX + k, v) for k, v in self.bn_rows.items())
        return out

    # -- test time --------------------------------------------------------------------------------------
    @classmethod
    def test_trajectory(cls, config, model, loss_fn, params, x_support, y_support, steps, batched=False,
                        tensors=None):
        """Steps with the learned per-step rates and batch-norm rows (the last ones beyond the trained steps);
        without them (an initialization of unknown origin), plain SGD with inner_lr."""
        tensors = tensors or {}
        lrs = {k[len(LR_PREFIX):]: v for k, v in tensors.items() if k.startswith(LR_PREFIX)}
        bn_rows = {k[len(BN_PREFIX):]: v for k, v in tensors.items() if k.startswith(BN_PREFIX)}
        if not lrs or not set(lrs) <= set(params) or not set(bn_rows) <= set(params):
            return super().test_trajectory(config, model, loss_fn, params, x_support, y_support, steps, batched)
        return cls._trajectory(model, loss_fn, params, x_support, y_support, steps, batched, lrs, bn_rows)

    @staticmethod
    def _trajectory(model, loss_fn, params, x_support, y_support, steps, batched, lrs, bn_rows):
        if steps < 0:
            raise ValueError(f"adaptation steps must be >= 0, got {steps}")
        fast = OrderedDict((k, v.detach()) for k, v in params.items())
        if not batched:
            fast = expand_params(fast, x_support.shape[0])
        ref = next(iter(fast.values()))
        lrs = {k: v.detach().to(device=ref.device, dtype=ref.dtype) for k, v in lrs.items()}
        bn_rows = {k: v.detach().to(device=ref.device, dtype=ref.dtype) for k, v in bn_rows.items()}
        names = list(fast)

        tasks = ref.shape[0]

        def at(current, step):  # every entry per task [B, ...], as views expect (the rows: stride-0 views)
            out = with_step(current, bn_rows, step)
            return OrderedDict((k, out[k].unsqueeze(0).expand(tasks, *out[k].shape) if k in bn_rows else out[k])
                               for k in names)

        yield at(fast, 0)
        for step in range(steps):
            with torch.enable_grad():
                leaves = OrderedDict((k, v.detach().requires_grad_(k in lrs)) for k, v in fast.items())
                losses = loss_fn(model.forward(at(leaves, step), x_support), y_support)
                keys = [k for k in names if k in lrs]
                grads = torch.autograd.grad(losses.sum(), [leaves[k] for k in keys])
            with torch.no_grad():
                for k, g in zip(keys, grads):
                    rates = lrs[k]
                    fast[k] = leaves[k].detach() - rates[min(step, rates.shape[0] - 1)] * g
            yield at(fast, step)  # the query pass after step s uses row s (the code's num_step)

    @classmethod
    def test_adaptation_text(cls, config) -> str:
        return (f"learned per-step per-layer step sizes and batch-norm rows (MAML++; SGD at inner lr "
                f"{config.inner_lr:g} without them)")
