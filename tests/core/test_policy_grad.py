"""The fast paths of 2-D navigation against the implementations they replaced, in float64 on the same noise: the
rollout (one preallocated loop, early stop, kept activations) against the step-by-step rollout it replaced, and the
explicit policy gradient, Hessian-vector product and MAML/FOMAML meta-gradient (core/rl/policy_grad.py) against
autograd on the paper's 2-100-100-2 policy."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

from maml_lab.core.algorithms.adaptation import expand_params
from maml_lab.core.algorithms.config import AlgorithmConfig, make_algorithm
from maml_lab.core.rl.policy import GaussianMLPPolicy
from maml_lab.core.rl.policy_grad import PolicyGradient, supported
from maml_lab.core.tasks.navigation import NavigationBatch, NavigationFamily, Trajectories

D = torch.float64


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def reference_rollout(env, policy, params, goals, noise) -> Trajectories:
    """The rollout as it was before the fast path (a list per step, stacked at the end; no early stop)."""
    b, n, horizon, _ = noise.shape
    with torch.no_grad():
        params = {k: v.detach() for k, v in params.items()}
        std = torch.exp(policy.log_std(params, noise[:, :, 0]))
        pos = noise.new_zeros(b, n, 2)
        alive = torch.ones(b, n, dtype=torch.bool)
        goal = goals.view(b, 1, 2).to(noise)
        obs, actions, rewards, masks = [], [], [], []
        for t in range(horizon):
            action = policy.forward(params, pos) + std * noise[:, :, t]
            new, reward, done = env.step(pos, action, goal)
            obs.append(pos)
            actions.append(action)
            live = alive.to(noise.dtype)
            rewards.append(reward * live)
            masks.append(live)
            pos = torch.where(alive.unsqueeze(-1), new, pos)
            alive = alive & ~done
        return Trajectories(torch.stack(obs, 2), torch.stack(actions, 2), torch.stack(rewards, 2),
                            torch.stack(masks, 2), pos)


def per_task(theta, b, gen):
    return OrderedDict((k, v.expand(b, *v.shape) + 0.05 * torch.randn(b, *v.shape, generator=gen, dtype=D))
                       for k, v in theta.items())


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("shared", [True, False])
def test_rollout_equals_the_step_by_step_rollout(activation, shared):
    env = NavigationFamily(goal_tolerance=0.05)  # wide: some episodes end, so the mask and freezing matter
    policy = GaussianMLPPolicy(activation=activation)
    gen = torch.Generator().manual_seed(4)
    theta = policy.init_params(gen, dtype=D)
    params = expand_params(theta, 5) if shared else per_task(theta, 5, gen)
    goals = env.sample_goals(5, gen, D)
    noise = env.noise(7, torch.arange(5), 0, 6, D)
    fast, ref = env.rollout(policy, params, goals, noise, True), reference_rollout(env, policy, params, goals, noise)
    assert 0 < float(ref.mask.mean()) < 1
    for name in ("obs", "rewards", "mask", "end"):
        assert torch.allclose(getattr(fast, name), getattr(ref, name), rtol=1e-12, atol=1e-13), name
    # actions after an episode's end (masked everywhere) are taken at the unfrozen position now
    m = ref.mask.unsqueeze(-1)
    assert torch.allclose(fast.actions * m, ref.actions * m, rtol=1e-12, atol=1e-13)
    assert (fast.activations is not None) == (activation == "relu")  # asked for, the ReLU policy's only
    assert env.rollout(policy, params, goals, noise).activations is None
    if fast.activations is not None:  # the kept means are the actions' means
        std = torch.exp(params["log_std"]).view(-1, 1, 1, 2)
        assert torch.allclose(fast.activations.means.transpose(1, 2) + std * noise, fast.actions, rtol=1e-12,
                              atol=1e-13)


def test_rollout_stops_once_every_episode_ended_and_masks_the_rest():
    """A policy that heads for the goal with negligible noise ends every episode within 10 steps: the rollout
    stops there; positions, rewards and mask equal the full rollout's, actions on the valid steps too."""
    env = NavigationFamily(horizon=40)
    policy = GaussianMLPPolicy((2, 3, 2))
    params = OrderedDict((k, torch.zeros_like(v)) for k, v in policy.init_params(torch.Generator(), dtype=D).items())
    params["2.bias"] = torch.tensor([1.0, 1.0], dtype=D)
    params["log_std"] = torch.full((2,), -30.0, dtype=D)
    goals = torch.tensor([[0.3, 0.3], [0.5, 0.5], [0.6, 0.2]], dtype=D)  # 3, 5 steps; the third never ends
    noise = torch.randn(3, 4, 40, 2, generator=torch.Generator().manual_seed(0), dtype=D)
    for g, ends in ((goals[:2], True), (goals, False)):
        p = expand_params(params, len(g))
        fast, ref = env.rollout(policy, p, g, noise[:len(g)]), reference_rollout(env, policy, p, g, noise[:len(g)])
        assert bool((ref.mask[..., 10:] == 0).all()) == ends
        assert bool((fast.actions[:, :, 10:] == 0).all()) == ends  # stopped after step 10: nothing computed
        for name in ("obs", "rewards", "mask", "end"):
            assert torch.equal(getattr(fast, name), getattr(ref, name)), name
        assert torch.equal(fast.actions * fast.mask.unsqueeze(-1), ref.actions * ref.mask.unsqueeze(-1))
        assert torch.equal(fast.returns, ref.returns)


