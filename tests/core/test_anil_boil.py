"""ANIL (inner loop on the head only) and BOIL (on the body only) against independent computations in float64: the
meta-gradient of a per-task loop written here with plain autograd (the adapted subset stepped, the rest held at
theta), on an MLP and a tiny conv-4; test-time adaptation changes only the adapted subset; training resumes exactly
from a checkpoint; exports and imports through the CLI carry the rule."""

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F

from maml_lab.core.algorithms.config import AlgorithmConfig, make_algorithm
from maml_lab.core.algorithms.config import test_adapt as adapt_at_test_time
from maml_lab.core.algorithms.registry import algorithm_class, algorithm_names
from maml_lab.core.models.conv4 import Conv4
from maml_lab.core.models.mlp import MLP
from maml_lab.core.tasks.base import TaskBatch
from maml_lab.core.tasks.losses import cross_entropy_per_task, mse_per_task
from maml_lab.core.tasks.sinusoid import SinusoidFamily

DT = torch.float64
HEAD = {"mlp": ("4.weight", "4.bias"), "conv4": ("13.weight", "13.bias")}


def tiny_conv4():
    return Conv4(in_channels=1, image_size=8, ways=3, filters=3)


def image_batch(g, tasks=2, ways=3, shots=1, queries=2):
    x_s = torch.rand(tasks, ways * shots, 1, 8, 8, generator=g, dtype=DT)
    x_q = torch.rand(tasks, ways * queries, 1, 8, 8, generator=g, dtype=DT)
    y_s = torch.arange(ways).repeat_interleave(shots).expand(tasks, -1).contiguous()
    y_q = torch.arange(ways).repeat_interleave(queries).expand(tasks, -1).contiguous()
    return TaskBatch(x_s, y_s, x_q, y_q)


