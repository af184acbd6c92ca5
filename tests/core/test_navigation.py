"""2-D navigation: environment dynamics, the REINFORCE estimator and MAML's meta-gradient against independent
float64 computations (per-trajectory and per-environment loops), reproducibility, and a short training run."""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import pytest
import torch

from maml_lab.core.algorithms.adaptation import expand_params
from maml_lab.core.algorithms.config import AlgorithmConfig, make_algorithm
from maml_lab.core.rl.objective import objective_curve
from maml_lab.core.rl.policy import GaussianMLPPolicy
from maml_lab.core.tasks.navigation import QUERY_CALL, NavigationFamily, NavigationTasks
from maml_lab.core.tasks.registry import task_family
from maml_lab.core.training.config import ExperimentConfig
from maml_lab.core.training.trainer import Trainer

D = torch.float64


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def constant_policy(bias, log_std=-30.0):
    """A policy whose mean is `bias` everywhere (zero weights) and whose noise is negligible."""
    policy = GaussianMLPPolicy((2, 3, 2))
    params = policy.init_params(torch.Generator().manual_seed(0), dtype=D)
    params = OrderedDict((k, torch.zeros_like(v)) for k, v in params.items())
    params["2.bias"] = torch.tensor(bias, dtype=D)
    params["log_std"] = torch.full((2,), log_std, dtype=D)
    return policy, params


def test_registered_with_its_conventions():
    kind = task_family("navigation")
    assert kind is NavigationTasks and kind.label == "2-D navigation" and kind.metric == "return"
    config = ExperimentConfig(task="navigation")
    assert (config.meta_batch_size, config.shots, config.queries) == (40, 20, 20)  # maml_trpo_point.py
    assert (config.algorithms[0].inner_lr, config.algorithms[0].outer_optimizer) == (0.5, "trpo")  # maml_trpo_point.py
    model = kind.model(config, kind.build(config))
    assert model.sizes == (2, 100, 100, 2) and "log_std" in model.init_params(torch.Generator().manual_seed(0))


def test_the_policy_takes_the_experiment_s_hidden_widths_and_activation():
    """The paper's 100-100 ReLU policy by default (sinusoids keep 40-40); the config's widths and activation (the
    panel's Model box, CLI --hidden / --activation) build the policy otherwise; an unknown activation is refused."""
    kind = task_family("navigation")
    assert ExperimentConfig(task="navigation").hidden == [100, 100]
    assert ExperimentConfig(task="sinusoid").hidden == [40, 40]
    assert ExperimentConfig.from_dict({"task": "navigation"}).hidden == [100, 100]  # a TOML without widths
    config = ExperimentConfig(task="navigation", hidden=[16, 8], activation="tanh")
    model = kind.model(config, kind.build(config))
    assert model.sizes == (2, 16, 8, 2) and model.activation == "tanh"
    assert model.spec()["sizes"] == [2, 16, 8, 2]  # what an export records as its `model`
    params = model.init_params(torch.Generator().manual_seed(0))
    assert tuple(params["2.weight"].shape) == (8, 16) and tuple(params["4.weight"].shape) == (2, 8)
    net = model.torch_module()  # plain PyTorch from the spec
    net.load_state_dict({k: v for k, v in params.items() if k != "log_std"})
    obs = torch.randn(1, 5, 2)
    assert torch.allclose(net(obs), model.forward(params, obs), atol=1e-6)
    config = ExperimentConfig(task="navigation", hidden=[6], activation="silu")
    assert kind.model(config, kind.build(config)).sizes == (2, 6, 2)
    with pytest.raises(ValueError, match="activation"):
        ExperimentConfig(task="navigation", activation="softsign")


def test_step_clips_the_velocity_and_rewards_minus_the_distance():
    env = NavigationFamily()
    pos = torch.tensor([[0.0, 0.0], [0.3, -0.2]], dtype=D)
    action = torch.tensor([[5.0, -0.3], [0.5, -2.0]], dtype=D)  # normalized: velocity 0.1 * a, clipped to 0.1
    goal = torch.tensor([[0.2, 0.1], [0.35, -0.3]], dtype=D)
    new, reward, done = env.step(pos, action, goal)
    assert torch.allclose(new, torch.tensor([[0.1, -0.03], [0.35, -0.3]], dtype=D))
    assert torch.allclose(reward, torch.tensor([-math.hypot(0.1, 0.13), 0.0], dtype=D))
    assert done.tolist() == [False, True]


