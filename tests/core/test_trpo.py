"""TRPO's outer step (core/rl/trpo.py, rl/objective.py's trpo_objective) in float64 against dense computations: the
KL's Hessian-vector products against autograd's dense Hessian of the KL through the inner step, the conjugate
gradient against a dense solve, the meta-gradient against a per-task loop, and the line search's guarantees."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch

from maml_lab.core.algorithms.adaptation import expand_params
from maml_lab.core.algorithms.config import AlgorithmConfig, make_algorithm
from maml_lab.core.rl import trpo
from maml_lab.core.rl.objective import trpo_objective
from maml_lab.core.rl.policy import GaussianMLPPolicy
from maml_lab.core.tasks.navigation import NavigationFamily

D = torch.float64
LR = 0.3


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def setup(seed=4, tasks=3, sizes=(2, 5, 4, 2)):
    """A tiny policy on short episodes (some end early, so the masks matter), float64."""
    env = NavigationFamily(goal_range=(-0.15, 0.15), horizon=10, goal_tolerance=0.06)
    policy = GaussianMLPPolicy(sizes)
    gen = torch.Generator().manual_seed(seed)
    theta = policy.init_params(gen, dtype=D)
    theta = OrderedDict((k, v + 0.1 * torch.randn(v.shape, generator=gen, dtype=D)) for k, v in theta.items())
    theta["log_std"] = torch.tensor([-0.6, -0.3], dtype=D)
    batch = env.sample(tasks, 4, 5, gen, dtype=D)
    return policy, theta, batch


def flat_function(theta, fn):
    """fn on a flat vector of theta's tensors (for dense Hessians)."""
    shapes = [v.shape for v in theta.values()]
    names = list(theta)

    def f(x):
        parts, start = [], 0
        for shape in shapes:
            n = int(np.prod(shape))
            parts.append(x[start:start + n].view(shape))
            start += n
        return fn(OrderedDict(zip(names, parts)))

    return f, torch.cat([v.reshape(-1) for v in theta.values()])


@pytest.mark.parametrize("inner_steps,first_order,pre_kl", [(1, False, False), (1, True, False), (0, False, False),
                                                             (2, False, False), (1, False, True)])
def test_kl_hessian_vector_product_matches_the_dense_hessian(inner_steps, first_order, pre_kl):
    policy, theta, batch = setup()
    obj = trpo_objective(policy, theta, batch, LR, inner_steps, first_order, pre_update_kl=pre_kl)
    f, x0 = flat_function(theta, lambda p: obj.evaluate(list(p.values()), True)[1])
    assert abs(float(f(x0.clone().requires_grad_(True)))) < 1e-12  # KL(old || old) = 0
    dense = torch.autograd.functional.hessian(f, x0)
    gen = torch.Generator().manual_seed(1)
    leaves = [v.clone().requires_grad_(True) for v in theta.values()]
    with torch.enable_grad():
        generic = trpo.kl_hvp(obj.evaluate(leaves, True)[1], leaves)  # double backward through the inner step
    for _ in range(3):
        v = torch.randn(x0.numel(), generator=gen, dtype=D)
        expect = dense @ v
        assert torch.allclose(generic(v), expect, rtol=1e-8, atol=1e-10)
        assert torch.allclose(obj.hvp(v), expect, rtol=1e-6, atol=1e-9)  # the Gauss-Newton form training uses


@pytest.mark.parametrize("inner_steps,first_order,pre_kl,fraction", [(1, False, False, 1.0), (1, False, False, 0.5),
                                                                     (1, True, False, 1.0), (0, False, False, 0.5),
                                                                     (1, False, True, 0.5)])
