"""MAML++ against an independent computation in float64: the meta-objective written task by task on plain PyTorch
modules (torch.func.functional_call on the model's torch_module()), differentiated by autograd, for the gradients
of theta, of the learned per-step rates and of the per-step batch-norm rows (a tiny conv-4 and the MLP); the code's
annealed step weights; training, exact resumption, export and import through the CLI."""

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from maml_lab.core.algorithms.config import AlgorithmConfig, adaptation_text, make_algorithm
from maml_lab.core.algorithms.config import test_trajectory as trajectory_at_test_time
from maml_lab.core.algorithms.mamlpp import step_loss_weights
from maml_lab.core.export import load_initialization
from maml_lab.core.models.conv4 import Conv4
from maml_lab.core.models.mlp import MLP
from maml_lab.core.tasks.base import TaskBatch
from maml_lab.core.tasks.losses import cross_entropy_per_task
from maml_lab.core.tasks.sinusoid import SinusoidFamily

DT = torch.float64


def conv_case(steps, seed=0, tasks=3):
    g = torch.Generator().manual_seed(seed)
    model = Conv4(in_channels=1, image_size=8, ways=3, filters=3)
    x_s = torch.rand(tasks, 3, 1, 8, 8, generator=g, dtype=DT)
    x_q = torch.rand(tasks, 6, 1, 8, 8, generator=g, dtype=DT)
    y_s = torch.arange(3).repeat(tasks, 1)
    y_q = torch.arange(3).repeat_interleave(2).repeat(tasks, 1)
    return model, "cross_entropy", TaskBatch(x_s, y_s, x_q, y_q), g