def test_rollout_masks_the_steps_after_the_goal_is_reached():
    env = NavigationFamily(horizon=5)
    policy, params = constant_policy([1.0, 0.0])  # velocity (0.1, 0) every step
    goals = torch.tensor([[0.2, 0.005], [0.25, 0.0]], dtype=D)
    noise = torch.zeros(2, 1, 5, 2, dtype=D)
    traj = env.rollout(policy, expand_params(params, 2), goals, noise)
    # goal 1 is reached (|dx| = 0, |dy| = 0.005 < 0.01) at the second step; goal 2 never (0.25 is between steps)
    assert traj.mask[0, 0].tolist() == [1, 1, 0, 0, 0] and traj.mask[1, 0].tolist() == [1] * 5
    expect0 = [-math.hypot(0.1, 0.005), -0.005, 0, 0, 0]
    expect1 = [-abs(0.1 * (t + 1) - 0.25) for t in range(5)]
    assert np.allclose(traj.rewards[0, 0].numpy(), expect0) and np.allclose(traj.rewards[1, 0].numpy(), expect1)
    assert np.allclose(traj.obs[1, 0, :, 0].numpy(), [0.0, 0.1, 0.2, 0.3, 0.4])
    assert np.allclose(traj.returns[:, 0].numpy(), [sum(expect0), sum(expect1)])


def test_oracle_heads_straight_for_the_goal():
    env = NavigationFamily()
    returns = env.oracle_returns(torch.tensor([[0.25, 0.0], [0.0, 0.0], [-0.3, 0.15]]))
    # (0.25, 0): positions 0.1, 0.2, 0.25 -> distances 0.15, 0.05, 0; (-0.3, 0.15): x moves 0.1 a step, y reaches
    # 0.15 after two steps
    third = -(math.hypot(0.2, 0.05) + 0.1 + 0.0)
    assert np.allclose(returns.numpy(), [-0.2, 0.0, third])


# -- the estimator against an independent computation -----------------------------------------------------
def reference_surrogate(module: torch.nn.Sequential, log_std, paths, discount, reg=1e-5):
    """rllab's VPG surrogate for one task, path by path, in numpy + torch.distributions (float64)."""
    feats, rets, logps = [], [], []
    for obs, act, rew in paths:
        n = len(rew)
        r = np.zeros(n)
        running = 0.0
        for t in reversed(range(n)):
            running = rew[t] + discount * running
            r[t] = running
        o = np.clip(obs, -10, 10)
        al = np.arange(n).reshape(-1, 1) / 100.0
        feats.append(np.concatenate([o, o ** 2, al, al ** 2, al ** 3, np.ones((n, 1))], axis=1))
        rets.append(r)
        dist = torch.distributions.Normal(module(torch.as_tensor(obs)), torch.exp(log_std))
        logps.append(dist.log_prob(torch.as_tensor(act)).sum(-1))
    featmat, returns = np.concatenate(feats), np.concatenate(rets)
    coeffs = np.linalg.lstsq(featmat.T @ featmat + reg * np.eye(featmat.shape[1]), featmat.T @ returns, rcond=None)[0]
    adv = returns - featmat @ coeffs
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    return -(torch.cat(logps) * torch.as_tensor(adv)).mean()


def valid_paths(traj, b):
    paths = []
    for n in range(traj.mask.shape[1]):
        length = int(traj.mask[b, n].sum())
        paths.append((traj.obs[b, n, :length].numpy(), traj.actions[b, n, :length].numpy(),
                      traj.rewards[b, n, :length].numpy()))
    return paths


def module_from(policy, params):
    module = policy.torch_module().double()
    module.load_state_dict({k: v for k, v in params.items() if k != "log_std"})
    return module


def short_family():
    # a wide tolerance and goals near the start, so that some episodes end early and the mask matters
    return NavigationFamily(goal_range=(-0.15, 0.15), horizon=12, goal_tolerance=0.06)


