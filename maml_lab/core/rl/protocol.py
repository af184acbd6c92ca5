"""How a navigation policy is evaluated: the lab's protocol and the MAML paper's, one flag apart (`eval --protocol`).

* lab (the default): `--tasks` held-out goals (40) drawn uniformly with torch's generator seeded by `--seed` (2017),
  the trajectories per step the policy was trained with (20; `--shots`), plain SGD on the REINFORCE surrogate at the
  policy's own inner step size, then half of it for every later step (objective.test_schedule: the step on centred
  and scaled advantages does not shrink near the goal, so a repeated trained step overshoots; the views use it too).
* paper: cbfinn/maml_rl's maml_examples/test_maml_point.py, which made Figure 5: the 40 goals of
  `np.random.seed(1); np.random.uniform(-0.5, 0.5, size=(40, 2))`, 40 trajectories per step (the reference samples
  4,000 environment steps a step: 40 full-length trajectories, a few more when episodes end early), step size 0.5 for
  the first step and 0.25 after (rllab VPG's init_learning_rate, then learning_rate = 0.5 x step).
In both, "random" is a freshly initialized policy (Xavier weights, zero biases, std 1: the reference's
GaussianMLPPolicy) fine-tuned by the same rule, and the oracle is the exact goal-aware controller.

The pretrained baseline is judged at its best step size, as the paper tuned its baselines': its first step size is
chosen from PRETRAINED_GRID (later steps half of it, as every policy's) by the
average return over steps 1..N on 40 separate validation goals (lab: seed + 1; paper: np.random.seed(2)), never on
the goals it is reported on. `--inner-lr` fixes the first step for every policy instead (later steps half of it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .objective import test_schedule, test_schedule_text

PRETRAINED_GRID = (0.1, 0.25, 0.5, 1.0, 2.0)
CI_TEXT = "95% CI = 1.96 std / sqrt(goals)"


@dataclass(frozen=True)
class NavigationProtocol:
    key: str
    title: str
    goals: int | None  # None: --tasks
    trajectories: int | None  # per step; None: as trained (--shots)
    first_step: float | None  # None: the policy's inner lr (every policy's later steps: objective.test_schedule)


PROTOCOLS = {
    "lab": NavigationProtocol("lab", "MAML Lab's", None, None, None),
    "paper": NavigationProtocol("paper", "the MAML paper's (cbfinn/maml_rl maml_examples/test_maml_point.py)", 40, 40,
                                0.5),
}


def paper_goals(seed: int = 1, num: int = 40) -> np.ndarray:
    """The reference test's goals: np.random.seed(seed); np.random.uniform(-0.5, 0.5, size=(num, 2))."""
    return np.random.RandomState(seed).uniform(-0.5, 0.5, size=(num, 2))


def _goals(protocol: NavigationProtocol, family, num: int, seed: int, validation: bool, dtype) -> torch.Tensor:
    if protocol.key == "paper":
        return torch.as_tensor(paper_goals(2 if validation else 1, num), dtype=dtype)
    generator = torch.Generator().manual_seed(seed + (1 if validation else 0))
    return family.sample_goals(num, generator, dtype)


def _returns(model, family, params, goals, trajectories, steps, lrs, seed, device, dtype) -> np.ndarray:
    """-cost [steps + 1, goals] after each test step (objective_curve)."""
    from .objective import objective_curve

    batch = family.batch(goals, trajectories, trajectories, seed, device, dtype)
    params = {k: v.to(device, dtype) for k, v in params.items()}
    return -objective_curve(model, batch, params, steps, lrs)


