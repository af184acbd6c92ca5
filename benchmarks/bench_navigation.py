"""Time one MAML meta-iteration on 2-D navigation (20 goals x 20 trajectories x 100 steps, one inner policy-gradient
step, second order), in one process, three ways and against the arithmetic lower bound, twice: the meta-gradient
(what the Adam outer step steps on) and the whole iteration with the default outer step, TRPO (sampling, the
gradient through the inner step, 10 conjugate-gradient iterations on the KL's Hessian-vector products, the line
search):

* the engine: the rollout loop over time steps (tasks x trajectories at once), the explicit policy gradient,
  Hessian-vector products and TRPO pieces on the rollouts' activations (core/rl/policy_grad.py,
  core/rl/explicit_trpo.py);
* the engine's autograd route (what it took before the explicit paths, and still takes for other policies):
  log-probabilities recomputed and differentiated through the inner step by double-backward graphs; for TRPO the
  KL's Gauss-Newton products by autograd (rl/objective.py's kl_hessian_product);
* a per-task, per-environment loop in the style of the public MAML-RL ports (one environment stepped at a time,
  one policy call per observation, each task's surrogate, inner step and KL by autograd; TRPO's products by double
  backward of the KL through the inner step, as pytorch-maml-rl's MetaLearner);
* the lower bound: the policy's multiply-adds over every step of the meta-iteration (the forward pass of both
  samplings, the backward pass of both surrogates, the Hessian-vector product's R-forward and R-backward passes;
  for TRPO also each conjugate-gradient product and each line-search evaluation) divided by this CPU's matmul
  throughput at those shapes, measured here (a rollout step's matmuls; the surrogate's [rows, 100] x [100, 100]
  and [100, rows] x [rows, 100], on all goals' rows and on one goal's).

It also times the pretrained baseline's Adam step (a sampling at theta, the surrogate's gradient, a sampling after
the test-time step) by the engine's explicit per-task gradients and by autograd, against its bound. The training
default is 40 goals (`--goals 40`); the issue's target is stated for 20.

The meta-gradients are the same from the same action noise; each round prints their largest relative difference,
and for TRPO the relative difference of the step (ten conjugate-gradient iterations at damping 1e-2 and the line
search amplify float32 rounding, so these differ more; tests/core/test_trpo.py checks the pieces in float64). The
ways alternate round by round so machine noise hits them alike; the summary takes each one's fastest round (the
least disturbed by other work on a shared machine). The CPU model is printed (lscpu).

    python benchmarks/bench_navigation.py [--rounds 3] [--threads 1] [--goals 20] [--trajectories 20] [--no-loop]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time
from collections import OrderedDict

import numpy as np
import torch

from maml_lab.core.algorithms.config import AlgorithmConfig, make_algorithm
from maml_lab.core.rl.objective import pretrained_gradient, trpo_objective
from maml_lab.core.rl.policy import GaussianMLPPolicy
from maml_lab.core.rl.policy_grad import PolicyGradient
from maml_lab.core.rl.trpo import TRPOSettings, gaussian_kl, kl_hvp, trpo_step, unflatten
from maml_lab.core.tasks.navigation import QUERY_CALL, NavigationFamily
from maml_lab.lab.memory import keep_freed_memory


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


def loop_advantages(env, paths) -> torch.Tensor:
    """rllab's advantages of one task, path by path: returns-to-go, a numpy linear-feature baseline, centred."""
    feats, rets = [], []
    for obs, _, rew in paths:
        n = len(rew)
        r, running = np.zeros(n), 0.0
        for t in reversed(range(n)):
            running = rew[t] + env.discount * running
            r[t] = running
        o = np.clip(obs.numpy().astype(np.float64), -10, 10)
        al = np.arange(n).reshape(-1, 1) / 100.0
        feats.append(np.concatenate([o, o ** 2, al, al ** 2, al ** 3, np.ones((n, 1))], axis=1))
        rets.append(r)
    f, y = np.concatenate(feats), np.concatenate(rets)
    coeffs = np.linalg.lstsq(f.T @ f + env.baseline_reg * np.eye(f.shape[1]), f.T @ y, rcond=None)[0]
    adv = y - f @ coeffs
    return torch.as_tensor((adv - adv.mean()) / (adv.std() + 1e-8), dtype=torch.float32)


def loop_means(values, paths) -> list[torch.Tensor]:
    """The policy's action means on each path's observations (one call per path)."""
    out = []
    for obs, _, _ in paths:
        h = obs
        for i in range(0, len(values) - 1, 2):
            h = torch.nn.functional.linear(h, values[i], values[i + 1])
            if i + 3 < len(values):
                h = torch.relu(h)
        out.append(h)
    return out