def make(kind, name, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind == "mlp":
        model, loss = MLP([1, 5, 4, 1], "tanh"), "mse"
        batch = SinusoidFamily().sample(3, 5, 6, g, dtype=DT)
    else:
        model, loss = tiny_conv4(), "cross_entropy"
        batch = image_batch(g)
    params = OrderedDict((k, v.requires_grad_(True)) for k, v in model.init_params(g, dtype=DT).items())
    if kind == "conv4":  # batch-norm weights away from 1 and 0, so their gradients are generic
        with torch.no_grad():
            for v in params.values():
                if v.dim() == 1:
                    v.add_(0.3 * torch.rand(v.shape, generator=g, dtype=DT))
    algo = make_algorithm(model, loss, AlgorithmConfig(name, inner_lr=0.3 if kind == "mlp" else 0.5,
                                                       inner_steps=steps))
    algo.setup(params)
    return model, params, batch, algo


def task_loss(kind, logits, y):
    if kind == "mlp":
        return ((logits - y) ** 2).mean()
    return F.cross_entropy(logits, y)


def reference_meta_gradient(kind, model, params, batch, adapted, steps, lr):
    """One task at a time, second order, with plain autograd: only the `adapted` names take inner steps."""
    total = 0.0
    for i in range(batch.num_tasks):
        fast = dict(params)
        for _ in range(steps):
            logits = model.forward({k: v.unsqueeze(0) for k, v in fast.items()}, batch.x_support[i:i + 1])[0]
            inner = task_loss(kind, logits, batch.y_support[i])
            names = [k for k in fast if k in adapted]
            grads = torch.autograd.grad(inner, [fast[k] for k in names], create_graph=True)
            fast.update({k: fast[k] - lr * g for k, g in zip(names, grads)})
        logits = model.forward({k: v.unsqueeze(0) for k, v in fast.items()}, batch.x_query[i:i + 1])[0]
        total = total + task_loss(kind, logits, batch.y_query[i])
    return torch.autograd.grad(total / batch.num_tasks, list(params.values()))


@pytest.mark.parametrize("kind", ["mlp", "conv4"])
@pytest.mark.parametrize("name", ["anil", "boil"])
@pytest.mark.parametrize("steps", [1, 2])
def test_meta_gradient_matches_an_independent_per_task_loop(kind, name, steps):
    model, params, batch, algo = make(kind, name, steps)
    head = set(HEAD[kind])
    adapted = head if name == "anil" else set(params) - head
    grads, meta_loss, res, _ = algo.meta_gradient(params, batch, first_order=False)
    expected = reference_meta_gradient(kind, model, params, batch, adapted, steps, algo.config.inner_lr)
    for k, g, e in zip(params, grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12, msg=f"{name} {kind} {k}")
    # the outer loop trains everything: ANIL's body and BOIL's head get a meta-gradient too
    grad = dict(zip(params, grads))
    first = next(iter(params))
    assert all(grad[k].abs().sum() > 0 for k in (first, *HEAD[kind]))
    # the held-out part of the inner loop stays at theta: ANIL's body, BOIL's head
    # (conv-4's conv biases get exactly zero inner gradients on its explicit path: batch norm removes a shift)
    conv_biases = {f"{model._names(i)[0]}.bias" for i in range(model.blocks)} if kind == "conv4" else set()
    for k in params:
        moved = not torch.equal(res.params[k][0].detach(), params[k].detach())
        assert moved == (k in adapted) or (k in conv_biases and not moved), k


@pytest.mark.parametrize("name", ["anil", "boil"])
def test_multi_step_loss_meta_gradient_matches_the_per_task_loop(name):
    """step_loss_weights (MAML++'s multi-step loss, which ANIL and BOIL take as MAML does) on the same subset."""
    model, params, batch, _ = make("mlp", name, 2)
    weights = [0.3, 0.7]
    algo = make_algorithm(model, "mse", AlgorithmConfig(name, inner_lr=0.3, inner_steps=2, step_loss_weights=weights))
    algo.setup(params)
    grads, *_ = algo.meta_gradient(params, batch, first_order=False)
    head = set(HEAD["mlp"])
    adapted = head if name == "anil" else set(params) - head
    total = 0.0
    for i in range(batch.num_tasks):
        fast = dict(params)
        for w in weights:
            logits = model.forward({k: v.unsqueeze(0) for k, v in fast.items()}, batch.x_support[i:i + 1])[0]
            names = [k for k in fast if k in adapted]
            step = torch.autograd.grad(task_loss("mlp", logits, batch.y_support[i]), [fast[k] for k in names],
                                       create_graph=True)
            fast.update({k: fast[k] - 0.3 * g for k, g in zip(names, step)})
            query = model.forward({k: v.unsqueeze(0) for k, v in fast.items()}, batch.x_query[i:i + 1])[0]
            total = total + w * task_loss("mlp", query, batch.y_query[i])
    expected = torch.autograd.grad(total / batch.num_tasks, list(params.values()))
    for k, g, e in zip(params, grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12, msg=f"{name} {k}")


@pytest.mark.parametrize("kind", ["mlp", "conv4"])
@pytest.mark.parametrize("name", ["anil", "boil"])
def test_test_time_adaptation_moves_the_same_subset_and_equals_sgd_on_it(kind, name):
    model, params, batch, algo = make(kind, name, 1)
    loss_fn = mse_per_task if kind == "mlp" else cross_entropy_per_task
    theta = {k: v.detach() for k, v in params.items()}
    adapted = adapt_at_test_time(algo.config, model, loss_fn, theta, batch.x_support, batch.y_support, 2)
    head = set(HEAD[kind])
    subset = head if name == "anil" else set(params) - head
    # two plain SGD steps on the subset, task by task, the rest fixed
    for i in range(batch.num_tasks):
        fast = {k: v.clone() for k, v in theta.items()}
        for _ in range(2):
            leaves = {k: v.detach().requires_grad_(k in subset) for k, v in fast.items()}
            with torch.enable_grad():
                loss = loss_fn(model.forward({k: v.unsqueeze(0) for k, v in leaves.items()},
                                             batch.x_support[i:i + 1]), batch.y_support[i:i + 1]).sum()
                names = [k for k in leaves if k in subset]
                grads = dict(zip(names, torch.autograd.grad(loss, [leaves[k] for k in names])))
            fast = {k: (v - algo.config.inner_lr * grads[k] if k in grads else v).detach() for k, v in leaves.items()}
        for k in theta:
            torch.testing.assert_close(adapted[k][i], fast[k], rtol=1e-10, atol=1e-12)
            assert torch.equal(adapted[k][i], theta[k]) == (k not in subset), k
    text = algorithm_class(name).test_adaptation_text(algo.config)
    assert ("head only" if name == "anil" else "body only") in text and f"{algo.config.inner_lr:g}" in text


def test_registered_with_their_rules_and_bad_rules_are_refused():
    from maml_lab.core.algorithms.adaptation import adapt, adapted_subset

    assert {"anil", "boil"} <= set(algorithm_names())
    assert algorithm_class("anil").adapts == "head" and algorithm_class("boil").adapts == "body"
    model = MLP([1, 3, 1])
    params = model.init_params(torch.Generator().manual_seed(0))
    assert adapted_subset(model, params, "head") == ("2.weight", "2.bias")
    assert adapted_subset(model, params, "body") == ("0.weight", "0.bias")
    assert adapted_subset(model, params, "all") is None
    with pytest.raises(ValueError, match="unknown adaptation rule 'legs'"):
        adapted_subset(model, params, "legs")
    with pytest.raises(ValueError, match="cannot adapt unknown parameter"):
        adapt(model, mse_per_task, params, torch.zeros(1, 2, 1), torch.zeros(1, 2, 1), 1, 0.1, names=["9.weight"])

    class Headless:
        def forward(self, params, x):
            return x

    with pytest.raises(ValueError, match="does not name its head"):
        adapted_subset(Headless(), params, "head")


@pytest.mark.parametrize("name", ["anil", "boil"])
def test_train_resume_exactly_export_and_eval_through_the_cli(name, tmp_path, capsys):
    from safetensors.torch import load_file

    from maml_lab.cli import main
    from maml_lab.core.export import load_initialization
    from maml_lab.lab.initializations import adaptation_from_metadata

    common = ["train", "--task", "sinusoid", "--algorithm", name, "--meta-batch-size", "4", "--hidden", "8", "8",
              "--seed", "5", "--checkpoint-every", "3", "--threads", "1", "--quiet"]
    whole = tmp_path / "whole.safetensors"
    assert main([*common, "--iterations", "6", "--run-dir", str(tmp_path / "whole"), "--out", str(whole)]) == 0
    part = tmp_path / "part"
    assert main([*common, "--iterations", "3", "--run-dir", str(part)]) == 0
    assert main(["train", "--resume", str(part), "--iterations", "6", "--threads", "1", "--quiet"]) == 0
    a, b = load_file(whole), load_file(part / "exports" / f"{name}.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    capsys.readouterr()
    assert main(["eval", str(whole), "--tasks", "10", "--steps", "1", "2"]) == 0
    assert ("SGD on the head only" if name == "anil" else "SGD on the body only") in capsys.readouterr().out

    # imported: the file's metadata brings the rule back
    params, meta, model = load_initialization(whole)
    adaptation = adaptation_from_metadata(meta)
    assert adaptation.name == name
    batch = SinusoidFamily().sample(2, 5, 5, torch.Generator().manual_seed(3))
    adapted = adapt_at_test_time(adaptation, model, mse_per_task, params, batch.x_support, batch.y_support, 1)
    head = {"4.weight", "4.bias"}
    for k in params:
        assert torch.equal(adapted[k][0], params[k]) == ((k in head) != (name == "anil")), k


def test_the_readme_plain_pytorch_anil_step_matches_the_engine(tmp_path):
    from safetensors.torch import load_file
    from torch import nn

    from maml_lab.core.export import load_initialization
    from maml_lab.core.training.config import ExperimentConfig
    from maml_lab.core.training.trainer import Trainer
    from maml_lab.lab.initializations import adaptation_from_metadata

    config = ExperimentConfig(iterations=3, meta_batch_size=4, val_every=0,
                              algorithms=[AlgorithmConfig.defaults("anil")])
    trainer = Trainer(config, record_every=0)
    trainer.run()
    path = tmp_path / "init-anil.safetensors"
    trainer.export("anil", path)
    model = nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))
    model.load_state_dict(load_file(path))
    x_support = torch.linspace(-4, 4, 5).reshape(5, 1)
    y_support = 2 * torch.sin(x_support - 1)
    inner_lr = 0.01
    # the lines of docs/algorithms.md, as written there
    head = ["4.weight", "4.bias"]                                            # the last linear layer; BOIL: all others
    loss = torch.nn.functional.mse_loss(model(x_support), y_support)
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(loss, [params[k] for k in head])
    with torch.no_grad():
        for k, g in zip(head, grads):
            params[k] -= inner_lr * g
    theta, meta, engine_model = load_initialization(path)
    adapted = adapt_at_test_time(adaptation_from_metadata(meta), engine_model, mse_per_task, theta,
                                 x_support.unsqueeze(0), y_support.unsqueeze(0), 1)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(adapted[k][0], v, rtol=1e-5, atol=1e-6)
    assert not torch.equal(adapted["4.weight"][0], theta["4.weight"])


