"""iMAML in float64 against independent computations: conjugate gradient against a dense solve of the same system,
the implicit meta-gradient at a converged inner solution against the implicit function theorem with a dense Hessian
(torch.linalg.solve) and against autograd through the unrolled converged inner loop; memory flat in inner steps."""

from collections import OrderedDict

import pytest
import torch

from maml_lab.core.algorithms import imaml
from maml_lab.core.algorithms.base import MetaAlgorithm
from maml_lab.core.algorithms.config import AlgorithmConfig, make_algorithm
from maml_lab.core.algorithms.config import test_trajectory as trajectory
from maml_lab.core.algorithms.imaml import IMAML, SupportHessian, cg_solve, implicit_gradient
from maml_lab.core.analysis.landscape import sgd_rule
from maml_lab.core.models.mlp import MLP
from maml_lab.core.tasks.losses import loss_function
from maml_lab.core.tasks.sinusoid import SinusoidFamily
from maml_lab.core.training.cost import measure

LAM = 2.0
STEPS = 600  # SGD at 0.05 on the proximal objective: converged to rounding in float64


class FrozenBiasMLP(MLP):
    """An MLP whose first bias the inner loop never adapts (as conv-4's batch-norm shifts in cbfinn's convention)."""

    inner_frozen = ("0.bias",)


@pytest.fixture(autouse=True)
def exact_cg(monkeypatch):
    """CG run to the end: the reference's early stop (squared residual < 1e-10) limits the agreement to ~1e-5."""
    monkeypatch.setattr(imaml, "RESIDUAL_TOL", 0.0)


def _setup(model_cls=MLP, tasks=3, steps=STEPS, **options):
    model = model_cls((1, 6, 6, 1), "tanh")
    params = model.init_params(torch.Generator().manual_seed(0), dtype=torch.float64)
    for v in params.values():
        v.requires_grad_(True)
    batch = SinusoidFamily().sample(tasks, 5, 7, torch.Generator().manual_seed(3), dtype=torch.float64)
    opts = {"lam": LAM, "cg_steps": 200, "cg_damping": 0.0, "lam_damping": 0.0, **options}
    config = AlgorithmConfig.defaults("imaml", "sinusoid", inner_steps=steps, inner_lr=0.05, options=opts)
    algo = make_algorithm(model, "mse", config)
    algo.setup(params)
    return model, params, batch, algo


def _flat(params):
    return torch.cat([v.reshape(-1) for v in params.values()])


def _unflat(vec, like):
    out, start = OrderedDict(), 0
    for k, v in like.items():
        out[k] = vec[start:start + v.numel()].view_as(v)
        start += v.numel()
    return out


def _dense_hessian(model, phi, x, y):
    """The support loss's Hessian at one task's parameters, [P, P], by torch.autograd.functional.hessian."""
    loss_fn = loss_function("mse")
    return torch.autograd.functional.hessian(
        lambda v: loss_fn(model.forward(_unflat(v, phi), x[None]), y[None]).sum(), _flat(phi))


def _task(d, i):
    return OrderedDict((k, v[i].detach()) for k, v in d.items())


def _query_grad(model, phi, x, y):
    leaves = OrderedDict((k, v.clone().requires_grad_(True)) for k, v in phi.items())
    loss = loss_function("mse")(model.forward(leaves, x[None]), y[None]).sum()
    return _flat(OrderedDict(zip(leaves, torch.autograd.grad(loss, list(leaves.values())))))


def test_the_inner_solution_is_stationary_for_the_proximal_objective():
    model, params, batch, algo = _setup()
    res = algo.meta_gradient(params, batch, first_order=False)[2]
    leaves = OrderedDict((k, v.clone().requires_grad_(True)) for k, v in res.params.items())
    start = OrderedDict((k, v.detach().unsqueeze(0).expand_as(leaves[k])) for k, v in params.items())
    objective = IMAML.inner_loss(algo.config, model, algo.loss_fn, leaves, start, batch.x_support, batch.y_support)
    grads = torch.autograd.grad(objective.sum(), list(leaves.values()))
    assert max(float(g.abs().max()) for g in grads) < 1e-12


