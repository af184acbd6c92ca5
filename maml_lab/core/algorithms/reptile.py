"""Reptile (Nichol, Achiam, Schulman 2018), as openai/supervised-reptile runs it.

    for each of the meta-batch's tasks, one after the other: phi_i = k inner steps from theta
    theta <- theta + eps * mean_i(phi_i - theta),      eps annealed linearly from outer_lr_start to outer_lr_end

What the reference code does beyond the paper's text, and what this file follows (settings in brackets):

* The inner optimizer is Adam with beta1 = 0, beta2 = 0.999, eps = 1e-8 [inner_optimizer "adam", inner_lr]: TF's
  AdamOptimizer, whose step is lr * sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + eps). Only the weights are
  restored between tasks, so the second moments v and the step count t carry over from task to task and from
  iteration to iteration [adam_state "carry"; "reset": fresh moments for every task, as a separate
  torch.optim.Adam per task would]. The loss it minimizes is the per-example loss summed over the mini-batch (TF's
  minimize of a loss vector); with SGD [inner_optimizer "sgd"] the step is on the mean, as elsewhere in the lab.
* Training tasks have `train_shots` examples per class (10 for 1-shot Omniglot), not the evaluation's K
  [train_shots; 0: the experiment's shots]: the Trainer draws that many for this algorithm (`training_shots`).
* Each inner step sees a mini-batch of `inner_batch` examples, drawn as `_mini_batches` does: the task's examples
  shuffled, cut into consecutive batches, reshuffled when they run out, the partial batch carried over
  [inner_batch; 0: every step on all of them; replacement: each batch drawn afresh without repeats].
* `meta_batch` tasks per update, run one after the other (the carried Adam state passes from one to the next)
  [meta_batch; 0: all the tasks of the experiment's meta-batch, else its first `meta_batch`].
* Evaluation fine-tunes the same way: Adam from the state training ended with (the reference exports and restores
  its full variable state around each evaluation task, Adam's slots included; exports and checkpoints carry it as
  `inner_adam.*` tensors), `test_inner_steps` (50) steps on mini-batches of `eval_batch` (5) support examples.
* Parameters the model never adapts in an inner loop (`model.inner_frozen`: conv-4's batch-norm shift under
  cbfinn's convention) get no inner step; supervised-reptile's own model has none.
* Batch norm uses the statistics of the batch it sees. `transductive` (the reference's `--transductive`, used for
  its reported numbers): the query examples are classified together, in one batch; otherwise each query example is
  classified in a batch with the support set, as the reference does without the flag (`batch_norm_mode`: the
  batch-norm mode "support+query" of models/batch_norm.py, which every algorithm's evaluation can choose).

The sinusoid defaults follow the Reptile paper's sine demo: inner SGD of 0.02 on mini-batches of 10 of 50 points
(5 steps: one epoch), one task per update, eps 0.1 annealed to 0, 32 full-batch steps on the K test points. What a
task family or the experiment decides (the demo's 1-64-64-1 tanh MLP, its phase range U[0, 2 pi], its fixed grid of
50 x values) stays the experiment's: see docs/image_tasks.md and docs/sinusoid_runs.md.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict

import torch

from ..tasks.base import TaskBatch
from .adaptation import expand_params, zero_frozen
from .base import MetaAlgorithm

ADAM_BETA1 = 0.0  # supervised-reptile: tf.train.AdamOptimizer(beta1=0)
ADAM_BETA2 = 0.999  # TF's defaults for the rest
ADAM_EPS = 1e-8
STATE_PREFIX = "inner_adam."  # exported inner-Adam state: inner_adam.v.<parameter>, inner_adam.step
ADAM_STATES = ("carry", "reset")
SHUFFLE_SEED = 0x5EED  # inner mini-batches of iteration i are drawn from a generator seeded SHUFFLE_SEED + i
EVAL_SHUFFLE_SEED = 2018  # evaluation mini-batches (when eval_batch is smaller than the support set)


def minibatch_indices(n: int, batch: int, count: int, generator: torch.Generator,
                      replacement: bool = False) -> list[torch.Tensor]:
    """`count` mini-batches of `batch` indices into n examples, as supervised-reptile's `_mini_batches` draws them.

    Without replacement the examples are shuffled and cut into consecutive batches; when they run out they are
    reshuffled and the batch being filled continues (so a batch larger than n repeats examples). With replacement
    each batch is `batch` distinct examples drawn afresh. batch 0 (or n without replacement): all n every time.
    """
    if n < 1 or count < 0 or batch < 0:
        raise ValueError(f"mini-batches need n >= 1, count >= 0, batch >= 0; got {n}, {count}, {batch}")
    if batch == 0 or (batch == n and not replacement):
        return [torch.arange(n)] * count
    if replacement:
        if batch > n:
            raise ValueError(f"an inner batch of {batch} drawn without repeats needs at least {batch} examples, "
                             f"the task has {n}")
        return [torch.randperm(n, generator=generator)[:batch] for _ in range(count)]
    need = batch * count
    perms = [torch.randperm(n, generator=generator) for _ in range(-(-need // n))]
    stream = torch.cat(perms)[:need] if perms else torch.zeros(0, dtype=torch.long)
    return list(stream.view(count, batch))


def adam_step_(params: list[torch.Tensor], grads: list[torch.Tensor], second: list[torch.Tensor], step: int,
               lr: float) -> None:
    """One TF-style Adam step with beta1 = 0, in place: v <- b2 v + (1 - b2) g^2, then
    p <- p - lr * sqrt(1 - b2^t) * g / (sqrt(v) + eps) (m = g when beta1 = 0; TF's eps is added to sqrt(v))."""
    lr_t = lr * math.sqrt(1.0 - ADAM_BETA2 ** step) / (1.0 - ADAM_BETA1 ** step)
    for p, g, v in zip(params, grads, second):
        v.mul_(ADAM_BETA2).addcmul_(g, g, value=1.0 - ADAM_BETA2)
        p.sub_(lr_t * g / (v.sqrt() + ADAM_EPS))


def _check_options(config) -> None:
    opt = config.option
    for key in ("train_shots", "inner_batch", "eval_batch", "meta_batch"):
        value = opt(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"reptile {key} must be an integer >= 0 (0: {_ZERO_MEANS[key]}), got {value!r}")
    if opt("adam_state") not in ADAM_STATES:
        raise ValueError(f"reptile adam_state must be carry or reset, got {opt('adam_state')!r}")
    for key in ("replacement", "transductive"):
        if not isinstance(opt(key), bool):
            raise ValueError(f"reptile {key} must be true or false, got {opt(key)!r}")


_ZERO_MEANS = {"train_shots": "the experiment's shots", "inner_batch": "all of the task's examples",
               "eval_batch": "all of the support set", "meta_batch": "every task of the meta-batch"}


class Reptile(MetaAlgorithm):
    """Nichol et al. 2018: theta <- theta + eps * mean_i(phi_i - theta), phi_i after k inner steps."""

    name = "reptile"
    label = "Reptile"
    color = "#009E73"  # Okabe-Ito bluish green
    description = "Reptile: theta moves toward each task's parameters after k inner steps (Nichol et al. 2018)"
    # supervised-reptile's settings (module docstring); values are strings/ints/bools so TOML and --option carry them
    option_defaults = {"train_shots": 0, "inner_batch": 0, "eval_batch": 0, "meta_batch": 0, "adam_state": "carry",
                       "replacement": False, "transductive": True}
    task_defaults = {
        "*": {"inner_steps": 5, "outer_lr_start": 1.0, "outer_lr_end": 0.0},
        # the Reptile paper's sine demo: SGD 0.02 on minibatches of 10 of 50 points, one task per update,
        # eps 0.1 -> 0, 32 steps at test
        "sinusoid": {"inner_optimizer": "sgd", "inner_lr": 0.02, "inner_steps": 5, "test_inner_steps": 32,
                     "outer_lr_start": 0.1, "outer_lr_end": 0.0, "train_shots": 50, "inner_batch": 10,
                     "meta_batch": 1},
        # supervised-reptile's 1-shot 5-way Omniglot run: --shots 1 --train-shots 10 --inner-batch 10
        # --inner-iters 5 --learning-rate 0.001 --meta-step 1 --meta-step-final 0 --meta-batch 5 --eval-batch 5
        # --eval-iters 50 --transductive
        "images": {"inner_optimizer": "adam", "inner_lr": 0.001, "inner_steps": 5, "test_inner_steps": 50,
                   "train_shots": 10, "inner_batch": 10, "eval_batch": 5, "meta_batch": 5},
    }
    sampled_tasks = True  # sampled (RL) batches: rl/objective.py reptile_step
    # what the experiment panel's settings field shows besides the options (key=value, ...)
    panel_settings = ("inner_optimizer", "outer_lr_end")
    settings_tip = ("inner_optimizer adam|sgd; outer_lr_end: epsilon at the end; train_shots: examples per class of "
                    "training tasks (0: K); inner_batch / eval_batch: mini-batch in training / at test (0: all); "
                    "meta_batch: tasks per update (0: all); adam_state carry|reset; replacement, transductive: "
                    "true|false")
    outer_lr_field = "outer_lr_start"
    outer_lr_label = "outer step ε"
    outer_lr_tip = "Reptile's outer step ε at the first iteration (annealed linearly to outer_lr_end)"

    @classmethod
    def check_config(cls, config) -> None:
        _check_options(config)

    @classmethod
    def training_shots(cls, config, shots: int) -> int:
        """Examples per class (points, for regression) of this algorithm's training tasks: train_shots, or the
        experiment's `shots` when it is 0."""
        return int(config.option("train_shots")) or int(shots)

    # -- test-time adaptation -------------------------------------------------------------------------------------
    @classmethod
    def test_trajectory(cls, config, model, loss_fn, params, x_support, y_support, steps, batched=False,
                        tensors=None):
        """Fine-tunes as it trained: the inner optimizer on mini-batches of eval_batch support examples; Adam
        starts from the state training ended with when it carried one (`tensors`), else from fresh moments."""
        if steps < 0:
            raise ValueError(f"adaptation steps must be >= 0, got {steps}")
        return cls._trajectory(config, model, loss_fn, params, x_support, y_support, steps, batched, tensors or {})

    @classmethod
    def _trajectory(cls, config, model, loss_fn, params, x_support, y_support, steps, batched, tensors):
        num_tasks, n = x_support.shape[0], x_support.shape[1]
        fast = OrderedDict((k, v.detach()) for k, v in params.items())
        fast = OrderedDict((k, v.clone()) for k, v in (fast if batched else expand_params(fast, num_tasks)).items())
        yield OrderedDict((k, v.clone()) for k, v in fast.items())
        if steps == 0:
            return
        adam = config.inner_optimizer == "adam"
        names = list(fast)
        second, start = cls.carried_state(tensors, params)
        if adam:
            second = [(second[k].to(fast[k]).unsqueeze(0).expand_as(fast[k]).clone() if second else
                       torch.zeros_like(fast[k])) for k in names]
        generator = torch.Generator().manual_seed(EVAL_SHUFFLE_SEED)
        batch = int(config.option("eval_batch"))
        per_task = [minibatch_indices(n, batch, steps, generator, bool(config.option("replacement")))
                    for _ in range(num_tasks)]
        rows = torch.arange(num_tasks).unsqueeze(1)
        for s in range(steps):
            idx = torch.stack([p[s] for p in per_task]).to(x_support.device)  # [B, batch]
            xb, yb = x_support[rows.to(x_support.device), idx], y_support[rows.to(y_support.device), idx]
            with torch.enable_grad():
                leaves = OrderedDict((k, v.detach().requires_grad_(True)) for k, v in fast.items())
                losses = loss_fn(model.forward(leaves, xb), yb)
                if adam:  # the per-example loss summed over the mini-batch, as TF minimizes a loss vector
                    losses = losses * idx.shape[1]
                grads = zero_frozen(model, names, torch.autograd.grad(losses.sum(), list(leaves.values())))
            with torch.no_grad():
                values = [v.detach().clone() for v in fast.values()]
                if adam:
                    adam_step_(values, list(grads), second, start + s + 1, config.inner_lr)
                else:
                    torch._foreach_add_(values, list(grads), alpha=-config.inner_lr)
                fast = OrderedDict(zip(names, values))
            yield OrderedDict((k, v.clone()) for k, v in fast.items())

    @staticmethod
    def carried_state(tensors: dict, params) -> tuple[dict, int]:
        """The inner Adam state an export or snapshot carries: ({parameter: v}, steps taken); ({}, 0) when it
        carries none (adam_state "reset", SGD, or an initialization without it)."""
        second = {k[len(STATE_PREFIX) + 2:]: v for k, v in (tensors or {}).items()
                  if k.startswith(STATE_PREFIX + "v.")}
        step = (tensors or {}).get(STATE_PREFIX + "step")
        if step is None or set(second) != set(params):
            return {}, 0
        return second, int(step.reshape(-1)[0])

    @classmethod
    def batch_norm_mode(cls, config) -> str:
        """supervised-reptile's `--transductive`: the queries together; without it, each query in one batch with the
        support set (models/batch_norm.py's "support+query", which config.predict applies)."""
        return "transductive" if config.option("transductive") else "support+query"

    @classmethod
    def test_adaptation_text(cls, config) -> str:
        batch = int(config.option("eval_batch"))
        batches = f"mini-batches of {batch}" if batch else "the full support set"
        if config.inner_optimizer == "adam":
            state = ("moments carried from training" if config.option("adam_state") == "carry"
                     else "fresh moments per task")
            return f"Adam (beta1 0, {state}), inner lr {config.inner_lr:g}, {batches}"
        return f"SGD, inner lr {config.inner_lr:g}, {batches}"

    # -- training -------------------------------------------------------------------------------------------------
    def __init__(self, model, loss, config, total_iterations=1):
        super().__init__(model, loss, config, total_iterations)
        if config.inner_steps == 1:
            warnings.warn("Reptile with one inner step is plain joint training; use inner-steps > 1",
                          stacklevel=2)
        self.adam_second: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.adam_step = torch.zeros(1, dtype=torch.float64)  # exports take floating point only

    @property
    def carries_state(self) -> bool:
        return self.config.inner_optimizer == "adam" and self.config.option("adam_state") == "carry"

    def setup(self, params) -> None:
        self.optimizer = None  # Reptile's outer update is a plain interpolation
        self.adam_second = OrderedDict((k, torch.zeros_like(v.detach())) for k, v in params.items())
        self.adam_step = torch.zeros(1, dtype=torch.float64)  # exports take floating point only

    def check_data_parallel(self) -> None:
        """supervised-reptile's settings run a meta-batch's tasks in sequence: the inner Adam state carries from one
        task to the next, one shuffling generator draws every task's mini-batches, `meta_batch` takes the first
        tasks of the batch. Split across processes that is another computation, so it is refused, not approximated."""
        sequential = [f"{key}={self.config.option(key)}" for key in ("inner_batch", "meta_batch")
                      if int(self.config.option(key))]
        if self.carries_state:
            sequential.insert(0, "adam_state=carry")
        if sequential:
            raise ValueError("reptile with " + ", ".join(sequential) + " runs a meta-batch's tasks in sequence and "
                             "cannot be split across processes: run it in one process, or set --option "
                             "reptile.adam_state=reset --option reptile.inner_batch=0 --option reptile.meta_batch=0")

    def export_tensors(self) -> OrderedDict:
        """The inner Adam state when it carries over (evaluation starts from it, as in supervised-reptile)."""
        if not self.carries_state:
            return OrderedDict()
        out = OrderedDict((STATE_PREFIX + "v." + k, v) for k, v in self.adam_second.items())
        out[STATE_PREFIX + "step"] = self.adam_step
        return out

    def epsilon(self, iteration: int) -> float:
        frac = min(max(iteration / self.total_iterations, 0.0), 1.0)
        return self.config.outer_lr_start + frac * (self.config.outer_lr_end - self.config.outer_lr_start)

    def _inner_loop(self, theta: list[torch.Tensor], names: list[str], x, y, generator) -> list[torch.Tensor]:
        """One task's k inner steps from theta (x [1, n, ...]); returns phi. Carried Adam state is updated."""
        cfg = self.config
        adam = cfg.inner_optimizer == "adam"
        fast = [t.clone() for t in theta]
        if adam:
            second = list(self.adam_second.values()) if self.carries_state else [torch.zeros_like(t) for t in theta]
        step = int(self.adam_step[0]) if self.carries_state else 0
        batches = minibatch_indices(x.shape[1], int(cfg.option("inner_batch")), cfg.inner_steps, generator,
                                    bool(cfg.option("replacement")))
        for rows in batches:
            rows = rows.to(x.device)
            with torch.enable_grad():
                leaves = OrderedDict((k, v.requires_grad_(True)) for k, v in zip(names, fast))
                loss = self.loss_fn(self.model.forward(leaves, x[:, rows]), y[:, rows]).sum()
                if adam:  # TF minimizes the per-example losses' sum
                    loss = loss * rows.numel()
                grads = zero_frozen(self.model, names, torch.autograd.grad(loss, list(leaves.values())))
            fast = [v.detach() for v in fast]
            with torch.no_grad():
                if adam:
                    step += 1
                    adam_step_(fast, list(grads), second, step, cfg.inner_lr)
                else:
                    torch._foreach_add_(fast, list(grads), alpha=-cfg.inner_lr)
        if self.carries_state:
            self.adam_step[0] = step
        return fast

    def meta_step(self, params, batch, iteration: int = 0) -> dict:
        if getattr(batch, "sampled", False):  # data sampled from the adapted parameters (RL)
            from ..rl.objective import reptile_step

            return reptile_step(self, params, batch, iteration)
        cfg = self.config
        used = int(cfg.option("meta_batch")) or batch.num_tasks
        used = min(used, batch.num_tasks)
        if used < batch.num_tasks:
            batch = TaskBatch(batch.x_support[:used], batch.y_support[:used], batch.x_query[:used],
                              batch.y_query[:used])
        generator = torch.Generator().manual_seed(SHUFFLE_SEED + int(iteration))
        names = list(params)
        theta = [p.detach() for p in params.values()]
        deltas = [torch.zeros_like(t) for t in theta]
        query_logits = []
        for i in range(used):
            phi = self._inner_loop(theta, names, batch.x_support[i:i + 1], batch.y_support[i:i + 1], generator)
            torch._foreach_add_(deltas, torch._foreach_sub(phi, theta))
            with torch.no_grad():
                query_logits.append(self.model.forward(OrderedDict(zip(names, phi)), batch.x_query[i:i + 1]))
        eps = self.epsilon(iteration)
        with torch.no_grad():
            query_logits = torch.cat(query_logits)
            post_loss = self.loss_fn(query_logits, batch.y_query).mean()
            pre_logits = self.model.forward(params, batch.x_support)
            pre_loss = self.loss_fn(pre_logits, batch.y_support).mean()
            torch._foreach_div_(deltas, used)
            if self.sync is not None:
                self.sync(deltas)
            for p, delta in zip(params.values(), deltas):
                p.add_(delta, alpha=eps)
        return self._metrics(pre_loss, post_loss, pre_logits if self.classification else None, batch,
                             query_logits) | {"epsilon": eps}