def test_the_landscape_adapts_the_same_subset_and_an_empty_subset_takes_no_step():
    from maml_lab.core.algorithms.adaptation import adapt
    from maml_lab.core.analysis.landscape import surface
    from maml_lab.core.analysis.trajectory import random_plane

    model, params, batch, _ = make("mlp", "anil", 1)
    theta = OrderedDict((k, v.detach()) for k, v in params.items())
    plane = random_plane(theta, seed=0)
    values = {}
    for names in (HEAD["mlp"], None):
        values[names] = surface(model, "mse", theta, plane, batch, [0.0], [0.0], "post", inner_steps=2,
                                inner_lr=0.3, names=names).values[0, 0]
        res = adapt(model, mse_per_task, theta, batch.x_support, batch.y_support, 2, 0.3, names=names)
        expected = mse_per_task(model.forward(res.params, batch.x_query), batch.y_query).mean().item()
        assert values[names] == pytest.approx(expected, rel=1e-9)
    assert values[HEAD["mlp"]] != pytest.approx(values[None], rel=1e-3)
    one_layer = MLP([1, 1])
    p = one_layer.init_params(torch.Generator().manual_seed(0), dtype=DT)
    res = adapt(one_layer, mse_per_task, p, batch.x_support, batch.y_support, 2, 0.3, names=(), final_loss=True)
    assert all(torch.equal(res.params[k][0], p[k]) for k in p) and len(res.support_losses) == 3