def test_implicit_gradient_at_a_converged_solution_is_the_implicit_function_theorem_with_a_dense_hessian():
    model, params, batch, algo = _setup()
    grads, _, res, _ = algo.meta_gradient(params, batch, first_order=False)
    expected = 0.0
    for i in range(batch.num_tasks):
        phi = _task(res.params, i)
        hessian = _dense_hessian(model, phi, batch.x_support[i], batch.y_support[i])
        g = _query_grad(model, phi, batch.x_query[i], batch.y_query[i])
        # d phi*/d theta = lam (H + lam I)^-1, so the meta-gradient is (I + H / lam)^-1 g
        eye = torch.eye(len(g), dtype=torch.float64)
        expected = expected + torch.linalg.solve(eye + hessian / LAM, g) / batch.num_tasks
    torch.testing.assert_close(torch.cat([g.reshape(-1) for g in grads]), expected, rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize("model_cls", [MLP, FrozenBiasMLP])
def test_implicit_gradient_equals_autograd_through_the_unrolled_converged_inner_loop(model_cls):
    model, params, batch, algo = _setup(model_cls)
    grads = algo.meta_gradient(params, batch, first_order=False)[0]
    # MetaAlgorithm.meta_gradient differentiates through the 600 SGD steps on iMAML's inner_loss (MAML's way)
    unrolled = MetaAlgorithm.meta_gradient(algo, params, batch, first_order=False)[0]
    for k, a, b in zip(params, grads, unrolled):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9, msg=k)
    if model_cls is FrozenBiasMLP:  # the held bias gets the theta-through-phi term, not just its query gradient
        phi = algo.meta_gradient(params, batch, first_order=True)[0]
        assert not torch.allclose(grads[1], phi[1], rtol=1e-3)


@pytest.mark.parametrize("damping", [(0.0, 0.0), (1.0, 10.0)])
def test_conjugate_gradient_matches_a_dense_solve_of_the_same_system(damping):
    cg_damping, lam_damping = damping
    model, params, batch, algo = _setup()
    res = algo.meta_gradient(params, batch, first_order=True)[2]
    hvp = SupportHessian(model, algo.loss_fn, res.params, batch.x_support, batch.y_support)
    leaves = OrderedDict((k, v.detach().requires_grad_(True)) for k, v in res.params.items())
    with torch.enable_grad():
        losses = algo.loss_fn(model.forward(leaves, batch.x_query), batch.y_query)
        g = OrderedDict(zip(leaves, torch.autograd.grad(losses.sum(), list(leaves.values()))))
    n = sum(v[0].numel() for v in g.values())
    x = implicit_gradient(hvp, g, list(g), LAM, n, cg_damping, lam_damping)
    for i in range(batch.num_tasks):
        hessian = _dense_hessian(model, _task(res.params, i), batch.x_support[i], batch.y_support[i])
        system = (1.0 + cg_damping) * torch.eye(n, dtype=torch.float64) + hessian / (LAM + lam_damping)
        dense = torch.linalg.solve(system, _flat(_task(g, i)))
        torch.testing.assert_close(_flat(_task(x, i)), dense, rtol=1e-8, atol=1e-11)
    # the reference's 5 steps: an approximation, but closer to the solution than the query gradient it starts from
    five = implicit_gradient(hvp, g, list(g), LAM, 5, cg_damping, lam_damping)
    for i in range(batch.num_tasks):
        hessian = _dense_hessian(model, _task(res.params, i), batch.x_support[i], batch.y_support[i])
        system = (1.0 + cg_damping) * torch.eye(n, dtype=torch.float64) + hessian / (LAM + lam_damping)
        dense = torch.linalg.solve(system, _flat(_task(g, i)))
        assert (_flat(_task(five, i)) - dense).norm() < (_flat(_task(g, i)) - dense).norm()


