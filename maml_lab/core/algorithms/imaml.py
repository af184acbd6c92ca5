"""iMAML (Rajeswaran, Finn, Kakade, Levine 2019, "Meta-Learning with Implicit Gradients"), as its reference code
trains it (github.com/aravindr93/imaml_dev: implicit_maml/learner_model.py, implicit_maml/utils.py `cg_solve`,
examples/omniglot_implicit_maml.py and the Omniglot command of examples/README.md).

Each task i adapts by descending the proximal objective (`inner_loss`, which its inner loop in training and at test
time descends):

    phi_i ~ argmin_phi  L_support_i(phi) + lam/2 ||phi - theta||^2        (inner_steps steps of backtracking SGD)

and the meta-gradient is the implicit one, without backpropagating through those steps:

    d L_query_i(phi_i) / d theta = (I + H_i / lam)^-1 grad L_query_i(phi_i),   H_i = Hessian of L_support_i at phi_i

solved by conjugate gradient on Hessian-vector products at phi_i (`cg_solve`), all tasks at once. The inner loop
keeps no graph (each step frees the one before), and the Hessian-vector products differentiate one support pass,
so a meta-step's memory does not grow with the number of inner steps (MAML's graph grows by one step's forward and
backward per step): the cost meter shows this, "+1 inner step" adding time and only the step's recorded loss (4 bytes a
task).

The reference's conventions, kept here:

* The linear system is the code's damped one (`matrix_evaluator`): A v = (1 + cg_damping) v + H v / (lam +
  lam_damping), cg_damping 1.0 (its `--cg_damping`), lam_damping 10.0 (its default); `cg_damping` = `lam_damping` = 0
  gives the paper's (I + H/lam)^-1 exactly (the float64 check does). That damped solve is the paper's with lam' =
  (1 + cg_damping)(lam + lam_damping) scaled by 1 / (1 + cg_damping), which Adam's step does not see.
* `cg_steps` CG iterations from x = 0, stopping a task early when its squared residual falls under 1e-10; with
  cg_steps <= 1 (or first order) the query gradient itself (the code's `if args.cg_steps <= 1` switch). Unlike the
  code, a task's CG also stops at non-positive curvature (Newton-CG's rule, `cg_solve`).
* Omniglot (`images`): lam 2.0, 16 inner steps of SGD at 0.1, cg_steps 5, Adam at 1e-3 with eps 1e-3 (the code's
  `torch.optim.Adam(..., eps=1e-3)`), the mean of the tasks' implicit gradients; 16 steps of 0.1 at test time.

Where this differs from the code (docs/algorithms.md says it too):

* The inner loop descends the proximal objective at every step (the paper's Algorithm, and the code's
  `learn_on_data(add_regularization=True)`); the code's training script takes its 16 steps on the plain support loss
  and then one SGD step on lam/2 ||phi - theta||^2 alone (a pull-back by inner_lr * lam = 20%).
* Test-time adaptation is the same proximal rule with the trained lam (the paper's Alg*); the code's README measures
  accuracy with `--lam 0.0`, i.e. 16 plain SGD steps.
* Parameters the model never adapts in an inner loop (`model.inner_frozen`: conv-4's batch-norm shifts in cbfinn's
  convention) get their exact implicit gradient, g_f - H_fa x / (lam + lam_damping) over (1 + cg_damping), with x
  the CG solution on the adapted ones (one more Hessian-vector product); the code adapts every parameter.
* The network is this lab's conv-4 (its initialization and padding; the code pads before the third convolution and
  initializes Xavier-uniform with gain 1.73) and tasks come from the lab's samplers; lam is fixed (the code's
  untested `--lam_lr` learning of lam is not here).

* The inner solver (`backtracking_sgd`, in training and at test time) is SGD at inner_lr where a task whose proximal
  objective would rise halves its own step (up to 12 times) and otherwise stays: it never increases the objective,
  and where nothing backtracks it is plain SGD (the code's `torch.optim.SGD` at a fixed step). On the sinusoid
  meta-training sharpens the support loss until the fixed step diverges (top Hessian eigenvalues 180-585 against
  2 / inner_lr - lam = 198; the defaults stopped at iteration 939); the implicit gradient needs only an approximate
  minimizer of the proximal objective, whatever finds it (measured: docs/algorithms.md).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch

from .adaptation import AdaptResult, expand_params
from .base import MetaAlgorithm
from .optim import Adam

RESIDUAL_TOL = 1e-10  # the code's cg_solve residual_tol (on the squared residual norm)
ADAM_EPS = 1e-3  # the code's outer Adam
MAX_HALVINGS = 12  # a task's step tried at inner_lr, inner_lr / 2, ... inner_lr / 4096; then it stays put
# a rise of the objective within this many units of rounding (relative) is not a rise: near a minimum a step's
# decrease falls under the loss's rounding, and refusing such steps would stall the solver short of it
ROUNDING_SLACK = 8


def task_dot(a, b) -> torch.Tensor:
    """Per-task inner products [B] of two lists of per-task tensors [B, ...]."""
    return sum((x * y).flatten(1).sum(1) for x, y in zip(a, b))


def _per_task(s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """s [B] shaped to broadcast against v [B, ...]."""
    return s.view(-1, *([1] * (v.dim() - 1)))


def _scale(s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _per_task(s, v) * v


def cg_solve(matvec, b: list[torch.Tensor], steps: int, residual_tol: float | None = None) -> list[torch.Tensor]:
    """Conjugate gradient for A x = b, one system per task (the code's `cg_solve`, batched): b is a list of per-task
    tensors [B, ...], matvec(list) -> list computes A v for every task; x starts at 0. A task whose squared residual
    falls under residual_tol (default RESIDUAL_TOL) stops moving (the code stops its loop there), and so does one
    whose direction meets curvature p^T A p <= 0 (A not positive definite there: away from a minimum of the inner
    objective the Hessian can be indefinite; the code would step to the wrong side): as Newton-CG, it keeps the
    iterate reached, or b itself when that happens at the first step."""
    residual_tol = RESIDUAL_TOL if residual_tol is None else residual_tol
    x = [torch.zeros_like(t) for t in b]
    r = [t.clone() for t in b]
    p = [t.clone() for t in b]
    rr = task_dot(r, r)
    stopped = torch.zeros_like(rr, dtype=torch.bool)
    first = True
    for _ in range(steps):
        active = (rr >= residual_tol) & ~stopped
        if not bool(active.any()):
            break
        ap = matvec(p)
        pap = task_dot(p, ap)
        bad = active & ~(pap > 0)
        if first and bool(bad.any()):  # Newton-CG's rule at the first step: the right-hand side itself
            x = [torch.where(bad.view(-1, *([1] * (pi.dim() - 1))), pi, xi) for xi, pi in zip(x, p)]
        first = False
        stopped = stopped | bad
        active = active & ~bad
        alpha = torch.where(active, rr / torch.where(active, pap, torch.ones_like(pap)), 0.0)
        x = [xi + _scale(alpha, pi) for xi, pi in zip(x, p)]
        r = [ri - _scale(alpha, api) for ri, api in zip(r, ap)]
        new = task_dot(r, r)
        beta = torch.where(active & (rr > 0), new / torch.where(rr > 0, rr, torch.ones_like(rr)), 0.0)
        p = [ri + _scale(beta, pi) for ri, pi in zip(r, p)]
        rr = torch.where(active, new, rr)
    return x


def backtracking_sgd(objective, params, steps: int, lr: float, names=None, max_halvings: int = MAX_HALVINGS):
    """SGD that never increases each task's objective: yields (parameters [B, ...], objective [B]) after 0..steps
    steps, detached. A step is tried at `lr`; a task whose objective rose (or is not finite) there halves its own
    step and tries again, up to `max_halvings` times, then stays where it is (a rise within rounding,
    ROUNDING_SLACK, is not one). Each step starts again at `lr`, so
    where no task backtracks this is plain SGD at `lr`. objective(params) -> [B]; names: step only these (the others
    keep their values; None: all). The implicit gradient needs only an approximate minimizer of the proximal
    objective, so the solver may choose its steps; a fixed one diverges once a task's curvature passes 2 / lr."""
    keys = tuple(k for k in params if names is None or k in names)

    def evaluate(p):
        with torch.enable_grad():
            leaves = OrderedDict((k, v.detach().requires_grad_(k in keys)) for k, v in p.items())
            loss = objective(leaves)
            grads = torch.autograd.grad(loss.sum(), [leaves[k] for k in keys]) if keys else ()
        return loss.detach(), [g.detach() for g in grads]

    fast = OrderedDict((k, v.detach()) for k, v in params.items())
    loss, grads = evaluate(fast)
    slack = ROUNDING_SLACK * torch.finfo(loss.dtype).eps
    yield fast, loss
    for _ in range(steps):
        eta = torch.full_like(loss, lr)
        for _attempt in range(max_halvings + 1):
            trial = OrderedDict(fast)
            for k, g in zip(keys, grads):
                trial[k] = fast[k] - _scale(eta, g)
            trial_loss, trial_grads = evaluate(trial)
            rose = ~(trial_loss <= loss + slack * loss.abs())  # NaN counts as a rise
            if not bool(rose.any()):
                break
            eta = torch.where(rose, eta / 2, eta)
        if bool(rose.any()):  # still rising at the smallest step: these tasks stay
            for i, k in enumerate(keys):
                trial[k] = torch.where(_per_task(rose, fast[k]), fast[k], trial[k])
                trial_grads[i] = torch.where(_per_task(rose, grads[i]), grads[i], trial_grads[i])
            trial_loss = torch.where(rose, loss, trial_loss)
        fast, loss, grads = trial, trial_loss, trial_grads
        yield fast, loss


class SupportHessian:
    """Hessian-vector products of each task's support loss at its parameters phi [B, ...]: one support pass and its
    differentiable gradient, kept for every product (the code recomputes both for each)."""

    def __init__(self, model, loss_fn, phi, x_support, y_support):
        self.leaves = OrderedDict((k, v.detach().requires_grad_(True)) for k, v in phi.items())
        with torch.enable_grad():
            losses = loss_fn(model.forward(self.leaves, x_support), y_support)
            self.grads = torch.autograd.grad(losses.sum(), list(self.leaves.values()), create_graph=True,
                                             allow_unused=True)

    def __call__(self, vectors: dict) -> "OrderedDict[str, torch.Tensor]":
        """H v for every task, v given on some parameters (the others count as 0); the product on all of them."""
        with torch.enable_grad():
            dot = None
            for k, g in zip(self.leaves, self.grads):
                if k in vectors and g is not None and g.requires_grad:
                    term = (g * vectors[k]).sum()
                    dot = term if dot is None else dot + term
            if dot is None:  # the gradient does not depend on the parameters: H = 0
                return OrderedDict((k, torch.zeros_like(v)) for k, v in self.leaves.items())
            out = torch.autograd.grad(dot, list(self.leaves.values()), retain_graph=True, allow_unused=True)
        return OrderedDict((k, torch.zeros_like(v) if h is None else h)
                           for (k, v), h in zip(self.leaves.items(), out))


def implicit_gradient(hvp, query_grads: dict, adapted: list[str], lam: float, cg_steps: int,
                      cg_damping: float = 0.0, lam_damping: float = 0.0) -> "OrderedDict[str, torch.Tensor]":
    """Each task's implicit meta-gradient [B, ...] from its query gradient at phi: on the adapted parameters x solving
    ((1 + cg_damping) I + H_aa / (lam + lam_damping)) x = g_a by `cg_steps` CG steps, on the others (held at theta
    in the inner loop) (g_f - H_fa x / (lam + lam_damping)) / (1 + cg_damping). With both dampings 0 and CG converged
    it is d L_query(phi*(theta)) / d theta by the implicit function theorem."""
    scale = 1.0 / (lam + lam_damping)

    def matvec(vs):
        hv = hvp(dict(zip(adapted, vs)))
        return [(1.0 + cg_damping) * v + scale * hv[k] for k, v in zip(adapted, vs)]

    x = cg_solve(matvec, [query_grads[k] for k in adapted], cg_steps)
    out = OrderedDict(zip(adapted, x))
    held = [k for k in query_grads if k not in out]
    if held:
        hx = hvp(out)
        for k in held:
            out[k] = (query_grads[k] - scale * hx[k]) / (1.0 + cg_damping)
    return OrderedDict((k, out[k]) for k in query_grads)


class IMAML(MetaAlgorithm):
    """Rajeswaran et al. 2019: a proximal inner objective, and its implicit meta-gradient by conjugate gradient."""

    name = "imaml"
    label = "iMAML"
    color = "#44AA99"  # Tol's teal
    description = "iMAML: proximal inner objective, implicit meta-gradient by conjugate gradient, memory flat in " \
                  "inner steps (Rajeswaran et al. 2019)"
    option_defaults = {"lam": 2.0, "cg_steps": 5, "cg_damping": 1.0, "lam_damping": 10.0}
    # images: the reference's Omniglot command (16 steps of 0.1, outer Adam 1e-3, constant); sinusoids (no reference
    # setting): 10 steps of MAML's 0.01 in training and at test
    task_defaults = {"*": {"inner_steps": 10, "test_inner_steps": 10},
                     "images": {"inner_steps": 16, "inner_lr": 0.1, "test_inner_steps": 16, "meta_lr": 1e-3,
                                "meta_lr_schedule": "constant"}}
    settings_tip = ("lam: the proximal strength lambda (inner objective L + lam/2 ||phi - theta||^2); cg_steps: "
                    "conjugate-gradient steps for (I + H/lam)^-1 (<= 1: first order); cg_damping, lam_damping: the "
                    "reference's damped system (1 + cg_damping) I + H / (lam + lam_damping); 0, 0: the paper's")

    @classmethod
    def check_config(cls, config) -> None:
        opts = {**cls.option_defaults, **config.options}
        lam = opts["lam"]
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not (math.isfinite(lam) and lam > 0):
            raise ValueError(f"imaml.lam must be a number > 0, got {lam!r}")
        steps = opts["cg_steps"]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"imaml.cg_steps must be an integer >= 0, got {steps!r}")
        for key in ("cg_damping", "lam_damping"):
            value = opts[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value)
                                                                                       and value >= 0):
                raise ValueError(f"imaml.{key} must be a number >= 0, got {value!r}")

    @classmethod
    def inner_loss(cls, config, model, loss_fn, params, start, x_support, y_support, tensors=None):
        """The proximal objective per task: L_support(phi) + lam/2 ||phi - theta||^2."""
        prox = sum(((params[k] - start[k]) ** 2).flatten(1).sum(1) for k in params)
        return loss_fn(model.forward(params, x_support), y_support) + 0.5 * float(config.option("lam")) * prox

    @classmethod
    def proximal_descent(cls, config, model, loss_fn, params, x_support, y_support, steps: int, objective,
                         batched: bool = False):
        """The inner loop, in training and at test time: `backtracking_sgd` at inner_lr on the proximal objective
        from theta (`params`, shared unless batched), on the parameters the model adapts; yields (parameters,
        objective) per step."""
        theta = OrderedDict((k, v.detach()) for k, v in params.items())
        start = theta if batched else expand_params(theta, x_support.shape[0])
        frozen = set(getattr(model, "inner_frozen", ()) or ())
        names = cls.adapted_names(model, start)
        names = [k for k in (start if names is None else names) if k not in frozen]
        return backtracking_sgd(lambda p: objective(p, start, x_support, y_support), start, steps,
                                config.inner_lr, names)

    @classmethod
    def test_trajectory(cls, config, model, loss_fn, params, x_support, y_support, steps: int,
                        batched: bool = False, tensors: dict | None = None):
        """Test-time adaptation as in training: the proximal objective with the trained lam (the paper's Alg*), by
        the same backtracking SGD."""
        objective = cls.inner_objective(config, model, loss_fn, tensors or {})
        for fast, _ in cls.proximal_descent(config, model, loss_fn, params, x_support, y_support, steps, objective,
                                            batched):
            yield fast

    @classmethod
    def test_adaptation_text(cls, config) -> str:
        return f"SGD on the support loss + lam/2 ||phi - theta||^2 (lam {float(config.option('lam')):g}), " \
               f"inner lr {config.inner_lr:g}, halved per task where the objective would rise"

    def setup(self, params) -> None:
        self.optimizer = Adam(list(params.values()), self.config.meta_lr, eps=ADAM_EPS)

    def meta_gradient(self, params, batch, first_order: bool):
        """The mean over tasks of the implicit meta-gradient (the query gradient at phi when first_order or
        cg_steps <= 1), the mean query loss, the adaptation result and the query predictions; no update. No graph
        of the inner steps is kept."""
        if getattr(batch, "sampled", False):
            raise TypeError("iMAML trains on supervised tasks (its implicit gradient needs the support loss's Hessian)")
        cfg = self.config
        theta = OrderedDict((k, v.detach()) for k, v in params.items())
        losses, last = [], theta  # the objective before each step (after it, with no steps); only the last iterate
        for fast, loss in type(self).proximal_descent(cfg, self.model, self.loss_fn, theta, batch.x_support,
                                                      batch.y_support, cfg.inner_steps, self.training_objective()):
            losses.append(loss)
            last = fast
        res = AdaptResult(last, losses[:-1] or losses)
        phi = OrderedDict((k, v.detach().requires_grad_(True)) for k, v in res.params.items())
        with torch.enable_grad():
            query_logits = self.model.forward(phi, batch.x_query)
            query_losses = self.loss_fn(query_logits, batch.y_query)
            query_grads = OrderedDict(zip(phi, torch.autograd.grad(query_losses.sum(), list(phi.values()))))
        cg_steps = int(cfg.option("cg_steps"))
        if first_order or cg_steps <= 1:
            task_grads = query_grads
        else:
            frozen = set(getattr(self.model, "inner_frozen", ()) or ())
            hvp = SupportHessian(self.model, self.loss_fn, res.params, batch.x_support, batch.y_support)
            task_grads = implicit_gradient(hvp, query_grads, [k for k in phi if k not in frozen],
                                           float(cfg.option("lam")), cg_steps, float(cfg.option("cg_damping")),
                                           float(cfg.option("lam_damping")))
        grads = [task_grads[k].mean(0) for k in params]
        out = AdaptResult(OrderedDict((k, v.detach()) for k, v in res.params.items()), res.support_losses)
        return grads, query_losses.detach().mean(), out, query_logits.detach()

    def meta_step(self, params, batch, iteration: int = 0) -> dict:
        grads, meta_loss, res, query_logits = self.meta_gradient(params, batch, first_order=False)
        pre_logits = None
        if self.classification:
            with torch.no_grad():
                pre_logits = self.model.forward(params, batch.x_support)
        self._apply(params, grads, iteration)
        return self._metrics(res.support_losses[0].mean(), meta_loss, pre_logits, batch, query_logits)
