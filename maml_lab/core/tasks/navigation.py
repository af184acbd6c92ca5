"""2-D navigation (MAML paper, Sec. 5.3; cbfinn/maml_rl point_env_randgoal.py): the first task family whose data
depend on the parameters being adapted.

Design (the engine side is core/rl/objective.py). A navigation batch is an `ObjectiveBatch`: it holds B goals and
a seed, and samples trajectories lazily from whatever policy parameters it is given: `support_loss(model, params,
step)` rolls out `shots` trajectories per goal with each task's parameters and returns the REINFORCE surrogate
(core/rl/pg.py) and the cost, minus the average return; `query_loss` does the same with `queries` fresh
trajectories (the post-update sampling). MAML, FOMAML, Reptile and the pretrained baseline train on it through
those two calls only; the registry entry below is an ordinary TaskFamilyKind (model: the policy; loss:
"policy_gradient"; metric: "return").

Environment (vectorized in torch over tasks x trajectories, a loop over the time steps only):
- state: the agent's position, starting at the origin; observation = position (the goal is not observed).
- action: the policy acts in normalized units as in the reference (rllab's `normalize` wrapper): the velocity is
  clip(0.1 * a, -0.1, 0.1) per coordinate.
- reward: minus the Euclidean distance from the new position to the goal (the reference code; the paper's text
  says squared distance). Horizon 100. The episode ends after the step that brings the agent within 0.01 of the
  goal in both coordinates (the reference's `abs(x) < 0.01 and abs(y) < 0.01`); later steps are masked out.
- goals uniform in [-0.5, 0.5]^2.
- randomness: each rollout's action noise comes from a generator seeded by (batch seed, task id, call), so
  a task's trajectories do not depend on the other tasks of its batch, and a seeded run is reproducible.
References for evaluation: `oracle_returns` (a controller that knows the goal and moves straight at it at the
highest speed: per-coordinate clip(goal - position), optimal for this reward, return computed exactly) and a
randomly initialized policy.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from ..rl import pg, policy_grad
from ..rl.objective import ObjectiveBatch, PolicySamples
from ..validation import Rule
from .base import NoPlayground, TaskBatch, TaskFamilyKind

_MIX_TASK = 0x9E3779B97F4A7C15
_MIX_CALL = 0xBF58476D1CE4E5B9
QUERY_CALL = 1_000_003  # the call id of the query (post-update) sampling; support step s uses call s


@dataclass
class Trajectories:
    """B tasks x N trajectories x T steps: obs is the position before each step, actions the policy's (unclipped)
    actions, rewards and mask zero after the episode ended."""

    obs: torch.Tensor  # [B, N, T, 2]
    actions: torch.Tensor  # [B, N, T, 2]
    rewards: torch.Tensor  # [B, N, T]
    mask: torch.Tensor  # [B, N, T], 1 while the episode runs (float, the dtype of obs)
    end: torch.Tensor | None = None  # [B, N, 2]: where each trajectory ends (after its last valid step)
    activations: "StepActivations | None" = None  # what the rollout computed (ReLU policy), for policy_grad

    @property
    def returns(self) -> torch.Tensor:
        """Undiscounted return of each trajectory [B, N]."""
        return (self.rewards * self.mask).sum(-1)


@dataclass
class StepActivations:
    """What the rollout computed, step-major per task ([B, T, N, ...]: rows t * N + n once flattened), kept so that
    the explicit policy gradient need not run the policy's forward pass again."""

    obs: torch.Tensor  # [B, T, N, obs_dim]
    actions: torch.Tensor  # [B, T, N, action_dim]
    hidden: list[torch.Tensor]  # the hidden layers' outputs [B, T, N, width]
    means: torch.Tensor  # [B, T, N, action_dim]
    mask: torch.Tensor  # [B, T, N]

    def flat(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(t.shape[0], -1, t.shape[-1])


def _collapse_shared(params: dict) -> dict:
    """Per-task tensors that are expanded views of one tensor (stride 0 over tasks) back to that one tensor, so
    the layers fold the tasks into the rows of one matmul."""
    return {k: v[0] if v.dim() > 1 and v.stride(0) == 0 else v for k, v in params.items()}


def _affine(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """h [B, N, in] times w^T plus b; w shared [out, in] or per task [B, out, in]."""
    if w.dim() == 3:
        return torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
    return torch.addmm(b, h.reshape(-1, h.shape[-1]), w.t()).view(*h.shape[:-1], w.shape[0])


@dataclass(frozen=True)
class NavigationFamily:
    """The 2-D navigation task distribution and environment (see the module docstring)."""

    goal_range: tuple[float, float] = (-0.5, 0.5)
    horizon: int = 100
    max_speed: float = 0.1  # velocity bound per coordinate; actions are scaled by it (normalized actions)
    goal_tolerance: float = 0.01
    discount: float = 0.99
    baseline_reg: float = pg.BASELINE_REG

    name = "navigation"
    loss = "policy_gradient"
    input_shape = (2,)
    output_dim = 2

    def __post_init__(self) -> None:
        lo, hi = self.goal_range
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise ValueError(f"navigation goal_range must be finite with low <= high, got {(lo, hi)}")
        if int(self.horizon) < 1:
            raise ValueError(f"navigation horizon must be >= 1, got {self.horizon}")
        for key in ("max_speed", "goal_tolerance"):
            if not (math.isfinite(getattr(self, key)) and getattr(self, key) > 0):
                raise ValueError(f"navigation {key} must be a positive number, got {getattr(self, key)}")
        if not 0 < self.discount <= 1:
            raise ValueError(f"navigation discount must be in (0, 1], got {self.discount}")

    def describe(self) -> dict:
        return {"name": self.name, "goal_range": list(self.goal_range), "horizon": self.horizon,
                "max_speed": self.max_speed, "goal_tolerance": self.goal_tolerance, "discount": self.discount,
                "start": [0.0, 0.0], "observation": "position (x, y); the goal is not observed",
                "action": "normalized a; velocity = clip(max_speed * a, -max_speed, max_speed) per coordinate",
                "policy": "a = mean_net(obs) + exp(log_std) * N(0, 1); mean_net = torch.nn.Sequential tensors",
                "reward": "-||position after the step - goal||_2 (Euclidean distance, not squared)",
                "done": "after the step that ends within goal_tolerance of the goal in both coordinates",
                "return": "undiscounted sum of rewards over the episode; cost = -return",
                "estimator": "REINFORCE, discounted returns-to-go, advantages centred per task",
                "baseline": {"kind": "linear_feature", "features": "clip(obs,-10,10), obs^2, t/100, (t/100)^2, "
                                                                   "(t/100)^3, 1", "reg": self.baseline_reg,
                             "fit": "per task, on the trajectories of the step"},
                "trajectories": "hyperparameters.shots per inner step, hyperparameters.queries per outer step"}

    # -- the environment --------------------------------------------------------------------------------
    def step(self, position: torch.Tensor, action: torch.Tensor, goal: torch.Tensor):
        """One step of every environment: (new position, reward, done); goal broadcasts against position."""
        velocity = (action * self.max_speed).clamp(-self.max_speed, self.max_speed)
        new = position + velocity
        offset = new - goal
        reward = -offset.pow(2).sum(-1).sqrt()
        done = (offset.abs() < self.goal_tolerance).all(-1)
        return new, reward, done

    def rollout(self, policy, params, goals: torch.Tensor, noise: torch.Tensor,
                keep_activations: bool = False) -> Trajectories:
        """Roll out every task's policy from the origin: params per task [B, ...] (or shared), goals [B, 2],
        noise [B, N, T, 2] (standard normal; the action is mean + exp(log_std) * noise). Not differentiated.

        One loop over the time steps; each step is the policy's layers on all B x N positions (a matmul each,
        tasks folded into the rows where the parameters are shared) and the move, written into preallocated
        buffers. Terminations, rewards, the mask and the frozen positions after an episode's end are computed
        after the loop from the recorded positions, and the loop stops once every episode has ended. Steps after
        an episode's end are masked, as before; their actions are the policy's at the unfrozen position (or zero
        after the loop stopped). With `keep_activations` (the ReLU policy only) the hidden activations and the means
        are kept (`Trajectories.activations`): the explicit policy gradient (core/rl/policy_grad.py) reuses them."""
        b, n, horizon, _ = noise.shape
        with torch.no_grad():
            params = _collapse_shared({k: v.detach() for k, v in params.items()})
            layers = [(params[f"{2 * i}.weight"], params[f"{2 * i}.bias"]) for i in range(policy.num_layers)]
            keep = keep_activations and policy_grad.supported(policy)  # for the explicit gradient
            act = policy.mean_net._act
            std = torch.exp(policy.log_std(params, noise[:, :, 0]))
            goal = goals.view(b, 1, 2).to(noise)
            # positions as if no episode ended (`raw`, frozen after the loop), actions, activations: filled step by
            # step (torch.empty: no time spent zeroing what is written anyway)
            raw = noise.new_empty(b, horizon + 1, n, 2)
            raw[:, 0] = 0
            actions = noise.new_empty(b, horizon, n, 2)
            hidden = [noise.new_empty(b, horizon, n, w.shape[-2]) for w, _ in layers[:-1]] if keep else []
            means = noise.new_empty(b, horizon, n, policy.action_dim) if keep else None
            ever = torch.zeros(b, n, dtype=torch.bool, device=noise.device)  # reached the goal at some step
            ran = horizon
            pos = raw[:, 0]
            for t in range(horizon):
                h = pos
                for i, (w, bias) in enumerate(layers):
                    h = _affine(h, w, bias)
                    if i < len(layers) - 1:
                        h = h.clamp_min_(0) if keep else act(h)
                        if keep:
                            hidden[i][:, t] = h
                if keep:
                    means[:, t] = h
                a = torch.addcmul(h, std, noise[:, :, t], out=actions[:, t])
                pos = torch.add(pos, (a * self.max_speed).clamp_(-self.max_speed, self.max_speed), out=raw[:, t + 1])
                if t % 10 == 9 and t + 1 < horizon:  # stop once every episode has ended
                    ever |= ((raw[:, t - 8:t + 2] - goal.unsqueeze(1)).abs() < self.goal_tolerance).all(-1).any(1)
                    if bool(ever.all()):
                        ran = t + 1
                        break
            # the episode ends after the first step that lands within the tolerance; later steps are masked and the
            # position stays where it ended
            offset = raw[:, 1:ran + 1] - goal.unsqueeze(1)
            ended = (offset.abs() < self.goal_tolerance).all(-1)  # [B, ran, N]
            live = torch.zeros(b, horizon, n, dtype=noise.dtype, device=noise.device)
            live[:, 0] = 1
            live[:, 1:ran] = (~ended[:, :ran - 1]).cummin(1).values.to(noise.dtype)
            reward = torch.zeros_like(live)
            reward[:, :ran] = -offset.pow(2).sum(-1).sqrt() * live[:, :ran]
            index = torch.arange(horizon + 1, device=noise.device).view(1, -1, 1)
            index = torch.minimum(index, live.sum(1, keepdim=True).long())  # step t's position: raw[min(t, length)]
            steps = raw.gather(1, index.unsqueeze(-1).expand(b, horizon + 1, n, 2))
            if ran < horizon:  # stopped early: nothing was computed after `ran`
                for buffer in (actions, *hidden, *([means] if keep else [])):
                    buffer[:, ran:] = 0
            out = Trajectories(steps[:, :-1].transpose(1, 2).contiguous(), actions.transpose(1, 2).contiguous(),
                               reward.transpose(1, 2).contiguous(), live.transpose(1, 2).contiguous(),
                               steps[:, -1].clone())
            if keep:
                out.activations = StepActivations(steps[:, :-1], actions, hidden, means, live)
            return out

    def noise(self, seed: int, task_ids: torch.Tensor, call: int, num: int, dtype=torch.float32,
              device="cpu") -> torch.Tensor:
        """Standard normal action noise [B, num, horizon, 2], one CPU generator per task (seed, task id, call)."""
        out = torch.empty(len(task_ids), num, self.horizon, 2, dtype=dtype)
        for i, task in enumerate(task_ids.tolist()):
            key = (int(seed) + _MIX_TASK * (int(task) + 1) + _MIX_CALL * (int(call) + 1)) % (2 ** 63)
            out[i] = torch.randn(num, self.horizon, 2, generator=torch.Generator().manual_seed(key), dtype=dtype)
        return out.to(device)

    def oracle_returns(self, goals: torch.Tensor) -> torch.Tensor:
        """Return of the goal-aware controller (velocity clip(goal - position) per coordinate, i.e. straight at the
        goal at the highest speed) for each goal [B], computed exactly with the same step and done rule."""
        goals = goals.double().reshape(-1, 2)
        pos = torch.zeros_like(goals)
        alive = torch.ones(goals.shape[0], dtype=torch.bool)
        total = torch.zeros(goals.shape[0], dtype=torch.float64)
        for _ in range(self.horizon):
            new, reward, done = self.step(pos, (goals - pos) / self.max_speed, goals)
            total += torch.where(alive, reward, torch.zeros_like(reward))
            pos = torch.where(alive.unsqueeze(-1), new, pos)
            alive = alive & ~done
        return total

    # -- tasks ------------------------------------------------------------------------------------------
    def sample_goals(self, num_tasks: int, generator: torch.Generator, dtype=torch.float32) -> torch.Tensor:
        lo, hi = self.goal_range
        return torch.rand(num_tasks, 2, generator=generator, dtype=dtype) * (hi - lo) + lo

    def sample(self, num_tasks: int, shots: int, queries: int, generator: torch.Generator,
               device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> "NavigationBatch":
        """B random goals and a seed for their trajectories (shots per inner step, queries per outer step)."""
        if num_tasks < 1 or shots < 1 or queries < 1:
            raise ValueError(f"need num_tasks >= 1, trajectories (shots) >= 1, queries >= 1; got {num_tasks}, "
                             f"{shots}, {queries}")
        goals = self.sample_goals(num_tasks, generator, dtype)
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
        return self.batch(goals, shots, queries, seed, device, dtype)

    def batch(self, goals, shots: int = 20, queries: int = 20, seed: int = 0, device="cpu",
              dtype=torch.float32) -> "NavigationBatch":
        """A batch for given goals [B, 2] (a goal a user placed, held-out goals)."""
        goals = torch.as_tensor(goals, dtype=dtype).reshape(-1, 2)
        if not torch.isfinite(goals).all():
            raise ValueError("goals must be finite numbers")
        b = goals.shape[0]
        empty = goals.new_zeros(b, 0, 2)
        return NavigationBatch(goals.view(b, 1, 2), empty, empty, empty, {"goal": goals},
                               env=self, shots=int(shots), queries=int(queries), seed=int(seed),
                               task_ids=torch.arange(b)).to(device)


@dataclass
class NavigationBatch(ObjectiveBatch):
    """B navigation tasks (goals in x_support [B, 1, 2]) whose trajectories are sampled from given parameters."""

    env: NavigationFamily = field(default_factory=NavigationFamily)
    shots: int = 20  # trajectories per inner (support) step
    queries: int = 20  # trajectories per outer (query) sampling
    seed: int = 0
    task_ids: torch.Tensor | None = None  # [B]: what keys each task's noise (kept by task() and to())

    @property
    def goals(self) -> torch.Tensor:
        return self.x_support[:, 0, :]

    def _ids(self) -> torch.Tensor:
        return self.task_ids if self.task_ids is not None else torch.arange(self.num_tasks)

    def to(self, device, dtype=None) -> "NavigationBatch":
        base = TaskBatch.to(self, device, dtype)
        return NavigationBatch(base.x_support, base.y_support, base.x_query, base.y_query, base.info, env=self.env,
                               shots=self.shots, queries=self.queries, seed=self.seed, task_ids=self._ids().clone())

    def task(self, i: int) -> "NavigationBatch":
        sl = slice(i, i + 1)
        info = {k: v[sl] if isinstance(v, torch.Tensor) else v for k, v in self.info.items()}
        return NavigationBatch(self.x_support[sl], self.y_support[sl], self.x_query[sl], self.y_query[sl], info,
                               env=self.env, shots=self.shots, queries=self.queries, seed=self.seed,
                               task_ids=self._ids()[sl].clone())

    def trajectories(self, policy, params, call: int, num: int, keep_activations: bool = False) -> Trajectories:
        """`num` trajectories per task with each task's parameters; `call` keys the noise (support step s: s)."""
        ref = next(iter(params.values()))
        noise = self.env.noise(self.seed, self._ids(), call, num, ref.dtype, ref.device)
        return self.env.rollout(policy, params, self.goals.to(ref), noise, keep_activations)

    def objective(self, policy, params, traj: Trajectories) -> tuple[torch.Tensor, torch.Tensor]:
        """(REINFORCE surrogate [B], differentiable in params; cost = minus the average return [B]) on `traj`."""
        adv = pg.advantages(traj.rewards, traj.obs, traj.mask, self.env.discount, reg=self.env.baseline_reg)
        b, n, t, _ = traj.obs.shape
        logp = policy.log_prob(params, traj.obs.reshape(b, n * t, 2), traj.actions.reshape(b, n * t, 2))
        surr = pg.surrogate(logp.view(b, n, t), adv, traj.mask)
        return surr, -traj.returns.mean(1).detach()

    def step_weights(self, traj: Trajectories) -> torch.Tensor:
        """c = advantage * mask / valid steps of the task, [B, N, T]: the surrogate is -sum c log pi (pg.surrogate)."""
        adv = pg.advantages(traj.rewards, traj.obs, traj.mask, self.env.discount, reg=self.env.baseline_reg)
        count = traj.mask.sum((1, 2), keepdim=True).clamp_min(1)
        return adv * traj.mask / count

    def _explicit_pass(self, explicit, params, traj: Trajectories, scale: float = 1.0, summed: bool = False,
                       keep: bool = True):
        """explicit.run on a rollout's samples, reusing its activations (rows step-major, as the rollout keeps them)."""
        act = traj.activations
        c = self.step_weights(traj).transpose(1, 2).reshape(self.num_tasks, -1)
        if scale != 1.0:
            c = c * scale
        return explicit.run(params, act.flat(act.obs), act.flat(act.actions), c, summed=summed,
                            forward=([act.flat(h) for h in act.hidden], act.flat(act.means)), keep=keep)

    def explicit_meta_gradient(self, model, params, lr: float, first_order: bool):
        """MAML's (first_order: FOMAML's) meta-gradient with one inner step, as objective_meta_gradient computes it
        by autograd, by explicit backpropagation and an exact Hessian-vector product (core/rl/policy_grad.py):
        sum_i v_i - lr * sum_i H_i v_i, v_i the gradient of task i's post-update surrogate / B at phi_i, H_i the
        Hessian of its pre-update surrogate at theta. Returns what objective_meta_gradient returns, or None where
        the explicit path does not apply (the caller takes autograd)."""
        if not policy_grad.supported(model):
            return None
        from ..algorithms.adaptation import AdaptResult

        explicit = policy_grad.PolicyGradient(model)
        b = self.num_tasks
        theta = OrderedDict((k, v.detach()) for k, v in params.items())
        pre = self.trajectories(model, theta, 0, self.shots, keep_activations=True)
        inner, at_theta = self._explicit_pass(explicit, theta, pre)
        fast = OrderedDict((k, v - lr * g) for (k, v), g in zip(theta.items(), inner))
        post = self.trajectories(model, fast, QUERY_CALL, self.queries, keep_activations=True)
        v, _ = self._explicit_pass(explicit, fast, post, 1.0 / b, summed=first_order, keep=False)
        if not first_order:
            hv = explicit.hvp(theta, at_theta, v)
            v = [vi.sum(0) - lr * h for vi, h in zip(v, hv)]
        post_cost = -post.returns.mean(1)
        return v, post_cost.mean(), AdaptResult(fast, [-pre.returns.mean(1)]), None

    def support_loss(self, model, params, step: int = 0):
        return self.objective(model, params, self.trajectories(model, params, step, self.shots))

    def query_loss(self, model, params):
        return self.objective(model, params, self.trajectories(model, params, QUERY_CALL, self.queries))

    keeps_activations = True  # samples(..., keep_activations=True) keeps the ReLU policy's (explicit TRPO)

    def samples(self, model, params, step: int | None, keep_activations: bool = False) -> PolicySamples:
        """Support step `step`'s trajectories (None: the query sampling) as fixed samples for TRPO. With
        `keep_activations` (the ReLU policy) the rollout's hidden activations and means come along, the rows in its
        step-major order (core/rl/explicit_trpo.py reuses them)."""
        num, call = (self.queries, QUERY_CALL) if step is None else (self.shots, step)
        traj = self.trajectories(model, params, call, num, keep_activations)
        adv = pg.advantages(traj.rewards, traj.obs, traj.mask, self.env.discount, reg=self.env.baseline_reg)
        b, n, t, d = traj.obs.shape
        cost = -traj.returns.mean(1)
        act = traj.activations
        if act is not None:
            return PolicySamples(act.flat(act.obs), act.flat(act.actions), adv.transpose(1, 2).reshape(b, t * n),
                                 act.mask.reshape(b, t * n), cost, [act.flat(h) for h in act.hidden],
                                 act.flat(act.means))
        return PolicySamples(traj.obs.reshape(b, n * t, d), traj.actions.reshape(b, n * t, -1),
                             adv.reshape(b, n * t), traj.mask.reshape(b, n * t), cost)


class NavigationTasks(TaskFamilyKind):
    """The registry entry of 2-D navigation: a Gaussian MLP policy trained by policy gradients."""

    name = "navigation"
    label = "2-D navigation"
    short_label = "Navigation"
    description = ("a point agent reaches an unseen goal in [-0.5, 0.5]^2; reward -distance, horizon 100 "
                   "(MAML paper, Sec. 5.3)")
    loss = "policy_gradient"
    loss_label = "cost (-return)"
    metric = "return"  # evaluation reports the average return (= -cost)
    plot_metric = ("average return", -1.0)  # the Adaptation view plots return = -cost
    # the MAML paper's 2-D navigation: 20 trajectories per inner step (and per outer sampling) and the paper's policy,
    # 100-100 hidden units (the panel's and the CLI's hidden widths change it); a meta-batch of 40 goals, as the
    # reference's maml_trpo_point.py ("20 is fairly stable, 40 is more stable"): with 20, seed 1's pre-update policy
    # ran away (docs/navigation.md)
    # 50 TRPO iterations (the reference's maml_trpo_point.py ran 100; one of 40 goals costs about 2.5 s of CPU here)
    # validation on 100 held-out goals every 10 iterations, and the export is the run's best by it (export_best)
    experiment_defaults = {"meta_batch_size": 40, "shots": 20, "queries": 20, "iterations": 50, "hidden": [100, 100],
                           "val_every": 10}
    export_best = True
    # cbfinn/maml_rl's maml_trpo_point.py: one policy-gradient step of 0.5 in training (3 at test), TRPO (max KL
    # 0.01) as the outer step; meta_lr is the outer Adam's (outer_optimizer adam; the pretrained baseline's 1e-3)
    algorithm_defaults = {"inner_lr": 0.5, "test_inner_steps": 3, "meta_lr": 0.01, "outer_optimizer": "trpo"}
    playground = NoPlayground("A navigation task is a goal in the plane, not a curve: the Arena view places a goal "
                              "and shows each policy's trajectories before and after adapting to it.")
    option_defaults = {"horizon": 100}
    model_kind = "gaussian_mlp_policy"

    @classmethod
    def reference_curves(cls, family, model, shots, max_steps, adaptation, num_tasks, queries, dtype=torch.float32):
        """A randomly initialized policy adapted by the same rule, and the oracle (constant: it knows the goal), on
        the held-out goals adaptation_curve draws (its seed), in cost units."""
        import numpy as np

        from ..analysis.evaluation import AdaptationCurve, adaptation_curve, mean_ci95

        chunk = min(num_tasks, 200)  # as lab.inside.compute_curves samples, so the goals are the same
        random_params = model.init_params(torch.Generator().manual_seed(1), dtype=dtype)
        random = adaptation_curve(model, family, random_params, shots, max_steps, adaptation, num_tasks,
                                  queries=queries, dtype=dtype, chunk=chunk)
        generator, goals, left = torch.Generator().manual_seed(2017), [], num_tasks
        while left > 0:
            goals.append(family.sample(min(chunk, left), shots, queries, generator, dtype=dtype).goals.cpu())
            left -= chunk
        mean, ci = mean_ci95(-family.oracle_returns(torch.cat(goals)).double().numpy())
        steps = np.arange(max_steps + 1)
        oracle = AdaptationCurve(steps, np.full(len(steps), float(mean)), np.full(len(steps), float(ci)),
                                 num_tasks=num_tasks)
        return {"Random initialization": random, "Oracle (knows the goal)": oracle}

    @classmethod
    def tasks_text(cls, config) -> str:
        return (f"2-D navigation ({config.meta_batch_size} goals x {config.shots} trajectories x "
                f"{config.task_option('horizon')} steps)")

    @classmethod
    def validate(cls, config) -> None:
        from ..algorithms.registry import algorithm_class
        from ..validation import check_training_memory, check_value, mlp_parameters

        horizon = check_value("config", "task_options.horizon", config.task_option("horizon"), int, Rule(min=1))
        for a in config.algorithms:
            if not getattr(algorithm_class(a.name), "sampled_tasks", False):
                raise ValueError(f"{a.name} does not train on sampled (RL) tasks such as navigation")
            if a.inner_optimizer != "sgd":
                raise ValueError(f"{a.name}: navigation adapts with policy-gradient SGD (inner-optimizer sgd)")
        from ..rl.policy import ACTIVATIONS

        if config.activation not in ACTIVATIONS:
            raise ValueError(f"navigation policy activation must be one of {', '.join(ACTIVATIONS)}, "
                             f"got {config.activation!r}")
        sizes = [2, *config.hidden, 2]
        trajectories = config.shots + config.queries
        per_task = trajectories * horizon * (2 * sum(sizes) + 32)  # rollouts, the policy's activations, baselines
        check_training_memory(config, mlp_parameters(sizes), per_task, per_task,
                              f"{config.meta_batch_size} goals x {trajectories} trajectories x {horizon} steps "
                              f"with a {'-'.join(map(str, sizes))} policy")

    @classmethod
    def build(cls, config, progress=None, cancel=None) -> NavigationFamily:
        return NavigationFamily(horizon=int(config.task_option("horizon")))

    @classmethod
    def model(cls, config, family):
        from ..rl.policy import GaussianMLPPolicy

        return GaussianMLPPolicy([family.input_shape[0], *config.hidden, family.output_dim], config.activation)

    @classmethod
    def from_description(cls, description: dict, data=None, progress=None, cancel=None, hint: str = ""):
        from ..validation import check_table, check_value, fail

        d = NavigationFamily()
        goal_range = check_value("metadata", "task.goal_range", description.get("goal_range", list(d.goal_range)),
                                 list[float])
        if len(goal_range) != 2:
            raise fail("metadata", "task.goal_range", goal_range, "[low, high]")
        baseline = check_table("metadata", "task.baseline", description.get("baseline", {}))
        values = {key: check_value("metadata", f"task.{key}", description.get(key, getattr(d, key)), hint, r)
                  for key, hint, r in (("horizon", int, Rule(min=1)), ("max_speed", float, Rule(above=0)),
                                       ("goal_tolerance", float, Rule(above=0)),
                                       ("discount", float, Rule(above=0, max=1)))}
        reg = check_value("metadata", "task.baseline.reg", baseline.get("reg", d.baseline_reg), float, Rule(min=0))
        return NavigationFamily(tuple(goal_range), values["horizon"], values["max_speed"], values["goal_tolerance"],
                                values["discount"], reg)


def evaluate_returns(model, family: NavigationFamily, params, steps: int, adaptation, num_tasks: int = 40,
                     trajectories: int = 20, seed: int = 2017, device="cpu", dtype=torch.float32,
                     random_init: bool = True) -> dict:
    """Average return on `num_tasks` held-out goals (seeded) after 0..steps policy-gradient steps, per task
    [steps + 1, B], for `params`, for a randomly initialized policy (same adaptation) and for the oracle [B]."""
    from ..analysis.evaluation import per_task_curve

    generator = torch.Generator().manual_seed(seed)
    batch = family.sample(num_tasks, trajectories, trajectories, generator, device, dtype)
    params = {k: v.to(device, dtype) for k, v in params.items()}
    out = {"returns": -per_task_curve(model, family.loss, params, batch, steps, adaptation)[0],
           "oracle": family.oracle_returns(batch.goals.cpu()).numpy(), "goals": batch.goals.cpu().numpy()}
    if random_init:
        rand = model.init_params(torch.Generator().manual_seed(seed + 1), device=device, dtype=dtype)
        out["random"] = -per_task_curve(model, family.loss, rand, batch, steps, adaptation)[0]
    return out


def check_eval_memory(model, family: NavigationFamily, goals: int, trajectories: int) -> None:
    """Refuse an evaluation that cannot fit in memory (every goal's trajectories rolled out at once, for the
    initialization and a random one, with the per-goal parameters), before anything is sampled."""
    from ..validation import check_memory, mlp_parameters

    sizes = model.spec().get("sizes", [2, 100, 100, 2])
    per_goal = trajectories * family.horizon * (2 * sum(sizes) + 32) + 2 * mlp_parameters(sizes)
    check_memory(2 * 4 * goals * per_goal, f"evaluating {goals} goals x {trajectories} trajectories x "
                                           f"{family.horizon} steps")


@dataclass
class GoalPaths:
    """What a policy does for one goal after 0..steps policy-gradient steps (the arena's picture)."""

    goal: tuple[float, float]
    paths: list[list]  # [steps + 1][trajectories]: each an array [length + 1, 2] of positions from the origin
    returns: list[float]  # average return of the trajectories after k steps, k = 0..steps


def goal_paths(model, params, goal, steps: int, lr: float, trajectories: int = 20, seed: int = 0,
               family: NavigationFamily | None = None) -> GoalPaths:
    """Sample `trajectories` paths for `goal` with `params` and after each of `steps` policy-gradient steps (SGD on
    those same trajectories, `lr` then half of it, as evaluation does: rl.objective.test_schedule): positions and
    average returns, on the CPU."""
    from ..rl.objective import objective_trajectory, test_schedule

    family = family or NavigationFamily()
    batch = family.batch([goal], trajectories, trajectories, seed, dtype=next(iter(params.values())).dtype)
    paths, returns = [], []
    for k, (fast, cost) in enumerate(objective_trajectory(model, batch, params, steps, test_schedule(lr))):
        traj = batch.trajectories(model, fast, k, trajectories)  # the trajectories the cost was measured on
        step_paths = []
        for n in range(trajectories):
            length = int(traj.mask[0, n].sum())
            step_paths.append(torch.cat([traj.obs[0, n, :length], traj.end[0, n:n + 1]]).double().numpy())
        paths.append(step_paths)
        returns.append(-float(cost[0]))
    return GoalPaths((float(goal[0]), float(goal[1])), paths, returns)
