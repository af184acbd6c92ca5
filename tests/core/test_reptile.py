"""Reptile as openai/supervised-reptile runs it, against a reference written from that code's description, in float64:
tasks one after the other, inner Adam with beta1 = 0 in TF's form whose second moments and step count carry over
from task to task and iteration to iteration (only the weights are restored), the per-example loss summed over
mini-batches cycled through each task's examples, theta moved to the mean of the adapted weights by an epsilon
annealed linearly. Evaluation fine-tunes with the training inner optimizer from the carried state; the settings
reach config, TOML and CLI; bad values are refused."""

import math
from collections import OrderedDict

import pytest
import torch

from maml_lab.cli import _config_from_args, build_parser
from maml_lab.core.algorithms.base import LearnedAdaptation
from maml_lab.core.algorithms.config import (
    AlgorithmConfig,
    adaptation_text,
    make_algorithm,
    predict,
)
from maml_lab.core.algorithms.config import (
    test_trajectory as trajectory_at_test_time,
)
from maml_lab.core.algorithms.reptile import SHUFFLE_SEED, STATE_PREFIX, Reptile, minibatch_indices
from maml_lab.core.models.mlp import MLP
from maml_lab.core.tasks.base import TaskBatch
from maml_lab.core.tasks.sinusoid import SinusoidFamily
from maml_lab.core.training.config import ExperimentConfig
from maml_lab.core.training.trainer import Trainer

DT = torch.float64
B2, EPS = 0.999, 1e-8


# -- the reference, from the description ---------------------------------------------------------------------------
def ref_minibatches(n, batch, count, generator):
    """supervised-reptile's _mini_batches: shuffle, fill batches in order, reshuffle when the examples run out and
    keep filling the current batch. The shuffles come from `generator` (the same draws the engine makes)."""
    out, cur = [], []
    while True:
        for i in torch.randperm(n, generator=generator).tolist():
            cur.append(i)
            if len(cur) == batch:
                out.append(cur)
                cur = []
                if len(out) == count:
                    return out


def mlp_forward(p, x):
    """A tanh MLP 1-h-1 written out: x [n, 1] -> [n, 1]."""
    h = torch.tanh(x @ p["0.weight"].T + p["0.bias"])
    return h @ p["2.weight"].T + p["2.bias"]


def ref_reptile(theta, tasks, iterations, total, lr, steps, batch, eps0, eps1, carry=True):
    """Reptile with TF's Adam (beta1 0): returns theta and (v, t) after `iterations`; tasks[it] = list of (x, y)."""
    theta = {k: v.clone() for k, v in theta.items()}
    v = {k: torch.zeros_like(t) for k, t in theta.items()}
    t = 0
    for it in range(iterations):
        gen = torch.Generator().manual_seed(SHUFFLE_SEED + it)
        phis = []
        for x, y in tasks[it]:
            if not carry:
                v, t = {k: torch.zeros_like(w) for k, w in theta.items()}, 0
            phi = {k: w.clone() for k, w in theta.items()}
            for rows in ref_minibatches(x.shape[0], batch, steps, gen):
                leaves = {k: w.clone().requires_grad_(True) for k, w in phi.items()}
                pred = mlp_forward(leaves, x[rows])
                loss = ((pred - y[rows]) ** 2).mean(-1).sum()  # per-example squared error, summed over the batch
                grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))
                t += 1
                lr_t = lr * math.sqrt(1 - B2 ** t)  # / (1 - beta1^t) = 1 with beta1 = 0; m = g
                for k in phi:
                    v[k] = B2 * v[k] + (1 - B2) * grads[k] ** 2
                    phi[k] = phi[k] - lr_t * grads[k] / (v[k].sqrt() + EPS)
            phis.append(phi)
        eps = eps0 + (it / total) * (eps1 - eps0)
        theta = {k: w + eps * (sum(p[k] for p in phis) / len(phis) - w) for k, w in theta.items()}
    return theta, v, t


def setup(carry=True, tasks=3, drawn=7, iterations=3, **options):
    g = torch.Generator().manual_seed(1)
    model = MLP([1, 5, 1], "tanh")
    theta = model.init_params(g, dtype=DT)
    batches = [SinusoidFamily().sample(tasks, drawn, 4, g, dtype=DT) for _ in range(iterations)]
    cfg = AlgorithmConfig("reptile", inner_optimizer="adam", inner_lr=0.01, inner_steps=4, outer_lr_start=0.9,
                          outer_lr_end=0.1, options={"inner_batch": 3, "adam_state": "carry" if carry else "reset",
                                                     **options})
    return model, theta, batches, cfg


