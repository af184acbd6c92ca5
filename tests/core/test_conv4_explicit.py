"""Conv-4's explicit (autograd-free) MAML meta-gradient equals autograd in float64: the support gradients,
the Hessian-vector products (R-operator through conv, batch norm with batch statistics, ReLU, cross-entropy),
the query gradients and the whole meta-gradient, first and second order."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F

from maml_lab.core.algorithms.config import AlgorithmConfig, make_algorithm
from maml_lab.core.models import conv4_meta
from maml_lab.core.models.conv4 import Conv4
from maml_lab.core.tasks.base import TaskBatch
from maml_lab.core.tasks.losses import accuracy_per_task, cross_entropy_per_task, mse_per_task

CASES = [
    pytest.param(dict(in_channels=1, image_size=14, ways=3, filters=8), 3, 2, 2, id="14px-8f-3way"),
    pytest.param(dict(in_channels=1, image_size=28, ways=3, filters=8), 2, 1, 3, id="28px-8f-1shot"),
    pytest.param(dict(in_channels=3, image_size=15, ways=4, filters=5), 2, 2, 1, id="rgb-15px"),
]


pytestmark = pytest.mark.usefixtures("one_thread")


def _theta(model, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    params = model.init_params(g, dtype=dtype)
    # non-trivial batch-norm parameters (some negative gammas), so every term of the R-operator is exercised
    return OrderedDict((k, v + 0.3 * torch.randn(v.shape, generator=g, dtype=v.dtype)) for k, v in params.items())


def _batch(model, b, shots, queries, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    c, (h, w) = model.in_channels, model.image_size
    ways = model.ways
    labels = torch.arange(ways).repeat_interleave(shots).repeat(b, 1)
    qlabels = torch.arange(ways).repeat_interleave(queries).repeat(b, 1)
    # binary-ish images with an offset, like Omniglot strokes: patch means far from zero
    xs = (torch.rand(b, ways * shots, c, h, w, generator=g) < 0.3).to(dtype) + 0.5
    xq = (torch.rand(b, ways * queries, c, h, w, generator=g) < 0.3).to(dtype) + 0.5
    return TaskBatch(xs, labels, xq, qlabels)


def _forward(model, p, x):
    """Plain PyTorch for one task (what Conv4.torch_module() computes)."""
    h = x
    for k in range(model.blocks):
        conv, bn = model._names(k)
        h = F.conv2d(h, p[f"{conv}.weight"], p[f"{conv}.bias"], stride=2, padding=1)
        h = F.relu(F.batch_norm(h, None, None, p[f"{bn}.weight"], p[f"{bn}.bias"], training=True, eps=model.eps))
    return F.linear(h.flatten(1), p[f"{model._head}.weight"], p[f"{model._head}.bias"])


def _reference(model, theta, batch, lr, first_order):
    """Per-task autograd loop: meta-gradient, mean query loss, query logits, support losses and logits."""
    params = OrderedDict((k, v.detach().clone().requires_grad_(True)) for k, v in theta.items())
    total, q_logits, s_losses, s_logits, phis = 0.0, [], [], [], []
    for i in range(batch.num_tasks):
        logits = _forward(model, params, batch.x_support[i])
        loss = F.cross_entropy(logits, batch.y_support[i])
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=not first_order)
        fast = {k: v - lr * g for (k, v), g in zip(params.items(), grads)}
        out = _forward(model, fast, batch.x_query[i])
        total = total + F.cross_entropy(out, batch.y_query[i])
        q_logits.append(out.detach())
        s_losses.append(loss.detach())
        s_logits.append(logits.detach())
        phis.append({k: v.detach() for k, v in fast.items()})
    meta_loss = total / batch.num_tasks
    grads = torch.autograd.grad(meta_loss, list(params.values()))
    phi = OrderedDict((k, torch.stack([p[k] for p in phis])) for k in theta)
    return grads, meta_loss.detach(), torch.stack(q_logits), torch.stack(s_losses), torch.stack(s_logits), phi


def _close(actual, expected, name="", rtol=1e-9):
    scale = max(expected.abs().max().item(), 1e-3)
    err = (actual - expected).abs().max().item()
    assert err <= rtol * scale, f"{name}: max error {err:.3g} (scale {scale:.3g})"


@pytest.mark.parametrize("first_order", [False, True], ids=["maml", "fomaml"])
@pytest.mark.parametrize("kw, b, shots, queries", CASES)
def test_meta_gradient_equals_per_task_autograd(kw, b, shots, queries, first_order):
    model = Conv4(**kw)
    theta = _theta(model)
    batch = _batch(model, b, shots, queries)
    out = model.explicit_meta_gradient(theta, batch, cross_entropy_per_task, 1, 0.4, first_order)
    assert out is not None
    grads, meta_loss, q_logits, s_losses, s_logits, phi = _reference(model, theta, batch, 0.4, first_order)
    for name, a, r in zip(theta, out.grads, grads):
        assert a.shape == theta[name].shape and a.dtype == torch.float64
        _close(a, r, name)
    _close(out.meta_loss, meta_loss, "meta loss")
    _close(out.query_pred, q_logits, "query logits")
    _close(out.support_losses[0], s_losses, "support losses")
    _close(out.support_pred, s_logits, "support logits")
    for name in theta:
        _close(out.params[name], phi[name], f"phi {name}")


def test_hessian_vector_products_equal_double_backward():
    """The R-operator alone: sum_i H_i v_i for random per-task directions v_i, against autograd's double
    backward of each task's support loss."""
    model = Conv4(in_channels=1, image_size=14, ways=3, filters=6)
    theta = _theta(model, seed=3)
    batch = _batch(model, 3, 2, 1, seed=4)
    b = batch.num_tasks
    g = torch.Generator().manual_seed(5)
    v = OrderedDict((k, torch.randn(b, *t.shape, generator=g, dtype=t.dtype)) for k, t in theta.items())
    for k in range(model.blocks):  # conv biases: the losses do not depend on them (batch norm)
        v[f"{model._names(k)[0]}.bias"].zero_()
    eng = conv4_meta.Conv4Meta(model, theta)
    with torch.no_grad():
        losses, support_grads = eng.support(theta, batch.x_support, batch.y_support)
        hv = eng.hvp_sum(theta, v)
    leaves = OrderedDict((k, t.clone().requires_grad_(True)) for k, t in theta.items())
    dot = 0.0
    for i in range(b):
        loss = F.cross_entropy(_forward(model, leaves, batch.x_support[i]), batch.y_support[i])
        gi = torch.autograd.grad(loss, list(leaves.values()), create_graph=True)
        for name, gk in zip(leaves, gi):
            _close(support_grads[name][i], gk.detach(), f"support gradient {name}")
        dot = dot + sum((gk * v[name][i]).sum() for name, gk in zip(leaves, gi))
    ref = torch.autograd.grad(dot, list(leaves.values()), allow_unused=True, materialize_grads=True)
    for name, r in zip(leaves, ref):
        _close(hv[name], r, f"H v {name}")