def mlp_case(steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    model = MLP([1, 6, 6, 1], "tanh")
    return model, "mse", SinusoidFamily().sample(3, 5, 7, g, dtype=DT), g


def build(case, steps, options=None, seed=0):
    model, loss, batch, g = case(steps, seed)
    params = OrderedDict((k, v.requires_grad_(True)) for k, v in model.init_params(g, dtype=DT).items())
    cfg = AlgorithmConfig("mamlpp", inner_lr=0.05, inner_steps=steps, options=dict(options or {}))
    algo = make_algorithm(model, loss, cfg, 100)
    algo.setup(params)
    with torch.no_grad():  # values that differ per step and per entry, so a wrong index would show
        for v in algo.lrs.values():
            v.uniform_(0.02, 0.08, generator=g)
        for v in algo.bn_rows.values():
            v.add_(0.3 * torch.randn(v.shape, generator=g, dtype=DT))
        for v in params.values():
            v.add_(0.05 * torch.randn(v.shape, generator=g, dtype=DT))
    return model, loss, batch, params, algo


def reference_objective(model, loss, batch, theta, lrs, bn_rows, weights, second_order):
    """sum_s w_s * mean_i L_query_i after step s, task by task, on the plain nn.Module: step s uses rates [s] and
    batch-norm rows [s]; batch-norm parameters are never adapted."""
    module = model.torch_module().to(DT)
    crit = (lambda out, y: F.cross_entropy(out, y)) if loss == "cross_entropy" else (lambda out, y: F.mse_loss(out, y))
    total = 0.0
    for i in range(batch.num_tasks):
        fast = {k: v for k, v in theta.items() if k in lrs}
        for s, w in enumerate(weights):
            def call(x, fast=fast, s=s):
                p = dict(theta)
                p.update(fast)
                p.update({k: rows[s] for k, rows in bn_rows.items()})
                return functional_call(module, p, (x,))
            support = crit(call(batch.x_support[i]), batch.y_support[i])
            grads = torch.autograd.grad(support, list(fast.values()), create_graph=second_order)
            fast = {k: v - lrs[k][s] * gr for (k, v), gr in zip(fast.items(), grads)}
            if w:
                total = total + w * crit(call(batch.x_query[i], fast), batch.y_query[i])
    return total / batch.num_tasks


@pytest.mark.parametrize("case,steps,options,iteration", [
    (conv_case, 2, {}, 0),
    (conv_case, 3, {"msl_epochs": 4, "epoch_iterations": 2}, 3),  # epoch 1: annealed weights
    (conv_case, 2, {"first_order_epochs": 1}, 0),  # first order
    (conv_case, 2, {"per_step_bn": False}, 0),  # theta's batch norm, meta-learned only
    (mlp_case, 2, {}, 0),
    (mlp_case, 3, {"msl_epochs": 2, "epoch_iterations": 1}, 1),
])
def test_meta_gradients_match_an_independent_autograd_computation(case, steps, options, iteration):
    model, loss, batch, params, algo = build(case, steps, options)
    grads, *_ = algo.meta_gradients(params, batch, iteration)
    analytic = dict(zip(map(id, algo.trained), grads))
    theta = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    lrs = {k: v.detach().clone().requires_grad_(True) for k, v in algo.lrs.items()}
    rows = {k: v.detach().clone().requires_grad_(True) for k, v in algo.bn_rows.items()}
    weights = algo.loss_weights(iteration)
    objective = reference_objective(model, loss, batch, theta, lrs, rows, weights, algo.second_order(iteration))
    wanted = {**{("theta", k): v for k, v in theta.items()}, **{("lslr", k): v for k, v in lrs.items()},
              **{("bn", k): v for k, v in rows.items()}}
    reference = dict(zip(wanted, torch.autograd.grad(objective, list(wanted.values()), allow_unused=True)))
    live = {**{("theta", k): v for k, v in params.items()}, **{("lslr", k): v for k, v in algo.lrs.items()},
            **{("bn", k): v for k, v in algo.bn_rows.items()}}
    checked = 0
    for key, tensor in live.items():
        ref = reference[key]
        if id(tensor) not in analytic:  # theta's batch-norm entries, replaced by the per-step rows
            assert key[0] == "theta" and key[1] in algo.bn_rows and ref is None
            continue
        torch.testing.assert_close(analytic[id(tensor)], torch.zeros_like(tensor) if ref is None else ref,
                                   rtol=1e-9, atol=1e-11, msg=lambda m, key=key: f"{key}: {m}")
        checked += 1
    assert checked == len(algo.trained)
    if case is conv_case and options.get("per_step_bn", True):
        assert len(algo.bn_rows) == 8 and all(v.shape == (steps, 3) for v in algo.bn_rows.values())
        assert any(g.abs().max() > 0 for k, g in zip(algo.trained, grads) if k.dim() == 2 and k.shape[0] == steps)


def test_step_weights_follow_the_reference_code():
    assert step_loss_weights(5, 0, 10) == pytest.approx([0.2] * 5)
    # epoch 5 of 10: non-final weights decay by 1/(5*10) per epoch; the final one gains what they lose
    assert step_loss_weights(5, 5, 10) == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.6])
    assert step_loss_weights(5, 9, 10) == pytest.approx([0.02] * 4 + [0.92])
    assert step_loss_weights(5, 49, 50) == pytest.approx([0.006] * 4 + [0.976])  # floors at 0.03 / 5
    assert step_loss_weights(5, 10, 10) == [0, 0, 0, 0, 1.0]  # from msl_epochs on: the last step only
    assert step_loss_weights(1, 0, 10) == [1.0]
    assert step_loss_weights(3, 0, 0) == [0, 0, 1.0]


def test_meta_step_trains_rates_and_rows_and_keeps_theta_bn_at_row_zero():
    model, loss, batch, params, algo = build(conv_case, 2)
    before = {k: v.detach().clone() for k, v in algo.export_tensors().items()}
    metrics = algo.meta_step(params, batch, 0)
    assert set(metrics) == {"pre_loss", "post_loss", "pre_accuracy", "post_accuracy"}
    for k, v in algo.export_tensors().items():
        if k.endswith(".bias") and k.startswith("lslr.") and k != "lslr.13.bias":
            continue  # a convolution's bias before batch norm has no effect, so no gradient
        assert not torch.equal(v.detach(), before[k]), k
    for k, rows in algo.bn_rows.items():
        assert torch.equal(params[k].detach(), rows[0].detach())


