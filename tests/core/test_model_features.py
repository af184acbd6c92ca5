"""`features(params, x)`: every model's body without its head (ProtoNets' embedding, Baseline's frozen features,
a linear probe), equal to the plain-PyTorch module cut before its last layer, on every batching path."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

from maml_lab.core.models.conv4 import Conv4
from maml_lab.core.models.mlp import MLP

CONV_CASES = [
    pytest.param(dict(in_channels=1, image_size=28, ways=3, filters=6, downsample="stride"), id="omniglot-stride"),
    pytest.param(dict(in_channels=3, image_size=20, ways=4, filters=5, downsample="maxpool"), id="rgb-maxpool"),
    pytest.param(dict(in_channels=1, image_size=28, ways=3, filters=6, convention="cbfinn"), id="cbfinn"),
]


def _images(model, b, n, seed=2):
    c, (h, w) = model.in_channels, model.image_size
    return torch.rand(b, n, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _per_task(params, b, seed=1):
    g = torch.Generator().manual_seed(seed)
    return OrderedDict((k, v.unsqueeze(0) + 0.05 * torch.randn(b, *v.shape, generator=g, dtype=v.dtype))
                       for k, v in params.items())


@pytest.mark.parametrize("kw", CONV_CASES)
def test_conv4_features_are_the_module_without_its_head(kw):
    model = Conv4(**kw)
    params = model.init_params(torch.Generator().manual_seed(0), dtype=torch.float64)
    module = model.torch_module().double()
    module.load_state_dict(params)
    x = _images(model, 2, 6)
    feats = model.features(params, x)
    assert feats.shape == (2, 6, model.feature_dim)
    for i in range(2):
        torch.testing.assert_close(feats[i], module[:-1](x[i]))
    torch.testing.assert_close(model.apply_head(params, feats), model.forward(params, x))
    body = OrderedDict((k, v) for k, v in params.items() if k not in model.head_names())
    torch.testing.assert_close(model.features(body, x), feats)  # the head is not needed


@pytest.mark.parametrize("strategy", ["loop", "grouped", "vmap"])
@pytest.mark.parametrize("kw", CONV_CASES)
def test_conv4_per_task_features_every_path(kw, strategy):
    model = Conv4(**kw, batched=strategy)
    params = _per_task(model.init_params(torch.Generator().manual_seed(0), dtype=torch.float64), 3)
    x = _images(model, 3, 5)
    feats = model.features(params, x)
    for i in range(3):
        single = OrderedDict((k, v[i]) for k, v in params.items())
        torch.testing.assert_close(feats[i], model.features(single, x[i:i + 1])[0])
    torch.testing.assert_close(model.apply_head(params, feats), model.forward(params, x))


def test_conv4_features_carry_gradients():
    model = Conv4(in_channels=1, image_size=28, ways=3, filters=4)
    params = model.init_params(torch.Generator().manual_seed(0), dtype=torch.float64)
    for v in params.values():
        v.requires_grad_(True)
    model.features(params, _images(model, 2, 4)).square().sum().backward()
    head = set(model.head_names())
    assert all(params[k].grad.abs().sum() > 0 for k in model.param_shapes()
               if k not in head and k != "0.bias")  # the first conv's bias: zero gradient under batch norm
    assert all(params[k].grad is None for k in head)


def test_mlp_features():
    model = MLP([3, 8, 6, 2], "tanh")
    params = model.init_params(torch.Generator().manual_seed(0), dtype=torch.float64)
    module = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 6), torch.nn.Tanh(),
                                 torch.nn.Linear(6, 2)).double()
    module.load_state_dict(params)
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    feats = model.features(params, x)
    torch.testing.assert_close(feats, module[:-1](x))
    torch.testing.assert_close(model.apply_head(params, feats), model.forward(params, x))
    per_task = _per_task(params, 2)
    torch.testing.assert_close(model.apply_head(per_task, model.features(per_task, x)), model.forward(per_task, x))
