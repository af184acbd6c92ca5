"""Looking inside: the Paths, Landscape and Adaptation views after a short run, the worker's path copies, the
background computations (and cancelling them), the screenshots of the new views."""

import time

import numpy as np
import pytest
from PySide6.QtGui import QImage

from maml_lab import app
from maml_lab.lab.inside import project_paths
from maml_lab.ui.colors import algorithm_color
from maml_lab.ui.inside_plots import auto_arrow_scale, contour_lines, log_ticks
from maml_lab.ui.worker import TrainingController


def distinct_colours(image: QImage, step: int = 3) -> int:
    small = image.scaled(image.width() // step, image.height() // step)
    return len({small.pixel(x, y) for x in range(small.width()) for y in range(small.height())})


def has_colour(image: QImage, hex_color: str, tolerance: int = 6) -> bool:
    target = np.array([int(hex_color[i:i + 2], 16) for i in (1, 3, 5)])
    ptr = image.convertToFormat(QImage.Format.Format_RGB32).constBits()
    pixels = np.frombuffer(ptr, np.uint8).reshape(image.height(), -1, 4)[:, :image.width(), 2::-1]
    return bool((np.abs(pixels.astype(int) - target).max(-1) <= tolerance).any())


@pytest.fixture(scope="module")
def trained_config():
    """For the module's main window (conftest's `trained`): MAML and pretrained, 150 iterations."""
    from maml_lab.core.algorithms.config import AlgorithmConfig
    from maml_lab.core.training.config import ExperimentConfig

    return ExperimentConfig(algorithms=[AlgorithmConfig.defaults(a) for a in ("maml", "pretrained")],
                            iterations=150, meta_batch_size=5, val_every=50, val_tasks=10, hidden=[16, 16])


def test_worker_hands_over_copies_of_the_paths(qtbot, small_config):
    controller = TrainingController(progress_hz=1000, snapshot_interval=0.0, paths_interval=0.0)
    runs = []
    controller.paths.connect(runs.append)
    try:
        with qtbot.waitSignal(controller.finished, timeout=20000):
            controller.start(small_config(iterations=30))
        qtbot.waitUntil(lambda: bool(runs) and runs[-1].iteration == 30, timeout=2000)
    finally:
        assert controller.shutdown(2000)
    run = runs[-1]
    assert run.names == ["maml", "pretrained"]
    path = run.paths["maml"]
    assert path.iterations[0] == 0 and path.iterations[-1] == 30  # from the initialization to the final theta
    assert len(path) == len(path.metrics) == 31
    assert not path.snapshots[-1].flags.writeable  # read-only: the GUI cannot change what the worker recorded
    assert runs[0] is not runs[-1] and len(runs[0].paths["maml"]) <= len(path)  # each emission its own lists
    assert run.family is not None and run.model_spec["kind"] == "mlp"


def test_paths_view_scrubs_moves_the_marker_and_the_arrows_start_there(trained, qtbot):
    view = trained.views["paths"]
    trained.tabs.setCurrentWidget(view)
    assert view.wait_until_idle(30)
    assert view.projected is not None and set(view.projected.coords) == {"maml", "pretrained"}
    assert "% of variance" in view.plot.getAxis("bottom").labelText
    image = trained.grab().toImage()
    assert distinct_colours(image) > 60
    assert has_colour(image, algorithm_color("maml")) and has_colour(image, algorithm_color("pretrained"))

    previews = []
    view.checkpoint_selected.connect(previews.append)
    index = view.slider.maximum() // 3
    view.set_checkpoint(index)
    expected = view.projected.coords["maml"][index]
    spots = {s.data(): (s.pos().x(), s.pos().y()) for s in view.markers.points()}
    np.testing.assert_allclose(spots["maml"], expected)  # the marker moved at once, before any computation
    assert view.checkpoint_label.text().startswith(f"iteration {int(view.projected.iterations['maml'][index]):,}")
    assert view.wait_until_idle(30)
    arrows = view.arrows
    assert arrows.iteration == int(view.projected.iterations["maml"][index]) and len(arrows.steps) == 5
    run = view._projected_run
    independent = view.projected.plane.project(np.asarray(run.paths["maml"].snapshots[index], np.float64)[None])[0]
    np.testing.assert_allclose(arrows.start, independent, atol=1e-9)
    for drawn in view.arrow_layer.paths:  # every arrow starts at the projected checkpoint
        np.testing.assert_allclose(drawn[0], expected, atol=1e-9)
    qtbot.waitUntil(lambda: bool(previews), timeout=2000)
    assert previews[-1]["iteration"] == arrows.iteration and not previews[-1]["latest"]
    assert "checkpoint" in trained.views["playground"].inits  # the playground previews that checkpoint
    view.set_checkpoint(view.slider.maximum())
    qtbot.waitUntil(lambda: "checkpoint" not in trained.views["playground"].inits, timeout=2000)


def test_landscape_view_computes_in_the_background_exports_and_cancels(trained, qtbot, tmp_path):
    view = trained.views["landscape"]
    trained.tabs.setCurrentWidget(view)
    assert view.wait_until_idle(60)
    r = view.result
    assert list(r.surfaces) == ["pre", "post"] and r.surfaces["post"].values.shape == (51, 51)
    assert np.isfinite(r.surfaces["pre"].values).all()
    image = trained.grab().toImage()
    assert distinct_colours(image) > 200  # two heatmaps with contours, not a blank view
    assert has_colour(image, algorithm_color("maml"))

    written = view.export_surface(str(tmp_path / "surface.npz"))
    assert [p.name for p in written] == ["surface-pre.npz", "surface-post.npz"]
    with np.load(written[1]) as data:
        np.testing.assert_array_equal(data["values"], r.surfaces["post"].values)
        assert str(data["kind"]) == "post"

    for suffix in (".png", ".svg"):  # File > Export plot: both panels and the colour bar
        out = trained.export_plot(str(tmp_path / f"landscape{suffix}"))
        assert out is not None and out.stat().st_size > 5000
    assert QImage(str(tmp_path / "landscape.png")).width() > 1000  # twice the screen resolution

    view.resolution.setValue(101)  # a bigger job, cancelled while it runs
    view.tasks.setValue(200)
    t0 = time.perf_counter()
    assert view.compute()
    assert time.perf_counter() - t0 < 0.5 and view.runner.busy  # the GUI thread did not compute it
    qtbot.waitUntil(lambda: view.progress.value() > 0 or not view.runner.busy, timeout=10000)
    assert view.cancel()
    qtbot.waitUntil(lambda: not view.runner.busy, timeout=10000)
    assert view.status.text() == "Cancelled" and view.result is r  # the last surface stays


def test_landscape_one_task_animates_its_adaptation(trained, qtbot):
    view = trained.views["landscape"]
    trained.tabs.setCurrentWidget(view)
    view.resolution.setValue(21)
    view.tasks.setValue(5)
    view.mode.setCurrentIndex(view.mode.findData("task"))
    assert view.wait_until_idle(60)
    r = view.result
    assert list(r.surfaces) == ["task"] and r.task_path.shape == (r.request.task_steps + 1, 2)
    np.testing.assert_allclose(r.task_path[0], 0.0, atol=1e-6)  # the path starts at theta, the centre
    view.step_slider.setValue(3)
    live = view.panels["a"].live.points()[0].pos()
    np.testing.assert_allclose((live.x(), live.y()), r.task_path[3], atol=1e-9)
    assert view.pred_after.yData is not None
    np.testing.assert_allclose(view.pred_after.yData, np.clip(r.prediction["curves"][3], -1e3, 1e3))
    view.plane.setCurrentIndex(view.plane.findData("tasks"))
    assert view.wait_until_idle(60)
    np.testing.assert_allclose(view.result.task_path[-1], [1.0, 0.0], atol=1e-4)  # task A's adapted theta
    view.mode.setCurrentIndex(view.mode.findData("compare"))
    view.plane.setCurrentIndex(view.plane.findData("pca"))


def test_adaptation_view_compares_the_initializations(trained):
    view = trained.views["adaptation"]
    trained.tabs.setCurrentWidget(view)
    view.tasks.setValue(60)
    assert view.wait_until_idle(60)
    r = view.result
    assert set(r.curves) == {"maml", "pretrained"} and r.shots == 10
    curve = r.curves["maml"]
    assert len(curve.loss_mean) == r.steps + 1 and (curve.loss_ci95 > 0).all()
    image = trained.grab().toImage()
    assert distinct_colours(image) > 60
    assert has_colour(image, algorithm_color("pretrained"))
    assert "after 10 steps" in view.summary.text()


def test_reset_clears_the_views(trained):
    trained.reset()
    assert trained.views["paths"].projected is None and trained.views["landscape"].result is None
    assert not [k for k, i in trained.views["adaptation"].inits.items() if i.source == "trained"]


@pytest.mark.parametrize("view", ["landscape", "paths", "adaptation"])
def test_screenshot_of_each_new_view_waits_for_its_computation(view, tmp_path, capsys):
    path = tmp_path / f"{view}.png"
    assert app.main(["--screenshot", str(path), "--iterations", "40", "--view", view, "--size", "1100x720"]) == 0
    assert "training finished" in capsys.readouterr().out
    image = QImage(str(path))
    assert (image.width(), image.height()) == (1100, 720)
    assert distinct_colours(image) > 60
    assert has_colour(image, algorithm_color("maml"))


def test_path_projection_shares_one_plane_from_the_shared_initialization():
    from maml_lab.core.algorithms.config import AlgorithmConfig
    from maml_lab.core.training.config import ExperimentConfig
    from maml_lab.core.training.trainer import Trainer
    from maml_lab.lab.inside import collect_paths

    config = ExperimentConfig(algorithms=[AlgorithmConfig.defaults(a) for a in ("maml", "pretrained")],
                              iterations=20, meta_batch_size=3, val_every=0, hidden=[8])
    trainer = Trainer(config)
    trainer.run()
    projected = project_paths(collect_paths(trainer), "init", "maml")
    for xy in projected.coords.values():
        np.testing.assert_allclose(xy[0], 0.0, atol=1e-6)  # every path starts at the shared initialization
    final = project_paths(collect_paths(trainer), "final", "pretrained")
    np.testing.assert_allclose(final.coords["pretrained"][-1], 0.0, atol=1e-6)


def test_contours_ticks_and_arrow_scale():
    alphas, betas = np.linspace(0, 4, 5), np.linspace(0, 1, 3)
    values = np.tile(alphas, (3, 1))  # value = alpha
    x, y = contour_lines(values, alphas, betas, [2.0])
    np.testing.assert_allclose(x[np.isfinite(x)], 2.0)  # the iso-line of value 2 is the line alpha = 2
    assert [t for _, t in log_ticks(0.3, 3.2)] == ["10", "100", "1000"]
    assert [t for _, t in log_ticks(-1, 0.2)] == ["0.1", "0.2", "0.5", "1"]
    assert auto_arrow_scale(np.array([1.0]), 6.0) == 1.0
    assert auto_arrow_scale(np.array([0.01]), 6.0) == 50.0
    assert auto_arrow_scale(np.array([0.001]), 6.0, reach=0.5) == 2.0  # limited by how far it would reach


# -- the views adapt each initialization by its own rule ------------------------------------------------------
@pytest.fixture(scope="module")
def rule_run():
    """A short run of MAML, Meta-SGD, MAML++ and ANIL, its RunPaths with learned rates far from the inner lr."""
    import torch

    from maml_lab.core.algorithms.config import AlgorithmConfig
    from maml_lab.core.training.config import ExperimentConfig
    from maml_lab.core.training.trainer import Trainer
    from maml_lab.lab.inside import collect_paths

    config = ExperimentConfig(algorithms=[AlgorithmConfig.defaults(a) for a in ("maml", "metasgd", "mamlpp", "anil")],
                              iterations=8, meta_batch_size=3, val_every=0, hidden=[8, 8])
    trainer = Trainer(config)
    trainer.run()
    run = collect_paths(trainer)
    live = trainer.runs["metasgd"].algorithm.lrs
    assert set(run.learned) == {"metasgd", "mamlpp"} and run.learned_iteration == 8
    assert set(run.learned["metasgd"]) == {f"lr.{k}" for k in live}
    assert all(run.learned["metasgd"][f"lr.{k}"] is not v for k, v in live.items())  # copies, not the live rates
    g = torch.Generator().manual_seed(1)
    for tensors in run.learned.values():  # rates of 0.1-0.3 where the inner lr is 0.01: SGD would differ a lot
        for k in tensors:
            tensors[k] = torch.empty_like(tensors[k]).uniform_(0.1, 0.3, generator=g)
    # each checkpoint of the Meta-SGD path has rates of its own (recorded beside theta): 0.05-0.1 here, neither the
    # inner lr nor the newest rates above
    path = run.paths["metasgd"]
    assert len(path.learned) == len(path) and all(v is not None for v in path.learned)
    rng = np.random.default_rng(2)
    path.learned = [rng.uniform(0.05, 0.1, v.shape).astype(np.float32) for v in path.learned]
    return run


def _post_at_theta_by_hand(run, name, tasks, steps):
    """The query loss after `steps` steps by run.adaptation(name) directly (the Adaptation view's computation)."""
    import torch

    from maml_lab.core.algorithms.config import test_adapt
    from maml_lab.core.analysis.trajectory import unflatten
    from maml_lab.core.tasks.losses import loss_function
    from maml_lab.lab.inside import LANDSCAPE_SEED, build_model_and_like, sample_tasks

    model, like = build_model_and_like(run.model_spec)
    theta = unflatten(np.asarray(run.paths[name].snapshots[-1], np.float64), like)
    batch = sample_tasks(run.family, tasks, run.shots, run.queries, LANDSCAPE_SEED)
    fn = loss_function(run.loss)

    def post(adaptation):
        adapted = test_adapt(adaptation, model, fn, theta, batch.x_support, batch.y_support, steps)
        with torch.no_grad():
            return float(fn(model.forward(adapted, batch.x_query), batch.y_query).mean())

    return post(run.adaptation(name)), post(run.inner_lr(name))


@pytest.mark.parametrize("name, text", [("metasgd", "lr.* held fixed at their iteration-8 values"),
                                        ("mamlpp", "lslr.* held fixed"), ("anil", "head only")])
def test_landscape_post_surface_and_arrows_use_the_algorithms_own_rule(rule_run, name, text):
    from maml_lab.lab.inside import LandscapeRequest, compute_landscape

    result = compute_landscape(LandscapeRequest(rule_run, name, "random", "compare", resolution=3, tasks=4,
                                                inner_steps=2))
    assert text in result.rule
    post = result.surfaces["post"]
    assert post.alphas[1] == 0 and post.betas[1] == 0
    own, sgd = _post_at_theta_by_hand(rule_run, name, 4, 2)
    assert post.values[1, 1] == pytest.approx(own, rel=1e-5)
    assert abs(post.values[1, 1] - sgd) > 1e-3 * sgd  # not plain SGD on every parameter (float32: 1e-5)
    one = compute_landscape(LandscapeRequest(rule_run, name, "tasks", "task", resolution=3, tasks=4, task_steps=3))
    np.testing.assert_allclose(one.task_path[-1], [1.0, 0.0], atol=1e-4)  # its own path ends at its adapted θ'


def test_anil_arrows_leave_the_body_where_it_was(rule_run):
    from maml_lab.core.analysis.trajectory import Plane, flatten
    from maml_lab.lab.inside import build_model_and_like, task_arrows

    model, like = build_model_and_like(rule_run.model_spec)
    body = np.concatenate([np.ones(v.numel()) * (k not in model.head_names(like)) for k, v in like.items()])
    head = 1.0 - body
    origin = np.asarray(rule_run.paths["anil"].snapshots[-1], np.float64)
    arrows = task_arrows(rule_run, Plane(origin, body, head, kind="test"), "anil", len(rule_run.paths["anil"]) - 1, 3)
    ends = np.stack([s[-1] for s in arrows.steps])
    np.testing.assert_allclose(ends[:, 0], 0.0, atol=1e-9)  # no movement along the body
    assert np.abs(ends[:, 1]).max() > 1e-6 and flatten(like).size == origin.size


def test_paths_arrows_use_the_learned_rates_of_their_checkpoint_and_say_so(rule_run):
    import torch

    from maml_lab.core.algorithms.base import LearnedAdaptation
    from maml_lab.core.algorithms.config import test_trajectory
    from maml_lab.core.tasks.losses import loss_function
    from maml_lab.lab.inside import ARROW_SEED, build_model_and_like, sample_tasks, task_arrows

    name = "metasgd"
    projected = project_paths(rule_run, "init", name)
    index = 2  # an earlier checkpoint: its own rates, not the newest ones
    path = rule_run.paths[name]
    arrows = task_arrows(rule_run, projected.plane, name, index, 3)
    assert f"lr.* as learned by this checkpoint (iteration {int(path.iterations[index])})" in arrows.rule
    model, like = build_model_and_like(rule_run.model_spec)
    from maml_lab.core.analysis.trajectory import unflatten

    theta = unflatten(np.asarray(path.snapshots[index], np.float64), like)
    batch = sample_tasks(rule_run.family, 3, rule_run.shots, rule_run.queries, ARROW_SEED)

    def end(adaptation):
        steps = list(test_trajectory(adaptation, model, loss_function(rule_run.loss), theta, batch.x_support,
                                     batch.y_support, rule_run.inner_steps(name)))
        return projected.plane.project(torch.cat([v.reshape(3, -1).double() for v in steps[-1].values()], 1).numpy())

    # the rates of checkpoint 2, read back from the path's vector by hand
    vector, start, rates = path.learned[index], 0, {}
    for k, v in like.items():
        rates[f"lr.{k}"] = torch.as_tensor(vector[start:start + v.numel()].copy()).reshape(v.shape)
        start += v.numel()
    own = end(LearnedAdaptation(rule_run.adaptation(name).config, rates))
    assert set(rule_run.adaptation(name, index).tensors) == set(rates)
    np.testing.assert_allclose(np.stack([s[-1] for s in arrows.steps]), own, atol=1e-5)
    assert np.abs(end(rule_run.adaptation(name)) - own).max() > 1e-4  # not the newest rates
    assert np.abs(end(rule_run.inner_lr(name)) - own).max() > 1e-4  # nor plain SGD
    # a path that kept no rates (an old checkpoint's) falls back to the newest ones, and says so
    from dataclasses import replace

    bare = replace(rule_run, paths=type(rule_run.paths)(rule_run.paths))
    bare.paths[name] = replace(path, learned=[], learned_layout=None)
    fallback = task_arrows(bare, projected.plane, name, index, 3)
    assert "lr.* held fixed at their iteration-8 values (the newest" in fallback.rule
    np.testing.assert_allclose(np.stack([s[-1] for s in fallback.steps]), end(rule_run.adaptation(name)), atol=1e-5)


def test_reptile_landscape_rule_steps_on_the_whole_support_set():
    from maml_lab.core.algorithms.base import LearnedAdaptation
    from maml_lab.core.algorithms.config import AlgorithmConfig
    from maml_lab.lab.inside import full_batch, rule_text

    images = AlgorithmConfig.defaults("reptile", "images")
    assert images.option("eval_batch") == 5
    rule = full_batch(LearnedAdaptation(images, {"inner_adam.step": np.zeros(1)}))
    assert rule.config.option("eval_batch") == 0 and rule.config.inner_optimizer == "adam"
    assert "inner_adam.* held fixed" in rule_text(rule, 10) and "Adam" in rule_text(rule, 10)
    maml = AlgorithmConfig.defaults("maml")
    assert full_batch(maml) is maml and full_batch(0.1) == 0.1


def test_a_long_fine_tuning_is_drawn_up_to_where_it_diverges(rule_run):
    from maml_lab.lab.inside import DIVERGED, _until_diverged, task_arrows

    pts = np.arange(12.0).reshape(6, 2)
    np.testing.assert_array_equal(_until_diverged(pts, np.array([1.0, 0.5, 2.0, DIVERGED + 1, 0.1, 0.1])), pts[:3])
    pts[4, 1] = np.inf
    np.testing.assert_array_equal(_until_diverged(pts), pts[:4])
    np.testing.assert_array_equal(_until_diverged(pts[:1], np.array([np.nan])), pts[:1])  # the start always stays
    projected = project_paths(rule_run, "init", "metasgd")  # the checkpoint's rates of 0.05-0.1, 100 steps
    arrows = task_arrows(rule_run, projected.plane, "metasgd", len(rule_run.paths["metasgd"]) - 1, 3, 100)
    assert all(1 <= len(p) <= 101 and np.isfinite(p).all() for p in arrows.optimum)
