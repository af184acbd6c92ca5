"""The explicit (autograd-free) MAML/FOMAML meta-gradient of mlp_meta against the autograd path, in float64."""

from collections import OrderedDict

import pytest
import torch

from maml_lab.core.algorithms.adaptation import adapt
from maml_lab.core.algorithms.config import AlgorithmConfig, make_algorithm
from maml_lab.core.models import mlp_meta
from maml_lab.core.models.mlp import MLP
from maml_lab.core.tasks.base import TaskBatch
from maml_lab.core.tasks.losses import cross_entropy_per_task, mse_per_task

DT = torch.float64


def make_case(sizes, activation, tasks=5, shots=6, queries=7, seed=0, dtype=DT):
    g = torch.Generator().manual_seed(seed)
    model = MLP(sizes, activation)
    params = OrderedDict((k, v.requires_grad_(True)) for k, v in model.init_params(g, dtype=dtype).items())
    d_in, d_out = sizes[0], sizes[-1]
    x = torch.randn(tasks, shots + queries, d_in, generator=g, dtype=dtype) * 2
    y = torch.randn(tasks, shots + queries, d_out, generator=g, dtype=dtype)
    # slices, not contiguous: as SinusoidFamily.sample makes them
    batch = TaskBatch(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:])
    return model, params, batch


def autograd_meta_gradient(model, params, batch, steps, lr, first_order):
    """The engine's generic path: differentiate through adapt (create_graph for second order)."""
    res = adapt(model, mse_per_task, params, batch.x_support, batch.y_support, steps, lr,
                create_graph=not first_order)
    pred = model.forward(res.params, batch.x_query)
    meta_loss = mse_per_task(pred, batch.y_query).mean()
    grads = torch.autograd.grad(meta_loss, list(params.values()))
    return grads, meta_loss.detach(), res, pred.detach()