def test_explicit_objective_equals_autograd(inner_steps, first_order, pre_kl, fraction):
    """rl/explicit_trpo.py (the default on navigation's ReLU policy) against the autograd objective on the same
    trajectories: the surrogate's gradient through the inner step, the KL's Hessian-vector products (also against
    autograd of autograd of the KL through the inner step, on the samples the products use), the line search's
    surrogate and KL at candidates, and a whole TRPO step."""
    policy, theta, batch = setup(tasks=4)
    args = (policy, theta, batch, LR, inner_steps, first_order, fraction, pre_kl)
    mine, ref = trpo_objective(*args), trpo_objective(*args, explicit=False)
    assert mine.gradient is not None and ref.gradient is None  # which path each took
    assert torch.allclose(mine.query.cost, ref.query.cost, rtol=1e-12)  # the same trajectories (rows reordered)
    leaves = [v.clone().requires_grad_(True) for v in theta.values()]
    with torch.enable_grad():
        loss, kl = ref.evaluate(leaves, True)
        expect = trpo.flatten(torch.autograd.grad(loss, leaves, retain_graph=True))
    got_loss, got = mine.gradient()
    assert got_loss == pytest.approx(float(loss.detach()), abs=1e-12)
    assert torch.allclose(got, expect, rtol=1e-9, atol=1e-12)
    # the KL's products: on the samples the products use (the first ceil(fraction x B) goals), autograd of autograd
    n = int(np.ceil(fraction * batch.num_tasks))
    sub = trpo_objective(policy, theta, batch.task(0) if n == 1 else type(batch)(
        batch.x_support[:n], batch.y_support[:n], batch.x_query[:n], batch.y_query[:n],
        {k: v[:n] for k, v in batch.info.items()}, env=batch.env, shots=batch.shots, queries=batch.queries,
        seed=batch.seed, task_ids=batch.task_ids[:n]), LR, inner_steps, first_order, 1.0, pre_kl, explicit=False)
    with torch.enable_grad():
        double_backward = trpo.kl_hvp(sub.evaluate(leaves, True)[1], leaves)
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        v = torch.randn(got.numel(), generator=gen, dtype=D)
        assert torch.allclose(mine.hvp(v), ref.hvp(v), rtol=1e-8, atol=1e-11)
        # the KL's 1e-8 in 1 / (2 var + 1e-8) (rllab's) is in autograd's Hessian, not in M = 1 / var: ~1e-8 relative
        expect_hv = double_backward(v)
        assert float((mine.hvp(v) - expect_hv).norm()) < 1e-7 * float(expect_hv.norm())
    # the line search's evaluations, at theta_old and along a direction
    for scale in (0.0, 0.05, 0.3):
        candidate = [t + scale * d for t, d in zip(theta.values(), trpo.unflatten(expect / expect.norm(), leaves))]
        (a, b), (c, d) = mine.evaluate(candidate, False), ref.evaluate(candidate, False)
        assert float(a) == pytest.approx(float(c), rel=1e-10, abs=1e-13)
        assert float(b) == pytest.approx(float(d), rel=1e-9, abs=1e-14)
        if scale == 0.0:
            assert abs(float(b)) < 1e-14 and float(a) == pytest.approx(got_loss, abs=1e-13)
    # a whole step. Four conjugate-gradient iterations at damping 1e-2: on this tiny policy (18 of its 55
    # directions have zero curvature) ten at 1e-5 amplify rounding, and the residual's stopping test (1e-10) makes
    # the solution jump where one run stops an iteration before the other
    results = []
    for obj in (mine, ref):
        params = [v.clone().requires_grad_(True) for v in theta.values()]
        res = trpo.trpo_step(params, obj.evaluate, trpo.TRPOSettings(reg_coeff=1e-2, cg_iters=4), obj.hvp,
                             obj.gradient() if obj.gradient is not None else None)
        results.append((res, params))
    (r1, p1), (r2, p2) = results
    assert r1.accepted and r1.accepted == r2.accepted and r1.backtracks == r2.backtracks
    assert r1.loss_after == pytest.approx(r2.loss_after, rel=1e-8) and r1.kl == pytest.approx(r2.kl, rel=1e-8)
    for a, b in zip(p1, p2):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize("sizes", [(2, 2), (2, 12, 10, 9, 2)])
def test_explicit_objective_on_other_depths(sizes):
    """No hidden layer and three (wider than policy_grad.NARROW): gradient, KL products and the line search's
    evaluation as autograd's."""
    policy, theta, batch = setup(sizes=sizes)
    mine, ref = (trpo_objective(policy, theta, batch, LR, 1, explicit=e) for e in (True, False))
    leaves = [v.clone().requires_grad_(True) for v in theta.values()]
    with torch.enable_grad():
        expect = trpo.flatten(torch.autograd.grad(ref.evaluate(leaves, True)[0], leaves))
    assert torch.allclose(mine.gradient()[1], expect, rtol=1e-9, atol=1e-12)
    v = torch.randn(expect.numel(), generator=torch.Generator().manual_seed(0), dtype=D)
    assert torch.allclose(mine.hvp(v), ref.hvp(v), rtol=1e-8, atol=1e-11)
    candidate = [t - 0.1 * d for t, d in zip(theta.values(), trpo.unflatten(expect / expect.norm(), leaves))]
    for a, b in zip(mine.evaluate(candidate, False), ref.evaluate(candidate, False)):
        assert float(a) == pytest.approx(float(b), rel=1e-9, abs=1e-14)