@pytest.mark.parametrize("carry", [True, False])
def test_meta_steps_match_the_reference(carry):
    model, theta, batches, cfg = setup(carry)
    total = 5
    algo = make_algorithm(model, "mse", cfg, total_iterations=total)
    params = OrderedDict((k, v.clone().requires_grad_(True)) for k, v in theta.items())
    algo.setup(params)
    for it, batch in enumerate(batches):
        metrics = algo.meta_step(params, batch, it)
        assert metrics["epsilon"] == pytest.approx(0.9 + it / total * (0.1 - 0.9))
    tasks = [[(b.x_support[i], b.y_support[i]) for i in range(b.num_tasks)] for b in batches]
    ref_theta, ref_v, ref_t = ref_reptile(theta, tasks, len(batches), total, 0.01, 4, 3, 0.9, 0.1, carry)
    for k in theta:
        torch.testing.assert_close(params[k].detach(), ref_theta[k], rtol=1e-12, atol=1e-13)
    exported = algo.export_tensors()
    if carry:  # the state carried over: 3 iterations x 3 tasks x 4 steps
        assert int(exported[STATE_PREFIX + "step"]) == ref_t == 36
        for k in theta:
            torch.testing.assert_close(exported[STATE_PREFIX + "v." + k], ref_v[k], rtol=1e-12, atol=1e-18)
    else:
        assert not exported  # nothing carried, nothing exported


def test_meta_batch_option_uses_the_first_tasks_and_sgd_steps_on_the_mean():
    model, theta, batches, _ = setup(tasks=4)
    cfg = AlgorithmConfig("reptile", inner_optimizer="sgd", inner_lr=0.05, inner_steps=3, outer_lr_start=1.0,
                          outer_lr_end=1.0, options={"meta_batch": 2})
    algo = make_algorithm(model, "mse", cfg)
    params = OrderedDict((k, v.clone()) for k, v in theta.items())
    algo.setup(params)
    algo.meta_step(params, batches[0], 0)
    expected = {k: torch.zeros_like(v) for k, v in theta.items()}
    for i in range(2):  # full-batch SGD on the per-task mean, from theta; epsilon 1: theta = mean phi
        phi = {k: v.clone() for k, v in theta.items()}
        for _ in range(3):
            leaves = {k: v.clone().requires_grad_(True) for k, v in phi.items()}
            loss = ((mlp_forward(leaves, batches[0].x_support[i]) - batches[0].y_support[i]) ** 2).mean()
            grads = torch.autograd.grad(loss, list(leaves.values()))
            phi = {k: v - 0.05 * g for (k, v), g in zip(phi.items(), grads)}
        for k in expected:
            expected[k] += phi[k] / 2
    for k in theta:
        torch.testing.assert_close(params[k], expected[k], rtol=1e-12, atol=1e-13)


def test_minibatches_cycle_like_supervised_reptile():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    got = [b.tolist() for b in minibatch_indices(5, 3, 7, g1)]
    assert got == ref_minibatches(5, 3, 7, g2)
    flat = sum(got, [])
    assert sorted(flat[:5]) == sorted(flat[5:10]) == list(range(5))  # each pass is a permutation, batches span them
    assert [b.tolist() for b in minibatch_indices(4, 0, 2, g1)] == [[0, 1, 2, 3]] * 2  # 0: the full set
    assert len(minibatch_indices(3, 6, 2, g1)[0]) == 6  # larger than the set: examples repeat, as in the reference
    drawn = minibatch_indices(6, 4, 20, g1, replacement=True)
    assert all(len(set(b.tolist())) == 4 for b in drawn)  # with replacement: distinct within a batch
    with pytest.raises(ValueError, match="at least 5 examples"):
        minibatch_indices(4, 5, 1, g1, replacement=True)


def test_evaluation_fine_tunes_with_adam_from_the_carried_state():
    model, theta, batches, cfg = setup()
    cfg.options["eval_batch"] = 0
    algo = make_algorithm(model, "mse", cfg, total_iterations=3)
    params = OrderedDict((k, v.clone()) for k, v in theta.items())
    algo.setup(params)
    for it, batch in enumerate(batches):
        algo.meta_step(params, batch, it)
    adaptation = algo.adaptation()
    assert isinstance(adaptation, LearnedAdaptation) and STATE_PREFIX + "step" in adaptation.tensors
    test = batches[0]
    path = list(trajectory_at_test_time(adaptation, model, _mse, params,
                                test.x_support, test.y_support, 3))
    state = {k[len(STATE_PREFIX) + 2:]: v for k, v in adaptation.tensors.items() if k.startswith(STATE_PREFIX + "v.")}
    t0 = int(adaptation.tensors[STATE_PREFIX + "step"])
    for i in range(test.num_tasks):  # every task starts from the same carried state
        phi = {k: v.clone() for k, v in params.items()}
        v = {k: s.clone() for k, s in state.items()}
        for s in range(3):
            leaves = {k: w.clone().requires_grad_(True) for k, w in phi.items()}
            loss = ((mlp_forward(leaves, test.x_support[i]) - test.y_support[i]) ** 2).mean(-1).sum()
            grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))
            lr_t = 0.01 * math.sqrt(1 - B2 ** (t0 + s + 1))
            for k in phi:
                v[k] = B2 * v[k] + (1 - B2) * grads[k] ** 2
                phi[k] = phi[k] - lr_t * grads[k] / (v[k].sqrt() + EPS)
            for k in phi:
                torch.testing.assert_close(path[s + 1][k][i], phi[k], rtol=1e-12, atol=1e-13)
    # without the carried state (reset, or an initialization that lacks it): fresh moments, step 1 has |step| = lr
    fresh = list(trajectory_at_test_time(cfg, model, _mse, params, test.x_support, test.y_support, 1))
    delta = (fresh[1]["2.bias"] - params["2.bias"]).abs()
    torch.testing.assert_close(delta, torch.full_like(delta, 0.01), rtol=1e-5, atol=0)
    assert "moments carried from training" in adaptation_text(adaptation)
    assert adaptation_text(AlgorithmConfig.defaults("reptile", "sinusoid")).startswith("SGD, inner lr 0.02")