def loop_log_probs(values, paths) -> torch.Tensor:
    return torch.cat([torch.distributions.Normal(mean, values[-1].exp()).log_prob(act).sum(-1)
                      for mean, (_, act, _) in zip(loop_means(values, paths), paths)])


def loop_surrogate(env, values, paths):
    """rllab's VPG surrogate of one task, path by path (numpy baseline fit, torch log-probabilities)."""
    return -(loop_log_probs(values, paths) * loop_advantages(env, paths)).mean()


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


def loop_trpo_step(env, batch, leaves, lr, settings):
    """MAML's TRPO step in the public ports' style (e.g. pytorch-maml-rl's MetaLearner): per-environment rollouts,
    then per task and by autograd the inner step, the ratio surrogate and the KL through it; the KL's Hessian-vector
    products by double backward of the KL of the first goals (the same share as the engine's)."""
    import math

    th0 = [v.detach() for v in leaves]
    tasks = []
    for b in range(batch.num_tasks):
        ids, goal = batch.task_ids[b:b + 1], batch.goals[b]
        pre = loop_rollout(env, th0[:-1], th0[-1], goal, env.noise(batch.seed, ids, 0, batch.shots)[0])
        th = [v.clone().requires_grad_(True) for v in th0]
        phi = [(t - lr * g).detach() for t, g in zip(th, torch.autograd.grad(loop_surrogate(env, th, pre), th))]
        post = loop_rollout(env, phi[:-1], phi[-1], goal, env.noise(batch.seed, ids, QUERY_CALL, batch.queries)[0])
        tasks.append((pre, post, loop_advantages(env, post), torch.cat(loop_means(phi, post)), phi[-1],
                      loop_log_probs(phi, post)))
    total = sum(len(path[2]) for task in tasks for path in task[1])  # post-update steps of every goal

    def kl_and_surrogate(tensors, differentiable, which):
        surr, kl = 0.0, 0.0
        with torch.set_grad_enabled(True):
            values = tensors if differentiable else [t.detach().requires_grad_(True) for t in tensors]
            for b in which:
                pre, post, adv, old_mean, old_log_std, old_logp = tasks[b]
                inner = torch.autograd.grad(loop_surrogate(env, values, pre), values, create_graph=differentiable)
                phi = [v - lr * g for v, g in zip(values, inner)]
                with torch.set_grad_enabled(differentiable):
                    mean = torch.cat(loop_means(phi, post))
                    ratio = torch.exp(loop_log_probs(phi, post) - old_logp)
                    surr = surr - (ratio * adv).mean() / len(which)
                    kl = kl + gaussian_kl(old_mean, old_log_std, mean, phi[-1].expand_as(mean)).sum()
        return surr, kl

    def evaluate(tensors, differentiable):
        surr, kl = kl_and_surrogate(tensors, differentiable, range(len(tasks)))
        return surr, kl / total

    n = max(1, math.ceil(settings.hvp_fraction * len(tasks)))
    rows = sum(len(path[2]) for task in tasks[:n] for path in task[1])
    with torch.enable_grad():
        hvp = kl_hvp(kl_and_surrogate(leaves, True, range(n))[1] / rows, leaves)
    return trpo_step(leaves, evaluate, settings, hvp)


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        if "Model name" in fields:
            extra = [f"{k.lower()} {fields[k]}" for k in ("CPU family", "Model") if k in fields]
            extra += [f"{k} {fields[k].split(' (')[0]}" for k in ("L2 cache", "L3 cache") if k in fields]
            return f"{fields['Model name']} ({', '.join(extra)})"
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown CPU"


def best_time(fn, repeat: int = 7) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return min(times)


