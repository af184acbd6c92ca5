"""Batch-norm modes of a prediction (models/batch_norm.py), in float64: support-set statistics against an
independent computation with torch.nn modules, queries one at a time equal to the batch, running statistics."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

from maml_lab.core.algorithms import config as algorithms_config
from maml_lab.core.algorithms.config import AlgorithmConfig, default_batch_norm, predict
from maml_lab.core.models.batch_norm import NormalizedModel, PopulationStatistics
from maml_lab.core.models.conv4 import Conv4
from maml_lab.core.tasks.losses import cross_entropy_per_task

CASES = [
    pytest.param(dict(in_channels=1, image_size=28, ways=3, filters=6, downsample="stride"), id="lab-stride"),
    pytest.param(dict(in_channels=3, image_size=20, ways=4, filters=5, downsample="maxpool"), id="lab-maxpool"),
    pytest.param(dict(in_channels=1, image_size=28, ways=3, filters=6, downsample="stride", convention="cbfinn"),
                 id="cbfinn-stride"),
]


def _setup(kw, b=2, shots=2, queries=3):
    model = Conv4(**kw)
    g = torch.Generator().manual_seed(0)
    theta = model.init_params(g, dtype=torch.float64)
    # per-task parameters that differ from theta and between tasks, batch norm's scale and shift included
    params = OrderedDict((k, v.unsqueeze(0) + 0.1 * torch.randn(b, *v.shape, generator=g, dtype=v.dtype))
                         for k, v in theta.items())
    c, (h, w) = model.in_channels, model.image_size
    ways = model.ways
    xs = torch.rand(b, ways * shots, c, h, w, generator=g, dtype=torch.float64)
    xq = torch.rand(b, ways * queries, c, h, w, generator=g, dtype=torch.float64)
    ys = torch.arange(ways).repeat_interleave(shots).expand(b, -1)
    return model, theta, params, xs, ys, xq


def _independent_support_prediction(model, task_params, xs, xq):
    """One task: the exported nn.Sequential; batch-norm inputs of the support pass captured by hooks, their biased
    per-channel mean and variance set as each BatchNorm2d's running statistics, then the queries in eval mode."""
    module = model.torch_module().double()
    module.load_state_dict(task_params)
    bns = [m for m in module if isinstance(m, torch.nn.BatchNorm2d)]
    captured = {}
    hooks = [bn.register_forward_pre_hook(lambda m, inp, i=i: captured.__setitem__(i, inp[0].detach()))
             for i, bn in enumerate(bns)]
    module.train()
    module(xs)
    for h in hooks:
        h.remove()
    for i, bn in enumerate(bns):
        act = captured[i]
        bn.track_running_stats = True
        bn.running_mean = act.mean(dim=(0, 2, 3))
        bn.running_var = ((act - act.mean(dim=(0, 2, 3), keepdim=True)) ** 2).mean(dim=(0, 2, 3))
    module.eval()
    return module(xq)


@pytest.mark.parametrize("kw", CASES)
def test_support_mode_matches_an_independent_computation(kw):
    model, _, params, xs, ys, xq = _setup(kw)
    cfg = AlgorithmConfig("maml")
    out = predict(cfg, model, params, xs, ys, xq, batch_norm="support")
    for i in range(xs.shape[0]):
        task = OrderedDict((k, v[i]) for k, v in params.items())
        torch.testing.assert_close(out[i], _independent_support_prediction(model, task, xs[i], xq[i]))
    # and it is not the transductive prediction
    assert not torch.allclose(out, predict(cfg, model, params, xs, ys, xq, batch_norm="transductive"))


@pytest.mark.parametrize("kw", CASES)
def test_support_mode_classifies_queries_one_at_a_time_as_in_a_batch(kw):
    model, _, params, xs, ys, xq = _setup(kw)
    cfg = AlgorithmConfig("maml")
    batched = predict(cfg, model, params, xs, ys, xq, batch_norm="support")
    for j in range(xq.shape[1]):
        one = predict(cfg, model, params, xs, ys, xq[:, j:j + 1], batch_norm="support")
        torch.testing.assert_close(one[:, 0], batched[:, j])
    # transductive predictions do depend on the other queries
    alone = predict(cfg, model, params, xs, ys, xq[:, :1], batch_norm="transductive")
    assert not torch.allclose(alone[:, 0], predict(cfg, model, params, xs, ys, xq, batch_norm="transductive")[:, 0])


@pytest.mark.parametrize("kw", CASES)
def test_trunk_with_batch_statistics_is_the_forward_pass(kw):
    model, theta, params, xs, _, xq = _setup(kw)
    for p in (theta, params):
        expected = model.forward(p, xq)
        feats = model.features(p, xq)
        torch.testing.assert_close(model.apply_head(p, model._trunk(p, xq)), expected)
        torch.testing.assert_close(feats, model._trunk(p, xq))
        # support statistics of the whole batch are its own statistics
        torch.testing.assert_close(model.forward(p, xq, norm=xq.shape[1]), expected)