def _mse(pred, y):
    return ((pred - y) ** 2).mean(dim=(1, 2))


def test_non_transductive_prediction_puts_each_query_with_the_support_set():
    class BatchStat:  # output depends on the batch: x minus the batch mean (as batch norm would)
        def forward(self, params, x):
            return x - x.mean(dim=1, keepdim=True)

    cfg = AlgorithmConfig("reptile", options={"transductive": False})
    xs, xq = torch.randn(2, 3, 1, dtype=DT), torch.randn(2, 4, 1, dtype=DT)
    out = predict(cfg, BatchStat(), {}, xs, None, xq)
    for j in range(4):
        joint = torch.cat([xs, xq[:, j:j + 1]], 1)
        torch.testing.assert_close(out[:, j], (joint - joint.mean(1, keepdim=True))[:, -1])
    cfg.options["transductive"] = True
    torch.testing.assert_close(predict(cfg, BatchStat(), {}, xs, None, xq), xq - xq.mean(1, keepdim=True))


def test_trainer_draws_train_shots_for_reptile_and_the_experiment_shots_for_the_others():
    reptile = AlgorithmConfig("reptile", inner_lr=0.02, inner_steps=2, options={"train_shots": 6, "inner_batch": 2})
    config = ExperimentConfig(task="sinusoid", shots=2, queries=3, meta_batch_size=2, iterations=2, hidden=[4],
                              val_every=0, algorithms=[AlgorithmConfig("maml"), reptile])
    trainer = Trainer(config, record_every=0)
    assert trainer.run_shots == {"maml": 2, "reptile": 6} and trainer.sample_shots == 6
    seen = {}
    for name, run in trainer.runs.items():
        original = run.algorithm.meta_step
        run.algorithm.meta_step = lambda p, b, i, _n=name, _o=original: seen.setdefault(_n, b) and _o(p, b, i)
    trainer.step()
    assert seen["reptile"].x_support.shape[1] == 6 and seen["maml"].x_support.shape[1] == 2
    torch.testing.assert_close(seen["maml"].x_support, seen["reptile"].x_support[:, :2])  # same tasks, first shots
    torch.testing.assert_close(seen["maml"].x_query, seen["reptile"].x_query)


def test_first_shots_takes_the_first_of_every_class():
    y = torch.arange(3).repeat_interleave(4).unsqueeze(0)  # 3 classes x 4 shots, class by class
    x = torch.arange(12.0).view(1, 12, 1)
    batch = TaskBatch(x, y, x[:, :2], y[:, :2], {"support_rows": torch.arange(12).unsqueeze(0)})
    cut = batch.first_shots(4, 2)
    assert cut.y_support.tolist() == [[0, 0, 1, 1, 2, 2]]
    assert cut.x_support.flatten().tolist() == [0, 1, 4, 5, 8, 9]
    assert cut.info["support_rows"].tolist() == [[0, 1, 4, 5, 8, 9]]
    with pytest.raises(ValueError):
        batch.first_shots(5, 2)


def test_image_and_sinusoid_defaults_follow_the_reference_runs():
    img = AlgorithmConfig.defaults("reptile", task="images")
    assert (img.inner_optimizer, img.inner_lr, img.inner_steps, img.test_inner_steps) == ("adam", 0.001, 5, 50)
    assert (img.outer_lr_start, img.outer_lr_end) == (1.0, 0.0)
    assert {k: img.option(k) for k in Reptile.option_defaults} == {
        "train_shots": 10, "inner_batch": 10, "eval_batch": 5, "meta_batch": 5, "adam_state": "carry",
        "replacement": False, "transductive": True}
    sine = AlgorithmConfig.defaults("reptile", task="sinusoid")
    assert (sine.inner_optimizer, sine.inner_lr, sine.inner_steps, sine.test_inner_steps) == ("sgd", 0.02, 5, 32)
    assert (sine.outer_lr_start, sine.option("train_shots"), sine.option("inner_batch"),
            sine.option("meta_batch")) == (0.1, 50, 10, 1)


