from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch.func import functional_call

from maml_lab.core.algorithms.adaptation import adapt
from maml_lab.core.algorithms.config import AlgorithmConfig, make_algorithm
from maml_lab.core.analysis.landscape import LandscapeCancelled, adaptation_path, grid, surface
from maml_lab.core.analysis.trajectory import (
    TrajectoryRecorder,
    filter_normalized_direction,
    flatten,
    pca_plane,
    random_plane,
    task_plane,
    unflatten,
)
from maml_lab.core.models.mlp import MLP
from maml_lab.core.tasks.losses import mse_per_task
from maml_lab.core.tasks.sinusoid import SinusoidFamily


@pytest.fixture
def setting():
    g = torch.Generator().manual_seed(0)
    model = MLP((1, 12, 12, 1))
    params = model.init_params(g, dtype=torch.float64)
    batch = SinusoidFamily().sample(6, 10, 10, g, dtype=torch.float64)
    return model, params, batch


def test_pca_of_a_straight_line_lies_on_a_line_and_recovers_its_length():
    rng = np.random.default_rng(0)
    start, direction = rng.normal(size=50), rng.normal(size=50)
    direction /= np.linalg.norm(direction)
    path = np.stack([start + t * direction for t in np.linspace(0, 3.0, 40)])
    plane = pca_plane([path], origin=path[-1])
    xy = plane.project(path)
    assert plane.explained[0] == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(xy[:, 1], 0.0, atol=1e-9)
    assert abs(xy[0, 0] - xy[-1, 0]) == pytest.approx(3.0, rel=1e-9)
    assert "100.0% of variance" in plane.axis_labels()[0]


def test_filter_normalization_gives_each_filter_the_norm_of_theta_and_zeros_biases():
    params = OrderedDict(w=torch.randn(8, 3, 3, 3), b=torch.randn(8), lin=torch.randn(5, 20))
    d = filter_normalized_direction(params, torch.Generator().manual_seed(1))
    for k in ("w", "lin"):
        torch.testing.assert_close(d[k].reshape(d[k].shape[0], -1).norm(dim=1),
                                   params[k].reshape(params[k].shape[0], -1).norm(dim=1))
    assert torch.count_nonzero(d["b"]) == 0


def test_flatten_round_trip(setting):
    _, params, _ = setting
    back = unflatten(flatten(params), params)
    for k in params:
        assert torch.equal(back[k], params[k])


def test_surfaces_at_the_origin_equal_the_engine_losses(setting):
    model, params, batch = setting
    plane = random_plane(params, seed=3)
    pre = surface(model, "mse", params, plane, batch, [0.0], [0.0], kind="pre")
    x, y = batch.joint()
    assert pre.values[0, 0] == pytest.approx(float(mse_per_task(model.forward(params, x), y).mean()), rel=1e-12)
    post = surface(model, "mse", params, plane, batch, [0.0], [0.0], kind="post", inner_steps=2, inner_lr=0.02)
    algo = make_algorithm(model, "mse", AlgorithmConfig("maml", inner_steps=2, inner_lr=0.02))
    leaves = OrderedDict((k, v.clone().requires_grad_(True)) for k, v in params.items())
    _, meta_loss, _, _ = algo.meta_gradient(leaves, batch, first_order=False)
    assert post.values[0, 0] == pytest.approx(float(meta_loss), rel=1e-12)


def loop_surface(model, params, plane, batch, alphas, betas, kind, steps, lr):
    """Straightforward reference: one grid point and one task at a time, through an nn.Module."""
    module = model.torch_module().to(torch.float64)
    out = np.empty((len(betas), len(alphas)))
    for j, b in enumerate(betas):
        for i, a in enumerate(alphas):
            theta = unflatten(plane.point(a, b), params)
            losses = []
            for t in range(batch.num_tasks):
                if kind == "pre":
                    x, y = batch.joint()
                    pred = functional_call(module, theta, (x[t],))
                    losses.append(((pred - y[t]) ** 2).mean().item())
                    continue
                fast = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
                for _ in range(steps):
                    loss = ((functional_call(module, fast, (batch.x_support[t],)) - batch.y_support[t]) ** 2).mean()
                    grads = torch.autograd.grad(loss, list(fast.values()))
                    fast = {k: (v - lr * g).detach().requires_grad_(True) for (k, v), g in zip(fast.items(), grads)}
                with torch.no_grad():
                    pred = functional_call(module, fast, (batch.x_query[t],))
                losses.append(((pred - batch.y_query[t]) ** 2).mean().item())
            out[j, i] = np.mean(losses)
    return out


