"""The Arena (2-D navigation playground): click and drag place the goal, every navigation initialization's
trajectories and returns follow it, the steps slider picks what the table and the solid paths show."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
import pytest
import torch

from maml_lab.core.algorithms.config import AlgorithmConfig
from maml_lab.core.rl.policy import GaussianMLPPolicy
from maml_lab.core.tasks.navigation import NavigationFamily, goal_paths
from maml_lab.lab.initializations import Initialization
from maml_lab.ui.navigation_view import NavigationView, mean_path

from .helpers import click, drag


def policy_init(key="maml"):
    policy = GaussianMLPPolicy((2, 8, 2))
    params = policy.init_params(torch.Generator().manual_seed(1))
    config = AlgorithmConfig.defaults(key, task="navigation")
    return Initialization(key, key, key.upper(), policy, params, config)


def test_click_and_drag_place_the_goal_and_the_paths_follow(qtbot):
    view = NavigationView(trajectories=3)
    qtbot.addWidget(view)
    view.resize(700, 700)
    view.show()
    view.family = NavigationFamily(horizon=20)
    view.initializations_changed([policy_init()], [])
    click(view.plot, 0.2, -0.3)
    assert abs(view.goal[0] - 0.2) < 0.02 and abs(view.goal[1] + 0.3) < 0.02
    view.compute()
    res = view.results["maml"]
    lr = view.inits["maml"].inner_lr  # the family's default inner step (0.5, as cbfinn/maml_rl)
    expect = goal_paths(view.inits["maml"].model, view.inits["maml"].params, view.goal, 3, lr, 3, view.seed,
                        view.family)
    assert res.returns == expect.returns and len(res.paths) == 4
    assert view.table.rowCount() == 1 and view.table.item(0, 1).text() == f"{res.returns[0]:.2f}"
    view.steps.setValue(3)
    assert view.table.item(0, 2).text() == f"{res.returns[3]:.2f}"
    drag(view.plot, [(0.2, -0.3), (0.0, 0.1), (-0.25, 0.35)])
    assert abs(view.goal[0] + 0.25) < 0.02 and abs(view.goal[1] - 0.35) < 0.02
    view.random_button.click()
    assert -0.5 <= view.goal[0] <= 0.5 and -0.5 <= view.goal[1] <= 0.5
    view.initializations_changed([], ["maml"])
    assert not view.inits and "maml" not in view.results


def test_mean_path_holds_finished_trajectories_at_their_end():
    import numpy as np

    a = np.array([[0.0, 0.0], [0.1, 0.0]])
    b = np.array([[0.0, 0.0], [0.0, 0.1], [0.0, 0.2]])
    assert np.allclose(mean_path([a, b]), [[0, 0], [0.05, 0.05], [0.05, 0.1]])


def test_the_adaptation_view_names_navigation_s_loss(qtbot):
    from types import SimpleNamespace

    from maml_lab.ui.adaptation_view import AdaptationView

    view = AdaptationView()
    qtbot.addWidget(view, before_close_func=lambda v: v.shutdown())
    family = NavigationFamily()
    view.run = SimpleNamespace(eval_family=family, queries=None, loss=family.loss)
    view.set_initialization(policy_init("maml"))
    view.tasks.setValue(2)
    view.steps.setValue(1)
    view.shots.setValue(2)
    with qtbot.waitSignal(view.computed, timeout=60000):
        assert view.compute()
    assert view.loss_label == "cost (-return)" and view.plot_metric == ("average return", -1.0)
    assert view.logicalDpiX() > 0  # the attribute does not hide QWidget.metric (Qt calls it to paint)
    # plotted as the return (the MAML paper's Figure 5), with a random initialization and the oracle beside it
    assert "average return" in view.loss_plot.getAxis("left").labelText
    assert "Average return after fine-tuning" in view.loss_plot.titleLabel.text
    refs = view.result.references
    assert set(refs) == {"Random initialization", "Oracle (knows the goal)"}
    oracle, random = refs["Oracle (knows the goal)"], refs["Random initialization"]
    assert len(oracle.loss_mean) == 2 and oracle.loss_mean[0] == oracle.loss_mean[1] > 0  # a cost, constant
    goals = family.sample(view.result.num_tasks, 2, 2, torch.Generator().manual_seed(2017)).goals
    assert oracle.loss_mean[0] == pytest.approx(float(-family.oracle_returns(goals).double().mean()))
    assert random.loss_mean[0] > oracle.loss_mean[0]  # a random policy does worse than one that knows the goal
    drawn = [item for _, item in view.items if isinstance(item, pg.PlotDataItem) and item.yData is not None]
    assert any(np.allclose(item.yData, -oracle.loss_mean) for item in drawn)  # drawn as returns
    assert "Oracle (knows the goal)" in view.summary.text()