def test_conjugate_gradient_matches_a_dense_solve():
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=gen, dtype=D))
    a = q @ torch.diag(torch.logspace(-1, 1, 12, dtype=D)) @ q.T
    b = torch.randn(12, generator=gen, dtype=D)
    x = trpo.conjugate_gradient(lambda v: a @ v, b, iters=40, residual_tol=1e-24)
    assert torch.allclose(x, torch.linalg.solve(a, b), rtol=1e-9, atol=1e-11)
    # on the damped KL Hessian of a tiny policy, with the residual that gives x^T A x
    policy, theta, batch = setup()
    obj = trpo_objective(policy, theta, batch, LR, 1)
    f, x0 = flat_function(theta, lambda p: obj.evaluate(list(p.values()), True)[1])
    dense = torch.autograd.functional.hessian(f, x0) + 1e-2 * torch.eye(x0.numel(), dtype=D)
    g = torch.randn(x0.numel(), generator=gen, dtype=D)
    x, r = trpo.conjugate_gradient(lambda v: obj.hvp(v) + 1e-2 * v, g, iters=400, residual_tol=1e-26,
                                   with_residual=True)
    assert torch.allclose(x, torch.linalg.solve(dense, g), rtol=1e-5, atol=1e-5 * float(x.abs().max()))
    assert torch.allclose(x.dot(g - r), x.dot(dense @ x), rtol=1e-8)


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_matches_a_per_task_loop(first_order):
    """The surrogate's gradient at theta_old, through the inner policy-gradient step, against each task on its own
    with nn.Sequential (functional_call) and plain autograd; it is also MAML's REINFORCE meta-gradient."""
    policy, theta, batch = setup()
    obj = trpo_objective(policy, theta, batch, LR, 1, first_order)
    leaves = [v.clone().requires_grad_(True) for v in theta.values()]
    grads = torch.autograd.grad(obj.evaluate(leaves, True)[0], leaves)
    names = list(theta)
    module = policy.torch_module().double()
    expect = [torch.zeros_like(v) for v in theta.values()]
    for b in range(batch.num_tasks):
        th = [v.clone().requires_grad_(True) for v in theta.values()]

        def log_prob(values, obs, actions):
            params = dict(zip(names, values))
            mean = torch.func.functional_call(module, {k: v for k, v in params.items() if k != "log_std"}, (obs,))
            z = (actions - mean) / torch.exp(params["log_std"])
            return (-0.5 * z ** 2 - params["log_std"] - 0.5 * np.log(2 * np.pi)).sum(-1)

        pre, post = obj.support[0], obj.query
        valid = pre.mask[b] > 0
        inner = -(log_prob(th, pre.obs[b][valid], pre.actions[b][valid]) * pre.advantages[b][valid]).mean()
        g_in = torch.autograd.grad(inner, th, create_graph=not first_order)
        if first_order:
            g_in = [g.detach() for g in g_in]
        phi = [t - LR * g for t, g in zip(th, g_in)]
        valid = post.mask[b] > 0
        old = log_prob([p.detach() for p in phi], post.obs[b][valid], post.actions[b][valid])
        ratio = torch.exp(log_prob(phi, post.obs[b][valid], post.actions[b][valid]) - old)
        surr = -(ratio * post.advantages[b][valid]).mean()
        for e, g in zip(expect, torch.autograd.grad(surr, th)):
            e += g / batch.num_tasks
    for k, g, e in zip(names, grads, expect):
        assert torch.allclose(g, e, rtol=1e-8, atol=1e-11), k
    # the same as the meta-gradient MAML's Adam path takes (REINFORCE through the inner step)
    config = AlgorithmConfig.defaults("fomaml" if first_order else "maml", task="navigation", inner_lr=LR)
    algo = make_algorithm(policy, "policy_gradient", config)
    adam_grads = algo.meta_gradient(OrderedDict(zip(names, [v.clone().requires_grad_(True) for v in theta.values()])),
                                    batch, first_order)[0]
    for k, g, e in zip(names, adam_grads, expect):
        assert torch.allclose(g, e, rtol=1e-8, atol=1e-11), k


def test_trpo_step_keeps_the_kl_bound_and_improves_the_surrogate():
    policy, theta, batch = setup()
    config = AlgorithmConfig.defaults("maml", task="navigation", inner_lr=LR)
    assert config.outer_optimizer == "trpo"
    algo = make_algorithm(policy, "policy_gradient", config)
    params = OrderedDict((k, v.clone().requires_grad_(True)) for k, v in theta.items())
    algo.setup(params)
    obj = trpo_objective(policy, params, batch, LR, 1)
    res = trpo.trpo_step(list(params.values()), obj.evaluate, trpo.TRPOSettings(max_kl=0.01), obj.hvp)
    assert res.accepted and res.loss_after < res.loss_before and 0 < res.kl <= 0.01
    loss, kl = obj.evaluate([p.detach() for p in params.values()], False)
    assert float(loss) == pytest.approx(res.loss_after) and float(kl) == pytest.approx(res.kl)
    # a step that cannot improve (a zero surrogate gradient: zero advantages) is rejected and theta stays
    before = [p.detach().clone() for p in params.values()]

    def flat(tensors, differentiable):
        return sum((t * 0).sum() for t in tensors), obj.evaluate(tensors, differentiable)[1]

    res = trpo.trpo_step(list(params.values()), flat, trpo.TRPOSettings(), obj.hvp)
    assert not res.accepted and all(torch.equal(a, b) for a, b in zip(before, params.values()))


