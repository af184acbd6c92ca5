"""Meta-SGD against independent computations in float64: central finite differences of the meta-objective for the
gradients of theta and of the learned learning rates; exports carry the rates and evaluation uses them."""

from collections import OrderedDict

import pytest
import torch

from maml_lab.core.algorithms.base import LearnedAdaptation
from maml_lab.core.algorithms.config import AlgorithmConfig, adaptation_text, make_algorithm
from maml_lab.core.algorithms.config import test_adapt as adapt_at_test_time
from maml_lab.core.export import load_initialization
from maml_lab.core.models.mlp import MLP
from maml_lab.core.tasks.losses import mse_per_task
from maml_lab.core.tasks.sinusoid import SinusoidFamily
from maml_lab.core.training.config import ExperimentConfig
from maml_lab.core.training.trainer import Trainer

DT = torch.float64


def setup(steps=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    model = MLP([1, 6, 6, 1], "tanh")
    params = OrderedDict((k, v.requires_grad_(True)) for k, v in model.init_params(g, dtype=DT).items())
    batch = SinusoidFamily().sample(3, 5, 7, g, dtype=DT)
    algo = make_algorithm(model, "mse", AlgorithmConfig("metasgd", inner_lr=0.05, inner_steps=steps))
    algo.setup(params)
    with torch.no_grad():  # rates that differ per entry, so a wrong broadcast would show
        for v in algo.lrs.values():
            v.uniform_(0.01, 0.08, generator=g)
    return model, params, batch, algo


def objective(model, params, lrs, batch, steps) -> float:
    """The meta-objective, task by task, with no graph kept: theta'_i = theta - alpha * grad L_support_i(theta)."""
    total = 0.0
    for i in range(batch.num_tasks):
        fast = {k: v.detach().clone() for k, v in params.items()}
        for _ in range(steps):
            leaves = {k: v.requires_grad_(True) for k, v in fast.items()}
            pred = model.forward({k: v.unsqueeze(0) for k, v in leaves.items()}, batch.x_support[i:i + 1])
            grads = torch.autograd.grad(mse_per_task(pred, batch.y_support[i:i + 1]).sum(), list(leaves.values()))
            fast = {k: (v - lrs[k] * g).detach() for (k, v), g in zip(leaves.items(), grads)}
        with torch.no_grad():
            pred = model.forward({k: v.unsqueeze(0) for k, v in fast.items()}, batch.x_query[i:i + 1])
            total += mse_per_task(pred, batch.y_query[i:i + 1]).item()
    return total / batch.num_tasks


@pytest.mark.parametrize("steps", [1, 2])
def test_meta_gradient_of_theta_and_learned_rates_matches_finite_differences(steps):
    model, params, batch, algo = setup(steps)
    grads, *_ = algo.meta_gradients(params, batch)
    names = list(params)
    theta_grads = dict(zip(names, grads[:len(names)]))
    lr_grads = dict(zip(names, grads[len(names):]))
    lrs = {k: v.detach() for k, v in algo.lrs.items()}
    theta = {k: v.detach() for k, v in params.items()}
    eps = 1e-6
    g = torch.Generator().manual_seed(1)
    for which, tensors, analytic in (("theta", theta, theta_grads), ("alpha", lrs, lr_grads)):
        for name in names:
            for _ in range(2):
                idx = tuple(int(torch.randint(s, (1,), generator=g)) for s in tensors[name].shape)
                values = {}
                for sign in (1, -1):
                    moved = {k: v.clone() for k, v in tensors.items()}
                    moved[name][idx] += sign * eps
                    p, a = (moved, lrs) if which == "theta" else (theta, moved)
                    values[sign] = objective(model, p, a, batch, steps)
                numeric = (values[1] - values[-1]) / (2 * eps)
                assert analytic[name][idx].item() == pytest.approx(numeric, rel=1e-5, abs=1e-8), (which, name, idx)


def test_meta_step_updates_theta_and_the_rates_with_adam():
    model, params, batch, algo = setup(1)
    before = {k: v.detach().clone() for k, v in algo.lrs.items()}
    theta = {k: v.detach().clone() for k, v in params.items()}
    metrics = algo.meta_step(params, batch)
    assert metrics["post_loss"] < metrics["pre_loss"] * 10
    # Adam's first step moves every entry with a nonzero gradient by about meta_lr
    for k in params:
        assert not torch.equal(params[k].detach(), theta[k])
        assert not torch.equal(algo.lrs[k].detach(), before[k])
        assert (algo.lrs[k].detach() - before[k]).abs().max() <= 1.01e-3


def test_export_carries_the_rates_and_test_time_adaptation_uses_them(tmp_path):
    config = ExperimentConfig(iterations=5, meta_batch_size=4, val_every=0, hidden=[8, 8], dtype="float64",
                              algorithms=[AlgorithmConfig.defaults("metasgd")])
    trainer = Trainer(config, record_every=0)
    trainer.run()
    path = tmp_path / "metasgd.safetensors"
    trainer.export("metasgd", path)
    params, extras, meta, model = load_initialization(path, with_extras=True)
    assert sorted(meta["extra_tensors"]) == sorted(f"lr.{k}" for k in params)
    run = trainer.runs["metasgd"]
    for k, v in run.algorithm.lrs.items():
        assert torch.equal(extras[f"lr.{k}"], v.detach())
    # plain PyTorch takes theta with the extras filtered out, exactly as docs/exports.md shows
    state = {k: v for k, v in load_file_dict(path).items() if k not in meta["extra_tensors"]}
    assert set(state) == set(params)

    adaptation = run.algorithm.adaptation()
    assert isinstance(adaptation, LearnedAdaptation) and "learned per-parameter" in adaptation_text(adaptation)
    batch = SinusoidFamily().sample(2, 5, 5, torch.Generator().manual_seed(3), dtype=DT)
    adapted = adapt_at_test_time(adaptation, model, mse_per_task, params, batch.x_support, batch.y_support, 1)
    with torch.enable_grad():
        leaves = {k: v.unsqueeze(0).expand(2, *v.shape).detach().requires_grad_(True) for k, v in params.items()}
        loss = mse_per_task(model.forward(leaves, batch.x_support), batch.y_support).sum()
        grads = torch.autograd.grad(loss, list(leaves.values()))
    for (k, v), grad in zip(leaves.items(), grads):
        torch.testing.assert_close(adapted[k], v.detach() - extras[f"lr.{k}"] * grad, rtol=1e-12, atol=1e-14)
    sgd = adapt_at_test_time(adaptation.config, model, mse_per_task, params, batch.x_support, batch.y_support, 1)
    assert not torch.allclose(sgd["0.weight"], adapted["0.weight"])  # without the rates: plain SGD, different


def load_file_dict(path):
    from safetensors.torch import load_file

    return load_file(path)


def test_the_readme_plain_pytorch_meta_sgd_step_matches_the_engine(tmp_path):
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file
    from torch import nn

    from maml_lab.lab.initializations import adaptation_from_metadata

    config = ExperimentConfig(iterations=5, meta_batch_size=4, val_every=0,
                              algorithms=[AlgorithmConfig.defaults("metasgd")])
    trainer = Trainer(config, record_every=0)
    trainer.run()
    path = tmp_path / "init-metasgd.safetensors"
    trainer.export("metasgd", path)
    model = nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))
    x_support = torch.linspace(-4, 4, 5).reshape(5, 1)
    y_support = 2 * torch.sin(x_support - 1)
    # the lines of docs/exports.md, as written there
    tensors = load_file(path)
    with safe_open(str(path), "pt") as f:
        extra = json.loads(f.metadata()["maml_lab"])["extra_tensors"]
    model.load_state_dict({k: v for k, v in tensors.items() if k not in extra})
    loss = torch.nn.functional.mse_loss(model(x_support), y_support)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    with torch.no_grad():
        for (name, p), g in zip(model.named_parameters(), grads):
            p -= tensors[f"lr.{name}"] * g
    params, extras, meta, engine_model = load_initialization(path, with_extras=True)
    adapted = adapt_at_test_time(adaptation_from_metadata(meta, tensors=extras), engine_model, mse_per_task, params,
                                 x_support.unsqueeze(0), y_support.unsqueeze(0), 1)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(adapted[k][0], v, rtol=1e-5, atol=1e-6)