def test_float32_close_to_float64_on_the_benchmark_shapes():
    """MAML paper's Omniglot conv-4 (28x28, 64 filters, 5-way 1-shot): float32 agrees with float64."""
    model = Conv4(1, 28, 5)
    theta64 = _theta(model, seed=7)
    batch64 = _batch(model, 4, 1, 3, seed=8)
    ref = model.explicit_meta_gradient(theta64, batch64, cross_entropy_per_task, 1, 0.4, False)
    theta32 = OrderedDict((k, v.float()) for k, v in theta64.items())
    out = model.explicit_meta_gradient(theta32, batch64.to("cpu", torch.float32), cross_entropy_per_task, 1, 0.4,
                                       False)
    for name, a, r in zip(theta64, out.grads, ref.grads):
        if r.abs().max() > 1e-6:  # conv biases: exactly zero in both
            assert (a.double() - r).norm() <= 1e-4 * r.norm(), name


def test_unsupported_cases_return_none():
    theta = _theta(Conv4(1, 14, 3, filters=4))
    batch = _batch(Conv4(1, 14, 3, filters=4), 2, 1, 1)
    model = Conv4(1, 14, 3, filters=4)
    assert model.explicit_meta_gradient(theta, batch, cross_entropy_per_task, 2, 0.4, False) is None  # 2 steps
    assert model.explicit_meta_gradient(theta, batch, mse_per_task, 1, 0.4, False) is None
    per_task = OrderedDict((k, v.unsqueeze(0).expand(2, *v.shape)) for k, v in theta.items())
    assert model.explicit_meta_gradient(per_task, batch, cross_entropy_per_task, 1, 0.4, False) is None
    pooled = Conv4(3, 16, 3, filters=4, downsample="maxpool")
    batch = _batch(pooled, 2, 1, 1)
    assert pooled.explicit_meta_gradient(_theta(pooled), batch, cross_entropy_per_task, 1, 0.4, False) is None