def test_cg_solves_each_task_on_its_own_and_stops_converged_ones():
    torch.manual_seed(0)
    a = torch.randn(2, 4, 4, dtype=torch.float64)
    spd = a @ a.transpose(1, 2) + 4 * torch.eye(4, dtype=torch.float64)
    b = torch.randn(2, 4, dtype=torch.float64)
    b[1] = 0.0  # converged from the start: stays 0, no division by zero
    x = cg_solve(lambda vs: [torch.einsum("bij,bj->bi", spd, vs[0])], [b], 4)[0]
    torch.testing.assert_close(x[0], torch.linalg.solve(spd[0], b[0]))
    assert torch.equal(x[1], torch.zeros(4, dtype=torch.float64))


def test_memory_is_flat_in_inner_steps_where_maml_grows():
    model = MLP((1, 40, 40, 1))
    batch = SinusoidFamily().sample(2, 10, 10, torch.Generator().manual_seed(1))
    used = {}
    for name in ("imaml", "maml"):
        for steps in (2, 8):
            params = model.init_params(torch.Generator().manual_seed(0))
            for v in params.values():
                v.requires_grad_(True)
            algo = make_algorithm(model, "mse", AlgorithmConfig.defaults(name, "sinusoid", inner_steps=steps))
            algo.setup(params)
            used[name, steps] = measure(lambda a=algo, p=params: a.meta_step(p, batch), "cpu")[2]
    assert used["imaml", 8] == pytest.approx(used["imaml", 2], rel=0.02)
    assert used["maml", 8] > 2 * used["maml", 2]


def test_cost_meter_forecasts_no_memory_for_more_inner_steps():
    from maml_lab.core.training.config import ExperimentConfig
    from maml_lab.core.training.trainer import Trainer

    config = ExperimentConfig(iterations=3, meta_batch_size=4, hidden=[16, 16], val_every=0,
                              algorithms=[AlgorithmConfig.defaults(n, inner_steps=3) for n in ("imaml", "maml")])
    trainer = Trainer(config, record_every=0)
    trainer.cost.probe, trainer.cost.budget = True, None
    trainer.run()
    cost = trainer.cost.summary()
    assert cost["imaml"]["forecast"] == cost["maml"]["forecast"] == "ready"
    assert abs(cost["imaml"]["inner_step_bytes"]) <= 0.01 * cost["imaml"]["step_bytes"]
    assert cost["maml"]["inner_step_bytes"] > 0.05 * cost["maml"]["step_bytes"]


def test_test_time_adaptation_is_the_proximal_rule_and_views_know_it_is_not_plain_sgd():
    model, params, batch, algo = _setup(steps=1)
    config = AlgorithmConfig.defaults("imaml", "sinusoid", inner_lr=0.05, options={"lam": LAM})
    theta = OrderedDict((k, v.detach()) for k, v in params.items())
    path = list(trajectory(config, model, algo.loss_fn, theta, batch.x_support, batch.y_support, 3))
    phi = OrderedDict((k, v.unsqueeze(0).expand(batch.num_tasks, *v.shape)) for k, v in theta.items())
    for step in range(1, 4):  # phi <- phi - lr (grad L(phi) + lam (phi - theta)), by hand
        leaves = OrderedDict((k, v.clone().requires_grad_(True)) for k, v in phi.items())
        loss = algo.loss_fn(model.forward(leaves, batch.x_support), batch.y_support).sum()
        grads = torch.autograd.grad(loss, list(leaves.values()))
        phi = OrderedDict((k, (v - 0.05 * (g + LAM * (v - theta[k])).detach()).detach())
                          for (k, v), g in zip(leaves.items(), grads))
        for k in phi:
            torch.testing.assert_close(path[step][k], phi[k], rtol=1e-12, atol=1e-14)
    assert sgd_rule(config, model, theta) is None  # the Landscape runs test_trajectory, not plain SGD
    assert "lam 2" in IMAML.test_adaptation_text(config)