@pytest.mark.parametrize("fraction", [1.0])
def test_meta_step_records_the_kl_and_moves_theta(fraction):
    from maml_lab.core.rl.objective import objective_trpo_step

    policy, theta, batch = setup(tasks=8)
    for name in ("maml", "fomaml", "pretrained"):
        over = {"outer_optimizer": "trpo"} if name == "pretrained" else {}
        config = AlgorithmConfig.defaults(name, task="navigation", inner_lr=LR, **over)
        algo = make_algorithm(policy, "policy_gradient", config)
        params = OrderedDict((k, v.clone().requires_grad_(True)) for k, v in theta.items())
        algo.setup(params)
        m = objective_trpo_step(algo, params, batch, name == "fomaml", name != "pretrained",
                                trpo.TRPOSettings(hvp_fraction=fraction))
        assert m["trpo_accepted"] == 1.0 and 0 < m["mean_kl"] <= 0.01, name
        assert any(not torch.equal(p, theta[k]) for k, p in params.items()), name
        assert set(algo.meta_step(params, batch, 1)) >= {"pre_loss", "post_loss", "mean_kl", "trpo_accepted"}


def test_defaults_on_navigation():
    maml = AlgorithmConfig.defaults("maml", task="navigation")
    pre = AlgorithmConfig.defaults("pretrained", task="navigation")
    assert (maml.outer_optimizer, maml.inner_lr) == ("trpo", 0.5)
    assert (pre.outer_optimizer, pre.meta_lr) == ("adam", 1e-3)  # the reference's pretrained policy
    assert AlgorithmConfig.defaults("maml").outer_optimizer == "adam"  # supervised families
    with pytest.raises(ValueError, match="outer.optimizer"):
        AlgorithmConfig(outer_optimizer="lbfgs")
    policy, theta, _ = setup()
    algo = make_algorithm(policy, "policy_gradient", maml)
    with pytest.raises(ValueError, match="sampled"):
        from maml_lab.core.tasks.base import TaskBatch

        x = torch.zeros(1, 2, 2, dtype=D)
        algo.meta_step(OrderedDict((k, v.clone().requires_grad_(True)) for k, v in theta.items()),
                       TaskBatch(x, x, x, x), 0)
    assert expand_params(theta, 2)["log_std"].shape == (2, 2)


def test_the_pre_update_kl_check_keeps_the_pre_update_policy_within_its_bound():
    """TRPOSettings.pre_update_max_kl: the line search takes only candidates whose pre-update policies' mean KL from
    theta_old (on the pre-update samples; checked here against torch.distributions) is within the bound."""
    from torch.distributions import Normal, kl_divergence

    from maml_lab.core.rl.objective import objective_trpo_step, pre_update_kl

    policy, theta, batch = setup(tasks=4)
    config = AlgorithmConfig.defaults("maml", task="navigation", inner_lr=LR)
    obj = trpo_objective(policy, theta, batch, LR, 1)
    pre_kl = pre_update_kl(policy, theta, obj.support[0])
    assert pre_kl(list(theta.values())) == 0.0

    def step(settings):
        algo = make_algorithm(policy, "policy_gradient", config)
        params = OrderedDict((k, v.clone().requires_grad_(True)) for k, v in theta.items())
        algo.setup(params)
        metrics = objective_trpo_step(algo, params, batch, False, True, settings)
        return metrics, [p.detach() for p in params.values()]

    free, moved = step(trpo.TRPOSettings(hvp_fraction=1.0))
    assert free["trpo_accepted"] == 1.0
    smp = obj.support[0]
    old, new = (expand_params(OrderedDict(zip(theta, t)), 4) for t in (list(theta.values()), moved))
    dist = [Normal(policy.forward(p, smp.obs), policy.log_std(p, smp.obs[..., :2]).exp().expand(*smp.obs.shape[:2], 2))
            for p in (old, new)]
    expect = float((kl_divergence(*dist).sum(-1) * smp.mask).sum() / smp.mask.sum())
    assert pre_kl(moved) == pytest.approx(expect, rel=1e-6) and expect > 0  # rllab's KL adds 1e-8 to 2 var
    guarded, kept = step(trpo.TRPOSettings(hvp_fraction=1.0, pre_update_max_kl=expect / 4))
    assert guarded["trpo_accepted"] == 1.0 and 0 < pre_kl(kept) <= expect / 4