def lower_bound(policy, goals: int, trajectories: int, horizon: int, dtype=torch.float32) -> dict:
    """Multiply-adds of one second-order meta-step with one inner step, and the time they take at the throughput
    this CPU reaches at the shapes involved (the rollout's step-by-step matmuls; for the surrogates the better of
    [all rows, width] x [width, width] and one goal's [rows, width] block, and their transposed products).
    Per state: F the forward pass, G a backward pass (weight gradients and deltas), Hv = 2 G + 2 x the deltas' part
    (R-forward, R-weight gradients, R-deltas). The meta-gradient: 2 F sampling, 2 G surrogates, one Hv."""
    sizes = policy.sizes
    fwd = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))  # F, per state
    inner = sum(a * b for a, b in zip(sizes[1:-1], sizes[2:]))  # layers whose input gradient is needed
    rows = goals * trajectories * horizon  # states per sampling
    per_state = {"F": fwd, "G": fwd + inner, "Hv": 2 * (fwd + inner) + 2 * inner}
    sampling = 2 * rows * fwd  # pre- and post-update rollouts
    surrogates = rows * (2 * per_state["G"] + per_state["Hv"])
    width = max(sizes[1:-1])
    step_x = torch.randn(goals * trajectories, width, dtype=dtype)
    w = torch.randn(width, width, dtype=dtype)
    step_rate = goals * trajectories * width * width / best_time(lambda: step_x @ w, 50)
    big_rate = 0.0  # the surrogates' products, on every goal's rows at once and on one goal's block (the engine's)
    for x in (torch.randn(rows, width, dtype=dtype), torch.randn(trajectories * horizon, width, dtype=dtype)):
        pair = best_time(lambda x=x: x @ w) + best_time(lambda x=x: x.t() @ x)
        big_rate = max(big_rate, x.shape[0] * width * width / (0.5 * pair))
    return {"macs": sampling + surrogates, "sampling": sampling, "surrogates": surrogates, "rows": rows,
            "per_state": per_state, "step_rate": step_rate, "big_rate": big_rate,
            "step_gflops": 2 * step_rate / 1e9, "big_gflops": 2 * big_rate / 1e9,
            "seconds": sampling / step_rate + surrogates / big_rate}


def trpo_lower_bound(bound: dict, cg_iters: int, hvp_fraction: float, evaluations: int) -> dict:
    """The TRPO step's multiply-adds beyond the meta-gradient's (its gradient g is the same): each conjugate-gradient
    iteration multiplies by the KL's Hessian J^T M J on a fraction of the goals (two inner Hv, a forward product of
    the post-update means and a backward pass), each line-search candidate takes the inner step again (F + G on the
    pre-update states) and evaluates the post-update policy (F)."""
    f, g, hv = (bound["per_state"][k] for k in ("F", "G", "Hv"))
    cg = cg_iters * hvp_fraction * bound["rows"] * (2 * hv + g + g)
    search = evaluations * bound["rows"] * (f + g + f)
    return {"macs": cg + search, "cg": cg, "search": search, "seconds": (cg + search) / bound["big_rate"]}


def engine_parts(env, policy, theta, batch, lr: float) -> dict:
    """The engine's meta-step in its parts, each at its fastest of a few runs (seconds)."""
    explicit = PolicyGradient(policy)
    b = batch.num_tasks
    theta = OrderedDict((k, v.detach()) for k, v in theta.items())
    pre_noise = env.noise(batch.seed, batch.task_ids, 0, batch.shots)
    pre = env.rollout(policy, theta, batch.goals, pre_noise, keep_activations=True)
    inner, at_theta = batch._explicit_pass(explicit, theta, pre)
    fast = OrderedDict((k, v - lr * g) for (k, v), g in zip(theta.items(), inner))
    post_noise = env.noise(batch.seed, batch.task_ids, QUERY_CALL, batch.queries)
    post = env.rollout(policy, fast, batch.goals, post_noise, keep_activations=True)
    v, _ = batch._explicit_pass(explicit, fast, post, 1.0 / b, keep=False)
    return {
        "action noise (2 samplings)": 2 * best_time(lambda: env.noise(batch.seed, batch.task_ids, 0, batch.shots)),
        "rollouts (theta shared, then phi per goal)": best_time(lambda: env.rollout(policy, theta, batch.goals,
                                                                                    pre_noise, True))
        + best_time(lambda: env.rollout(policy, fast, batch.goals, post_noise, True)),
        "returns, baseline fits, advantages (2)": 2 * best_time(lambda: batch.step_weights(post)),
        "surrogate gradients (2)": best_time(lambda: batch._explicit_pass(explicit, theta, pre))
        + best_time(lambda: batch._explicit_pass(explicit, fast, post, 1.0 / b, keep=False)),
        "Hessian-vector product": best_time(lambda: explicit.hvp(theta, at_theta, v)),
    }


def trpo_parts(policy, theta, batch, lr: float, settings) -> dict:
    """The engine's TRPO step in its parts (rl/explicit_trpo.py), each at its fastest of a few runs (seconds)."""
    def build():
        return trpo_objective(policy, theta, batch, lr, 1, False, settings.hvp_fraction)

    obj = build()
    loss, g = obj.gradient()
    candidate = [v - 1e-3 * d for v, d in zip(theta.values(), unflatten(g, list(theta.values())))]
    return {"sampling and the inner step": best_time(build, 3),
            "gradient through the inner step": best_time(obj.gradient, 3),
            f"{settings.cg_iters} KL products": settings.cg_iters * best_time(lambda: obj.hvp(g), 5),
            "a line-search evaluation": best_time(lambda: obj.evaluate(candidate, False), 5)}


