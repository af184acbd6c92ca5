"""2-D navigation in the Training curves (the average return, not the cost) and in the Arena while training."""

from __future__ import annotations

import numpy as np

from maml_lab.core.tasks.navigation import NavigationTasks
from maml_lab.lab.metrics_history import MetricsHistory
from maml_lab.ui.training_plots import TrainingPlotsView


def _costs(n, start, end):
    return list(np.linspace(start, end, n))


def _chunk(n=30):
    """Navigation metrics as the worker sends them: pre_loss / post_loss are costs (minus the return), > 0."""
    its = list(range(1, n + 1))
    val_its = [10, 20, 30]
    return {"train": {"maml": {"iteration": its, "pre_loss": _costs(n, 60, 40), "post_loss": _costs(n, 50, 15)}},
            "val": {"maml": {"iteration": val_its, "val_pre_loss": [55.0, 45.0, 40.0],
                             "val_post_loss": [45.0, 25.0, 14.0]}}}


def test_training_curves_plot_navigation_s_average_return_on_a_linear_axis(qtbot):
    history = MetricsHistory()
    view = TrainingPlotsView(history)
    qtbot.addWidget(view)
    view.resize(900, 600)
    view.show()
    qtbot.waitExposed(view)
    view.smoothing.setValue(0)  # the readout then gives the bin values themselves
    assert view.logicalDpiX() > 0  # plot_metric does not hide QWidget.metric
    assert view.log_scale.isChecked()  # the user's choice (log) for loss curves
    view.reset(["maml"], 30, NavigationTasks.loss_label, metric=NavigationTasks.plot_metric)
    history.add_chunk(_chunk())
    view.mark_dirty()
    view._dirty = True
    view.redraw()
    train = view.curves[("maml", "post_loss", "raw")]
    pre = view.curves[("maml", "pre_loss", "smooth")]
    val = view.curves[("maml", "val_post_loss", "raw")]
    assert np.allclose(train.yData, -np.array(_costs(30, 50, 15)))  # the return, -cost: negative
    assert np.all(pre.yData < 0) and np.allclose(val.yData, [-45.0, -25.0, -14.0])
    # a linear axis (a log axis cannot show negative returns), labelled with the metric, not the cost
    for plot in (view.train_plot, view.val_plot):
        assert not plot.getAxis("left").logMode
        assert "average return" in plot.getAxis("left").labelText and "cost" not in plot.getAxis("left").labelText
        lo, hi = plot.viewRange()[1]
        assert lo < -14 and hi > -15 and hi < 5  # the returns are in view
    assert "average return" in view.train_plot.titleLabel.text
    assert not view.log_scale.isVisible()  # no log option for returns; the box keeps the user's choice
    view.set_log(True)
    assert not view.train_plot.getAxis("left").logMode
    # the readout gives the returns: before -> after adaptation
    text = view.readout_text(30)
    assert "average return" in text and "train -40 → -15" in text and "val -40 → -14" in text

    assert not view.val_hint.isVisible()  # the validation plot has its points

    # before the first validation, the empty validation plot says when it comes
    view.reset(["maml"], 30, NavigationTasks.loss_label, metric=NavigationTasks.plot_metric, val_every=250)
    history.clear()
    history.add_chunk({"train": _chunk()["train"]})
    view._dirty = True
    view.redraw()
    assert view.val_hint.isVisible() and "every 250 meta-iterations" in view.val_hint.toPlainText()

    # sinusoid afterwards: the loss itself, log axis, as before
    view.reset(["maml"], 30, "MSE", val_every=10)
    history.clear()
    history.add_chunk(_chunk())
    view._dirty = True
    view.redraw()
    assert not view.val_hint.isVisible()
    assert view.log_scale.isVisible() and view.train_plot.getAxis("left").logMode
    assert "MSE" in view.train_plot.getAxis("left").labelText
    assert "loss" in view.train_plot.titleLabel.text
    assert np.allclose(view.curves[("maml", "post_loss", "raw")].yData, _costs(30, 50, 15))
    assert "train 40 → 15" in view.readout_text(30) and "average return" not in view.readout_text(30)


