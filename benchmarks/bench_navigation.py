"""Time one MAML meta-step on 2-D navigation (20 goals x 20 trajectories x 100 steps, one inner policy-gradient
step, second order) in the engine, vectorized over goals x trajectories, against the same meta-step written as a
per-task, per-environment loop in the style of the public MAML-RL ports (one environment stepped at a time, one
policy call per observation, each task's surrogate and inner step by autograd), and print the ratio.

Both compute the same meta-gradient from the same action noise; each round prints their largest relative
difference. Engine and loop alternate round by round so machine noise hits both alike.

    python benchmarks/bench_navigation.py [--rounds 3] [--threads 1] [--goals 20] [--trajectories 20]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import OrderedDict

import numpy as np
import torch

from maml_lab.core.algorithms.config import AlgorithmConfig, make_algorithm
from maml_lab.core.rl.policy import GaussianMLPPolicy
from maml_lab.core.tasks.navigation import QUERY_CALL, NavigationFamily


def loop_rollout(env, weights, log_std, goal, noise):
    """Environment after environment, step after step, one policy call per observation (no autograd)."""
    paths = []
    with torch.no_grad():
        for n in range(noise.shape[0]):
            pos, obs, acts, rews = torch.zeros(2), [], [], []
            for t in range(env.horizon):
                h = pos
                for i in range(0, len(weights), 2):
                    h = torch.nn.functional.linear(h, weights[i], weights[i + 1])
                    if i + 2 < len(weights):
                        h = torch.relu(h)
                a = h + log_std.exp() * noise[n, t]
                new, reward, done = env.step(pos, a, goal)
                obs.append(pos)
                acts.append(a)
                rews.append(float(reward))
                pos = new
                if bool(done):
                    break
            paths.append((torch.stack(obs), torch.stack(acts), rews))
    return paths


def loop_surrogate(env, values, paths):
    """rllab's VPG surrogate of one task, path by path (numpy baseline fit, torch log-probabilities)."""
    feats, rets, logps = [], [], []
    for obs, act, rew in paths:
        n = len(rew)
        r, running = np.zeros(n), 0.0
        for t in reversed(range(n)):
            running = rew[t] + env.discount * running
            r[t] = running
        o = np.clip(obs.numpy().astype(np.float64), -10, 10)
        al = np.arange(n).reshape(-1, 1) / 100.0
        feats.append(np.concatenate([o, o ** 2, al, al ** 2, al ** 3, np.ones((n, 1))], axis=1))
        rets.append(r)
        h = obs
        for i in range(0, len(values) - 1, 2):
            h = torch.nn.functional.linear(h, values[i], values[i + 1])
            if i + 3 < len(values):
                h = torch.relu(h)
        logps.append(torch.distributions.Normal(h, values[-1].exp()).log_prob(act).sum(-1))
    f, y = np.concatenate(feats), np.concatenate(rets)
    coeffs = np.linalg.lstsq(f.T @ f + env.baseline_reg * np.eye(f.shape[1]), f.T @ y, rcond=None)[0]
    adv = y - f @ coeffs
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    return -(torch.cat(logps) * torch.as_tensor(adv, dtype=torch.float32)).mean()


def loop_meta_gradient(env, batch, theta, lr):
    names = list(theta)
    total = [torch.zeros_like(v) for v in theta.values()]
    for b in range(batch.num_tasks):
        th = [theta[k].detach().clone().requires_grad_(True) for k in names]
        ids, goal = batch.task_ids[b:b + 1], batch.goals[b]
        pre_paths = loop_rollout(env, [v.detach() for v in th[:-1]], th[-1].detach(), goal,
                                 env.noise(batch.seed, ids, 0, batch.shots)[0])
        inner = torch.autograd.grad(loop_surrogate(env, th, pre_paths), th, create_graph=True)
        phi = [t - lr * g for t, g in zip(th, inner)]
        post_paths = loop_rollout(env, [v.detach() for v in phi[:-1]], phi[-1].detach(), goal,
                                  env.noise(batch.seed, ids, QUERY_CALL, batch.queries)[0])
        for acc, g in zip(total, torch.autograd.grad(loop_surrogate(env, phi, post_paths), th)):
            acc += g / batch.num_tasks
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--goals", type=int, default=20)
    parser.add_argument("--trajectories", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    env = NavigationFamily()
    policy = GaussianMLPPolicy()
    gen = torch.Generator().manual_seed(0)
    theta = policy.init_params(gen)
    algo = make_algorithm(policy, "policy_gradient", AlgorithmConfig.defaults("maml", task="navigation"))
    engine_s, loop_s = [], []
    for r in range(args.rounds):
        batch = env.sample(args.goals, args.trajectories, args.trajectories, gen)
        leaves = OrderedDict((k, v.clone().requires_grad_(True)) for k, v in theta.items())
        t0 = time.perf_counter()
        grads = algo.meta_gradient(leaves, batch, first_order=False)[0]
        engine_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        expect = loop_meta_gradient(env, batch, theta, algo.config.inner_lr)
        loop_s.append(time.perf_counter() - t0)
        worst = max(float((g - e).abs().max() / (e.abs().max() + 1e-12)) for g, e in zip(grads, expect))
        print(f"round {r + 1}: engine {engine_s[-1]:.3f} s, per-task per-environment loop {loop_s[-1]:.3f} s, "
              f"max relative difference of the meta-gradients {worst:.1e}")
    e, lp = statistics.median(engine_s), statistics.median(loop_s)
    print(f"one MAML meta-step, {args.goals} goals x {args.trajectories} trajectories x {env.horizon} steps, "
          f"{args.threads} thread(s): engine {e:.3f} s, loop {lp:.3f} s, speed-up {lp / e:.1f}x")


if __name__ == "__main__":
    main()