def pretrained_times(policy, theta, env, gen, args, lr: float) -> dict:
    """The pretrained baseline's step on sampled goals (rl/objective.py pretrained_gradient: its outer gradient and
    its costs before and after one test-time step), by the engine's explicit per-task gradients on the rollout's
    activations and by autograd on recomputed log-likelihoods: each way's fastest of the rounds (seconds). The two
    agree (float64: tests/core/test_policy_grad.py); the largest relative difference of the gradient is printed."""
    times: dict[str, list[float]] = {"engine": [], "autograd": []}
    for r in range(args.rounds):
        batch = env.sample(args.goals, args.trajectories, args.trajectories, gen)
        grads = {}
        for way in ("engine", "autograd"):
            leaves = OrderedDict((k, v.clone().requires_grad_(True)) for k, v in theta.items())
            t0 = time.process_time()
            grads[way] = pretrained_gradient(policy, leaves, batch, lr, 1, explicit=way == "engine")[0]
            times[way].append(time.process_time() - t0)
        diff = max(float((a - e).abs().max() / (e.abs().max() + 1e-12)) for a, e in zip(grads["engine"],
                                                                                       grads["autograd"]))
        print(f"pretrained round {r + 1}: engine {times['engine'][-1]:.3f} s, autograd {times['autograd'][-1]:.3f} s; "
              f"max relative difference of the gradient {diff:.1e}")
    return {way: min(ts) for way, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--goals", type=int, default=20)
    parser.add_argument("--trajectories", type=int, default=20)
    parser.add_argument("--no-loop", action="store_true", help="leave out the (slow) per-environment loop")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kept = keep_freed_memory()  # as the CLI runs (lab/memory.py)
    env = NavigationFamily()
    policy = GaussianMLPPolicy()
    gen = torch.Generator().manual_seed(0)
    theta = policy.init_params(gen)
    algo = make_algorithm(policy, "policy_gradient", AlgorithmConfig.defaults("maml", task="navigation"))
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__}, {args.threads} thread(s); "
          f"freed memory kept in the process: {'yes' if kept else 'no'}; times are process CPU time")
    times: dict[str, list[float]] = {"engine": [], "autograd": [], "loop": []}
    for r in range(args.rounds):
        batch = env.sample(args.goals, args.trajectories, args.trajectories, gen)
        results = {}
        for way in ("engine", "autograd", "loop"):
            if way == "loop" and args.no_loop:
                continue
            t0 = time.process_time()
            if way == "loop":
                results[way] = loop_meta_gradient(env, batch, theta, algo.config.inner_lr)
            else:
                if way == "autograd":  # the batch without its explicit path: objective_meta_gradient's autograd
                    batch.explicit_meta_gradient = lambda *a, **k: None
                leaves = OrderedDict((k, v.clone().requires_grad_(True)) for k, v in theta.items())
                results[way] = algo.meta_gradient(leaves, batch, first_order=False)[0]
                batch.__dict__.pop("explicit_meta_gradient", None)
            times[way].append(time.process_time() - t0)
        ref = results["engine"]
        diffs = ", ".join(f"{way} {max(float((g - e).abs().max() / (e.abs().max() + 1e-12)) for g, e in zip(ref, got)):.1e}"  # noqa: E501
                          for way, got in results.items() if way != "engine")
        print(f"round {r + 1}: " + ", ".join(f"{way} {times[way][-1]:.3f} s" for way in results)
              + f"; max relative difference of the meta-gradient from the engine's: {diffs}")
    best = {way: min(ts) for way, ts in times.items() if ts}
    bound = lower_bound(policy, args.goals, args.trajectories, env.horizon)
    settings = TRPOSettings()
    trpo_times: dict[str, list[float]] = {"engine": [], "autograd": [], "loop": []}
    evaluations = []
    for r in range(args.rounds):  # the default outer step: sampling, the meta-gradient, CG and the line search
        batch = env.sample(args.goals, args.trajectories, args.trajectories, gen)
        steps = {}
        for way in ("engine", "autograd", "loop"):
            if way == "loop" and args.no_loop:
                continue
            leaves = [v.clone().requires_grad_(True) for v in theta.values()]
            t0 = time.process_time()
            if way == "loop":
                res = loop_trpo_step(env, batch, leaves, algo.config.inner_lr, settings)
            else:
                obj = trpo_objective(policy, OrderedDict(zip(theta, leaves)), batch, algo.config.inner_lr, 1, False,
                                     settings.hvp_fraction, explicit=way == "engine")
                res = trpo_step(leaves, obj.evaluate, settings, obj.hvp,
                                obj.gradient() if obj.gradient is not None else None)
            trpo_times[way].append(time.process_time() - t0)
            steps[way] = torch.cat([(p.detach() - v).reshape(-1) for p, v in zip(leaves, theta.values())])
            if way == "engine":
                evaluations.append(res.backtracks + 1)
        diffs = ", ".join(f"{way} {float((d - steps['engine']).norm() / steps['engine'].norm()):.1e}"
                          for way, d in steps.items() if way != "engine")
        print(f"TRPO round {r + 1}: " + ", ".join(f"{way} {trpo_times[way][-1]:.3f} s" for way in steps)
              + f"; relative difference of the step from the engine's: {diffs}")
    trpo_best = {way: min(ts) for way, ts in trpo_times.items() if ts}
    k = trpo_times["engine"].index(trpo_best["engine"])
    trpo_bound = trpo_lower_bound(bound, settings.cg_iters, settings.hvp_fraction, evaluations[k])
    print(f"one MAML meta-iteration, {args.goals} goals x {args.trajectories} trajectories x {env.horizon} steps, "
          f"second order, fastest of {args.rounds} round(s):")
    print(f"  meta-gradient (what Adam steps on): engine {best['engine']:.3f} s; autograd route "
          f"{best['autograd']:.3f} s ({best['autograd'] / best['engine']:.1f}x the engine)"
          + (f"; per-environment loop {best['loop']:.3f} s ({best['loop'] / best['engine']:.1f}x)" if "loop" in best
             else ""))
    print(f"    lower bound: {bound['macs'] / 1e9:.2f} G multiply-adds ({bound['sampling'] / 1e9:.2f} G sampling at "
          f"{bound['step_gflops']:.0f} GFLOP/s, {bound['surrogates'] / 1e9:.2f} G surrogate gradients and "
          f"Hessian-vector product at {bound['big_gflops']:.0f} GFLOP/s) = {bound['seconds']:.3f} s; "
          f"engine / bound = {best['engine'] / bound['seconds']:.2f}")
    full = bound["seconds"] + trpo_bound["seconds"]
    print(f"  with the TRPO step (the default; {settings.cg_iters} conjugate-gradient iterations on "
          f"{settings.hvp_fraction:g} of the goals, {evaluations[k]} line-search evaluation(s)): engine "
          f"{trpo_best['engine']:.3f} s; autograd route {trpo_best['autograd']:.3f} s "
          f"({trpo_best['autograd'] / trpo_best['engine']:.1f}x the engine)"
          + (f"; per-environment loop {trpo_best['loop']:.3f} s ({trpo_best['loop'] / trpo_best['engine']:.1f}x)"
             if "loop" in trpo_best else ""))
    print(f"    lower bound: {(bound['macs'] + trpo_bound['macs']) / 1e9:.1f} G multiply-adds (the meta-gradient's, "
          f"{trpo_bound['cg'] / 1e9:.1f} G conjugate gradient, {trpo_bound['search'] / 1e9:.1f} G line search) = "
          f"{full:.3f} s; TRPO engine / bound = {trpo_best['engine'] / full:.2f}")
    pretrained = pretrained_times(policy, theta, env, gen, args, algo.config.inner_lr)
    pre_bound = bound["sampling"] / bound["step_rate"] + bound["rows"] * bound["per_state"]["G"] / bound["big_rate"]
    print(f"  the pretrained baseline's step (Adam's: a sampling at theta, its surrogate gradient, the test step's "
          f"sampling): engine {pretrained['engine']:.3f} s; autograd route {pretrained['autograd']:.3f} s "
          f"({pretrained['autograd'] / pretrained['engine']:.1f}x the engine); lower bound {pre_bound:.3f} s "
          f"(two samplings and one backward pass); pretrained engine / bound = {pretrained['engine'] / pre_bound:.2f}")
    parts = engine_parts(env, policy, theta, env.sample(args.goals, args.trajectories, args.trajectories, gen),
                         algo.config.inner_lr)
    print("  the engine's parts (each at its fastest): " + "; ".join(f"{k} {v * 1e3:.0f} ms" for k, v in parts.items())
          + f"; sum {sum(parts.values()) * 1e3:.0f} ms")
    parts = trpo_parts(policy, theta, env.sample(args.goals, args.trajectories, args.trajectories, gen),
                       algo.config.inner_lr, settings)
    print("  the TRPO step's parts: " + "; ".join(f"{k} {v * 1e3:.0f} ms" for k, v in parts.items())
          + f"; sum {sum(parts.values()) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