def surrogates(policy, params, obs, actions, c):
    return -(policy.log_prob(params, obs, actions) * c).sum(1)


@pytest.mark.parametrize("shared", [True, False])
def test_explicit_gradient_and_hessian_vector_product_equal_autograd(shared):
    policy = GaussianMLPPolicy((2, 11, 10, 2))  # wider than policy_grad.NARROW: both orientations
    gen = torch.Generator().manual_seed(1)
    theta = policy.init_params(gen, dtype=D)
    theta["log_std"] = torch.tensor([-0.4, 0.3], dtype=D)
    b, m = 3, 13
    params = theta if shared else per_task(theta, b, gen)
    obs, actions = torch.randn(b, m, 2, generator=gen, dtype=D), torch.randn(b, m, 2, generator=gen, dtype=D)
    c = torch.randn(b, m, generator=gen, dtype=D) * (torch.rand(b, m, generator=gen) > 0.3)
    direction = [torch.randn(b, *shape, generator=gen, dtype=D) for shape in policy.param_shapes().values()]
    explicit = PolicyGradient(policy)
    leaves = OrderedDict((k, v.clone().requires_grad_(True)) for k, v in params.items())
    taskwise = expand_params(leaves, b) if shared else leaves
    grads = torch.autograd.grad(surrogates(policy, taskwise, obs, actions, c).sum(), list(leaves.values()),
                                create_graph=True)
    hv = torch.autograd.grad(sum((g * v).sum() for g, v in zip(
        torch.autograd.grad(surrogates(policy, taskwise, obs, actions, c).sum(), list(taskwise.values()),
                            create_graph=True), direction)), list(leaves.values()))
    mine, p = explicit.run(params, obs, actions, c, summed=True)
    for name, g, e in zip(params, grads, mine):
        assert torch.allclose(g.sum(0) if not shared else g, e, rtol=1e-10, atol=1e-12), name
    fused, none = explicit.run(params, obs, actions, c, summed=True, keep=False)  # each task's forward inline
    assert none is None and all(torch.allclose(a, e, rtol=1e-12, atol=1e-14) for a, e in zip(fused, mine))
    for name, h, e in zip(params, hv, explicit.hvp(params, p, direction, summed=True)):
        assert torch.allclose(h.sum(0) if not shared else h, e, rtol=1e-10, atol=1e-12), name
    if not shared:  # per task, not summed
        mine, p = explicit.run(params, obs, actions, c)
        for name, g, e in zip(params, grads, mine):
            assert torch.allclose(g, e, rtol=1e-10, atol=1e-12), name
        for name, h, e in zip(params, hv, explicit.hvp(params, p, direction, summed=False)):
            assert torch.allclose(h, e, rtol=1e-10, atol=1e-12), name


@pytest.mark.parametrize("shared", [True, False])
def test_gauss_newton_product_equals_autograd(shared):
    """J^T M J V (TRPO's KL Hessian at the old policy, core/rl/explicit_trpo.py) against torch.func's jvp and vjp of
    the policy's means, and the log std's identity Jacobian."""
    policy = GaussianMLPPolicy((2, 11, 10, 2))  # wider than policy_grad.NARROW: both orientations
    gen = torch.Generator().manual_seed(5)
    theta = policy.init_params(gen, dtype=D)
    b, m = 3, 11
    params = theta if shared else per_task(theta, b, gen)
    obs = torch.randn(b, m, 2, generator=gen, dtype=D)
    mean_weight = torch.rand(b, m, 2, generator=gen, dtype=D) * (torch.rand(b, m, 1, generator=gen) > 0.2)
    std_weight = torch.rand(b, 1, generator=gen, dtype=D)
    direction = [torch.randn(*(() if shared else (b,)), *shape, generator=gen, dtype=D)
                 for shape in policy.param_shapes().values()]
    names = list(params)
    taskwise = expand_params(params, b) if shared else params

    def means(*values):
        return policy.forward(dict(zip(names, values)), obs)

    values = tuple(params.values())
    tangent = torch.func.jvp(means, values, tuple(direction))[1]
    expect = list(torch.func.vjp(means, *values)[1](tangent * mean_weight))
    ls = names.index("log_std")
    extra = std_weight * (direction[ls] if not shared else direction[ls].expand(b, 2))
    expect[ls] = expect[ls] + (extra.sum(0) if shared else extra)
    explicit = PolicyGradient(policy)
    hidden, _ = explicit.forward(taskwise if not shared else params, obs)
    got = explicit.gauss_newton(params, [obs, *hidden], direction, mean_weight, std_weight, summed=shared)
    for name, g, e in zip(names, got, expect):
        assert torch.allclose(g, e, rtol=1e-10, atol=1e-12), name


