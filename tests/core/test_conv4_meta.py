"""Conv-4 meta-steps: the explicit first inner step and every batching strategy equal a per-task autograd loop
in float64, first and second order."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F

from maml_lab.core.algorithms.adaptation import adapt, expand_params
from maml_lab.core.algorithms.config import AlgorithmConfig, make_algorithm
from maml_lab.core.models.conv4 import Conv4
from maml_lab.core.tasks.base import TaskBatch
from maml_lab.core.tasks.losses import cross_entropy_per_task

B, WAYS, SHOTS, QUERIES = 3, 3, 2, 2


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(**kw):
    base = dict(in_channels=1, image_size=14, ways=WAYS, filters=4)
    base.update(kw)
    return Conv4(**base)


def _theta(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = model.init_params(g, dtype=torch.float64)
    # non-trivial batch-norm parameters, so their gradients are tested too
    return OrderedDict((k, v + 0.1 * torch.randn(v.shape, generator=g, dtype=v.dtype)) for k, v in params.items())


def _batch(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    c, (h, w) = model.in_channels, model.image_size
    labels = torch.arange(WAYS).repeat_interleave(SHOTS).repeat(B, 1)
    qlabels = torch.arange(WAYS).repeat_interleave(QUERIES).repeat(B, 1)
    return TaskBatch(torch.rand(B, WAYS * SHOTS, c, h, w, generator=g, dtype=torch.float64), labels,
                     torch.rand(B, WAYS * QUERIES, c, h, w, generator=g, dtype=torch.float64), qlabels)


def _reference_forward(model, p, x):
    """Plain PyTorch for one task: what `Conv4.torch_module()` computes."""
    h = x
    for k in range(model.blocks):
        conv, bn = model._names(k)
        h = F.conv2d(h, p[f"{conv}.weight"], p[f"{conv}.bias"], stride=model._stride, padding=1)
        h = F.relu(F.batch_norm(h, None, None, p[f"{bn}.weight"], p[f"{bn}.bias"], training=True, eps=model.eps))
        if model.downsample == "maxpool":
            h = F.max_pool2d(h, 2)
    return F.linear(h.flatten(1), p[f"{model._head}.weight"], p[f"{model._head}.bias"])


def _reference_meta_gradient(model, theta, batch, steps, lr, first_order):
    """The straightforward per-task loop: autograd per task, mean query loss over tasks."""
    params = OrderedDict((k, v.detach().clone().requires_grad_(True)) for k, v in theta.items())
    total = 0.0
    for i in range(batch.num_tasks):
        fast = dict(params)
        for _ in range(steps):
            loss = F.cross_entropy(_reference_forward(model, fast, batch.x_support[i]), batch.y_support[i])
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
            fast = {k: v - lr * g for (k, v), g in zip(fast.items(), grads)}
        total = total + F.cross_entropy(_reference_forward(model, fast, batch.x_query[i]), batch.y_query[i])
    return torch.autograd.grad(total / batch.num_tasks, list(params.values()))


def test_explicit_first_step_matches_autograd_first_and_second_order():
    model = _model()
    theta = OrderedDict((k, v.requires_grad_(True)) for k, v in _theta(model).items())
    batch = _batch(model)
    explicit = model.batched_loss_grad(expand_params(theta, B), batch.x_support, batch.y_support,
                                       cross_entropy_per_task)
    assert explicit is not None
    losses, grads = explicit
    model.batched = "grouped"  # autograd through another code path
    leaves = expand_params(theta, B)
    ref_losses = cross_entropy_per_task(model.forward(leaves, batch.x_support), batch.y_support)
    ref_grads = torch.autograd.grad(ref_losses.sum(), list(leaves.values()), create_graph=True)
    torch.testing.assert_close(losses, ref_losses)
    for name, g, r in zip(theta, grads, ref_grads):
        assert g.shape == (B, *theta[name].shape)
        torch.testing.assert_close(g, r, atol=1e-11, rtol=1e-9, msg=name)
    # second order: the same vector-Jacobian products of the gradients with respect to theta
    g = torch.Generator().manual_seed(5)
    cotangents = [torch.randn(r.shape, generator=g, dtype=r.dtype) for r in ref_grads]
    ours = torch.autograd.grad(sum((a * c).sum() for a, c in zip(grads, cotangents)), list(theta.values()),
                               allow_unused=True, materialize_grads=True)
    ref = torch.autograd.grad(sum((a * c).sum() for a, c in zip(ref_grads, cotangents)), list(theta.values()),
                              allow_unused=True, materialize_grads=True)
    for name, a, r in zip(theta, ours, ref):
        torch.testing.assert_close(a, r, atol=1e-10, rtol=1e-8, msg=name)


@pytest.mark.parametrize("batched", ["auto", "grouped", "loop"])
@pytest.mark.parametrize("algorithm, steps", [("maml", 1), ("maml", 2), ("fomaml", 1)])
def test_meta_step_equals_per_task_loop(batched, algorithm, steps):
    model = _model(batched=batched)
    theta = _theta(model)
    batch = _batch(model)
    cfg = AlgorithmConfig.defaults(algorithm, inner_lr=0.3, inner_steps=steps)
    algo = make_algorithm(model, "cross_entropy", cfg)
    params = OrderedDict((k, v.clone().requires_grad_(True)) for k, v in theta.items())
    grads, meta_loss, _, _ = algo.meta_gradient(params, batch, first_order=algorithm == "fomaml")
    expected = _reference_meta_gradient(model, theta, batch, steps, 0.3, algorithm == "fomaml")
    for name, g, r in zip(theta, grads, expected):
        torch.testing.assert_close(g, r, atol=1e-10, rtol=1e-8, msg=name)


def test_maxpool_model_uses_autograd_and_matches_loop():
    model = _model(in_channels=3, image_size=16, downsample="maxpool")
    theta = _theta(model)
    batch = _batch(model)
    assert model.batched_loss_grad(expand_params(theta, B), batch.x_support, batch.y_support,
                                   cross_entropy_per_task) is None
    algo = make_algorithm(model, "cross_entropy", AlgorithmConfig.defaults("maml", inner_lr=0.3))
    params = OrderedDict((k, v.clone().requires_grad_(True)) for k, v in theta.items())
    grads = algo.meta_gradient(params, batch, first_order=False)[0]
    expected = _reference_meta_gradient(model, theta, batch, 1, 0.3, False)
    for name, g, r in zip(theta, grads, expected):
        torch.testing.assert_close(g, r, atol=1e-10, rtol=1e-8, msg=name)


@pytest.mark.parametrize("batched", ["loop", "grouped", "vmap"])
def test_strategies_agree_and_shared_views_stay_per_task_under_autograd(batched):
    model = _model(batched=batched)
    theta = _theta(model)
    batch = _batch(model)
    shared = model.forward(theta, batch.x_query)
    for i in range(B):
        torch.testing.assert_close(shared[i], _reference_forward(model, theta, batch.x_query[i]))
    # expanded leaves that require grad: the gradient of the summed losses is each task's own gradient
    leaves = OrderedDict((k, v.detach().requires_grad_(True)) for k, v in expand_params(theta, B).items())
    loss = cross_entropy_per_task(model.forward(leaves, batch.x_support), batch.y_support).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    p0 = OrderedDict((k, v.clone().requires_grad_(True)) for k, v in theta.items())
    g0 = torch.autograd.grad(F.cross_entropy(_reference_forward(model, p0, batch.x_support[0]), batch.y_support[0]),
                             list(p0.values()))
    for name, g, r in zip(theta, grads, g0):
        torch.testing.assert_close(g[0], r, msg=name)


def test_evaluation_adaptation_uses_shared_path_and_improves():
    model = _model()
    theta = _theta(model)
    batch = _batch(model)
    res = adapt(model, cross_entropy_per_task, theta, batch.x_support, batch.y_support, steps=3, lr=0.3,
                final_loss=True)
    assert res.support_losses[-1].mean() < res.support_losses[0].mean()
    assert all(v.shape[0] == B for v in res.params.values())
