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
    assert not view.log_scale.isEnabled()  # log is off for returns; the box keeps the user's choice
    view.set_log(True)
    assert not view.train_plot.getAxis("left").logMode
    # the readout gives the returns: before -> after adaptation
    text = view.readout_text(30)
    assert "average return" in text and "train -40 → -15" in text and "val -40 → -14" in text

    # sinusoid afterwards: the loss itself, log axis, as before
    view.reset(["maml"], 30, "MSE")
    history.clear()
    history.add_chunk(_chunk())
    view._dirty = True
    view.redraw()
    assert view.log_scale.isEnabled() and view.train_plot.getAxis("left").logMode
    assert "MSE" in view.train_plot.getAxis("left").labelText
    assert "loss" in view.train_plot.titleLabel.text
    assert np.allclose(view.curves[("maml", "post_loss", "raw")].yData, _costs(30, 50, 15))
    assert "train 40 → 15" in view.readout_text(30) and "average return" not in view.readout_text(30)
