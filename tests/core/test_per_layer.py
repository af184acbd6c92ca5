"""The per-layer measures of adaptation (lab/per_layer.py) on cases with known answers: linear CKA of identical
activations and of an orthogonally transformed, rescaled copy is 1; a layer the inner loop cannot change shows
zero change and CKA 1; the relative change of one SGD step is ||lr * grad_l|| / ||theta_l||."""

from collections import OrderedDict

import numpy as np
import pytest
import torch

from maml_lab.core.algorithms.config import AlgorithmConfig
from maml_lab.core.models.conv4 import Conv4
from maml_lab.core.models.mlp import MLP
from maml_lab.core.tasks.losses import mse_per_task
from maml_lab.core.tasks.sinusoid import SinusoidFamily
from maml_lab.lab.per_layer import (
    LayerRequest,
    compute_per_layer,
    layer_stats,
    linear_cka,
    relative_change,
    to_csv,
)

DT = torch.float64


def test_cka_of_identical_and_of_orthogonally_transformed_rescaled_activations_is_one():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 7, generator=g, dtype=DT)
    q, _ = torch.linalg.qr(torch.randn(7, 7, generator=g, dtype=DT))
    assert linear_cka(x, x).item() == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, 3.7 * x @ q).item() == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x + 5.0).item() == pytest.approx(1.0, abs=1e-12)  # centred: a shift changes nothing
    y = torch.randn(12, 4, generator=g, dtype=DT)
    assert linear_cka(x, y).item() < 0.9
    # batched, and against the feature-space formula written out in numpy
    xs, ys = torch.randn(3, 10, 5, generator=g, dtype=DT), torch.randn(3, 10, 8, generator=g, dtype=DT)
    for i, value in enumerate(linear_cka(xs, ys)):
        a = xs[i].numpy() - xs[i].numpy().mean(0)
        b = ys[i].numpy() - ys[i].numpy().mean(0)
        expected = np.linalg.norm(b.T @ a) ** 2 / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b))
        assert value.item() == pytest.approx(expected, rel=1e-12)
    assert torch.isnan(linear_cka(torch.ones(6, 3, dtype=DT), x[:6, :3]))  # constant activations: undefined
    with pytest.raises(ValueError, match="same examples"):
        linear_cka(x, y[:5])


def sinusoid_setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    model = MLP([1, 8, 8, 1], "tanh")
    params = model.init_params(g, dtype=DT)
    batch = SinusoidFamily().sample(4, 5, 10, g, dtype=DT)
    return model, params, batch


@pytest.mark.parametrize("rule, frozen", [("head", ["layer 1", "layer 2"]), ("body", ["head"])])
def test_a_layer_the_inner_loop_cannot_change_shows_zero_change_and_cka_one(rule, frozen):
    model, params, batch = sinusoid_setup()
    stats = layer_stats(model, "mse", params, AlgorithmConfig("maml", inner_lr=0.05), batch.x_support,
                        batch.y_support, batch.x_query, 3, rule)
    assert stats.layers == ["layer 1", "layer 2", "head"]
    assert stats.change.shape == stats.cka.shape == (3, 4)
    assert np.all(stats.change[:, 0] == 0) and np.allclose(stats.cka[:, 0], 1, atol=1e-12)
    for i, layer in enumerate(stats.layers):
        if layer in frozen:
            assert np.all(stats.change[i] == 0), layer
        else:
            assert np.all(stats.change[i, 1:] > 0), layer
    # a fixed layer whose inputs are fixed too keeps its representation exactly: the body under head-only
    # adaptation (the body's CKA is 1); the head under body-only adaptation sees changed inputs, so it may not
    if rule == "head":
        assert np.allclose(stats.cka[:2], 1, atol=1e-12)
        assert stats.cka[2, -1] < 1 - 1e-9
    else:
        assert np.all(stats.cka[:2, -1] < 1 - 1e-9)


def test_conv4_head_only_keeps_every_block_and_anil_own_rule_is_head_only():
    g = torch.Generator().manual_seed(1)
    model = Conv4(in_channels=1, image_size=8, ways=3, filters=4)
    params = model.init_params(g, dtype=DT)
    x_s = torch.rand(2, 3, 1, 8, 8, generator=g, dtype=DT)
    x_q = torch.rand(2, 6, 1, 8, 8, generator=g, dtype=DT)
    y_s = torch.arange(3).expand(2, 3).contiguous()
    anil = AlgorithmConfig("anil", inner_lr=0.5)
    own = layer_stats(model, "cross_entropy", params, anil, x_s, y_s, x_q, 2, "own")
    head = layer_stats(model, "cross_entropy", params, anil, x_s, y_s, x_q, 2, "head")
    assert own.layers == ["block 1", "block 2", "block 3", "block 4", "head"]
    np.testing.assert_array_equal(own.change, head.change)
    assert np.all(own.change[:4] == 0) and np.allclose(own.cka[:4], 1, atol=1e-12)
    assert np.all(own.change[4, 1:] > 0)
    assert "head only" in own.rule_text
    full = layer_stats(model, "cross_entropy", params, anil, x_s, y_s, x_q, 2, "all")
    assert np.all(full.change[:, 1:] > 0) and "every layer" in full.rule_text


