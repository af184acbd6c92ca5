"""Live training curves: meta-training loss on the query sets (after adaptation solid, before dashed) and the
validation loss on held-out tasks, per algorithm, with a log-scale toggle, legends and a crosshair readout.
Classification runs (image tasks) add a third plot: accuracy in training (lines) and on held-out tasks (points).
A task family whose loss stands for a metric (its registry entry's `plot_metric`, as in the Adaptation view; 2-D
navigation: the cost is minus the average return) is plotted as that metric, on a linear axis: higher is better.

Redraws are throttled (at most `max_fps` per second) and each curve is drawn from at most `max_points`
bin means, so drawing costs the same after 100 iterations or 100,000. The per-iteration loss of a
meta-batch is noisy: the bold line is an exponential moving average (the smoothing slider, as in
TensorBoard) over the bin means, which are drawn thin and faint behind it. Thick anti-aliased lines
through noisy data are slow to paint in Qt; thin raw lines and smooth bold ones keep a frame cheap.
"""

from __future__ import annotations

import time

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QSizePolicy, QSlider, QVBoxLayout, QWidget

from ..lab.metrics_history import MetricsHistory
from .colors import algorithm_color, algorithm_label, curve_pen
from .inside_plots import readable_log_ticks
from .plot_export import hide_in_exports
from .theme import MUTED, TEXT, style_plot
from .views import ViewSpec

RAW_ALPHA = 55