@pytest.mark.parametrize("name", ["maml", "fomaml"])
def test_explicit_meta_gradient_equals_autograd_through_the_inner_step(name, monkeypatch):
    """The paper's policy and sizes, shortened horizon: objective_meta_gradient by the explicit path and by
    autograd (create_graph through the inner policy-gradient step), same batch and noise."""
    env = NavigationFamily(horizon=30)
    policy = GaussianMLPPolicy()
    assert supported(policy) and not supported(GaussianMLPPolicy(activation="tanh"))
    gen = torch.Generator().manual_seed(2)
    theta = policy.init_params(gen, dtype=D)
    theta["log_std"] = torch.tensor([-0.6, -0.2], dtype=D)
    batch = env.sample(4, 5, 6, gen, dtype=D)
    algo = make_algorithm(policy, "policy_gradient", AlgorithmConfig.defaults(name, task="navigation"))
    results = []
    for explicit in (True, False):
        if not explicit:
            monkeypatch.setattr(NavigationBatch, "explicit_meta_gradient", lambda *a, **k: None)
        leaves = OrderedDict((k, v.clone().requires_grad_(True)) for k, v in theta.items())
        results.append(algo.meta_gradient(leaves, batch, first_order=(name == "fomaml")))
    (g1, cost1, res1, _), (g2, cost2, res2, _) = results
    for k, a, e in zip(theta, g1, g2):
        assert torch.allclose(a, e, rtol=1e-9, atol=1e-11), k
    assert torch.allclose(cost1, cost2) and torch.allclose(res1.support_losses[0], res2.support_losses[0])
    for k in theta:
        assert torch.allclose(res1.params[k], res2.params[k], rtol=1e-10, atol=1e-12), k


@pytest.mark.parametrize("steps", [1, 2])
def test_explicit_pretrained_step_equals_autograd(steps):
    """The pretrained baseline's outer gradient and its costs before and after `steps` test-time steps, by the
    explicit per-task gradients of one sampling (rl/objective.py pretrained_gradient) and by autograd."""
    from maml_lab.core.rl.objective import pretrained_gradient

    env = NavigationFamily(horizon=30, goal_tolerance=0.05)  # some episodes end: the mask matters
    policy = GaussianMLPPolicy()
    gen = torch.Generator().manual_seed(5)
    theta = policy.init_params(gen, dtype=D)
    theta["log_std"] = torch.tensor([-0.9, -0.4], dtype=D)
    batch = env.sample(4, 5, 6, gen, dtype=D)
    (g1, pre1, post1), (g2, pre2, post2) = (
        pretrained_gradient(policy, OrderedDict((k, v.clone().requires_grad_(True)) for k, v in theta.items()),
                            batch, 0.5, steps, explicit) for explicit in (True, False))
    for k, a, e in zip(theta, g1, g2):
        assert a.shape == theta[k].shape and torch.allclose(a, e, rtol=1e-9, atol=1e-11), k
    assert torch.allclose(pre1, pre2, rtol=1e-12) and torch.allclose(post1, post2, rtol=1e-9)
    assert float(g1[2].abs().max()) > 0 and not torch.allclose(pre1, post1)  # a real gradient, a real step


def test_explicit_test_time_adaptation_equals_autograd():
    """objective_trajectory (validation's and evaluation's test-time steps, here with the reference's schedule) by
    explicit per-task gradients and by autograd: the same parameters and costs at every step."""
    from maml_lab.core.rl.objective import objective_trajectory

    env = NavigationFamily(horizon=30, goal_tolerance=0.05)
    policy = GaussianMLPPolicy()
    gen = torch.Generator().manual_seed(6)
    theta = policy.init_params(gen, dtype=D)
    batch = env.sample(3, 4, 4, gen, dtype=D)
    runs = [list(objective_trajectory(policy, batch, theta, 3, [0.5, 0.25], explicit=explicit))
            for explicit in (True, False)]
    assert len(runs[0]) == len(runs[1]) == 4
    for (p1, c1), (p2, c2) in zip(*runs):
        assert torch.allclose(c1, c2, rtol=1e-9)
        for k in theta:
            assert p1[k].shape == p2[k].shape and torch.allclose(p1[k], p2[k], rtol=1e-9, atol=1e-11), k
    assert not torch.allclose(runs[0][0][1], runs[0][-1][1])  # the steps changed the policy's cost