def test_relative_change_of_one_step_is_the_scaled_gradient_norm():
    model, params, batch = sinusoid_setup(2)
    lr = 0.05
    stats = layer_stats(model, "mse", params, lr, batch.x_support, batch.y_support, batch.x_query, 1, "all")
    expected = []
    for i in range(batch.num_tasks):
        leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        loss = mse_per_task(model.forward({k: v.unsqueeze(0) for k, v in leaves.items()}, batch.x_support[i:i + 1]),
                            batch.y_support[i:i + 1]).sum()
        grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))
        row = []
        for names in model.layer_groups().values():
            step = torch.sqrt(sum(((lr * grads[k]) ** 2).sum() for k in names))
            row.append((step / torch.sqrt(sum((params[k] ** 2).sum() for k in names))).item())
        expected.append(row)
    np.testing.assert_allclose(stats.change[:, 1], np.mean(expected, 0), rtol=1e-10)
    theta = OrderedDict(params)
    same = OrderedDict((k, v.unsqueeze(0).expand(2, *v.shape)) for k, v in params.items())
    assert torch.equal(relative_change(theta, same, model.layer_groups()), torch.zeros(2, 3, dtype=DT))


def test_compute_per_layer_on_the_same_tasks_csv_and_bad_input():
    model, params, _ = sinusoid_setup()
    reqs = [LayerRequest("maml", "MAML", "maml", model, params, AlgorithmConfig("maml")),
            LayerRequest("anil", "ANIL", "anil", model, params, AlgorithmConfig("anil"))]
    result = compute_per_layer(reqs, SinusoidFamily(), shots=5, steps=2, num_tasks=6, queries=10)
    assert list(result.stats) == ["maml", "anil"] and not result.errors
    assert np.all(result.stats["anil"].change[:2] == 0) and np.all(result.stats["maml"].change[:, 1:] > 0)
    # same tasks, same step size: MAML's head moves exactly as ANIL's on its first step
    assert result.stats["maml"].change[2, 1] == pytest.approx(result.stats["anil"].change[2, 1], rel=1e-12)
    rows = to_csv(result).splitlines()
    assert rows[0].startswith("initialization,algorithm,rule,layer,step,relative_change")
    assert len(rows) == 1 + 2 * 3 * 3
    with pytest.raises(ValueError, match="unknown rule 'legs'"):
        layer_stats(model, "mse", params, 0.01, *(torch.zeros(1, 2, 1, dtype=DT),) * 3, 1, "legs")
    bad = compute_per_layer([LayerRequest("x", "X", "maml", model, params, 0.01)], SinusoidFamily(), 5, 0, 2, 5)
    assert "at least one inner step" in bad.errors["x"]


def test_layer_activations_end_in_the_models_own_predictions():
    g = torch.Generator().manual_seed(4)
    mlp = MLP([1, 6, 5, 2], "relu")
    p = mlp.init_params(g, dtype=DT)
    x = torch.randn(3, 7, 1, generator=g, dtype=DT)
    acts = mlp.layer_activations(p, x)
    assert [a.shape[-1] for a in acts] == [6, 5, 2] and torch.all(acts[0] >= 0)
    torch.testing.assert_close(acts[-1], mlp.forward(p, x), rtol=1e-12, atol=1e-12)
    conv = Conv4(in_channels=1, image_size=8, ways=3, filters=4)
    p = conv.init_params(g, dtype=DT)
    per_task = OrderedDict((k, v.unsqueeze(0).repeat(2, *([1] * v.dim())) * (1 + 0.1 * torch.rand(
        2, *([1] * v.dim()), generator=g, dtype=DT))) for k, v in p.items())
    x = torch.rand(2, 6, 1, 8, 8, generator=g, dtype=DT)
    for params in (p, per_task):
        acts = conv.layer_activations(params, x)
        assert len(acts) == 5 and acts[0].shape == (2, 6, 4 * 4 * 4)
        torch.testing.assert_close(acts[-1], conv.forward(params, x), rtol=1e-10, atol=1e-12)