@pytest.mark.parametrize("kind, steps, activation", [("pre", 1, "relu"), ("post", 2, "relu"),
                                                     ("post", 1, "relu"), ("post", 1, "tanh"), ("post", 1, "gelu")])
def test_batched_grid_equals_the_loop(setting, kind, steps, activation):
    # one step on a relu/tanh MLP takes the low-rank path, other cases the generic batched adaptation
    _, params, batch = setting
    model = MLP((1, 12, 12, 1), activation)
    plane = random_plane(params, seed=5)
    alphas, betas = grid(0.5, 4)
    batched = surface(model, "mse", params, plane, batch, alphas, betas, kind=kind, inner_steps=steps,
                      inner_lr=0.02, chunk_floats=2000)  # tiny chunks: exercises chunking too
    reference = loop_surface(model, params, plane, batch, alphas, betas, kind, steps, 0.02)
    np.testing.assert_allclose(batched.values, reference, rtol=1e-10)


def test_task_plane_and_adaptation_path(setting, tmp_path):
    model, params, batch = setting
    phis = adapt(model, mse_per_task, params, batch.x_support, batch.y_support, 5, 0.02).params
    plane = task_plane(params, {k: v[0] for k, v in phis.items()}, {k: v[1] for k, v in phis.items()})
    path = adaptation_path(model, "mse", params, batch, 5, 0.02, plane, task_index=0)
    np.testing.assert_allclose(path[0], [0, 0], atol=1e-9)
    np.testing.assert_allclose(path[-1], [1, 0], atol=1e-6)
    s = surface(model, "mse", params, plane, batch, *grid(1.0, 3), kind="task", task_index=0)
    s.save_npz(tmp_path / "s.npz")
    assert np.load(tmp_path / "s.npz")["values"].shape == (3, 3)