def test_policy_gradient_matches_a_per_trajectory_computation():
    env = short_family()
    policy = GaussianMLPPolicy((2, 8, 8, 2))
    gen = torch.Generator().manual_seed(3)
    theta = policy.init_params(gen, dtype=D)
    theta["log_std"] = torch.tensor([-0.7, -0.4], dtype=D)
    batch = env.sample(3, 4, 4, gen, dtype=D)
    fast = OrderedDict((k, v.clone().requires_grad_(True)) for k, v in expand_params(theta, 3).items())
    traj = batch.trajectories(policy, fast, 0, 4)
    assert 0 < float(traj.mask.mean()) < 1  # some episodes end early
    surr, cost = batch.objective(policy, fast, traj)
    grads = torch.autograd.grad(surr.sum(), list(fast.values()))
    for b in range(3):
        module = module_from(policy, theta)
        log_std = theta["log_std"].clone().requires_grad_(True)
        ref = reference_surrogate(module, log_std, valid_paths(traj, b), env.discount)
        ref_grads = torch.autograd.grad(ref, [*module.parameters(), log_std])
        assert torch.allclose(surr[b], ref, atol=1e-10)
        for g, r in zip(grads, ref_grads):
            assert torch.allclose(g[b], r, atol=1e-9, rtol=1e-7)
        returns = [sum(p[2]) for p in valid_paths(traj, b)]
        assert math.isclose(float(cost[b]), -float(np.mean(returns)), rel_tol=1e-12)


def reference_rollout(env, layers, log_std, goal, noise):
    """One environment at a time, one step at a time, with plain tensors (no vectorization)."""
    paths = []
    for n in range(noise.shape[0]):
        pos, obs, acts, rews = torch.zeros(2, dtype=D), [], [], []
        for t in range(env.horizon):
            h = pos
            for i, (w, b) in enumerate(layers):
                h = torch.nn.functional.linear(h, w, b)
                h = torch.relu(h) if i < len(layers) - 1 else h
            a = h + torch.exp(log_std) * noise[n, t]
            new = pos + torch.clamp(0.1 * a, -0.1, 0.1)
            obs.append(pos.numpy().copy())
            acts.append(a.numpy().copy())
            rews.append(-float(torch.linalg.vector_norm(new - goal)))
            pos = new
            if bool(((new - goal).abs() < env.goal_tolerance).all()):
                break
        paths.append((np.array(obs), np.array(acts), np.array(rews)))
    return paths


@pytest.mark.parametrize("name", ["maml", "fomaml"])
def test_maml_meta_gradient_matches_a_per_task_loop(name):
    env = short_family()
    policy = GaussianMLPPolicy((2, 6, 6, 2))
    gen = torch.Generator().manual_seed(11)
    theta = policy.init_params(gen, dtype=D)
    theta["log_std"] = torch.tensor([-0.5, -0.8], dtype=D)
    batch = env.sample(2, 3, 3, gen, dtype=D)
    config = AlgorithmConfig.defaults(name, task="navigation", inner_lr=0.3)
    algo = make_algorithm(policy, "policy_gradient", config)
    leaves = OrderedDict((k, v.clone().requires_grad_(True)) for k, v in theta.items())
    grads, post_cost, res, _ = algo.meta_gradient(leaves, batch, first_order=(name == "fomaml"))
    names = list(theta)
    expect = [torch.zeros_like(v) for v in theta.values()]
    for b in range(2):
        th = [theta[k].clone().requires_grad_(True) for k in names]
        ids = batch.task_ids[b:b + 1]

        def surrogate(values, call, num, b=b, ids=ids):
            layers = [(values[i], values[i + 1]) for i in range(0, len(values) - 1, 2)]
            noise = env.noise(batch.seed, ids, call, num, D)[0]
            paths = reference_rollout(env, [(w.detach(), c.detach()) for w, c in layers], values[-1].detach(),
                                      batch.goals[b], noise)
            module = policy.torch_module().double()
            params = dict(zip(names, values))

            def mean_net(x):  # nn.Sequential evaluated at the given (differentiable) tensors
                return torch.func.functional_call(module, {k: v for k, v in params.items() if k != "log_std"}, (x,))

            return reference_surrogate(mean_net, params["log_std"], paths, env.discount), paths

        pre, _ = surrogate(th, 0, 3)
        inner = torch.autograd.grad(pre, th, create_graph=(name == "maml"))
        if name == "fomaml":
            inner = [g.detach() for g in inner]
        phi = [t - 0.3 * g for t, g in zip(th, inner)]
        post, paths = surrogate(phi, QUERY_CALL, 3)
        for e, g in zip(expect, torch.autograd.grad(post, th)):
            e += g / 2
    for k, g, e in zip(names, grads, expect):
        assert torch.allclose(g, e, atol=1e-9, rtol=1e-7), k
    assert res.support_losses[0].shape == (2,) and math.isfinite(float(post_cost))