def evaluate(model, family, params, protocol: str, steps: int, trained_lr: float, algorithm: str | None,
             tasks: int | None = None, trajectories: int | None = None, seed: int = 2017, lr: float | None = None,
             device="cpu", dtype=torch.float32) -> dict:
    """Returns [steps + 1, goals] of `params`, of a random initialization and the oracle's [goals] under a protocol,
    with what the card states (the step sizes used, the pretrained baseline's tuning)."""
    proto = PROTOCOLS[protocol]
    num = proto.goals or tasks or 40
    per_step = proto.trajectories or trajectories or 20
    base = lr or proto.first_step or trained_lr
    goals = _goals(proto, family, num, seed, False, dtype)
    noise_seed = seed if protocol == "lab" else 1
    tuning = None
    first = base
    if algorithm == "pretrained" and lr is None:
        val_goals = _goals(proto, family, 40, seed, True, dtype)
        scores = {}
        for candidate in PRETRAINED_GRID:
            r = _returns(model, family, params, val_goals, per_step, steps, test_schedule(candidate), noise_seed + 7,
                         device, dtype)
            scores[candidate] = float(np.nan_to_num(r[1:].mean(), nan=-np.inf)) if steps else 0.0
        first = max(scores, key=scores.get)
        tuning = {"grid": list(PRETRAINED_GRID), "validation_returns": scores, "chosen": first,
                  "validation_goals": ("np.random.seed(2), 40 goals" if protocol == "paper"
                                       else f"40 goals, torch seed {seed + 1}")}
    returns = _returns(model, family, params, goals, per_step, steps, test_schedule(first), noise_seed, device, dtype)
    rand_params = model.init_params(torch.Generator().manual_seed(seed + 1), dtype=dtype)
    rand = _returns(model, family, rand_params, goals, per_step, steps, test_schedule(base), noise_seed, device, dtype)
    card = {"protocol": protocol, "title": proto.title, "goals": num, "trajectories_per_step": per_step,
            "goal_source": ("np.random.seed(1); uniform(-0.5, 0.5, (40, 2))" if protocol == "paper"
                            else f"uniform in the goal range, torch seed {seed}"),
            "adaptation": test_schedule_text(first), "random_adaptation": test_schedule_text(base),
            "random": "a fresh Xavier-initialized policy (zero biases, std 1), fine-tuned the same way",
            "ci": CI_TEXT, "pretrained_step_tuning": tuning}
    return {"returns": returns, "random": rand, "oracle": family.oracle_returns(goals.cpu()).numpy(),
            "goals": goals.cpu().numpy(), "card": card}


def training_text(meta: dict) -> str | None:
    """How an exported policy was trained and where that differs from its reference, from its metadata (the card's
    `trained:` line). None for metadata without an algorithm."""
    from .trpo import TRPOSettings

    h, name = meta.get("hyperparameters") or {}, meta.get("algorithm")
    if not name:
        return None
    goals, shots, iterations = h.get("meta_batch_size"), h.get("shots"), meta.get("iterations")
    batch = f"{goals} goals x {shots} trajectories a meta-batch, {iterations} iterations"
    steps, lr = h.get("inner_steps", 1), h.get("inner_lr")
    inner = f"{steps} inner policy-gradient step{'s' if steps != 1 else ''} at {lr:g} (REINFORCE, linear baseline)"
    trpo = TRPOSettings()
    damping = f"{trpo.reg_coeff:.0e}".replace("e-0", "e-")  # 1e-2, as the reference's 1e-5 is written
    trpo_text = (f"TRPO outer step (mean KL <= {trpo.max_kl:g}, {trpo.cg_iters} conjugate-gradient iterations, "
                 f"damping {damping}, exact KL Hessian-vector products on {trpo.hvp_fraction:.0%} of the goals; the "
                 f"reference: damping 1e-5, finite differences on all)")
    if name in ("maml", "fomaml"):
        outer = (trpo_text if h.get("outer_optimizer") == "trpo" else
                 f"Adam {h.get('meta_lr'):g} on the post-update surrogate (the reference takes TRPO)")
        order = ("second order through the inner step" if name == "maml" else
                 "first order: the inner gradient a constant (the reference's first-order option)")
        return (f"{name}: {inner}, {order}; {outer}; {batch} (cbfinn/maml_rl maml_trpo_point.py: 40 goals x 20, "
                f"100 iterations)")
    if name == "pretrained":
        outer = (f"Adam {h.get('meta_lr'):g}, one step an iteration on the pre-update surrogate of every goal"
                 if h.get("outer_optimizer") != "trpo" else "TRPO on the pre-update surrogate (the reference: Adam)")
        return (f"pretrained: one policy for all goals, {outer}; {batch} (cbfinn/maml_rl with use_maml=False: Adam "
                f"1e-3, 100 iterations)")
    if name == "reptile":
        return (f"reptile: {steps} SGD policy-gradient steps at {lr:g} per goal, theta += eps (mean phi - theta), eps "
                f"{h.get('outer_lr_start', 1.0):g} -> {h.get('outer_lr_end', 0.0):g}; {batch} (no reference: the "
                f"Reptile paper has no reinforcement-learning experiment)")
    return f"{name}: {batch}"