def test_cancel_and_progress(setting):
    model, params, batch = setting
    import threading

    seen = []
    surface(model, "mse", params, random_plane(params), batch, *grid(1, 5), kind="pre", chunk_floats=500,
            progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (25, 25) and len(seen) > 1
    stop = threading.Event()
    stop.set()
    with pytest.raises(LandscapeCancelled):
        surface(model, "mse", params, random_plane(params), batch, *grid(1, 5), cancel=stop)
    with pytest.raises(ValueError, match="resolution"):
        grid(1.0, 1)


def test_recorder_memory_stays_bounded_and_spread_over_the_run():
    rec = TrajectoryRecorder(capacity=100)
    params = OrderedDict(w=torch.zeros(40, 40))
    for it in range(1, 100_001):
        if it % rec.every == 0:
            params["w"].fill_(it)
        rec.record(it, params)
    assert len(rec) < 100
    assert rec.nbytes() <= 100 * 1600 * 4
    its = np.array(rec.iterations)
    assert its[-1] > 99_000 and its[0] <= 2048
    gaps = np.diff(its)
    assert gaps.max() == gaps.min()  # evenly thinned
    assert rec.array()[-1, 0] == its[-1]


def test_large_pca_is_randomized_but_matches_the_exact_components():
    from maml_lab.core.analysis.trajectory import _top_components

    rng = np.random.default_rng(3)
    drift = rng.normal(size=800)
    path = np.cumsum(rng.normal(size=(600, 800)) * 0.01 + drift * 0.02, axis=0)  # 480,000 values: randomized
    plane = pca_plane([path], origin=path[-1])
    rel = path - path[-1]
    _, s, vt = np.linalg.svd(rel, full_matrices=False)
    assert abs(plane.d1 @ vt[0]) == pytest.approx(1.0, abs=1e-8)
    assert abs(plane.d2 @ vt[1]) == pytest.approx(1.0, abs=1e-6)
    assert plane.explained[0] == pytest.approx(s[0] ** 2 / (s ** 2).sum(), rel=1e-8)
    assert (rel @ plane.d1)[np.argmax(np.abs(rel @ plane.d1))] > 0  # the sign is fixed: no flips as a path grows
    s2, _ = _top_components(rel)
    np.testing.assert_allclose(s2, s[:2], rtol=1e-8)
    np.testing.assert_allclose(plane.project(path), np.stack([rel @ plane.d1, rel @ plane.d2], 1), atol=1e-9)


def test_recorder_memory_limit_in_bytes():
    rec = TrajectoryRecorder(capacity=2000)
    params = OrderedDict(w=torch.zeros(1000))
    for i in range(300):
        rec.record(i, params)
    assert rec.limit_bytes(100 * 4000, min_capacity=10) == 100
    assert len(rec) < 100 and rec.iterations[-1] == 299 and rec.every == 4


# -- the post surface adapts by each algorithm's own rule ----------------------------------------------------
def _learned(name, model, params, batch, steps, seed=7, **config):
    """An algorithm set up on `params` whose learned tensors are far from its inner lr (so SGD would differ)."""
    g = torch.Generator().manual_seed(seed)
    algo = make_algorithm(model, "mse" if isinstance(model, MLP) else "cross_entropy",
                          AlgorithmConfig(name, inner_lr=0.01, inner_steps=steps, **config))
    algo.setup(OrderedDict((k, v.clone().requires_grad_(True)) for k, v in params.items()))
    with torch.no_grad():
        for v in algo.lrs.values():
            v.uniform_(0.1, 0.4, generator=g)
        for v in getattr(algo, "bn_rows", {}).values():
            v.add_(0.3 * torch.randn(v.shape, generator=g, dtype=v.dtype))
    return algo


def _rule_loss_loop(model, loss, theta, batch, steps, lrs, bn_rows=None, per_step=False):
    """Independent reference: task by task through the nn.Module, theta_p -= rate_p(step) * grad_p (Meta-SGD: a rate
    per entry; MAML++: a rate per tensor and step and the batch-norm row of each step, never adapting batch norm)."""
    import torch.nn.functional as F

    module = model.torch_module().to(torch.float64)
    crit = F.mse_loss if loss == "mse" else F.cross_entropy
    bn_rows = bn_rows or {}
    total = 0.0
    for i in range(batch.num_tasks):
        fast = {k: v.clone() for k, v in theta.items() if k in lrs}

        def call(x, s, fast):
            p = dict(theta)
            p.update(fast)
            p.update({k: rows[min(s, len(rows) - 1)] for k, rows in bn_rows.items()})
            return functional_call(module, p, (x,))

        for s in range(steps):
            leaves = {k: v.requires_grad_(True) for k, v in fast.items()}
            grads = torch.autograd.grad(crit(call(batch.x_support[i], s, leaves), batch.y_support[i]),
                                        list(leaves.values()))
            rate = {k: (r[min(s, len(r) - 1)] if per_step else r) for k, r in lrs.items()}
            fast = {k: (v - rate[k] * g).detach() for (k, v), g in zip(leaves.items(), grads)}
        with torch.no_grad():
            total += crit(call(batch.x_query[i], max(steps - 1, 0), fast), batch.y_query[i]).item()
    return total / batch.num_tasks


def _direct(adaptation, model, loss, theta, batch, steps):
    """The post-adaptation loss by the algorithm's own rule, as the Adaptation view computes it."""
    from maml_lab.core.algorithms.config import predict, test_adapt
    from maml_lab.core.tasks.losses import loss_function

    fn = loss_function(loss)
    adapted = test_adapt(adaptation, model, fn, theta, batch.x_support, batch.y_support, steps)
    with torch.no_grad():
        pred = predict(adaptation, model, adapted, batch.x_support, batch.y_support, batch.x_query)
        return fn(pred, batch.y_query).mean().item()


@pytest.mark.parametrize("steps", [1, 2])
def test_metasgd_post_surface_uses_its_learned_rates(setting, steps):
    model, params, batch = setting
    algo = _learned("metasgd", model, params, batch, steps)
    adaptation = algo.adaptation()
    plane = random_plane(params, seed=2)
    alphas, betas = [-0.3, 0.0, 0.2], [0.0, 0.25]
    s = surface(model, "mse", params, plane, batch, alphas, betas, kind="post", inner_steps=steps,
                adaptation=adaptation, chunk_floats=3000)
    assert s.meta["rule"] == "metasgd"
    at_theta = s.values[0, 1]
    assert at_theta == pytest.approx(_direct(adaptation, model, "mse", params, batch, steps), rel=1e-10)
    lrs = {k: v.detach() for k, v in algo.lrs.items()}
    for j, b in enumerate(betas):
        for i, a in enumerate(alphas):
            theta = unflatten(plane.point(a, b), params)
            assert s.values[j, i] == pytest.approx(_rule_loss_loop(model, "mse", theta, batch, steps, lrs), rel=1e-9)
    sgd = surface(model, "mse", params, plane, batch, [0.0], [0.0], kind="post", inner_steps=steps, inner_lr=0.01)
    assert abs(sgd.values[0, 0] - at_theta) > 1e-3 * abs(at_theta)  # the rates matter: not plain SGD


def test_mamlpp_post_surface_uses_its_per_step_rates_and_batch_norm_rows():
    from maml_lab.core.models.conv4 import Conv4
    from maml_lab.core.tasks.base import TaskBatch

    g = torch.Generator().manual_seed(0)
    model = Conv4(in_channels=1, image_size=8, ways=3, filters=3)
    params = model.init_params(g, dtype=torch.float64)
    batch = TaskBatch(torch.rand(2, 3, 1, 8, 8, generator=g, dtype=torch.float64), torch.arange(3).repeat(2, 1),
                      torch.rand(2, 6, 1, 8, 8, generator=g, dtype=torch.float64),
                      torch.arange(3).repeat_interleave(2).repeat(2, 1))
    algo = _learned("mamlpp", model, params, batch, 2)
    adaptation = algo.adaptation()
    plane = random_plane(params, seed=4)
    s = surface(model, "cross_entropy", params, plane, batch, [0.0, 0.3], [0.0], kind="post", inner_steps=3,
                adaptation=adaptation)
    assert s.values[0, 0] == pytest.approx(_direct(adaptation, model, "cross_entropy", params, batch, 3), rel=1e-10)
    lrs = {k: v.detach() for k, v in algo.lrs.items()}
    rows = {k: v.detach() for k, v in algo.bn_rows.items()}
    for i, a in enumerate([0.0, 0.3]):  # three steps: beyond the two trained ones, the last rates and rows
        theta = unflatten(plane.point(a, 0.0), params)
        expected = _rule_loss_loop(model, "cross_entropy", theta, batch, 3, lrs, rows, per_step=True)
        assert s.values[0, i] == pytest.approx(expected, rel=1e-9)
    sgd = surface(model, "cross_entropy", params, plane, batch, [0.0], [0.0], kind="post", inner_steps=3,
                  inner_lr=0.01)
    assert abs(sgd.values[0, 0] - s.values[0, 0]) > 1e-3 * abs(s.values[0, 0])


def test_mamlpp_on_an_mlp_and_the_adaptation_path_follow_the_rule(setting):
    model, params, batch = setting
    algo = _learned("mamlpp", model, params, batch, 2)
    adaptation = algo.adaptation()
    plane = random_plane(params, seed=6)
    s = surface(model, "mse", params, plane, batch, [0.0], [0.0], kind="post", inner_steps=2, adaptation=adaptation)
    lrs = {k: v.detach() for k, v in algo.lrs.items()}
    assert s.values[0, 0] == pytest.approx(_rule_loss_loop(model, "mse", params, batch, 2, lrs, per_step=True),
                                           rel=1e-10)
    from maml_lab.core.algorithms.config import test_trajectory
    from maml_lab.core.tasks.losses import mse_per_task as fn

    expected = [flatten({k: v[1] for k, v in p.items()})
                for p in test_trajectory(adaptation, model, fn, params, batch.x_support, batch.y_support, 2)]
    path = adaptation_path(model, "mse", params, batch, 2, 0.01, plane, task_index=1, adaptation=adaptation)
    np.testing.assert_allclose(path, plane.project(np.stack(expected)), atol=1e-12)
    sgd_path = adaptation_path(model, "mse", params, batch, 2, 0.01, plane, task_index=1)
    assert np.abs(sgd_path[-1] - path[-1]).max() > 1e-6


def test_anil_post_surface_adapts_the_head_only_and_sgd_rules_keep_the_fast_path(setting, monkeypatch):
    import maml_lab.core.analysis.landscape as landscape

    model, params, batch = setting
    plane = random_plane(params, seed=8)
    anil = AlgorithmConfig("anil", inner_lr=0.3, inner_steps=2)
    s = surface(model, "mse", params, plane, batch, [0.0], [0.0], kind="post", inner_steps=2, adaptation=anil)
    head = {"4.weight", "4.bias"}
    assert set(landscape.sgd_rule(anil, model, params)[1]) == head
    # the body is held at theta: an SGD loop on the head alone, with everything else frozen
    lrs = {k: torch.tensor(0.3, dtype=torch.float64) for k in head}
    expected = _rule_loss_loop(model, "mse", params, batch, 2, lrs)
    assert s.values[0, 0] == pytest.approx(expected, rel=1e-10)
    everything = surface(model, "mse", params, plane, batch, [0.0], [0.0], kind="post", inner_steps=2, inner_lr=0.3)
    assert abs(everything.values[0, 0] - expected) > 1e-3 * expected
    # plain SGD on every parameter (MAML, a bare step size) takes the rank-K one-step path; learned rates do not
    calls = []
    real = landscape._one_step_mlp_query_losses
    monkeypatch.setattr(landscape, "_one_step_mlp_query_losses", lambda *a: calls.append(1) or real(*a))
    maml = surface(model, "mse", params, plane, batch, [0.0], [0.0], "post", inner_steps=1,
                   adaptation=AlgorithmConfig("maml", inner_lr=0.02))
    assert calls and maml.meta["rule"] == "sgd"
    assert maml.values[0, 0] == pytest.approx(
        surface(model, "mse", params, plane, batch, [0.0], [0.0], "post", inner_steps=1, inner_lr=0.02).values[0, 0],
        rel=1e-12)
    calls.clear()
    surface(model, "mse", params, plane, batch, [0.0], [0.0], "post", inner_steps=1,
            adaptation=_learned("metasgd", model, params, batch, 1).adaptation())
    assert not calls
    assert landscape.sgd_rule(0.05, model, params) == (0.05, None)
    assert landscape.sgd_rule(AlgorithmConfig("reptile"), model, params) is None


def test_reptile_post_surface_uses_its_inner_optimizer(setting):
    model, params, batch = setting
    reptile = AlgorithmConfig.defaults("reptile", "images", inner_lr=0.01, eval_batch=0)
    s = surface(model, "mse", params, random_plane(params), batch, [0.0], [0.0], "post", inner_steps=3,
                adaptation=reptile)
    assert s.values[0, 0] == pytest.approx(_direct(reptile, model, "mse", params, batch, 3), rel=1e-10)
    sgd = surface(model, "mse", params, random_plane(params), batch, [0.0], [0.0], "post", inner_steps=3,
                  inner_lr=0.01)
    assert abs(sgd.values[0, 0] - s.values[0, 0]) > 1e-3 * s.values[0, 0]  # Adam, not SGD