def test_options_are_checked():
    with pytest.raises(ValueError, match="msl_epochs must be an integer >= 0"):
        AlgorithmConfig("mamlpp", options={"msl_epochs": -1})
    with pytest.raises(ValueError, match="learn_lrs must be true or false"):
        AlgorithmConfig("mamlpp", options={"learn_lrs": "yes"})
    with pytest.raises(ValueError, match="has no option"):
        AlgorithmConfig("mamlpp", options={"lslr": 1})
    with pytest.raises(ValueError, match="step-loss-weights"):
        AlgorithmConfig("mamlpp", inner_steps=2, step_loss_weights=[0.5, 0.5])
    cfg = AlgorithmConfig.defaults("mamlpp", task="images")
    assert (cfg.inner_steps, cfg.inner_lr, cfg.test_inner_steps, cfg.meta_lr_schedule) == (5, 0.1, 5, "cosine")


def test_fixed_rates_are_not_trained():
    model, loss, batch, params, algo = build(mlp_case, 2, {"learn_lrs": False})
    before = {k: v.detach().clone() for k, v in algo.lrs.items()}
    algo.meta_step(params, batch, 0)
    assert all(torch.equal(v, before[k]) for k, v in algo.lrs.items())


def test_test_trajectory_uses_the_learned_rates_and_rows_and_the_last_ones_beyond():
    model, loss, batch, params, algo = build(conv_case, 2)
    adaptation = algo.adaptation()
    assert "MAML++" in adaptation_text(adaptation)
    path = list(trajectory_at_test_time(adaptation, model, cross_entropy_per_task, params, batch.x_support,
                                        batch.y_support, 4))
    assert len(path) == 5
    lrs, rows = adaptation.tensors, algo.bn_rows
    module = model.torch_module().to(DT)
    for i in range(batch.num_tasks):
        fast = {k: v.detach().clone() for k, v in params.items() if k in algo.lrs}
        for s in range(4):
            r = min(s, 1)  # beyond the two trained steps: the last step's rates and rows
            p = {k: v.detach() for k, v in params.items()}
            p.update({k: v.requires_grad_(True) for k, v in fast.items()})
            p.update({k: v[r].detach() for k, v in rows.items()})
            out = functional_call(module, p, (batch.x_support[i],))
            grads = torch.autograd.grad(F.cross_entropy(out, batch.y_support[i]), list(fast.values()))
            fast = {k: (v - lrs[f"lslr.{k}"][r] * g).detach() for (k, v), g in zip(fast.items(), grads)}
            for k, v in fast.items():
                torch.testing.assert_close(path[s + 1][k][i], v, rtol=1e-10, atol=1e-12)
            for k in rows:
                torch.testing.assert_close(path[s + 1][k][i], rows[k][r].detach())