def test_maml_step_uses_explicit_path_and_support_logits():
    model = Conv4(1, 14, 3, filters=4)
    theta = _theta(model)
    batch = _batch(model, 3, 2, 2)
    algo = make_algorithm(model, "cross_entropy", AlgorithmConfig.defaults("maml", task="images"))
    params = OrderedDict((k, v.clone().requires_grad_(True)) for k, v in theta.items())
    algo.setup(params)
    grads, _, res, _ = algo.meta_gradient(params, batch, first_order=False)
    assert res.support_pred is not None
    expected = _reference(model, theta, batch, algo.config.inner_lr, False)[0]
    for name, a, r in zip(theta, grads, expected):
        _close(a, r, name)
    metrics = algo.meta_step(params, batch)
    with torch.no_grad():
        pre = model.forward(theta, batch.x_support)
    assert metrics["pre_accuracy"] == pytest.approx(float(accuracy_per_task(pre, batch.y_support).mean()))


@pytest.mark.parametrize("kw, b, shots, queries", CASES)
def test_mean_loss_grad_equals_autograd_of_the_joint_loss(kw, b, shots, queries):
    """The pretrained baseline's gradient on all tasks' data (per-task batch norm), without autograd."""
    model = Conv4(**kw)
    theta = _theta(model)
    batch = _batch(model, b, shots, queries)
    x, y = batch.joint()
    params = OrderedDict((k, v.detach().clone().requires_grad_(True)) for k, v in theta.items())
    losses = [F.cross_entropy(_forward(model, params, x[i]), y[i]) for i in range(b)]
    expected = torch.autograd.grad(torch.stack(losses).mean(), list(params.values()))
    loss, grads = model.mean_loss_grad(theta, x, y, cross_entropy_per_task)
    assert float(loss) == pytest.approx(float(torch.stack(losses).mean().detach()), rel=1e-12)
    for name, a, r in zip(theta, grads, expected):
        assert a.shape == r.shape
        _close(a, r, name)


@pytest.mark.parametrize("kw, b, shots, queries", CASES)
def test_adapted_logits_equal_a_per_task_autograd_step(kw, b, shots, queries):
    """The pretrained baseline's post-adaptation metrics: support logits, support losses, query logits after one
    inner step, without autograd."""
    model = Conv4(**kw)
    theta = _theta(model)
    batch = _batch(model, b, shots, queries)
    _, _, q_logits, s_losses, s_logits, _ = _reference(model, theta, batch, 0.3, True)
    support_logits, losses, query_logits = model.adapted_logits(theta, batch, cross_entropy_per_task, 1, 0.3)
    _close(support_logits, s_logits, "support logits")
    _close(losses, s_losses, "support losses")
    _close(query_logits, q_logits, "query logits")
    assert model.adapted_logits(theta, batch, cross_entropy_per_task, 2, 0.3) is None  # one step only


