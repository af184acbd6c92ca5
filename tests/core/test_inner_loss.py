"""The `inner_loss` hook (issue 24): an algorithm's own inner objective reaches the inner loop (`adapt`, through
`meta_gradient` and the multi-step meta-gradient), replaces the models' explicit meta-gradient paths (which know the
plain support loss only) and drives test-time adaptation (`test_trajectory` / `sgd_trajectory`)."""

from collections import OrderedDict

import pytest
import torch

from maml_lab.core.algorithms.adaptation import sgd_trajectory
from maml_lab.core.algorithms.anil import ANIL
from maml_lab.core.algorithms.base import MetaAlgorithm
from maml_lab.core.algorithms.config import AlgorithmConfig
from maml_lab.core.algorithms.maml import MAML
from maml_lab.core.models.conv4 import Conv4
from maml_lab.core.models.mlp import MLP
from maml_lab.core.tasks.losses import loss_function
from maml_lab.core.tasks.sinusoid import SinusoidFamily

PULL = 0.7  # the proximal variant's strength


class Doubled(MAML):
    """Twice the support loss: the same steps as plain SGD at twice the step size (an independent reference)."""

    @classmethod
    def inner_loss(cls, config, model, loss_fn, params, start, x_support, y_support, tensors=None):
        return 2.0 * loss_fn(model.forward(params, x_support), y_support)


class Proximal(MAML):
    """The support loss plus PULL/2 ||phi - start||^2 per task (iMAML's inner objective)."""

    @classmethod
    def inner_loss(cls, config, model, loss_fn, params, start, x_support, y_support, tensors=None):
        prox = sum(((params[k] - start[k]) ** 2).flatten(1).sum(1) for k in params)
        return loss_fn(model.forward(params, x_support), y_support) + 0.5 * PULL * prox


class DoubledANIL(ANIL):
    inner_loss = Doubled.inner_loss


def _mlp_setup(tasks=3):
    model = MLP((1, 8, 8, 1))
    params = model.init_params(torch.Generator().manual_seed(0), dtype=torch.float64)
    for v in params.values():
        v.requires_grad_(True)
    batch = SinusoidFamily().sample(tasks, 5, 6, torch.Generator().manual_seed(1), dtype=torch.float64)
    return model, params, batch


def _algo(cls, model, lr, steps=1, **kw):
    algo = cls(model, "mse", AlgorithmConfig(name="maml", inner_lr=lr, inner_steps=steps, **kw))
    return algo