def plain_autograd_meta_gradient(model, params, batch, steps, lr, first_order):
    """Independent of adapt (and of its explicit inner gradients): autograd through model.forward only."""
    fast = [v.unsqueeze(0).expand(batch.num_tasks, *v.shape) for v in params.values()]
    for _ in range(steps):
        loss = mse_per_task(model.forward(dict(zip(params, fast)), batch.x_support), batch.y_support).sum()
        grads = torch.autograd.grad(loss, fast, create_graph=not first_order)
        fast = [v - lr * g for v, g in zip(fast, grads)]
    meta_loss = mse_per_task(model.forward(dict(zip(params, fast)), batch.x_query), batch.y_query).mean()
    return torch.autograd.grad(meta_loss, list(params.values()))


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("sizes", [(1, 40, 40, 1), (1, 8, 8, 8, 1), (3, 8, 8, 8, 2), (3, 5, 1), (3, 2)])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_explicit_meta_gradient_equals_autograd(activation, sizes, steps, first_order):
    model, params, batch = make_case(sizes, activation)
    lr = 0.1
    expected, meta_loss, res, pred = autograd_meta_gradient(model, params, batch, steps, lr, first_order)
    out = model.explicit_meta_gradient(params, batch, mse_per_task, steps, lr, first_order)
    assert out is not None
    assert [g.shape for g in out.grads] == [p.shape for p in params.values()]
    plain = plain_autograd_meta_gradient(model, params, batch, steps, lr, first_order)
    for name, e, p, g in zip(params, expected, plain, out.grads):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12, msg=name)
        torch.testing.assert_close(g, p, rtol=1e-10, atol=1e-12, msg=name)
        assert not g.requires_grad
    torch.testing.assert_close(out.meta_loss, meta_loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(out.query_pred, pred, rtol=1e-12, atol=1e-14)
    assert len(out.support_losses) == steps
    for a, b in zip(out.support_losses, res.support_losses):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    for name in params:
        torch.testing.assert_close(out.params[name], res.params[name].detach(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_second_order_term_is_present(activation):
    """Guard against the explicit path silently degrading to first order (ReLU still has cross-layer terms)."""
    model, params, batch = make_case((1, 40, 40, 1), activation)
    so = model.explicit_meta_gradient(params, batch, mse_per_task, 1, 0.1, False).grads
    fo = model.explicit_meta_gradient(params, batch, mse_per_task, 1, 0.1, True).grads
    assert max(float((a - b).abs().max()) for a, b in zip(so, fo)) > 1e-4


def test_zero_inner_steps_is_the_query_gradient_at_theta():
    model, params, batch = make_case((3, 8, 8, 2), "tanh")
    expected, meta_loss, res, _ = autograd_meta_gradient(model, params, batch, 0, 0.1, False)
    out = mlp_meta.meta_gradient(model, params, batch.x_support, batch.y_support, batch.x_query, batch.y_query,
                                 0, 0.1, False)
    for e, g in zip(expected, out.grads):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.support_losses[0], res.support_losses[0], rtol=1e-12, atol=0)
    assert out.params["0.weight"].shape == (batch.num_tasks, 8, 3)


@pytest.mark.parametrize("algorithm", ["maml", "fomaml"])
def test_algorithms_take_the_explicit_path_without_autograd(algorithm):
    """MAML/FOMAML on a ReLU MLP need no graph: the meta-step works even with autograd switched off."""
    model, params, batch = make_case((1, 40, 40, 1), "relu")
    algo = make_algorithm(model, "mse", AlgorithmConfig(algorithm, inner_lr=0.05, inner_steps=2))
    expected = autograd_meta_gradient(model, params, batch, 2, 0.05, algorithm == "fomaml")[0]
    with torch.no_grad():
        grads, meta_loss, res, _ = algo.meta_gradient(params, batch, first_order=algorithm == "fomaml")
    for e, g in zip(expected, grads):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
    assert len(res.support_losses) == 2 and res.params["0.weight"].shape == (batch.num_tasks, 40, 1)


def test_meta_step_sync_hook_sees_the_explicit_gradients():
    model, params, batch = make_case((1, 8, 8, 1), "tanh")
    leaves = OrderedDict((k, v.detach().clone().requires_grad_(True)) for k, v in params.items())
    algo = make_algorithm(model, "mse", AlgorithmConfig("maml", inner_lr=0.05, meta_lr=1e-2))
    algo.setup(leaves)
    expected = autograd_meta_gradient(model, params, batch, 1, 0.05, False)[0]
    seen = []

    def sync(grads):  # an all-reduce stand-in: records, then changes the gradients in place
        seen.append([g.clone() for g in grads])
        for g in grads:
            g.mul_(-1.0)

    algo.sync = sync
    metrics = algo.meta_step(leaves, batch)
    assert len(seen) == 1
    for e, g in zip(expected, seen[0]):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
    for k, e in zip(params, expected):  # Adam's first step with the negated gradient: +lr * sign(g)
        torch.testing.assert_close(leaves[k].detach(), params[k].detach() + 1e-2 * e / (e.abs() + 1e-8),
                                   rtol=1e-6, atol=1e-9)
    assert set(metrics) == {"pre_loss", "post_loss"}


def test_unsupported_models_and_losses_fall_back_to_autograd():
    model, params, batch = make_case((1, 8, 8, 1), "gelu")
    assert model.explicit_meta_gradient(params, batch, mse_per_task, 1, 0.1, False) is None
    model = MLP((2, 8, 3), "relu")
    assert model.explicit_meta_gradient(params, batch, cross_entropy_per_task, 1, 0.1, False) is None
    # the gelu model still trains through the autograd path
    model, params, batch = make_case((1, 8, 8, 1), "gelu")
    algo = make_algorithm(model, "mse", AlgorithmConfig("maml", inner_lr=0.1))
    grads = algo.meta_gradient(params, batch, first_order=False)[0]
    for e, g in zip(autograd_meta_gradient(model, params, batch, 1, 0.1, False)[0], grads):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-14)


def test_float32_agrees_with_float64():
    model, params, batch = make_case((1, 40, 40, 1), "relu", tasks=25, shots=10, queries=10)
    ref = model.explicit_meta_gradient(params, batch, mse_per_task, 2, 0.01, False).grads
    params32 = OrderedDict((k, v.detach().float()) for k, v in params.items())
    batch32 = batch.to("cpu", torch.float32)
    out = model.explicit_meta_gradient(params32, batch32, mse_per_task, 2, 0.01, False)
    for r, g in zip(ref, out.grads):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_cuda_matches_cpu(activation):
    model, params, batch = make_case((1, 40, 40, 1), activation, tasks=25, shots=10, queries=10)
    ref = model.explicit_meta_gradient(params, batch, mse_per_task, 3, 0.01, False)
    cuda = OrderedDict((k, v.detach().cuda()) for k, v in params.items())
    out = model.explicit_meta_gradient(cuda, batch.to("cuda"), mse_per_task, 3, 0.01, False)
    for r, g in zip(ref.grads, out.grads):
        assert g.is_cuda
        torch.testing.assert_close(g.cpu(), r, rtol=1e-9, atol=1e-11)