def test_cli_trains_resumes_exactly_exports_and_imports(tmp_path, capsys):
    from maml_lab.cli import main
    from maml_lab.core.training.runs import RunFolder
    from maml_lab.lab.session import TrainingSession

    whole, part = tmp_path / "whole", tmp_path / "part"
    assert main(["train", "--task", "sinusoid", "--algorithm", "mamlpp", "--meta-batch-size", "2", "--inner-steps",
                 "2", "--hidden", "8", "8", "--val-every", "0", "--iterations", "6", "--option",
                 "mamlpp.epoch_iterations=2", "mamlpp.msl_epochs=2", "mamlpp.first_order_epochs=1",
                 "--run-dir", str(whole), "--out", str(tmp_path / "whole.safetensors"), "--quiet"]) == 0
    # the same experiment, interrupted after 3 of its 6 iterations (first order and annealed weights still on)
    session = TrainingSession.create(RunFolder.open(whole).config(), run_dir=part, checkpoint_every=3)
    assert session.run(iterations=3) == "stopped"
    assert main(["train", "--resume", str(part), "--out", str(tmp_path / "part.safetensors"), "--quiet"]) == 0
    a, extras_a, meta, _ = load_initialization(tmp_path / "whole.safetensors", with_extras=True)
    b, extras_b, _, _ = load_initialization(tmp_path / "part.safetensors", with_extras=True)
    assert sorted(meta["extra_tensors"]) == sorted(extras_a)
    assert all(k.startswith("lslr.") and extras_a[k].shape == (2,) for k in extras_a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for k in extras_a:
        assert torch.equal(extras_a[k], extras_b[k]), k
    assert meta["hyperparameters"]["epoch_iterations"] == 2
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "whole.safetensors"), "--tasks", "4", "--steps", "2"]) == 0
    assert "MAML++" in capsys.readouterr().out


def test_the_readme_plain_pytorch_mamlpp_steps_match_the_engine(tmp_path):
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file

    from maml_lab.core.algorithms.config import test_adapt as adapt_at_test_time
    from maml_lab.core.export import build_metadata, export_initialization
    from maml_lab.lab.initializations import adaptation_from_metadata

    engine_model, _, batch, params, algo = build(conv_case, 2)
    algo.meta_step(params, batch, 0)
    path = tmp_path / "init-mamlpp.safetensors"
    meta = build_metadata("mamlpp", engine_model.spec(), {"name": "images"}, algo.config.to_dict(), 1)
    export_initialization(path, {k: v.float() for k, v in params.items()}, meta,
                          extra_tensors={k: v.float() for k, v in algo.export_tensors().items()})
    model = engine_model.torch_module()
    x_support, y_support = batch.x_support[0].float(), batch.y_support[0]
    x_query, steps = batch.x_query[0].float(), 3
    # the lines of docs/exports.md, as written there
    tensors = load_file(path)
    with safe_open(str(path), "pt") as f:
        extra = json.loads(f.metadata()["maml_lab"])["extra_tensors"]
    model.load_state_dict({k: v for k, v in tensors.items() if k not in extra})
    lslr = {k[len("lslr."):]: v for k, v in tensors.items() if k.startswith("lslr.")}
    bn_step = {k[len("bn_step."):]: v for k, v in tensors.items() if k.startswith("bn_step.")}
    fast = {k: v.detach() for k, v in model.named_parameters()}
    for s in range(steps):
        r = min(s, len(next(iter(lslr.values()))) - 1)
        leaves = {k: fast[k].requires_grad_() for k in lslr}
        p = {**fast, **leaves, **{k: rows[r] for k, rows in bn_step.items()}}
        loss = F.cross_entropy(functional_call(model, p, (x_support,)), y_support)
        grads = torch.autograd.grad(loss, list(leaves.values()))
        fast.update({k: (v - lslr[k][r] * g).detach() for (k, v), g in zip(leaves.items(), grads)})
    logits = functional_call(model, {**fast, **{k: rows[r] for k, rows in bn_step.items()}}, (x_query,))
    # the engine, from the same file
    theta, extras, meta, loaded = load_initialization(path, with_extras=True)
    adapted = adapt_at_test_time(adaptation_from_metadata(meta, tensors=extras), loaded, cross_entropy_per_task,
                                 theta, x_support.unsqueeze(0), y_support.unsqueeze(0), steps)
    for k, v in {**fast, **{k: rows[r] for k, rows in bn_step.items()}}.items():
        torch.testing.assert_close(adapted[k][0], v, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loaded.forward(adapted, x_query.unsqueeze(0))[0], logits, rtol=1e-4, atol=1e-5)