@pytest.mark.parametrize("option, value, message", [
    ("lam", 0.0, "lam must be a number > 0"), ("lam", float("nan"), "lam must be a number > 0"),
    ("cg_steps", -1, "cg_steps must be an integer >= 0"), ("cg_steps", 2.5, "cg_steps must be an integer"),
    ("cg_damping", -0.1, "cg_damping must be a number >= 0"), ("lam_damping", True, "lam_damping must be a number"),
])
def test_bad_options_are_refused_in_one_line(option, value, message):
    with pytest.raises(ValueError, match=message):
        AlgorithmConfig.defaults("imaml", "sinusoid", options={option: value})


def test_images_defaults_follow_the_reference_omniglot_command():
    config = AlgorithmConfig.defaults("imaml", "images")
    assert (config.inner_steps, config.inner_lr, config.test_inner_steps, config.meta_lr) == (16, 0.1, 16, 1e-3)
    assert config.meta_lr_schedule == "constant"
    assert (config.option("lam"), config.option("cg_steps"), config.option("cg_damping")) == (2.0, 5, 1.0)


def _trainer(iterations=6, hidden=(8, 8), **algorithm):
    from maml_lab.core.training.config import ExperimentConfig
    from maml_lab.core.training.trainer import Trainer

    return Trainer(ExperimentConfig(iterations=iterations, meta_batch_size=2, val_every=0, hidden=list(hidden), seed=5,
                                    algorithms=[AlgorithmConfig.defaults("imaml", inner_steps=3, **algorithm)]),
                   record_every=0)


def test_resumes_exactly_from_a_checkpoint_with_the_reference_adam(tmp_path):
    from maml_lab.core.training.checkpoint import load_checkpoint, save_checkpoint

    straight = _trainer()
    straight.run()
    first = _trainer()
    first.run(iterations=3)
    path = save_checkpoint(first, tmp_path / "half.safetensors")
    resumed = _trainer()
    load_checkpoint(resumed, path)
    resumed.run()
    a, b = straight.runs["imaml"], resumed.runs["imaml"]
    assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)
    assert b.algorithm.optimizer.eps == imaml.ADAM_EPS
    assert any(not torch.equal(a.params[k], first.runs["imaml"].params[k]) for k in a.params)


def test_the_plain_pytorch_snippet_of_docs_exports_md_adapts_as_the_engine(tmp_path, monkeypatch):
    """The iMAML block of docs/exports.md, run as written on an export, against `maml-lab eval`'s adaptation."""
    import re
    from pathlib import Path

    from torch import nn

    from maml_lab.core.export import load_initialization
    from maml_lab.lab.initializations import adaptation_from_metadata

    doc = (Path(__file__).resolve().parents[2] / "docs" / "exports.md").read_text()
    snippet = re.search(r"\*\*iMAML\*\*.*?```python\n(.*?)```", doc, re.S).group(1)
    trainer = _trainer(iterations=4, hidden=(40, 40), options={"lam": 3.0})
    trainer.run()
    monkeypatch.chdir(tmp_path)
    trainer.export("imaml", tmp_path / "init-imaml.safetensors")
    model = nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))
    x_support = torch.linspace(-4, 4, 5).reshape(5, 1)
    y_support = 2 * torch.sin(x_support - 1)
    exec(snippet, {"model": model, "x_support": x_support, "y_support": y_support})
    params, extras, meta, engine_model = load_initialization(tmp_path / "init-imaml.safetensors", with_extras=True)
    assert meta["hyperparameters"]["lam"] == 3.0 and not extras
    adaptation = adaptation_from_metadata(meta, tensors=extras)
    steps = meta["hyperparameters"]["test_inner_steps"]
    adapted = list(trajectory(adaptation, engine_model, loss_function("mse"), params, x_support[None], y_support[None],
                              steps))[-1]
    moved = False
    for k, v in model.state_dict().items():
        torch.testing.assert_close(adapted[k][0], v, rtol=1e-5, atol=1e-6)
        moved = moved or not torch.allclose(v, params[k])
    assert moved