def card_lines(card: dict) -> list[str]:
    """The evaluation card of a navigation evaluation, as printed by `eval`."""
    lines = [f"  protocol {card['protocol']}: {card['title']}; {card['goals']} goals ({card['goal_source']}), "
             f"{card['trajectories_per_step']} trajectories per step, {card['adaptation']}; random: "
             f"{card['random']} ({card['random_adaptation']}); {card['ci']}"]
    if card.get("training"):
        lines.append(f"  trained: {card['training']}")
    if card.get("policy"):
        lines.append(f"  policy: {card['policy']}")
    tuning = card.get("pretrained_step_tuning")
    if tuning:
        grid = ", ".join(f"{g:g}" for g in tuning["grid"])
        lines.append(f"  pretrained: judged at its best first step size, {tuning['chosen']:g} of {grid} (average "
                     f"return over steps 1..N on {tuning['validation_goals']}, separate from the reported goals)")
    return lines


def eval_navigation(args, params, meta, model, adaptation, device, dtype) -> dict:
    """`maml-lab eval` for a navigation policy under `args.protocol`: average return (95% CI over goals) after each
    number of policy-gradient steps, a random initialization and the oracle beside it, and the card."""
    from ..algorithms.config import adaptation_config
    from ..analysis.evaluation import mean_ci95
    from ..tasks.navigation import NavigationTasks, check_eval_memory

    family = NavigationTasks.from_description(meta.get("task", {}))
    steps_list = sorted(set(args.steps or [0, 1, 2, 3]))
    config = adaptation_config(adaptation)
    trained_lr = config.inner_lr if config is not None else float(adaptation)
    trajectories = (args.shots or [int(meta.get("hyperparameters", {}).get("shots", 20))])[0]
    protocol = getattr(args, "protocol", None) or "lab"
    check_eval_memory(model, family, max(args.tasks or 40, 40), trajectories)  # core.validation, before sampling
    res = evaluate(model, family, params, protocol, max(steps_list), trained_lr, meta.get("algorithm"),
                   args.tasks, trajectories, args.seed, getattr(args, "inner_lr", None), device, dtype)
    card = res["card"]
    card["training"] = training_text(meta)
    choice = meta.get("export")
    if isinstance(choice, dict) and choice.get("chosen") in ("best", "last"):  # which policy of its run this is
        from ..training.trainer import export_choice_text

        card["policy"] = export_choice_text(choice, "navigation")
    for line in card_lines(card):
        print(line)
    print(f"  average return (sum of -distance over {family.horizon} steps) after policy-gradient steps")
    print(f"  {'steps':>5}  {'return':>9}  95% CI      {'random init':>11}  95% CI")
    rows = []
    for s in steps_list:
        mean, ci = (float(v) for v in mean_ci95(res["returns"][s]))
        rmean, rci = (float(v) for v in mean_ci95(res["random"][s]))
        print(f"  {s:>5}  {mean:9.2f}  +- {ci:6.2f}  {rmean:11.2f}  +- {rci:6.2f}")
        rows.append({"steps": s, "metric": "return", "mean": mean, "ci95": ci, "random_mean": rmean,
                     "random_ci95": rci})
    omean, oci = (float(v) for v in mean_ci95(res["oracle"]))
    print(f"  oracle (knows the goal, heads straight for it): {omean:.2f} +- {oci:.2f}")
    return {"results": rows, "oracle": {"mean": omean, "ci95": oci}, "tasks": card["goals"],
            "trajectories": card["trajectories_per_step"], "card": card}