def _close(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


def test_the_default_is_the_support_loss_and_overrides_are_seen():
    assert not MAML.own_inner_loss() and not MetaAlgorithm.own_inner_loss()
    assert MAML.inner_objective(None, None, None) is None
    assert Doubled.own_inner_loss() and Proximal.own_inner_loss() and DoubledANIL.own_inner_loss()


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("steps", [1, 3])
def test_meta_gradient_descends_the_override_not_the_explicit_mlp_path(first_order, steps):
    model, params, batch = _mlp_setup()
    assert model.explicit_meta_gradient(params, batch, loss_function("mse"), steps, 0.02, first_order) is not None
    plain = _algo(MAML, model, 0.02, steps).meta_gradient(params, batch, first_order)
    doubled = _algo(Doubled, model, 0.01, steps).meta_gradient(params, batch, first_order)
    _close(doubled[0], plain[0])
    torch.testing.assert_close(doubled[1], plain[1])


def test_a_model_explicit_path_is_never_called_for_an_override(monkeypatch):
    model, params, batch = _mlp_setup()

    def refuse(*args, **kwargs):
        raise AssertionError("the explicit meta-gradient knows the plain support loss only")

    monkeypatch.setattr(model, "explicit_meta_gradient", refuse)
    monkeypatch.setattr(model, "batched_loss_grad", refuse)
    _algo(Proximal, model, 0.02, 2).meta_gradient(params, batch, first_order=False)
    list(Proximal.test_trajectory(AlgorithmConfig(inner_lr=0.02), model, loss_function("mse"), params,
                                  batch.x_support, batch.y_support, 2))


def _manual_proximal(model, params, batch, lr, steps):
    """Autograd through `steps` SGD steps on L_support + PULL/2 ||phi - theta||^2, one task at a time."""
    loss_fn = loss_function("mse")
    total = 0.0
    for i in range(batch.num_tasks):
        phi = OrderedDict(params)
        for _ in range(steps):
            loss = loss_fn(model.forward(phi, batch.x_support[i:i + 1]), batch.y_support[i:i + 1]).sum()
            loss = loss + 0.5 * PULL * sum(((phi[k] - params[k]) ** 2).sum() for k in params)
            grads = torch.autograd.grad(loss, list(phi.values()), create_graph=True)
            phi = OrderedDict((k, v - lr * g) for (k, v), g in zip(phi.items(), grads))
        total = total + loss_fn(model.forward(phi, batch.x_query[i:i + 1]), batch.y_query[i:i + 1]).sum()
    return torch.autograd.grad(total / batch.num_tasks, list(params.values()))


def test_meta_gradient_through_a_proximal_inner_loop_matches_autograd_by_hand():
    model, params, batch = _mlp_setup()
    got = _algo(Proximal, model, 0.05, 3).meta_gradient(params, batch, first_order=False)[0]
    _close(got, _manual_proximal(model, params, batch, 0.05, 3))


def test_multi_step_meta_gradient_descends_the_override():
    model, params, batch = _mlp_setup()
    weights = [0.2, 0.3, 0.5]
    plain = _algo(MAML, model, 0.02, 3, step_loss_weights=weights).meta_gradient(params, batch, False)
    doubled = _algo(Doubled, model, 0.01, 3, step_loss_weights=weights).meta_gradient(params, batch, False)
    _close(doubled[0], plain[0])
    # the proximal term is measured from theta at every step, not from the previous step's parameters
    last = _algo(Proximal, model, 0.05, 3, step_loss_weights=[0.0, 0.0, 1.0]).meta_gradient(params, batch, False)
    _close(last[0], _manual_proximal(model, params, batch, 0.05, 3))


def test_an_adapted_subset_descends_the_override():
    model, params, batch = _mlp_setup()
    plain = _algo(ANIL, model, 0.02, 2).meta_gradient(params, batch, False)
    doubled = _algo(DoubledANIL, model, 0.01, 2).meta_gradient(params, batch, False)
    _close(doubled[0], plain[0])


def test_conv4_explicit_path_stands_aside_for_an_override():
    model = Conv4(in_channels=1, image_size=14, ways=3, filters=4)
    params = model.init_params(torch.Generator().manual_seed(0), dtype=torch.float64)
    for v in params.values():
        v.requires_grad_(True)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 6, 1, 14, 14, generator=g, dtype=torch.float64)
    y = torch.arange(3).repeat(2, 2)
    from maml_lab.core.tasks.base import TaskBatch

    batch = TaskBatch(x[:, :3], y[:, :3], x[:, 3:], y[:, 3:])
    algo = lambda cls, lr: cls(model, "cross_entropy", AlgorithmConfig(name="maml", inner_lr=lr, inner_steps=1))  # noqa: E731
    plain = algo(MAML, 0.4).meta_gradient(params, batch, False)
    doubled = algo(Doubled, 0.2).meta_gradient(params, batch, False)
    for a, b in zip(doubled[0], plain[0]):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_test_time_adaptation_descends_the_override():
    model, params, batch = _mlp_setup()
    loss_fn = loss_function("mse")
    config = AlgorithmConfig(inner_lr=0.01)
    doubled = list(Doubled.test_trajectory(config, model, loss_fn, params, batch.x_support, batch.y_support, 3))
    plain = list(sgd_trajectory(model, loss_fn, params, batch.x_support, batch.y_support, 3, 0.02))
    assert len(doubled) == 4
    for a, b in zip(doubled, plain):
        _close(list(a.values()), list(b.values()))
    # proximal: every step is pulled back toward the parameters the trajectory started from
    config = AlgorithmConfig(inner_lr=0.05)
    prox = list(Proximal.test_trajectory(config, model, loss_fn, params, batch.x_support, batch.y_support, 3))[-1]
    theta = OrderedDict((k, v.detach()) for k, v in params.items())
    phi = OrderedDict((k, v.unsqueeze(0).expand(batch.num_tasks, *v.shape)) for k, v in theta.items())
    start = phi
    for _ in range(3):
        leaves = OrderedDict((k, v.clone().requires_grad_(True)) for k, v in phi.items())
        loss = loss_fn(model.forward(leaves, batch.x_support), batch.y_support).sum()
        loss = loss + 0.5 * PULL * sum(((leaves[k] - start[k]) ** 2).sum() for k in leaves)
        grads = torch.autograd.grad(loss, list(leaves.values()))
        phi = OrderedDict((k, (v - 0.05 * g).detach()) for (k, v), g in zip(leaves.items(), grads))
    _close(list(prox.values()), list(phi.values()))
    assert all(not v.requires_grad for v in prox.values())
