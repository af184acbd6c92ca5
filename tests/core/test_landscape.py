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