def test_the_arena_s_returns_follow_training_live(window, qtbot, monkeypatch):
    """A short navigation run in the app: the Arena's table of average returns fills while training and changes
    as new parameters arrive (the snapshots of the running worker), not only at the end."""
    from maml_lab.core.algorithms.config import AlgorithmConfig
    from maml_lab.core.training.config import ExperimentConfig
    from maml_lab.ui import worker

    monkeypatch.setattr(worker, "VAL_BUDGET", None)
    arena = window.views["arena"]
    config = ExperimentConfig(task="navigation", algorithms=[AlgorithmConfig.defaults("maml", task="navigation")],
                              iterations=100_000, meta_batch_size=2, shots=3, queries=3, val_every=0,
                              hidden=[8, 8], task_options={"horizon": 10})
    window.panel.set_config(config)
    window.tabs.setCurrentWidget(arena)
    arena.trajectories = 3
    window.start()
    try:
        qtbot.waitUntil(lambda: arena.table.rowCount() == 1, timeout=60000)
        assert window.state == "running"
        assert arena.family.horizon == 10  # the run's environment, not the default one
        first = (arena.table.item(0, 1).text(), arena.table.item(0, 2).text())
        iteration = window.latest_snapshot.iteration
        qtbot.waitUntil(lambda: (arena.table.item(0, 1).text(), arena.table.item(0, 2).text()) != first,
                        timeout=60000)
        assert window.state == "running" and window.latest_snapshot.iteration > iteration
        assert arena.table.item(0, 0).text() == "MAML"
        assert arena.inits["maml"].model.sizes == (2, 8, 8, 2)  # the form's hidden widths reach the policy
        # hidden, the Arena does not sample on the GUI thread; shown again, it catches up at once
        window.tabs.setCurrentWidget(window.views["training"])
        qtbot.waitUntil(lambda: arena._stale, timeout=20000)
        window.tabs.setCurrentWidget(arena)
        qtbot.waitUntil(lambda: not arena._stale, timeout=20000)
    finally:
        with qtbot.waitSignal(window.controller.finished, timeout=20000):
            window.stop()
    # the same run in the Training curves: average returns (negative), on a linear axis
    window.tabs.setCurrentWidget(window.views["training"])
    window.views["training"].mark_dirty()
    qtbot.waitUntil(lambda: window.views["training"].curves[("maml", "post_loss", "raw")].yData is not None,
                    timeout=5000)
    returns = window.views["training"].curves[("maml", "post_loss", "raw")].yData
    assert len(returns) and np.all(returns[np.isfinite(returns)] < 0)
    assert not window.views["training"].train_plot.getAxis("left").logMode


def test_the_panel_s_hidden_widths_build_the_navigation_policy(window):
    """Choosing 2-D navigation fills the Model box with the paper's policy widths (100, 100); edited widths reach the
    config (and so the policy, see the test above); back on sinusoids the MLP's 40, 40 return."""
    from maml_lab.core.tasks.registry import task_family

    panel = window.panel
    panel.task.setCurrentIndex(panel.task.findData("navigation"))
    assert panel.hidden.text() == "100, 100" and panel.hidden.isVisible()
    assert panel.config().hidden == [100, 100]
    assert panel.config().val_every == 10  # the family's validation schedule: its export is its best by validation
    # MAML's outer step is TRPO here: its Adam rate is greyed out and says why; the pretrained baseline's Adam reads it
    maml, pretrained = panel.columns["maml"], panel.columns["pretrained"]
    maml.enabled.setChecked(True)
    pretrained.enabled.setChecked(True)
    assert not maml.meta_lr.isEnabled() and "TRPO" in maml.meta_lr.toolTip() and maml.inner_lr.isEnabled()
    assert pretrained.meta_lr.isEnabled()
    panel.hidden.setText("24, 12")
    config = panel.config()
    assert config.task == "navigation" and config.hidden == [24, 12]
    kind = task_family("navigation")
    assert kind.model(config, kind.build(config)).sizes == (2, 24, 12, 2)
    panel.task.setCurrentIndex(panel.task.findData("sinusoid"))
    assert panel.hidden.text() == "40, 40" and panel.config().hidden == [40, 40]
    assert maml.meta_lr.isEnabled() and "TRPO" not in maml.meta_lr.toolTip()  # Adam again on sinusoids
    from maml_lab.ui.experiment_panel import default_config

    assert panel.config().val_every == default_config().val_every