# -- reproducibility and training --------------------------------------------------------------------------
def tiny_config(**over):
    data = {"task": "navigation", "iterations": 4, "meta_batch_size": 4, "shots": 4, "queries": 4, "seed": 5,
            "val_every": 0, "task_options": {"horizon": 15}, "algorithms": {"maml": {}, "pretrained": {}}}
    data.update(over)
    return ExperimentConfig.from_dict(data)


def quiet(trainer):
    """Without the trainer's cost meter (its probes take extra meta-steps: not what these tests measure)."""
    if getattr(trainer, "cost", None) is not None:
        trainer.cost.enabled = False
    return trainer


def test_a_seeded_run_is_reproducible_and_a_task_samples_alone_as_in_its_batch():
    runs = []
    for _ in range(2):
        trainer = quiet(Trainer(tiny_config(), model=GaussianMLPPolicy((2, 16, 16, 2)), record_every=0))
        metrics = [trainer.step() for _ in range(2)]
        runs.append((metrics, trainer.snapshot()))
    assert runs[0][0] == runs[1][0]
    for name in runs[0][1]:
        for k, v in runs[0][1][name].items():
            assert torch.equal(v, runs[1][1][name][k])
    env = NavigationFamily(horizon=15)
    policy = GaussianMLPPolicy()
    theta = expand_params(policy.init_params(torch.Generator().manual_seed(0)), 3)
    batch = env.sample(3, 4, 4, torch.Generator().manual_seed(1))
    whole = batch.trajectories(policy, theta, 0, 4)
    one = batch.task(2).trajectories(policy, expand_params(policy.init_params(torch.Generator().manual_seed(0)), 1),
                                     0, 4)
    assert torch.equal(whole.actions[2:3], one.actions)


def test_family_refuses_algorithms_that_cannot_train_on_sampled_tasks():
    with pytest.raises(ValueError, match="sampled"):
        ExperimentConfig.from_dict({"task": "navigation", "algorithms": {"metasgd": {}}})
    with pytest.raises(ValueError, match="horizon"):
        ExperimentConfig.from_dict({"task": "navigation", "task_options": {"horizon": 0}})


def test_short_meta_training_improves_the_post_update_return():
    torch.manual_seed(0)
    config = tiny_config(iterations=25, meta_batch_size=10, shots=10, queries=10,
                         algorithms={"maml": {"meta_lr": 0.01}})
    trainer = quiet(Trainer(config, model=GaussianMLPPolicy((2, 32, 32, 2)), record_every=0))
    heldout = trainer.family.sample(20, 10, 10, torch.Generator().manual_seed(99))
    lr = config.algorithms[0].inner_lr
    before = objective_curve(trainer.model, heldout, trainer.runs["maml"].params, 1, lr)
    trainer.run()
    after = objective_curve(trainer.model, heldout, trainer.runs["maml"].params, 1, lr)
    assert trainer.state == "finished"
    assert after[1].mean() < 0.8 * before[1].mean()  # costs: minus the returns


def test_gymnasium_adapter_follows_the_engine():
    gym = pytest.importorskip("gymnasium")
    from gymnasium.utils.env_checker import check_env

    from maml_lab.core.tasks.navigation_gym import NavigationEnv

    env = NavigationEnv(goal=(0.2, 0.005))
    check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=0)
    assert np.allclose(obs, 0) and np.allclose(info["goal"], [0.2, 0.005])
    obs, reward, terminated, truncated, _ = env.step(np.array([1.0, 0.0]))
    assert np.allclose(obs, [0.1, 0.0]) and math.isclose(reward, -math.hypot(0.1, 0.005)) and not terminated
    obs, reward, terminated, truncated, _ = env.step(np.array([3.0, 0.0]))  # clipped to 0.1
    assert np.allclose(obs, [0.2, 0.0]) and math.isclose(reward, -0.005) and terminated and not truncated
    assert isinstance(env, gym.Env)


