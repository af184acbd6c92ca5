"""Conv-4: equals its nn.Sequential, per-task batching equals a loop, per-task gradients are exact."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

from maml_lab.core.algorithms.adaptation import adapt, expand_params
from maml_lab.core.models.build import build_model
from maml_lab.core.models.conv4 import Conv4
from maml_lab.core.tasks.losses import cross_entropy_per_task

CASES = [
    pytest.param(dict(in_channels=1, image_size=28, ways=3, filters=6, downsample="stride"), id="omniglot-stride"),
    pytest.param(dict(in_channels=3, image_size=20, ways=4, filters=5, downsample="maxpool"), id="rgb-maxpool"),
]


def _params(model, seed=0):
    return model.init_params(torch.Generator().manual_seed(seed), dtype=torch.float64)


def _per_task(params, b, seed=1):
    g = torch.Generator().manual_seed(seed)
    return OrderedDict((k, v.unsqueeze(0) + 0.05 * torch.randn(b, *v.shape, generator=g, dtype=v.dtype))
                       for k, v in params.items())


def _images(model, b, n, seed=2):
    c, (h, w) = model.in_channels, model.image_size
    return torch.rand(b, n, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("kw", CASES)
def test_matches_torch_module(kw):
    model = Conv4(**kw)
    params = _params(model)
    module = model.torch_module().double()
    assert list(module.state_dict().keys()) == list(params.keys())
    assert all(module.state_dict()[k].shape == v.shape for k, v in params.items())
    module.load_state_dict(params)
    x = _images(model, 1, 7)
    expected = module(x[0])
    torch.testing.assert_close(model.forward(params, x)[0], expected)
    module.eval()  # no running statistics: eval mode gives the same outputs
    torch.testing.assert_close(module(x[0]), expected)


@pytest.mark.parametrize("kw", CASES)
def test_per_task_batch_equals_loop(kw):
    model = Conv4(**kw)
    b = 3
    params = _per_task(_params(model), b)
    x = _images(model, b, 5)
    out = model.forward(params, x)
    assert out.shape == (b, 5, kw["ways"])
    for i in range(b):
        single = OrderedDict((k, v[i]) for k, v in params.items())
        torch.testing.assert_close(out[i], model.forward(single, x[i:i + 1])[0])
    model.batched = "vmap"
    torch.testing.assert_close(model.forward(params, x), out)


@pytest.mark.parametrize("kw", CASES)
def test_shared_params_use_per_task_batch_norm(kw):
    model = Conv4(**kw)
    params = _params(model)
    x = _images(model, 3, 4)
    out = model.forward(params, x)
    for i in range(3):
        torch.testing.assert_close(out[i], model.forward(params, x[i:i + 1])[0])
    torch.testing.assert_close(model._forward_folded(params, x), out)
    x2 = x.clone()
    x2[1] = x2[1] * 3 + 1  # another task's images never change this task's statistics
    torch.testing.assert_close(model.forward(params, x2)[0], out[0])


@pytest.mark.parametrize("kw", CASES)
def test_gradients_of_summed_task_losses_are_per_task(kw):
    model = Conv4(**kw)
    theta = _params(model)
    b, n = 3, 4
    x = _images(model, b, n)
    y = torch.randint(0, kw["ways"], (b, n), generator=torch.Generator().manual_seed(3))
    expanded = OrderedDict((k, v.detach().requires_grad_(True))
                           for k, v in expand_params(theta, b).items())
    loss = cross_entropy_per_task(model.forward(expanded, x), y).sum()
    grads = torch.autograd.grad(loss, list(expanded.values()))
    for i in range(b):
        single = OrderedDict((k, v.detach().clone().requires_grad_(True)) for k, v in theta.items())
        li = cross_entropy_per_task(model.forward(single, x[i:i + 1]), y[i:i + 1]).sum()
        gi = torch.autograd.grad(li, list(single.values()))
        for name, g_all, g_one in zip(theta, grads, gi):
            torch.testing.assert_close(g_all[i], g_one, msg=f"task {i}, {name}")


def test_second_order_maml_step_runs():
    model = Conv4(1, 12, 3, filters=4)
    theta = OrderedDict((k, v.requires_grad_(True)) for k, v in _params(model).items())
    x, xq = _images(model, 2, 3), _images(model, 2, 6, seed=5)
    y, yq = torch.arange(3).repeat(2, 1), torch.arange(3).repeat_interleave(2).repeat(2, 1)
    res = adapt(model, cross_entropy_per_task, theta, x, y, steps=2, lr=0.1, create_graph=True)
    meta_loss = cross_entropy_per_task(model.forward(res.params, xq), yq).mean()
    grads = torch.autograd.grad(meta_loss, list(theta.values()))
    assert all(torch.isfinite(g).all() for g in grads)
    assert res.support_losses[1].mean() < res.support_losses[0].mean()


def test_spec_roundtrip_and_defaults():
    small = Conv4()
    assert small.spec() == {"kind": "conv4", "in_channels": 1, "image_size": 28, "ways": 5, "filters": 64,
                            "downsample": "stride"}
    assert small.feature_map == (2, 2) and small.feature_dim == 256
    mini = Conv4(in_channels=3, image_size=84)
    assert mini.filters == 32 and mini.downsample == "maxpool" and mini.feature_map == (5, 5)
    assert mini.feature_dim == 800
    rebuilt = build_model(mini.spec())
    assert isinstance(rebuilt, Conv4) and rebuilt.spec() == mini.spec()
    names = list(mini.param_shapes())
    assert names[:4] == ["0.weight", "0.bias", "1.weight", "1.bias"] and names[-1] == "17.bias"
    assert list(small.param_shapes())[-1] == "13.bias"
    with pytest.raises(ValueError):
        Conv4(downsample="avg")
    with pytest.raises(ValueError):
        Conv4(image_size=8, downsample="maxpool")
    with pytest.raises(ValueError):
        small.forward(small.init_params(torch.Generator()), torch.zeros(5, 1, 28, 28))