@pytest.mark.parametrize("kw", CASES)
def test_running_statistics_are_fixed_and_per_query(kw):
    model, _, params, xs, ys, xq = _setup(kw)
    stats = model.batch_norm_stats(params, torch.cat([xs, xq], 1))
    assert len(stats) == 4 and stats[0][0].shape == (xs.shape[0], model.filters)
    pooled = [(m.mean(0), v.mean(0)) for m, v in stats]  # any fixed [F] statistics
    running = PopulationStatistics({0: pooled}, tasks=2)
    cfg = AlgorithmConfig("maml")
    out = predict(cfg, model, params, xs, ys, xq, batch_norm=running.at(0))
    for j in range(xq.shape[1]):
        torch.testing.assert_close(predict(cfg, model, params, xs, ys, xq[:, j:j + 1], batch_norm=running.at(0))[:, 0],
                                   out[:, j])
    # with a task's own support statistics as the "running" ones, the running mode is the support mode
    own = [(m, v) for m, v in model.batch_norm_stats(params, xs)]
    torch.testing.assert_close(predict(cfg, model, params, xs, ys, xq, batch_norm=own),
                               predict(cfg, model, params, xs, ys, xq, batch_norm="support"))
    with pytest.raises(ValueError, match="no running statistics for 3"):
        running.at(3)


def test_reptile_option_selects_support_plus_query_and_an_evaluation_can_override_it():
    model, _, params, xs, ys, xq = _setup(CASES[0].values[0])
    cfg = AlgorithmConfig("reptile", options={"transductive": False})
    assert default_batch_norm(cfg) == "support+query" and default_batch_norm(AlgorithmConfig("maml")) == "transductive"
    out = predict(cfg, model, params, xs, ys, xq)
    for j in range(xq.shape[1]):
        joint = model.forward(params, torch.cat([xs, xq[:, j:j + 1]], 1))[:, -1]
        torch.testing.assert_close(out[:, j], joint)
    torch.testing.assert_close(predict(cfg, model, params, xs, ys, xq, batch_norm="transductive"),
                               model.forward(params, xq))


def test_adapted_parameters_predict_in_every_mode_and_refuse_models_without_batch_norm():
    model, theta, _, xs, ys, xq = _setup(CASES[0].values[0])
    cfg = AlgorithmConfig("maml", inner_lr=0.4)
    fast = algorithms_config.test_adapt(cfg, model, cross_entropy_per_task, theta, xs, ys, 2)
    for mode in ("transductive", "support", "support+query"):
        assert predict(cfg, model, fast, xs, ys, xq, batch_norm=mode).shape == (2, xq.shape[1], model.ways)

    class NoBatchNorm:
        def forward(self, params, x):
            return x

    with pytest.raises(ValueError, match="needs a model with batch norm"):
        NormalizedModel(NoBatchNorm(), "support", xs)
    with pytest.raises(ValueError, match="unknown batch-norm mode"):
        predict(cfg, model, fast, xs, ys, xq, batch_norm="query")


def test_population_statistics_pool_tasks_as_one_population():
    """At step 0 (theta, shared by the tasks) the pooled statistics are those of all the tasks' images as one
    batch: mean of the means, and the variance of the pooled images (tasks of equal size)."""
    import numpy as np

    from maml_lab.core.analysis.evaluation import population_statistics
    from maml_lab.core.tasks.images import ImageTaskFamily
    from maml_lab.core.tasks.imagesets import ImageSet, Preprocessing

    rng = np.random.default_rng(0)
    pixels = (rng.random((60, 1, 14, 14)) < 0.25).astype(np.uint8) * 255
    images = ImageSet("random", [f"c{i}" for i in range(10)], None, pixels, np.arange(0, 61, 6),
                      Preprocessing(size=(14, 14)))
    family = ImageTaskFamily(images, ways=3)
    model = Conv4(1, 14, 3, filters=4)
    theta = model.init_params(torch.Generator().manual_seed(1), dtype=torch.float64)
    cfg = AlgorithmConfig("maml", inner_lr=0.1)
    stats = population_statistics(model, family, theta, cfg, [0, 1], num_tasks=5, shots=1, queries=2, seed=3,
                                  dtype=torch.float64, chunk=2)
    assert sorted(stats.by_step) == [0, 1] and stats.tasks == 5 and "5 training tasks" in stats.source
    g = torch.Generator().manual_seed(3)
    batches = [family.sample(n, 1, 2, g, dtype=torch.float64) for n in (2, 2, 1)]  # the chunks it drew
    everything = torch.cat([torch.cat([b.x_support, b.x_query], 1) for b in batches]).reshape(1, -1, 1, 14, 14)
    # the first block's input is the images themselves: its statistics over all 5 tasks' images at theta
    h = torch.nn.functional.conv2d(everything[0], theta["0.weight"], theta["0.bias"], stride=2, padding=1)
    torch.testing.assert_close(stats.at(0)[0][0], h.mean((0, 2, 3)))
    torch.testing.assert_close(stats.at(0)[0][1], h.var((0, 2, 3), correction=0))
    assert not torch.allclose(stats.at(1)[1][0], stats.at(0)[1][0])  # adapted parameters, other statistics