def test_gymnasium_is_the_package_s_gym_extra(monkeypatch):
    """pyproject.toml declares the optional dependency (extra `gym`), not a main dependency; the installed version,
    where there is one, satisfies it; without gymnasium the adapter says what to install."""
    import importlib.metadata
    from pathlib import Path

    import tomllib

    from maml_lab.core.tasks import navigation_gym

    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    (requirement,) = project["optional-dependencies"]["gym"]
    name, _, minimum = requirement.partition(">=")
    assert name == "gymnasium" and minimum
    assert not any(d.startswith("gymnasium") for d in project["dependencies"])
    try:
        installed = importlib.metadata.version("gymnasium")
    except importlib.metadata.PackageNotFoundError:
        installed = None
    if installed is not None:
        def key(version):
            return tuple(int(part) for part in version.split(".")[:2])

        assert key(installed) >= key(minimum)
    monkeypatch.setattr(navigation_gym, "gym", None)
    with pytest.raises(ImportError, match=r"maml-lab\[gym\]"):
        navigation_gym.NavigationEnv()


def test_goal_paths_start_at_the_origin_and_score_the_drawn_trajectories():
    from maml_lab.core.tasks.navigation import goal_paths

    env = NavigationFamily(horizon=8)
    policy = GaussianMLPPolicy((2, 8, 2))
    theta = policy.init_params(torch.Generator().manual_seed(2), dtype=D)
    out = goal_paths(policy, theta, (0.3, -0.1), 2, 0.1, trajectories=3, seed=4, family=env)
    assert len(out.paths) == 3 and all(len(p) == 3 for p in out.paths)
    for k in range(3):
        returns = []
        for path in out.paths[k]:
            assert np.allclose(path[0], 0) and path.shape[1] == 2 and 2 <= len(path) <= 9
            steps = np.diff(path, axis=0)
            assert np.all(np.abs(steps) <= 0.1 + 1e-12)  # the speed bound
            returns.append(-np.linalg.norm(path[1:] - np.array([0.3, -0.1]), axis=1).sum())
        assert math.isclose(out.returns[k], float(np.mean(returns)), rel_tol=1e-9)



def test_every_test_time_route_takes_the_trained_step_then_half_of_it():
    """eval's protocols, the Adaptation view (per_task_curve) and the Arena (goal_paths) fine-tune by one schedule:
    the trained step, then half of it (a repeated trained step overshoots on normalized advantages)."""
    from maml_lab.core.analysis.card import EvaluationCard
    from maml_lab.core.analysis.evaluation import per_task_curve
    from maml_lab.core.rl.objective import test_schedule, test_schedule_text
    from maml_lab.core.tasks.navigation import goal_paths

    assert test_schedule(0.5) == [0.5, 0.25]
    assert test_schedule_text(0.5) == "SGD 0.5 then 0.25"  # eval's card, both protocols
    env = NavigationFamily(horizon=10)
    policy = GaussianMLPPolicy((2, 8, 2))
    theta = policy.init_params(torch.Generator().manual_seed(3), dtype=D)
    batch = env.batch(torch.tensor([[0.3, -0.2], [-0.4, 0.1]], dtype=D), 4, 4, seed=5, dtype=D)
    halved = objective_curve(policy, batch, theta, 3, [0.4, 0.2])
    assert np.allclose(per_task_curve(policy, env.loss, theta, batch, 3, 0.4)[0], halved)
    assert not np.allclose(objective_curve(policy, batch, theta, 3, 0.4), halved)  # the schedule matters here
    paths = goal_paths(policy, theta, (0.3, -0.2), 3, 0.4, trajectories=4, seed=5, family=env)
    single = env.batch(torch.tensor([[0.3, -0.2]], dtype=D), 4, 4, seed=5, dtype=D)
    assert np.allclose(paths.returns, -objective_curve(policy, single, theta, 3, [0.4, 0.2])[:, 0])
    card = EvaluationCard.build("navigation", 40, [20], [0, 1, 2, 3], 0.5, loss=env.loss, model=policy)
    assert "0.5 then 0.25" in card.text() and "40 held-out goals, 20 trajectories per step" in card.text()
    assert "query" not in card.text()

