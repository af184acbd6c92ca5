"""Text that fits (issue 21's small visible defects): log axes label ticks that do not collide, labels and the
status bar elide what does not fit instead of cutting it or drawing it over their neighbours."""

import math

import pyqtgraph as pg
from PySide6.QtWidgets import QLabel

from maml_lab.ui.elided import ElidedLabel, ElidingStatusBar
from maml_lab.ui.inside_plots import readable_log_ticks


def test_a_log_axis_labels_as_many_ticks_as_its_length_holds():
    axis = readable_log_ticks(pg.AxisItem("left"))
    axis.setLogMode(True)
    within_a_decade = axis.tickValues(math.log10(2), math.log10(9), 100)  # pyqtgraph: all of 2..9, colliding
    values = [v for _, level in within_a_decade for v in level]
    assert 2 <= len(values) <= 4
    assert axis.tickStrings(values, 1.0, None) == ["2", "6"]
    many = [v for _, level in axis.tickValues(-3, 1, 400) for v in level]
    labels = axis.tickStrings(many, 1.0, None)
    assert labels[0] == "0.001" and "1" in labels and len(labels) <= 10
    linear = pg.AxisItem("left")  # an axis not in log mode is untouched
    readable_log_ticks(linear)
    assert linear.tickStrings([1.0, 2.0], 1.0, 1.0) == ["1", "2"]


def test_an_elided_label_keeps_its_whole_text(qtbot):
    label = ElidedLabel("1,234 / 100,000 iterations · 754 tasks/s · ETA 36:51")
    qtbot.addWidget(label)
    label.resize(label.sizeHint())
    label.show()
    assert not label.elided() and label.shown_text() == label.text()
    assert label.minimumSizeHint().width() < label.sizeHint().width()  # a toolbar may squeeze it
    label.resize(120, label.height())
    assert label.elided() and label.shown_text().endswith("…") and label.text().endswith("ETA 36:51")


def test_a_label_too_narrow_for_its_text_draws_its_compact_form(qtbot):
    """The toolbar's cost meter with four algorithms: every algorithm's time rather than the first two's memory."""
    full = "MAML 2.41 s, 227 MB · FOMAML 1.4 s, 206 MB · Reptile 1.62 s, 12 MB · Pretrained 205 ms, 71 MB"
    label = ElidedLabel(full)
    qtbot.addWidget(label)
    label.resize(label.sizeHint())
    label.show()
    assert label.shown_text() == full
    wide = label.sizeHint().width()
    label.compact_text = "MAML 2.41 s · FOMAML 1.4 s · Reptile 1.62 s · Pretrained 205 ms"
    assert label.sizeHint().width() < wide  # the layout gives it the compact form's width
    label.resize(label.sizeHint())
    assert label.shown_text() == label.compact_text and label.elided()  # the tooltip keeps the whole text
    label.resize(60, label.height())
    assert label.shown_text().startswith("MAML") and label.shown_text().endswith("…")


def test_the_status_message_stops_before_the_permanent_widgets(qtbot):
    bar = ElidingStatusBar()
    qtbot.addWidget(bar)
    folder = QLabel("Run folder: 20261206-054826-sinusoid-maml+pretrained")
    bar.addPermanentWidget(folder)
    bar.resize(900, 30)
    bar.show()
    qtbot.waitExposed(bar)
    bar.showMessage("a long message " * 20)
    qtbot.waitUntil(lambda: folder.x() > 0, timeout=2000)  # laid out
    bar.repaint()
    assert folder.isVisible() and bar.currentMessage() == "a long message " * 20
    rect = bar.message_rect()
    assert 0 < rect.right() < folder.x()  # the message stops before the folder link...
    shown = bar.shown_message()
    assert shown.endswith("…") and bar.fontMetrics().horizontalAdvance(shown) <= rect.width()  # ...elided to fit
    bar.showMessage("short")
    assert bar.shown_message() == "short"


def test_the_adaptation_legend_leaves_the_curves_free_and_steps_are_whole(qtbot):
    """2-D navigation's returns rise from the bottom left; the legend went top left, over MAML's curve, and the
    x axis had 0.5 ticks for 3 whole steps."""
    from collections import OrderedDict

    import numpy as np
    from PySide6.QtCore import QPointF

    from maml_lab.core.analysis.evaluation import AdaptationCurve
    from maml_lab.lab.inside import CurveSet
    from maml_lab.ui.adaptation_view import AdaptationView

    def curve(*costs):
        costs = np.array(costs, dtype=np.float64)
        return AdaptationCurve(np.arange(len(costs)), costs, np.full(len(costs), 1.5), num_tasks=100)

    view = AdaptationView()
    qtbot.addWidget(view)
    view.resize(950, 520)
    view.show()
    qtbot.waitExposed(view)
    view.plot_metric = ("average return", -1.0)
    view.result = CurveSet(OrderedDict(maml=curve(42, 16, 19, 20), pretrained=curve(42, 38, 34.5, 31)),
                           {"maml": "MAML", "pretrained": "Pretrained"}, {"maml": "maml", "pretrained": "pretrained"},
                           steps=3, shots=20, num_tasks=100,
                           references={"Random initialization": curve(73.6, 67, 62, 60.7),
                                       "Oracle (knows the goal)": curve(0.6, 0.6, 0.6, 0.6)})
    view._draw()
    qtbot.wait(50)
    ticks = view.loss_plot.getAxis("bottom")._tickLevels
    assert [v for v, _ in ticks[0]] == [0, 1, 2, 3]
    vb = view.loss_plot.getViewBox()
    box = view.legend.sceneBoundingRect()
    for line in view.legend_lines():
        for x, y in zip(line.xData, line.yData, strict=True):
            assert not box.contains(vb.mapViewToScene(QPointF(float(x), float(y)))), (line, x, y)


def test_a_long_image_set_name_is_shortened_and_its_path_is_the_tooltip(qtbot, tmp_path):
    from maml_lab.ui.experiment_panel import ExperimentPanel

    panel = ExperimentPanel()
    qtbot.addWidget(panel)
    path = str(tmp_path / "images_background_small1.zip")
    panel.set_image_data(path)
    text = panel.image_source.currentText()
    assert len(text) <= 22 and text.startswith("images_ba") and text.endswith("small1.zip") and "…" in text
    assert panel.image_source.toolTip().startswith(path) and panel.image_data == path
    panel.set_image_data(None)
    assert panel.image_source.currentText() == "Built-in glyphs" and not panel.image_source.toolTip().startswith("/")