def nice_ceil(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten that is >= value."""
    exponent = 10 ** np.floor(np.log10(max(value, 1e-12)))
    for step in (1, 2, 5, 10):
        if step * exponent >= value:
            return float(step * exponent)
    return float(10 * exponent)


def ema(y: np.ndarray, weight: float) -> np.ndarray:
    """Debiased exponential moving average (TensorBoard's smoothing); NaN-safe, weight in [0, 1)."""
    if weight <= 0 or len(y) == 0:
        return y
    out = np.empty_like(y, dtype=np.float64)
    acc, norm = 0.0, 0.0
    for i, v in enumerate(y):  # a few hundred bin means at most
        if np.isfinite(v):
            acc = weight * acc + (1 - weight) * v
            norm = weight * norm + (1 - weight)
        out[i] = acc / norm if norm > 0 else np.nan
    return out


class TrainingPlotsView(QWidget):
    def __init__(self, history: MetricsHistory, parent=None, max_fps: float = 30.0, max_points: int = 400):
        super().__init__(parent)
        self.history = history
        self.max_points = max_points
        self.min_interval = 1.0 / max_fps
        self._last_draw = 0.0
        self._dirty = False
        self.algorithms: list[str] = []
        self.total: int | None = None
        self._auto_x = True
        self._x_max: float | None = None
        self._y_ranges: dict = {}
        self.curves: dict[tuple[str, str], pg.PlotDataItem] = {}
        self._drawn: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        self._series: dict[tuple[str, str, str], tuple] = {}  # what each curve shows, and for which data
        self.draw_count = 0
        # (label, sign) of the metric the loss stands for (the family's plot_metric), or None: the loss itself
        self.plot_metric: tuple[str, float] | None = None  # not `self.metric`: that hides QWidget.metric

        bar = QHBoxLayout()
        bar.setContentsMargins(10, 8, 10, 0)
        bar.setSpacing(14)
        title = QLabel("Meta-training")
        title.setObjectName("SectionTitle")
        bar.addWidget(title)
        bar.addStretch(1)
        self.show_pre = QCheckBox("Before adaptation")
        self.show_pre.setChecked(True)
        self.show_pre.setToolTip("Also plot the loss before the inner steps (dashed)")
        self.show_pre.toggled.connect(self._on_show_pre)
        self.log_scale = QCheckBox("Log scale")
        self.log_scale.setChecked(True)
        self.log_scale.setToolTip("Logarithmic loss axis (Ctrl+L)")
        self.log_scale.toggled.connect(self.set_log)
        smooth_label = QLabel("Smoothing")
        smooth_label.setProperty("hint", True)
        self.smoothing = QSlider(Qt.Orientation.Horizontal)
        self.smoothing.setRange(0, 99)
        self.smoothing.setValue(90)
        self.smoothing.setFixedWidth(110)
        self.smoothing.setToolTip("Exponential moving average of the training loss (0: raw bin means)")
        self.smoothing.valueChanged.connect(lambda _: (setattr(self, "_dirty", True), self.redraw()))
        bar.addWidget(smooth_label)
        bar.addWidget(self.smoothing)
        bar.addSpacing(6)
        bar.addWidget(self.show_pre)
        bar.addWidget(self.log_scale)

        self.graphics = pg.GraphicsLayoutWidget()
        self.graphics.ci.setContentsMargins(6, 4, 10, 4)
        self.graphics.ci.setSpacing(10)
        self.legend = pg.LegendItem(labelTextColor=TEXT, labelTextSize="9pt", colCount=8, horSpacing=18)
        self.legend.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Fixed)  # compact, left
        self.graphics.addItem(self.legend, row=0, col=0)
        self.train_plot = self.graphics.addPlot(row=1, col=0)
        self.val_plot = self.graphics.addPlot(row=2, col=0)
        self.acc_plot = pg.PlotItem()  # in the layout (row 3) only for classification runs
        style_plot(self.train_plot, "Meta-training loss (query sets of the training tasks)", None, "MSE")
        style_plot(self.val_plot, "Validation loss (held-out tasks)", "meta-iteration", "MSE")
        style_plot(self.acc_plot, "Accuracy (training query sets: lines; held-out tasks: points)", "meta-iteration",
                   "accuracy")
        self.val_plot.setXLink(self.train_plot)
        self.acc_plot.setXLink(self.train_plot)
        for plot in (self.train_plot, self.val_plot, self.acc_plot):
            plot.setMenuEnabled(False)
            plot.hideButtons()
            plot.setLogMode(y=plot is not self.acc_plot)
            plot.getViewBox().setMouseEnabled(x=True, y=False)
            readable_log_ticks(plot.getAxis("left")).setWidth(56)
        self.acc_plot.setYRange(-0.04, 1.06, padding=0)
        self.acc_plot.getAxis("left").setTicks([[(v / 5, f"{v * 20}%") for v in range(6)]])
        self.accuracy = False
        self.crosshair = {}
        for plot in (self.train_plot, self.val_plot, self.acc_plot):
            line = pg.InfiniteLine(angle=90, movable=False, pen=pg.mkPen("#9AA3AD", width=1,
                                                                        style=Qt.PenStyle.DashLine))
            line.setVisible(False)
            line.setZValue(50)
            plot.addItem(hide_in_exports(line), ignoreBounds=True)
            self.crosshair[plot] = line
        self.graphics.scene().sigMouseMoved.connect(self._on_mouse_moved)
        self.graphics.scene().sigMouseClicked.connect(self._on_click)
        for plot in (self.train_plot, self.val_plot, self.acc_plot):
            plot.getViewBox().sigRangeChangedManually.connect(self._on_manual_range)
        self.empty_hint = pg.TextItem("Press Start (Space) to train", anchor=(0.5, 0.5), color=MUTED)
        self.train_plot.addItem(self.empty_hint, ignoreBounds=True)
        self.val_every: int | None = None  # the run's validation interval (None: unknown)
        self.val_hint = pg.TextItem("", anchor=(0.5, 0.5), color=MUTED)  # while the validation plot is empty
        self.val_hint.setVisible(False)
        self.val_plot.addItem(self.val_hint, ignoreBounds=True)

        self.readout = QLabel(" ")
        self.readout.setObjectName("Readout")
        self.readout.setTextFormat(Qt.TextFormat.RichText)
        self.readout.setMinimumHeight(22)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 6)
        layout.setSpacing(4)
        layout.addLayout(bar)
        layout.addWidget(self.graphics, 1)
        readout_row = QHBoxLayout()
        readout_row.setContentsMargins(12, 0, 12, 0)
        readout_row.addWidget(self.readout)
        layout.addLayout(readout_row)

        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.redraw)
        self._place_hint()

    # -- data ----------------------------------------------------------------------------------------
    def reset(self, algorithms: list[str], total: int | None = None, loss_label: str = "MSE",
              accuracy: bool = False, metric: tuple[str, float] | None = None,
              val_every: int | None = None) -> None:
        """Empty plots for a new run of these algorithms over `total` meta-iterations (the fixed x range);
        `accuracy`: a classification run, whose accuracy gets a plot of its own; `metric`: the task family's
        `plot_metric`, (label, sign): plot sign x loss under that label (2-D navigation: the average return);
        `val_every`: the run's validation interval, named in the validation plot until its first point."""
        self.plot_metric = metric
        self.val_every = val_every
        name = metric[0] if metric is not None else "loss"
        y_label = metric[0] if metric is not None else loss_label
        for plot in (self.train_plot, self.val_plot):
            plot.setLabel("left", f"<span style='color:{MUTED}'>{y_label}</span>")
        style_plot(self.train_plot, f"Meta-training {name} (query sets of the training tasks)")
        style_plot(self.val_plot, f"Validation {name} (held-out tasks)")
        # a return is negative: no log axis while it is plotted; the box is hidden (a checked box beside a linear
        # axis would mislead) and keeps the user's choice for other runs
        self.log_scale.setEnabled(not self._negated())
        self.log_scale.setVisible(not self._negated())
        for plot in (self.train_plot, self.val_plot):
            plot.setLogMode(y=self._log())
        for plot in (self.train_plot, self.val_plot, self.acc_plot):
            for item in list(plot.listDataItems()):
                plot.removeItem(item)
        self._show_accuracy(accuracy)
        self.curves.clear()
        self._drawn.clear()
        self._series.clear()
        self.legend.clear()
        self.algorithms = list(algorithms)
        for name in self.algorithms:
            color = algorithm_color(name)
            specs = (("post_loss", "raw", self.train_plot, curve_pen(name, width=1, alpha=RAW_ALPHA), 2),
                     ("post_loss", "smooth", self.train_plot, curve_pen(name, width=2.2), 10),
                     ("pre_loss", "smooth", self.train_plot, curve_pen(name, width=1, dashed=True), 6),
                     ("val_post_loss", "raw", self.val_plot, curve_pen(name, width=2.2), 10),
                     ("val_pre_loss", "raw", self.val_plot, curve_pen(name, width=1, dashed=True), 6))
            if self.accuracy:
                specs += (("post_accuracy", "smooth", self.acc_plot, curve_pen(name, width=2.2), 10),
                          ("pre_accuracy", "smooth", self.acc_plot, curve_pen(name, width=1, dashed=True), 6),
                          ("val_post_accuracy", "raw", self.acc_plot, pg.mkPen(None), 12),
                          ("val_pre_accuracy", "raw", self.acc_plot, pg.mkPen(None), 11))
            for key, kind, plot, pen, z in specs:
                item = pg.PlotDataItem(pen=pen, connect="finite")
                if key.startswith("val"):
                    dashed = key.startswith("val_pre")
                    item.setSymbol("o")
                    item.setSymbolSize(5 if dashed else 6)
                    item.setSymbolBrush(pg.mkBrush("w" if dashed else color))
                    item.setSymbolPen(pg.mkPen(color, width=1.2))
                item.setZValue(z)
                plot.addItem(item)
                self.curves[(name, key, kind)] = item
            self.legend.addItem(self.curves[(name, "post_loss", "smooth")], algorithm_label(name))
        if self.algorithms:
            self.legend.addItem(pg.PlotDataItem(pen=pg.mkPen("#5E6770", width=2.2)), "after adaptation")
            self.legend.addItem(pg.PlotDataItem(pen=pg.mkPen("#5E6770", width=1, style=Qt.PenStyle.DashLine)),
                                "before adaptation")
        self._on_show_pre(self.show_pre.isChecked())
        self.empty_hint.setVisible(not self.algorithms)
        self.readout.setText(" ")
        self.total = total
        self._y_ranges = {}
        self._auto_x = True
        self._x_max = None
        for plot in (self.train_plot, self.val_plot, self.acc_plot):
            plot.disableAutoRange()
        self.acc_plot.setYRange(-0.04, 1.06, padding=0)
        self._fit_x()
        self._place_hint()
        self._dirty = True
        self.redraw()

    def _show_accuracy(self, on: bool) -> None:
        if on == self.accuracy:
            return
        self.accuracy = on
        if on:
            self.graphics.addItem(self.acc_plot, row=3, col=0)
            self.val_plot.setLabel("bottom", "")
        else:
            self.graphics.ci.removeItem(self.acc_plot)
            self.val_plot.setLabel("bottom", f"<span style='color:{MUTED}'>meta-iteration</span>")

    def _fit_x(self) -> None:
        """Grow the x axis in 1-2-5 steps ahead of the data (capped at the run's length), so it changes a few
        times per run instead of every frame (an axis change re-renders axes and grid). Off once the user
        pans or zooms; a double click turns it back on."""
        if not self._auto_x or not self.algorithms:
            return
        last = self.history.last_iteration()
        target = nice_ceil(max(last * 1.25, 10))
        if self.total:
            target = min(target, self.total)
        if target != self._x_max:
            self._x_max = target
            self.train_plot.setXRange(0, target, padding=0.02)

    def _on_manual_range(self, *_args) -> None:
        self._auto_x = False

    def _on_click(self, ev) -> None:
        if ev.double():
            self._auto_x = True
            self._x_max = None
            self._fit_x()

    def _negated(self) -> bool:
        """True when the plotted metric is minus the loss (a return): it may be negative."""
        return self.plot_metric is not None and self.plot_metric[1] < 0

    def _log(self) -> bool:
        """Whether the loss plots are on a log axis now: the user's choice, never for a negated metric."""
        return self.log_scale.isChecked() and not self._negated()

    def _fit_y(self, plot, values: list[np.ndarray]) -> None:
        """Fit the y range to the data with hysteresis: change it only when the data leave it or fill too little."""
        log = self._log()
        finite = [v[np.isfinite(v) & ((v > 0) if log else True)] for v in values]
        finite = [v for v in finite if v.size]
        if not finite:
            return
        lo, hi = min(float(v.min()) for v in finite), max(float(v.max()) for v in finite)
        if log:
            lo, hi = np.log10(lo), np.log10(hi)
            least = 0.35  # decades: a narrower log axis can fall between labelled ticks and show none
        else:
            least = 0.2 * max(abs(hi), 1e-3)
        if hi - lo < least:
            mid = 0.5 * (lo + hi)
            lo, hi = mid - least / 2, mid + least / 2
        span = max(hi - lo, 1e-6)
        current = self._y_ranges.get(plot)
        if current is not None:
            c_lo, c_hi = current
            if c_lo <= lo and hi <= c_hi and span >= 0.6 * (c_hi - c_lo):
                return
        new = (lo - 0.06 * span, hi + 0.06 * span)
        self._y_ranges[plot] = new
        plot.setYRange(*new, padding=0)

    def follow(self, model) -> None:
        """Subscribe to the run's model (lab.run_state.RunModel): a new scope empties the plots for its run, new
        metrics redraw them."""
        model.events.scope.connect(self._on_scope)
        model.events.progress.connect(self._on_progress)

    def _on_scope(self, event) -> None:
        scope = event.scope
        if scope.source == "none":
            self.reset([])
            return
        from ..core.tasks.registry import TASKS

        kind = TASKS.get(scope.task) if scope.task in TASKS else None
        config = scope.config
        self.reset(list(scope.algorithms), scope.total or None, kind.loss_label if kind else "loss",
                   accuracy=kind is not None and kind.metric == "accuracy",
                   metric=kind.plot_metric if kind else None,
                   val_every=config.val_every if config is not None else None)

    def _on_progress(self, _event) -> None:
        self.mark_dirty()

    def mark_dirty(self) -> None:
        """New data arrived: redraw soon, at most max_fps times a second."""
        self._dirty = True
        if self._timer.isActive():
            return
        wait = self.min_interval - (time.perf_counter() - self._last_draw)
        self._timer.start(max(0, int(wait * 1000)))

    def redraw(self) -> None:
        if not self._dirty:
            return
        if not self.isVisible():
            return  # drawn when the tab is shown again
        self._dirty = False
        self._last_draw = time.perf_counter()
        self.draw_count += 1
        weight = self.smoothing.value() / 100.0
        log = self._log()
        sign = self.plot_metric[1] if self.plot_metric is not None else 1.0
        shown = {self.train_plot: [], self.val_plot: [], self.acc_plot: []}
        for (name, key, kind), item in self.curves.items():
            signature = (self.history.count(name, key), weight if kind == "smooth" else None, log, self.max_points,
                         sign)
            cached = self._series.get((name, key, kind))
            if cached is not None and cached[0] == signature:
                x, y = cached[1], cached[2]  # unchanged (validation between evaluations): no repaint
            else:
                x, y = self.history.series(name, key, self.max_points)
                if sign != 1.0 and "accuracy" not in key:
                    y = sign * y  # the metric the loss stands for (2-D navigation: return = -cost)
                if log and "accuracy" not in key:
                    y = np.where(y > 0, y, np.nan)
                if kind == "smooth":
                    y = ema(y, weight)
                self._series[(name, key, kind)] = (signature, x, y)
                item.setData(x, y)
            if kind == "smooth" or key.startswith("val"):
                self._drawn[(name, key)] = (x, y)
            if item.isVisible():
                shown[self._plot_of(key)].append(y)
        shown.pop(self.acc_plot)  # accuracy keeps its fixed 0-100% axis
        for plot, values in shown.items():
            self._fit_y(plot, values)
        self._fit_x()
        self.empty_hint.setVisible(not self.algorithms)
        self._place_val_hint()

    def _place_val_hint(self) -> None:
        """Say why the validation plot is empty (it validates every val_every iterations, or never)."""
        empty = not any(len(self._drawn.get((name, "val_post_loss"), ((), ()))[0]) for name in self.algorithms)
        show = bool(self.algorithms) and empty and self.val_every is not None
        self.val_hint.setVisible(show)
        if show:
            self.val_hint.setText(f"No validation yet: every {self.val_every:,} meta-iterations" if self.val_every
                                  else "Validation is off for this run (val_every = 0)")
            (x0, x1), (y0, y1) = self.val_plot.viewRange()
            self.val_hint.setPos((x0 + x1) / 2, (y0 + y1) / 2)

    def _plot_of(self, key: str):
        if "accuracy" in key:
            return self.acc_plot
        return self.val_plot if key.startswith("val") else self.train_plot

    def showEvent(self, ev):
        super().showEvent(ev)
        if self._dirty:
            self._timer.start(0)

    def set_log(self, on: bool) -> None:
        if self.log_scale.isChecked() != on:
            self.log_scale.setChecked(on)  # comes back here through toggled
            return
        self._y_ranges = {}
        for plot in (self.train_plot, self.val_plot):
            plot.setLogMode(y=self._log())
        self._dirty = True
        self.redraw()
        self._place_hint()

    def _on_show_pre(self, on: bool) -> None:
        for (_name, key, _kind), item in self.curves.items():
            if key in ("pre_loss", "val_pre_loss", "pre_accuracy", "val_pre_accuracy"):
                item.setVisible(on)
        self._y_ranges = {}
        self._dirty = True
        self.redraw()

    def _place_hint(self) -> None:
        if not self.algorithms:
            self.train_plot.setXRange(0, 1, padding=0.05)
        self.empty_hint.setPos(0.5, 0.5)  # the middle of the empty plot (0..1, or 10^0..10^1 in log scale)

    # -- crosshair -----------------------------------------------------------------------------------
    def _on_mouse_moved(self, scene_pos) -> None:
        plot = None
        for p in (self.train_plot, self.val_plot) + ((self.acc_plot,) if self.accuracy else ()):
            if p.getViewBox().sceneBoundingRect().contains(scene_pos):
                plot = p
        if plot is None or not self.algorithms:
            for line in self.crosshair.values():
                line.setVisible(False)
            return
        x = plot.getViewBox().mapSceneToView(scene_pos).x()
        for line in self.crosshair.values():
            line.setPos(x)
            line.setVisible(True)
        self.readout.setText(self.readout_text(x))

    def readout_text(self, x: float) -> str:
        """The values of every curve at meta-iteration x (nearest drawn point), as rich text."""
        parts = [f"<b style='color:{TEXT}'>iteration {max(0, int(round(x))):,}</b>"]
        if self.plot_metric is not None:
            parts.append(f"<span style='color:{MUTED}'>{self.plot_metric[0]}</span>")
        for name in self.algorithms:
            values = []
            for key, label in (("pre_loss", "train"), ("val_pre_loss", "val")):
                pre = self._value_at(name, key, x)
                post = self._value_at(name, key.replace("pre", "post"), x)
                if post is not None:
                    values.append(f"{label} {pre:.3g} → {post:.3g}" if pre is not None else f"{label} {post:.3g}")
            if self.accuracy:
                post = self._value_at(name, "val_post_accuracy", x)
                if post is not None:
                    pre = self._value_at(name, "val_pre_accuracy", x)
                    values.append(f"val accuracy {pre:.0%} → {post:.0%}" if pre is not None
                                  else f"val accuracy {post:.0%}")
            if values:
                color = algorithm_color(name)
                parts.append(f"<span style='color:{color}'>■</span> <b>{algorithm_label(name)}</b> "
                             + ", ".join(values))
        return "&nbsp;&nbsp;&nbsp;".join(parts)

    def _value_at(self, name: str, key: str, x: float) -> float | None:
        xs, ys = self._drawn.get((name, key), (None, None))
        if xs is None or not len(xs):
            return None
        i = int(np.clip(np.searchsorted(xs, x), 0, len(xs) - 1))
        if i > 0 and abs(xs[i - 1] - x) < abs(xs[i] - x):
            i -= 1
        value = float(ys[i])
        return value if np.isfinite(value) else None

    # -- for plot export ----------------------------------------------------------------------------
    def export_item(self):
        return self.graphics.ci

    def view_title(self) -> str:
        return "training"


def _make_view(window) -> TrainingPlotsView:
    view = TrainingPlotsView(window.run_model.history, max_fps=12.0)
    view.follow(window.run_model)
    return view


VIEW = ViewSpec("training", "Training curves", _make_view)