# -- validation schedule and the export: the run's best by validation ----------------------------------------------
def test_validation_every_ten_iterations_is_the_navigation_family_s_default():
    assert ExperimentConfig(task="navigation").val_every == 10
    assert ExperimentConfig(task="sinusoid").val_every == 500  # the other families keep the global default
    assert ExperimentConfig(task="navigation", val_every=3).val_every == 3
    assert ExperimentConfig.from_dict(ExperimentConfig(task="navigation").to_dict()).val_every == 10


def scripted_validation(monkeypatch, post_costs):
    """Validation whose post-adaptation cost follows `post_costs` (one per call), so which iteration is best is
    known in advance."""
    import maml_lab.core.training.trainer as trainer_module

    costs = iter(post_costs)

    def curve(model, loss, params, batch, steps, adaptation):
        post = next(costs)
        return np.array([[post + 10.0] * 3, [post] * 3]), None

    monkeypatch.setattr(trainer_module, "per_task_curve", curve)


@pytest.mark.parametrize("post_costs, chosen, iteration", [
    ([30.0, 10.0, 20.0], "best", 2),  # validation return -10 at iteration 2 beats the last's -20
    ([30.0, 20.0, 10.0], "last", 3),  # the last is the best: the two agree
    ([30.0, 10.0, 10.0], "last", 3),  # a tie goes to the last
])
def test_the_export_is_the_best_validated_policy_or_the_last_when_they_agree(tmp_path, monkeypatch, post_costs,
                                                                             chosen, iteration):
    from maml_lab.core.export import load_initialization
    from maml_lab.core.training.checkpoint import load_checkpoint, save_checkpoint
    from maml_lab.core.training.trainer import export_choice_text

    scripted_validation(monkeypatch, post_costs)
    config = tiny_config(iterations=3, val_every=1, algorithms={"maml": {}})
    trainer = quiet(Trainer(config, model=GaussianMLPPolicy((2, 8, 8, 2)), record_every=0))
    seen = {}
    for it in range(1, 4):
        trainer.step()
        trainer._scheduled_validation()
        seen[it] = {k: v.detach().clone() for k, v in trainer.runs["maml"].params.items()}
    choice = trainer.export_choice("maml")
    assert (choice["chosen"], choice["iteration"], choice["last_iteration"]) == (chosen, iteration, 3)
    assert choice["val_post_loss"] == min(post_costs) and choice["last_val_post_loss"] == post_costs[-1]
    out = tmp_path / "nav.safetensors"
    trainer.export("maml", out)
    params, meta, _model = load_initialization(out)
    for k, v in seen[iteration].items():
        assert torch.equal(params[k], v), k
    assert meta["export"]["chosen"] == chosen and meta["iterations"] == iteration
    assert meta["metrics"]["val_post_loss"] == min(post_costs)
    text = export_choice_text(choice, "navigation")
    assert ("best by validation: iteration 2 of 3" in text) == (chosen == "best")
    assert f"average return after adaptation {-min(post_costs):.2f}" in text
    # a resumed run keeps its best
    save_checkpoint(trainer, tmp_path / "ck.safetensors")
    again = quiet(Trainer(config, model=GaussianMLPPolicy((2, 8, 8, 2)), record_every=0))
    load_checkpoint(again, tmp_path / "ck.safetensors")
    assert again.export_choice("maml") == choice
    for k, v in trainer.runs["maml"].best.params.items():
        assert torch.equal(again.runs["maml"].best.params[k], v)


def test_families_without_export_best_export_the_last_iteration(monkeypatch):
    scripted_validation(monkeypatch, [10.0, 20.0])
    config = ExperimentConfig(task="sinusoid", iterations=2, val_every=1, meta_batch_size=2)
    trainer = Trainer(config, record_every=0)
    trainer.cost.enabled = False
    for _ in range(2):
        trainer.step()
        trainer._scheduled_validation()
    assert trainer.export_choice("maml") is None and trainer.runs["maml"].best is None