def test_mean_loss_grad_unsupported_cases_return_none():
    model = Conv4(1, 14, 3, filters=4)
    batch = _batch(model, 2, 1, 1)
    x, y = batch.joint()
    assert model.mean_loss_grad(_theta(model), x, y, mse_per_task) is None
    pooled = Conv4(3, 16, 3, filters=4, downsample="maxpool")
    x, y = _batch(pooled, 2, 1, 1).joint()
    assert pooled.mean_loss_grad(_theta(pooled), x, y, cross_entropy_per_task) is None


def test_pretrained_step_uses_the_explicit_joint_gradient():
    """One outer step of the pretrained baseline equals the same step with autograd of the joint loss."""
    model = Conv4(1, 14, 3, filters=4)
    theta = _theta(model)
    batch = _batch(model, 3, 2, 2)
    config = AlgorithmConfig.defaults("pretrained", task="images")
    results = []
    for explicit in (True, False):
        algo = make_algorithm(model, "cross_entropy", config)
        params = OrderedDict((k, v.clone().requires_grad_(True)) for k, v in theta.items())
        algo.setup(params)
        if not explicit:  # the generic path: autograd of the model's forward
            algo.model = _NoExplicit(model)
        calls = []
        original = model.mean_loss_grad
        model.mean_loss_grad = lambda *a, calls=calls, original=original, **k: calls.append(1) or original(*a, **k)
        try:
            metrics = algo.meta_step(params, batch)
        finally:
            del model.mean_loss_grad
        assert bool(calls) == explicit
        results.append((OrderedDict((k, v.detach().clone()) for k, v in params.items()), metrics))
    (p_explicit, m_explicit), (p_autograd, m_autograd) = results
    for name in theta:
        _close(p_explicit[name], p_autograd[name], name, rtol=1e-9)
    assert m_explicit["post_loss"] == pytest.approx(m_autograd["post_loss"], rel=1e-9)


class _NoExplicit:
    """A model that offers no explicit joint gradient (everything else delegated)."""

    def __init__(self, model):
        self._model = model

    mean_loss_grad = None
    adapted_logits = None

    def __getattr__(self, name):
        return getattr(self._model, name)


@pytest.mark.parametrize("first_order", [False, True], ids=["second-order", "first-order"])
@pytest.mark.parametrize("algorithm", ["anil", "boil"])
def test_subset_meta_gradient_equals_autograd_through_adapt(algorithm, first_order):
    """ANIL (head adapted) and BOIL (body adapted) on the explicit path equal autograd through `adapt` with the
    same subset, in float64."""
    model = Conv4(1, 14, 3, filters=4)
    theta = _theta(model)
    batch = _batch(model, 3, 2, 2)
    algo = make_algorithm(model, "cross_entropy", AlgorithmConfig.defaults(algorithm, task="images"))
    params = OrderedDict((k, v.clone().requires_grad_(True)) for k, v in theta.items())
    algo.setup(params)
    calls = []
    original = conv4_meta.meta_gradient

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    conv4_meta.meta_gradient = counted
    try:
        grads, loss, res, logits = algo.meta_gradient(params, batch, first_order=first_order)
    finally:
        conv4_meta.meta_gradient = original
    assert calls, "the explicit path was not taken"
    algo.model = _NoExplicit(model)
    algo.model.explicit_meta_gradient = None
    expected, exp_loss, exp_res, exp_logits = algo.meta_gradient(params, batch, first_order=first_order)
    _close(loss, exp_loss, "meta loss")
    _close(logits, exp_logits.detach(), "query logits")
    names = set(algo.adapted_names(model, params))
    for name, a, r in zip(theta, grads, expected):
        _close(a, r, name)
        if name not in names:  # held fixed in the inner step
            assert torch.equal(res.params[name][0], theta[name]), name