def test_one_cg_step_or_first_order_is_the_query_gradient_at_phi():
    model, params, batch, algo = _setup(steps=20, cg_steps=1)
    grads, _, res, _ = algo.meta_gradient(params, batch, first_order=False)
    first = algo.meta_gradient(params, batch, first_order=True)[0]
    expected = 0.0
    for i in range(batch.num_tasks):
        expected = expected + _query_grad(model, _task(res.params, i), batch.x_query[i], batch.y_query[i])
    torch.testing.assert_close(torch.cat([g.reshape(-1) for g in grads]), expected / batch.num_tasks)
    for a, b in zip(grads, first):
        torch.testing.assert_close(a, b)


def test_cg_stops_at_non_positive_curvature_as_newton_cg():
    """Away from a minimum the support Hessian can be indefinite: CG keeps the iterate it reached (the code would
    step to the wrong side), or returns b itself when the first direction already has curvature <= 0."""
    a = torch.tensor([[[4.0, 0.0], [0.0, -1.0]], [[-1.0, 0.0], [0.0, -2.0]]], dtype=torch.float64)
    b = torch.tensor([[1.0, 0.5], [1.0, 1.0]], dtype=torch.float64)
    x = cg_solve(lambda vs: [torch.einsum("bij,bj->bi", a, vs[0])], [b], 5)[0]
    torch.testing.assert_close(x[0], b[0] / 3)  # one step along b (curvature 3.75), then p^T A p = -60/81: stop
    torch.testing.assert_close(x[1], b[1])


def _objective(algo, model, theta, batch):
    start = OrderedDict((k, v.unsqueeze(0).expand(batch.num_tasks, *v.shape)) for k, v in theta.items())
    return start, lambda p: IMAML.inner_loss(algo.config, model, algo.loss_fn, p, start, batch.x_support,
                                             batch.y_support)


def test_the_inner_solver_never_increases_the_proximal_objective_where_plain_sgd_diverges():
    """A step past 2 / curvature: plain SGD's proximal objective grows on some task, the backtracking solver's never
    does on any (each task halves its own step), and it still descends."""
    from maml_lab.core.algorithms.adaptation import adapt

    model, params, batch, algo = _setup(tasks=6)
    theta = OrderedDict((k, v.detach()) for k, v in params.items())
    start, objective = _objective(algo, model, theta, batch)
    lr = 1.5
    plain = adapt(model, algo.loss_fn, start, batch.x_support, batch.y_support, 30, lr, batched=True,
                  final_loss=True, inner_loss=lambda p, s, x, y: objective(p)).support_losses
    plain = torch.stack(plain)
    assert bool((~(plain[1:] <= plain[:-1])).any())  # it rose (or left the numbers) somewhere
    path = [loss for _, loss in imaml.backtracking_sgd(objective, start, 30, lr)]
    losses = torch.stack(path)
    assert bool(torch.isfinite(losses).all())
    assert bool((losses[1:] <= losses[:-1] * (1 + 8 * torch.finfo(losses.dtype).eps)).all())
    assert bool((losses[-1] < 0.9 * losses[0]).all())


def test_the_inner_solver_is_plain_sgd_where_no_step_would_raise_the_objective():
    """At MAML's small step nothing backtracks: the iterates are plain SGD's (`adapt` on the same objective), and a
    parameter the model never adapts stays at theta."""
    from maml_lab.core.algorithms.adaptation import adapt

    model, params, batch, algo = _setup(model_cls=FrozenBiasMLP, tasks=4)
    theta = OrderedDict((k, v.detach()) for k, v in params.items())
    start, objective = _objective(algo, model, theta, batch)
    plain = adapt(model, algo.loss_fn, start, batch.x_support, batch.y_support, 40, 0.05, batched=True,
                  final_loss=True, inner_loss=lambda p, s, x, y: objective(p))
    steps = torch.stack(plain.support_losses)
    assert bool((steps[1:] < steps[:-1]).all())  # plain SGD descends at every step: no step of ours halves
    names = [k for k in theta if k != "0.bias"]
    fast, loss = list(imaml.backtracking_sgd(objective, start, 40, 0.05, names))[-1]
    for k in theta:
        torch.testing.assert_close(fast[k], plain.params[k], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(fast["0.bias"], start["0.bias"], rtol=0, atol=0)
    torch.testing.assert_close(loss, steps[-1], rtol=1e-12, atol=1e-14)