def test_settings_reach_toml_and_the_cli(tmp_path):
    args = build_parser().parse_args(["train", "--task", "sinusoid", "--algorithm", "reptile", "--option",
                                      "reptile.train_shots=20", "reptile.adam_state=reset",
                                      "reptile.transductive=false", "--inner-optimizer", "adam"])
    config = _config_from_args(args)
    algo = config.algorithm("reptile")
    assert (algo.option("train_shots"), algo.option("adam_state"), algo.option("transductive")) == (20, "reset",
                                                                                                      False)
    assert algo.inner_optimizer == "adam" and algo.option("inner_batch") == 10  # the rest: sinusoid defaults
    path = tmp_path / "exp.toml"
    config.save_toml(path)
    text = path.read_text()
    assert "train_shots = 20" in text and 'adam_state = "reset"' in text
    again = ExperimentConfig.load_toml(path).algorithm("reptile")
    assert again.to_dict() == algo.to_dict()


@pytest.mark.parametrize("options, message", [
    ({"train_shots": -1}, "train_shots must be an integer >= 0"),
    ({"inner_batch": 2.5}, "inner_batch must be an integer >= 0"),
    ({"adam_state": "keep"}, "adam_state must be carry or reset"),
    ({"transductive": "yes"}, "transductive must be true or false"),
    ({"momentum": 0.9}, "reptile has no option"),
])
def test_bad_values_are_refused_with_the_reason(options, message):
    with pytest.raises(ValueError, match=message):
        AlgorithmConfig("reptile", options=options)


def test_checkpoint_state_carries_the_inner_adam_state():
    model, theta, batches, cfg = setup()
    algo = make_algorithm(model, "mse", cfg, total_iterations=3)
    params = OrderedDict((k, v.clone()) for k, v in theta.items())
    algo.setup(params)
    algo.meta_step(params, batches[0], 0)
    state = {"optimizer": None, "tensors": {k: v.clone() for k, v in algo.state_dict()["tensors"].items()}}
    other = make_algorithm(model, "mse", cfg, total_iterations=3)
    other.setup(params)
    other.load_state_dict(state)
    for k, v in algo.export_tensors().items():
        torch.testing.assert_close(other.export_tensors()[k], v)
    assert int(other.adam_step) == 12


def test_exports_carry_the_inner_adam_state_to_evaluation(tmp_path):
    from maml_lab.core.export import load_initialization
    from maml_lab.lab.initializations import adaptation_from_metadata

    reptile = AlgorithmConfig.defaults("reptile", inner_optimizer="adam", inner_lr=0.01, inner_steps=2)
    config = ExperimentConfig(task="sinusoid", shots=3, queries=3, meta_batch_size=2, iterations=2, hidden=[4],
                              val_every=0, algorithms=[reptile])
    trainer = Trainer(config, record_every=0)
    trainer.run()
    trainer.export("reptile", tmp_path / "r.safetensors")
    params, extras, meta, model = load_initialization(tmp_path / "r.safetensors", with_extras=True)
    adaptation = adaptation_from_metadata(meta, tensors=extras)
    assert isinstance(adaptation, LearnedAdaptation) and adaptation.config.option("train_shots") == 50
    assert int(adaptation.tensors[STATE_PREFIX + "step"]) == 2 * 1 * 2  # 2 iterations x meta_batch 1 x 2 steps
    second, step = Reptile.carried_state(adaptation.tensors, params)
    assert step == 4 and set(second) == set(params)
    for k, v in trainer.runs["reptile"].algorithm.adam_second.items():
        torch.testing.assert_close(second[k], v)
    assert "moments carried from training" in adaptation_text(adaptation)


def test_parameters_the_model_never_adapts_get_no_inner_step():
    model, theta, batches, cfg = setup()
    model.inner_frozen = ("2.bias",)  # as conv-4 declares its batch-norm shift under cbfinn's convention
    algo = make_algorithm(model, "mse", cfg, total_iterations=3)
    params = OrderedDict((k, v.clone()) for k, v in theta.items())
    algo.setup(params)
    algo.meta_step(params, batches[0], 0)
    assert torch.equal(params["2.bias"], theta["2.bias"]) and not torch.equal(params["2.weight"], theta["2.weight"])
    path = list(trajectory_at_test_time(algo.adaptation(), model, _mse, params, batches[1].x_support,
                                        batches[1].y_support, 2))
    assert torch.equal(path[-1]["2.bias"][0], params["2.bias"])
