"""CAVIA in the Paths view: its tasks' adaptation moves the context, not theta, so the arrows are drawn in the
context's own two coordinates (beside the PCA plane of theta), each from context 0."""

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cavia_run():
    from maml_lab.core.algorithms.config import AlgorithmConfig
    from maml_lab.core.training.config import ExperimentConfig
    from maml_lab.core.training.trainer import Trainer
    from maml_lab.lab.inside import collect_paths

    config = ExperimentConfig(algorithms=[AlgorithmConfig.defaults(a) for a in ("maml", "cavia")], iterations=12,
                              meta_batch_size=3, val_every=0, hidden=[8, 8])
    trainer = Trainer(config)
    trainer.run()
    return collect_paths(trainer)


def _contexts_by_hand(run, index, tasks, steps):
    """Each task's context after 0..steps steps, by CAVIA's test-time rule from checkpoint `index` directly."""
    from maml_lab.core.algorithms.config import test_trajectory
    from maml_lab.core.analysis.trajectory import unflatten
    from maml_lab.core.tasks.losses import loss_function
    from maml_lab.lab.inside import ARROW_SEED, build_model_and_like, sample_tasks

    model, like = build_model_and_like(run.model_spec)
    theta = unflatten(np.asarray(run.paths["cavia"].snapshots[index], np.float64), like)
    batch = sample_tasks(run.family, tasks, run.shots, run.queries, ARROW_SEED)
    path = test_trajectory(run.adaptation("cavia", index), model, loss_function(run.loss), theta, batch.x_support,
                           batch.y_support, steps)
    return torch.stack([p["context"] for p in path], 1).double().numpy()  # [tasks, steps + 1, 2]


def test_cavia_arrows_are_its_context_path_in_its_own_plane(cavia_run):
    from maml_lab.lab.inside import project_paths, task_arrows

    projected = project_paths(cavia_run, "init", "maml")
    last = len(cavia_run.paths["cavia"]) - 1
    arrows = task_arrows(cavia_run, projected.plane, "cavia", last, num_tasks=4, optimum_steps=6)
    assert arrows.space == "context" and arrows.labels == ("context parameter 1", "context parameter 2")
    assert "context parameters from zero" in arrows.rule and "context.*" in arrows.rule
    expected = _contexts_by_hand(cavia_run, last, 4, 1)
    assert len(arrows.steps) == 4
    for drawn, want in zip(arrows.steps, expected):
        np.testing.assert_allclose(drawn, want, atol=1e-6)  # the two parameters as they are, from (0, 0)
        np.testing.assert_allclose(drawn[0], [0.0, 0.0])
    assert np.abs(expected[:, -1]).max() > 1e-6  # the contexts moved
    ends = np.stack([o[-1] for o in arrows.optimum])
    np.testing.assert_allclose(ends, _contexts_by_hand(cavia_run, last, 4, 6)[:, -1], atol=1e-6)
    maml = task_arrows(cavia_run, projected.plane, "maml", last, num_tasks=2)
    assert maml.space == "theta"  # the others stay on the plane of theta


def test_the_landscape_says_why_cavia_has_no_plane_through_two_tasks_adapted_theta(cavia_run):
    from maml_lab.lab.inside import LandscapeRequest, compute_landscape

    with pytest.raises(ValueError, match="CAVIA's adaptation moves its context, not θ"):
        compute_landscape(LandscapeRequest(cavia_run, "cavia", "tasks", "compare", resolution=3, tasks=3))
    result = compute_landscape(LandscapeRequest(cavia_run, "cavia", "pca", "task", resolution=3, tasks=3,
                                                task_steps=2))
    np.testing.assert_allclose(result.task_path, 0.0, atol=1e-12)  # theta does not move on its plane
    curves = result.prediction["curves"]
    assert not np.allclose(curves[0], curves[-1])  # but the prediction does: the context reached the network


def test_more_context_parameters_are_shown_on_their_pca_plane():
    from maml_lab.lab.inside import context_plane

    rng = np.random.default_rng(0)
    points = rng.normal(size=(30, 5)) * np.array([3.0, 1.0, 0.1, 0.1, 0.1])
    project, labels = context_plane(points)
    assert project(points).shape == (30, 2) and "of 5 parameters" in labels[0]
    project, labels = context_plane(points[:, :1])
    np.testing.assert_allclose(project(points[:, :1])[:, 1], 0.0)


def test_paths_view_draws_the_context_plane_beside_the_paths(cavia_run, qtbot):
    from maml_lab.ui.paths_view import PathsView

    view = PathsView()
    qtbot.addWidget(view)
    try:
        _check_context_plane(view, cavia_run)
    finally:
        view.shutdown()


def _check_context_plane(view, cavia_run):
    view.resize(1100, 600)
    view.show()
    view.set_run(cavia_run)
    assert view.wait_until_idle(60)
    view.algorithm.setCurrentIndex(view.algorithm.findData("maml"))
    assert view.wait_until_idle(60)
    assert view.arrows.space == "theta" and not view.context_graphics.isVisible()
    view.algorithm.setCurrentIndex(view.algorithm.findData("cavia"))
    assert view.wait_until_idle(60)
    assert view.arrows.algorithm == "cavia" and view.arrows.space == "context"
    assert view.context_graphics.isVisible()
    assert view.arrow_layer.paths == []  # nothing on the plane of theta: theta does not move
    assert len(view.context_arrow_layer.paths) == view.tasks.value()
    for drawn in view.context_arrow_layer.paths:
        np.testing.assert_allclose(drawn[0], [0.0, 0.0])
    assert "context parameter 1" in view.context_plot.getAxis("bottom").labelText
    assert "context's plane" in view.rule_label.text()
    view.clear()
    assert not view.context_graphics.isVisible()
