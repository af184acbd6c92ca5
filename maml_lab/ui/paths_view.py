"""The Paths view: every trained algorithm's parameter path theta_0 -> theta_T on one shared PCA plane.

The MAML paper's picture, drawn from a real run: the meta path bold in each algorithm's colour, and from a
checkpoint the adaptation steps theta -> theta'_i of a few tasks as grey arrows, with (on request) each
task's fine-tuned optimum (100 steps) dashed, both by the algorithm's own test-time rule (Meta-SGD's and MAML++'s
learned rates as they were at the checkpoint shown; the newest ones for a path that kept none, such as an opened
run's older checkpoint; the status says which). The slider
scrubs through training: the markers move along the paths at once, the arrows are recomputed at that checkpoint
off the GUI thread, and `checkpoint_selected` carries the checkpoint's parameters (the main window previews them
in the playground). Hovering a path shows its iteration and losses; clicking it jumps there.

An algorithm that adapts a context instead of theta (CAVIA) leaves theta where it is, so its tasks' adaptation is
drawn beside the PCA plane, in a plot of the context's own coordinates: every task starts at context 0, and with
two context parameters the plot is their plane exactly (more are shown on the PCA plane of the points drawn).
"""

from __future__ import annotations

import time

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..lab.inside import (
    ProjectedPaths,
    RunPaths,
    TaskArrows,
    build_model_and_like,
    fit_rows,
    project_paths,
    task_arrows,
)
from .background import BackgroundRunner, run_pending_and_wait
from .colors import algorithm_color, algorithm_label, qcolor
from .inside_plots import (
    ARROW_COLOR,
    OPTIMUM_COLOR,
    ArrowLayer,
    auto_arrow_scale,
    compact,
    flow_bar,
    halo_curve,
    hint_text,
    labelled,
    nearest_point,
    place_center,
    place_legend,
    readout_label,
    reason_label,
    set_halo,
    show_reason,
)
from .plot_export import hide_in_exports
from .slider_player import SliderPlayer
from .theme import MUTED, TEXT, style_plot
from .views import ViewSpec, adapts_by_steps, steps_reason

OPTIMUM_STEPS = 100
AUTO_INTERVAL = 2.0  # seconds between re-projections while training adds to the paths
ARROW_SCALES = (("Auto", 0), ("1×", 1), ("10×", 10), ("100×", 100), ("1000×", 1000))


class PathsView(QWidget):
    checkpoint_selected = Signal(object)  # {"algorithm", "iteration", "params", "adaptation", "model", "latest"}
    computed = Signal()  # a new picture is drawn (tests, screenshots)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.run: RunPaths | None = None
        self.projected: ProjectedPaths | None = None
        self._projected_run: RunPaths | None = None
        self.arrows: TaskArrows | None = None
        self.arrow_scale = 1.0
        self.optimum_scale = 1.0
        self._optimum_from_user = False
        self._stale = False
        self._last_auto = 0.0
        self._follow = True  # the slider stays at the newest checkpoint while training adds some
        self._models: dict = {}
        self.runner = BackgroundRunner("paths", self)
        self.runner.finished.connect(self._on_result)
        self.runner.failed.connect(self._on_failed)
        self.runner.busy_changed.connect(self._on_busy)

        self.algorithm = QComboBox()
        self.algorithm.setMinimumWidth(120)
        self.algorithm.currentIndexChanged.connect(self._on_algorithm)
        self.origin = QComboBox()
        self.origin.addItem("Shared initialization", "init")
        self.origin.addItem("Final θ of the algorithm", "final")
        self.origin.currentIndexChanged.connect(lambda _: self.recompute())
        self.tasks = QSpinBox()
        self.tasks.setRange(0, 20)
        self.tasks.setValue(5)
        self.tasks.valueChanged.connect(lambda _: self._request_arrows())
        self.optimum = QCheckBox(f"Fine-tuned optimum ({OPTIMUM_STEPS} steps)")
        self.optimum.setToolTip(f"Also fine-tune each task for {OPTIMUM_STEPS} steps from the checkpoint, by the "
                                "algorithm's own rule, and draw where it goes (dashed; cut where its query loss "
                                "exceeds ten times its starting value: learned rates fit for a step or two can "
                                "diverge over many)")
        self.optimum.toggled.connect(lambda _: self._request_arrows())
        self.optimum.clicked.connect(lambda _: setattr(self, "_optimum_from_user", True))
        self.scale = QComboBox()
        for text, value in ARROW_SCALES:
            self.scale.addItem(text, value)
        self.scale.currentIndexChanged.connect(lambda _: self._draw_arrows())
        self.busy_label = QLabel("")
        self.busy_label.setProperty("hint", True)
        self.rule_label = QLabel("")  # how the arrows adapt: the algorithm's own rule, its learned tensors held fixed
        self.rule_label.setProperty("hint", True)
        self.rule_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        compact(self.algorithm, 10)
        compact(self.origin, 16)
        self.tasks.setMaximumWidth(64)
        bar = flow_bar([
            labelled("Checkpoint of", self.algorithm, "The algorithm whose checkpoint the slider picks, with its "
                                                      "tasks' adaptation steps"),
            labelled("Origin", self.origin, "The PCA is of θ_t minus this point: the shared initialization, or the "
                                            "selected algorithm's final θ"),
            labelled("Tasks", self.tasks, "Tasks whose adaptation steps are drawn from the checkpoint (grey "
                                          "arrows): the algorithm's own inner steps and test-time rule; learned "
                                          "rates (Meta-SGD, MAML++) are those of the checkpoint (the newest ones "
                                          "for a path that kept none; the line under the plot says which)"),
            labelled("Step scale", self.scale, "Magnify the task steps on screen (Auto: when they would be too "
                                               "small to see)"),
            self.optimum])

        self.graphics = pg.PlotWidget()
        self.plot = self.graphics.getPlotItem()
        style_plot(self.plot, "Parameter paths", "PC1", "PC2")
        self.plot.setMenuEnabled(False)
        self.plot.hideButtons()
        self.plot.getAxis("left").setWidth(60)
        self.legend = pg.LegendItem(offset=(10, 8), labelTextColor=TEXT, labelTextSize="9pt",
                                    brush=pg.mkBrush(255, 255, 255, 225), pen=pg.mkPen("#E1E4E8"))
        self.legend.setParentItem(self.plot.getViewBox())
        self.legend.setZValue(60)
        self.path_items: dict[str, tuple] = {}
        self.end_items: dict[str, pg.ScatterPlotItem] = {}
        self.start_item = pg.ScatterPlotItem(size=11, brush=pg.mkBrush("w"), pen=pg.mkPen("#5E6770", width=2))
        self.start_item.setZValue(30)
        self.start_label = pg.TextItem("θ₀", anchor=(-0.06, -0.15), color=MUTED)
        self.start_label.setZValue(30)
        self.plot.addItem(self.start_item)
        self.plot.addItem(self.start_label, ignoreBounds=True)
        self.arrow_layer = ArrowLayer(self.plot, ARROW_COLOR, z=25)
        self.optimum_item = pg.PlotDataItem(pen=pg.mkPen(OPTIMUM_COLOR, width=1.6, style=Qt.PenStyle.DashLine),
                                            connect="finite")
        self.optimum_item.setZValue(24)
        self.optimum_ends = pg.ScatterPlotItem(size=7, symbol="x", brush=pg.mkBrush(OPTIMUM_COLOR),
                                               pen=pg.mkPen(OPTIMUM_COLOR, width=1.5))
        self.optimum_ends.setZValue(24)
        self.plot.addItem(self.optimum_item)
        self.plot.addItem(self.optimum_ends)
        self.markers = pg.ScatterPlotItem(pxMode=True)
        self.markers.setZValue(40)
        self.plot.addItem(self.markers)
        self.hover_item = pg.ScatterPlotItem(size=13, brush=pg.mkBrush(None), pen=pg.mkPen("#1F2328", width=1.5))
        self.hover_item.setZValue(45)
        self.plot.addItem(hide_in_exports(self.hover_item))  # the ring under the mouse
        self.hint = hint_text(self.plot, "Train to see the parameter paths (Start, or Space)")
        self._build_context_plot()
        self.graphics.scene().sigMouseMoved.connect(self._on_mouse_moved)
        self.graphics.scene().sigMouseClicked.connect(self._on_click)

        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, 0)
        self.slider.setEnabled(False)
        self.slider.setToolTip("Scrub through training: the checkpoint whose adaptation steps are drawn and whose "
                               "parameters the playground previews")
        self.slider.valueChanged.connect(self._on_slider)
        self.play = QPushButton("▶ Play")
        self.play.setCheckable(True)
        self.play.setEnabled(False)
        self.play.setToolTip("Replay training along the path")
        self.checkpoint_label = QLabel("–")
        self.checkpoint_label.setMinimumWidth(170)
        self.latest_button = QPushButton("Latest")
        self.latest_button.setToolTip("Back to the newest parameters (the playground shows the trained models)")
        self.latest_button.clicked.connect(lambda: self.set_checkpoint(self.slider.maximum()))
        self.latest_button.setEnabled(False)
        slider_row = QHBoxLayout()
        slider_row.setContentsMargins(12, 0, 12, 0)
        slider_row.setSpacing(10)
        slider_row.addWidget(self.play)
        slider_row.addWidget(self.slider, 1)
        slider_row.addWidget(self.checkpoint_label)
        slider_row.addWidget(self.latest_button)

        self.readout = readout_label()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 6)
        layout.setSpacing(6)
        layout.addWidget(bar)
        plots = QHBoxLayout()
        plots.setSpacing(6)
        plots.addWidget(self.graphics, 3)
        plots.addWidget(self.context_graphics, 2)
        layout.addLayout(plots, 1)
        # where the view does not apply (no algorithm adapts by steps), the reason in place of the plot
        self.not_applicable: str | None = None
        self.reason_label = reason_label()
        layout.addWidget(self.reason_label, 1)
        layout.addLayout(slider_row)
        readout_row = QHBoxLayout()
        readout_row.setContentsMargins(12, 0, 12, 0)
        readout_row.addWidget(self.readout, 1)
        readout_row.addWidget(self.rule_label, 1)
        readout_row.addWidget(self.busy_label)
        layout.addLayout(readout_row)

        self._compute_timer = QTimer(self)
        self._compute_timer.setSingleShot(True)
        self._compute_timer.timeout.connect(self._compute)
        self._arrow_timer = QTimer(self)
        self._arrow_timer.setSingleShot(True)
        self._arrow_timer.setInterval(60)
        self._arrow_timer.timeout.connect(self._compute_arrows)
        self._emit_timer = QTimer(self)
        self._emit_timer.setSingleShot(True)
        self._emit_timer.setInterval(120)
        self._emit_timer.timeout.connect(self._emit_checkpoint)
        # about ten seconds for a whole run
        self._player = SliderPlayer(self.play, self.slider, 80, lambda: (self.slider.maximum() + 1) // 120, self)
        self.plot.getViewBox().sigResized.connect(lambda *_: place_center(self.plot, self.hint))
        place_center(self.plot, self.hint)

    def _build_context_plot(self) -> None:
        """The context plane (CAVIA): shown beside the paths while the selected algorithm adapts a context."""
        self.context_graphics = pg.PlotWidget()
        self.context_plot = self.context_graphics.getPlotItem()
        style_plot(self.context_plot, "Context paths", "context parameter 1", "context parameter 2")
        self.context_plot.setMenuEnabled(False)
        self.context_plot.hideButtons()
        self.context_plot.getAxis("left").setWidth(50)
        self.context_arrow_layer = ArrowLayer(self.context_plot, ARROW_COLOR, z=25)
        self.context_optimum = pg.PlotDataItem(pen=pg.mkPen(OPTIMUM_COLOR, width=1.6, style=Qt.PenStyle.DashLine),
                                               connect="finite")
        self.context_optimum_ends = pg.ScatterPlotItem(size=7, symbol="x", brush=pg.mkBrush(OPTIMUM_COLOR),
                                                       pen=pg.mkPen(OPTIMUM_COLOR, width=1.5))
        self.context_start = pg.ScatterPlotItem(size=11, brush=pg.mkBrush("w"), pen=pg.mkPen("#5E6770", width=2))
        self.context_start.setData([0.0], [0.0])
        self.context_start_label = pg.TextItem("0: every task's start", anchor=(-0.06, -0.15), color=MUTED)
        for item, z in ((self.context_optimum, 24), (self.context_optimum_ends, 24), (self.context_start, 30),
                        (self.context_start_label, 30)):
            item.setZValue(z)
            self.context_plot.addItem(item, ignoreBounds=item is self.context_start_label)
        self.context_graphics.setVisible(False)

    # -- data in -------------------------------------------------------------------------------------
    def set_run(self, run: RunPaths) -> None:
        """New recorded paths from the worker (throttled there): recompute when visible."""
        self.run = run
        if not self._optimum_from_user:  # on by default where fine-tuning 100 steps is cheap (MLPs)
            self.optimum.blockSignals(True)
            self.optimum.setChecked(run.model_spec.get("kind") == "mlp")
            self.optimum.blockSignals(False)
        # checkpoints whose adaptation steps are drawn: ProtoNets' prototypes and Baseline's head fit take none
        # (their meta paths are still drawn)
        names = [n for n in run.names if len(run.paths[n]) and adapts_by_steps(n)]
        current = self.selected_algorithm()
        if [self.algorithm.itemData(i) for i in range(self.algorithm.count())] != names:
            self.algorithm.blockSignals(True)
            self.algorithm.clear()
            for n in names:
                self.algorithm.addItem(algorithm_label(n), n)
            if current in names:
                self.algorithm.setCurrentIndex(names.index(current))
            self.algorithm.blockSignals(False)
        # while training, new paths arrive every second: re-project at most every AUTO_INTERVAL seconds
        wait = AUTO_INTERVAL - (time.perf_counter() - self._last_auto)
        self.recompute(max(wait, 0.0) if self.projected is not None else 0.0)

    def clear_run(self) -> None:
        """Another run or family: no paths of the earlier one."""
        self.clear()

    def set_applicable(self, reason: str | None) -> None:
        """`reason`: why the view does not apply (the algorithms shown take no inner-loop steps), said in place of
        the plot; None: it applies."""
        if reason == self.not_applicable:
            return
        self.not_applicable = reason
        if reason:
            self.clear()
        show_reason(self.reason_label, reason)
        self.graphics.setVisible(not reason)
        if not reason and self.run is not None:
            self.recompute()

    def clear(self) -> None:
        self.runner.cancel()
        self.run = None
        self.projected = None
        self._projected_run = None
        self.arrows = None
        self._follow = True
        self.play.setChecked(False)
        self.algorithm.clear()
        for pair in self.path_items.values():
            for item in pair:
                self.plot.removeItem(item)
        for item in self.end_items.values():
            self.plot.removeItem(item)
        self.path_items.clear()
        self.end_items.clear()
        self._rebuild_legend()
        self.markers.setData([])
        self.start_item.setData([])
        self.start_label.setText("")
        self.hover_item.setData([])
        self.arrow_layer.clear()
        self.optimum_item.setData([], [])
        self.optimum_ends.setData([])
        self._draw_context(None)
        self.slider.blockSignals(True)
        self.slider.setRange(0, 0)
        self.slider.blockSignals(False)
        for w in (self.slider, self.play, self.latest_button):
            w.setEnabled(False)
        self.checkpoint_label.setText("–")
        self.readout.setText(" ")
        self.rule_label.setText("")
        self.rule_label.setToolTip("")
        self.hint.setText("Train to see the parameter paths (Start, or Space)")
        self.hint.setVisible(True)

    def selected_algorithm(self) -> str | None:
        return self.algorithm.currentData()

    def recompute(self, delay_s: float = 0.0) -> None:
        """Project again (new paths, origin or algorithm); waits until the view is shown."""
        self._stale = True
        if self.isVisible() and self.run is not None:
            if not (delay_s and self._compute_timer.isActive()):
                self._compute_timer.start(int(delay_s * 1000))

    def showEvent(self, ev):
        super().showEvent(ev)
        if self._stale:
            self.recompute()

    # -- background work -----------------------------------------------------------------------------
    def _compute(self) -> None:
        run = self.run
        if run is None or self.not_applicable or not any(len(p) for p in run.paths.values()):
            return
        self._stale = False
        self._last_auto = time.perf_counter()
        name = self.selected_algorithm() or next((n for n in run.names if adapts_by_steps(n)), run.names[0])
        origin = self.origin.currentData()
        index = None if self._follow or self.projected is None else self._index_for(run, name)
        tasks, optimum = self.tasks.value(), (OPTIMUM_STEPS if self.optimum.isChecked() else 0)

        def job(progress, cancel):
            projected = project_paths(run, origin, name)
            i = len(run.paths[name]) - 1 if index is None else index
            arrows = task_arrows(run, projected.plane, name, i, tasks, optimum, cancel)
            return run, projected, arrows

        self.runner.submit(job, "all")

    def _index_for(self, run: RunPaths, name: str) -> int:
        """The snapshot of `run` at the iteration the slider shows now."""
        its = self.projected.iterations.get(name) if self.projected is not None else None
        if its is None or not len(its):
            return len(run.paths[name]) - 1
        iteration = int(its[min(self.slider.value(), len(its) - 1)])
        return run.paths[name].index_at(iteration)

    def _request_arrows(self) -> None:
        if self.projected is not None:
            self._arrow_timer.start()

    def _compute_arrows(self) -> None:
        run, projected = self._projected_run, self.projected
        name = self.selected_algorithm()
        if run is None or projected is None or name not in projected.coords:
            return
        if self.runner.busy and self.runner.current_tag == "all":
            self._arrow_timer.start()  # the full recompute in flight will be followed by this one
            return
        index = min(self.slider.value(), len(run.paths[name]) - 1)
        tasks, optimum = self.tasks.value(), (OPTIMUM_STEPS if self.optimum.isChecked() else 0)
        plane = projected.plane
        self.runner.submit(lambda progress, cancel: task_arrows(run, plane, name, index, tasks, optimum, cancel),
                           "arrows")

    def _on_result(self, tag: str, result) -> None:
        if tag == "all":
            run, projected, arrows = result
            self._projected_run, self.projected = run, projected
            self._draw_paths()
            self._sync_slider(arrows)
            self.arrows = arrows
        else:
            self.arrows = result
        self._draw_arrows()
        self._draw_markers()
        if tag == "all":  # a new projection: fit the view to it, then put the legend where it hides least
            self._fit_view()
        self.computed.emit()

    def _on_failed(self, tag: str, message: str) -> None:
        self.busy_label.setText(f"Could not draw the paths: {message}")

    def _on_busy(self, busy: bool) -> None:
        if busy:
            self.busy_label.setText("Computing…")
        elif self.busy_label.text() == "Computing…":
            self.busy_label.setText("")

    def wait_until_idle(self, timeout_s: float = 60.0) -> bool:
        """Compute now if anything is pending and wait for it (screenshots, tests)."""
        ok = run_pending_and_wait(self._compute_timer, self._stale and self.run is not None, self._compute,
                                  self.runner, timeout_s)
        return run_pending_and_wait(self._arrow_timer, False, self._compute_arrows, self.runner, timeout_s) and ok

    def shutdown(self) -> None:
        self._player.stop()
        self.runner.shutdown()

    # -- drawing -------------------------------------------------------------------------------------
    def _draw_paths(self) -> None:
        p = self.projected
        for name in list(self.path_items):
            if name not in p.coords:
                for item in self.path_items.pop(name):
                    self.plot.removeItem(item)
                self.plot.removeItem(self.end_items.pop(name))
        selected = self.selected_algorithm()
        for name, xy in p.coords.items():
            if name not in self.path_items:
                self.path_items[name] = halo_curve(self.plot, algorithm_color(name), width=3.0, z=10)
                end = pg.ScatterPlotItem(size=9, brush=pg.mkBrush(algorithm_color(name)), pen=pg.mkPen("w", width=1.5))
                end.setZValue(12)
                self.plot.addItem(end)
                self.end_items[name] = end
            rows = fit_rows(len(xy), 800)  # drawn: at most 800 points per path (hover uses them all)
            set_halo(self.path_items[name], xy[rows, 0], xy[rows, 1])
            self.path_items[name][0].setZValue(11 if name == selected else 10)
            self.end_items[name].setData([xy[-1, 0]], [xy[-1, 1]])
        first = next(iter(p.coords.values()))
        if p.origin_label == "shared initialization":
            self.start_item.setData([first[0, 0]], [first[0, 1]])
            self.start_label.setText("θ₀ (shared initialization)")
            self.start_label.setPos(first[0, 0], first[0, 1])
        else:
            self.start_item.setData([0.0], [0.0])
            self.start_label.setText(p.origin_label)
            self.start_label.setPos(0.0, 0.0)
        x_label, y_label = p.plane.axis_labels()
        self.plot.setLabel("bottom", f"<span style='color:{MUTED}'>{x_label}</span>")
        self.plot.setLabel("left", f"<span style='color:{MUTED}'>{y_label}</span>")
        run = self._projected_run
        self.plot.setTitle(f"<span style='color:{TEXT}; font-weight:600'>Parameter paths on one PCA plane</span>"
                           f"<span style='color:{MUTED}'> · origin: {p.origin_label} · "
                           f"{run.iteration:,} iterations</span>", size="10pt")
        self.hint.setVisible(False)
        self._rebuild_legend()

    def _fit_view(self) -> None:
        """Fit the range to the paths with hysteresis: only when they leave it or fill too little of it (a range
        change re-renders axes and grid, so while training adds a point a second the view stays put)."""
        vb = self.plot.getViewBox()
        pts = np.vstack(list(self.projected.coords.values()))
        drawn = [pts] + list(self.arrow_layer.paths)  # the task arrows and optimum paths as drawn (scaled)
        x, y = self.optimum_item.getData()
        if x is not None and len(x):
            drawn.append(np.stack([x, y], 1))
        everything = np.vstack(drawn)
        everything = everything[np.isfinite(everything).all(1)]
        lo, hi = everything.min(0), everything.max(0)
        (x0, x1), (y0, y1) = vb.viewRange()
        inside = x0 <= lo[0] and hi[0] <= x1 and y0 <= lo[1] and hi[1] <= y1
        filled = (hi[0] - lo[0]) >= 0.6 * (x1 - x0) and (hi[1] - lo[1]) >= 0.6 * (y1 - y0)
        if not (inside and filled):
            span = np.maximum(hi - lo, 1e-12)
            pad = 0.07 * span
            vb.setRange(xRange=(lo[0] - pad[0], hi[0] + pad[0]), yRange=(lo[1] - pad[1], hi[1] + pad[1]),
                        padding=0)
        place_legend(self.legend, vb, everything)

    def _rebuild_legend(self) -> None:
        if self.projected is None:
            self.legend.clear()
            self._legend_key = None
            return
        key = (tuple(self.projected.coords), self.arrow_scale, self.optimum_scale,
               tuple(len(s) for s in self.arrows.steps[:1]) if self.arrows is not None else None,
               bool(self.arrows is not None and self.arrows.optimum))
        if key == getattr(self, "_legend_key", None):
            return  # unchanged: rebuilding a legend every second costs the GUI thread for nothing
        self._legend_key = key
        self.legend.clear()
        for name in self.projected.coords:
            self.legend.addItem(self.path_items[name][0], f"{algorithm_label(name)} meta path")
        self.legend.addItem(pg.ScatterPlotItem(size=10, brush=pg.mkBrush("#8A939C"), pen=pg.mkPen("w", width=2)),
                            "checkpoint")
        if self.arrows is not None and self.arrows.steps and self.arrows.space == "theta":
            scale = f" (×{self.arrow_scale:g})" if self.arrow_scale != 1 else ""
            k = len(self.arrows.steps[0]) - 1
            self.legend.addItem(pg.PlotDataItem(pen=pg.mkPen(ARROW_COLOR, width=1.8)),
                                f"tasks' adaptation, {k} step{'s' if k != 1 else ''}{scale}")
            if self.arrows.optimum:
                scale = f" (×{self.optimum_scale:g})" if self.optimum_scale != 1 else ""
                self.legend.addItem(pg.PlotDataItem(pen=pg.mkPen(OPTIMUM_COLOR, width=1.6,
                                                                 style=Qt.PenStyle.DashLine)),
                                    f"fine-tuned optimum, {OPTIMUM_STEPS} steps{scale}")

    def _sync_slider(self, arrows: TaskArrows) -> None:
        name = arrows.algorithm
        its = self.projected.iterations[name]
        self.slider.blockSignals(True)
        self.slider.setRange(0, len(its) - 1)
        self.slider.setValue(len(its) - 1 if self._follow else int(np.searchsorted(its, arrows.iteration)))
        self.slider.blockSignals(False)
        for w in (self.slider, self.play):
            w.setEnabled(len(its) > 1)
        self._update_label()

    def _update_label(self) -> None:
        name = self.selected_algorithm()
        if self.projected is None or name not in self.projected.iterations:
            return
        its = self.projected.iterations[name]
        i = min(self.slider.value(), len(its) - 1)
        total = self._projected_run.total if self._projected_run is not None else 0
        self.checkpoint_label.setText(f"iteration {int(its[i]):,} of {total:,}")
        self.latest_button.setEnabled(i < len(its) - 1)

    def checkpoint_iteration(self) -> int:
        name = self.selected_algorithm()
        its = self.projected.iterations[name]
        return int(its[min(self.slider.value(), len(its) - 1)])

    def checkpoint_position(self, name: str | None = None) -> np.ndarray:
        """Where the marker of `name` (default: the selected algorithm) is on the plane."""
        name = name or self.selected_algorithm()
        its = self.projected.iterations[name]
        i = int(np.searchsorted(its, self.checkpoint_iteration(), side="right")) - 1
        return self.projected.coords[name][max(i, 0)]

    def _draw_markers(self) -> None:
        if self.projected is None:
            return
        selected = self.selected_algorithm()
        spots = []
        for name in self.projected.coords:
            xy = self.checkpoint_position(name)
            big = name == selected
            spots.append({"pos": (float(xy[0]), float(xy[1])), "size": 17 if big else 11,
                          "brush": pg.mkBrush(qcolor(algorithm_color(name))),
                          "pen": pg.mkPen("w", width=2.5 if big else 1.5), "data": name})
        self.markers.setData(spots)

    def _draw_arrows(self) -> None:
        a = self.arrows
        self._show_rule(a)
        self._draw_context(a if a is not None and a.space == "context" else None)
        if a is None or not a.steps or a.space == "context":
            self.arrow_layer.clear()
            self.optimum_item.setData([], [])
            self.optimum_ends.setData([])
            self._rebuild_legend()
            return
        choice = self.scale.currentData()
        pts = np.vstack(list(self.projected.coords.values()))
        span = float(np.max(pts.max(0) - pts.min(0)))

        def scale_of(paths, target):
            if choice:
                return float(choice)
            lengths = np.array([np.hypot(*(p[-1] - p[0])) for p in paths])
            reach = float(np.percentile([np.max(np.hypot(*(p - p[0]).T)) for p in paths], 80))
            return auto_arrow_scale(lengths, span, reach, target)

        # single steps and 100-step fine-tuning differ in length by orders of magnitude: each gets its own
        # magnification (the legend says which), so both stay readable next to the meta path
        self.arrow_scale = s = scale_of(a.steps, 0.05)
        self.optimum_scale = scale_of(a.optimum, 0.06) if a.optimum else 1.0
        start = self.checkpoint_position(a.algorithm) if a.algorithm in self.projected.coords else a.start
        self.arrow_layer.set_paths([start + s * (p - p[0]) for p in a.steps])
        if a.optimum:
            xs, ys, ex, ey = [], [], [], []
            for p in a.optimum:
                q = start + self.optimum_scale * (p - p[0])
                xs += [q[:, 0], [np.nan]]
                ys += [q[:, 1], [np.nan]]
                ex.append(q[-1, 0])
                ey.append(q[-1, 1])
            self.optimum_item.setData(np.concatenate(xs), np.concatenate(ys))
            self.optimum_ends.setData(ex, ey)
        else:
            self.optimum_item.setData([], [])
            self.optimum_ends.setData([])
        self._rebuild_legend()

    def _draw_context(self, a: TaskArrows | None) -> None:
        """The tasks' context paths in the context's own plane (None: hide it); theta does not move, so the PCA
        plot draws no arrows for them."""
        self.context_graphics.setVisible(a is not None)
        if a is None:
            self.context_arrow_layer.clear()
            self.context_optimum.setData([], [])
            self.context_optimum_ends.setData([])
            return
        self.context_arrow_layer.set_paths(a.steps)
        if a.optimum:
            self.context_optimum.setData(np.concatenate([np.append(p[:, 0], np.nan) for p in a.optimum]),
                                         np.concatenate([np.append(p[:, 1], np.nan) for p in a.optimum]))
            self.context_optimum_ends.setData([p[-1, 0] for p in a.optimum], [p[-1, 1] for p in a.optimum])
        else:
            self.context_optimum.setData([], [])
            self.context_optimum_ends.setData([])
        k = len(a.steps[0]) - 1 if a.steps else 0
        optimum = f", dashed: {OPTIMUM_STEPS} steps" if a.optimum else ""
        self.context_plot.setTitle(f"<span style='color:{TEXT}; font-weight:600'>{algorithm_label(a.algorithm)}'s "
                                   f"context</span><span style='color:{MUTED}'> · {len(a.steps)} tasks, {k} "
                                   f"step{'s' if k != 1 else ''} from 0{optimum}</span>", size="10pt")
        self.context_plot.setLabel("bottom", f"<span style='color:{MUTED}'>{a.labels[0]}</span>")
        self.context_plot.setLabel("left", f"<span style='color:{MUTED}'>{a.labels[1]}</span>")
        self.context_plot.getViewBox().autoRange(padding=0.12)

    def _show_rule(self, a: TaskArrows | None) -> None:
        """Say how the arrows adapt (the status line, in full in its tooltip)."""
        text = f"Arrows of {algorithm_label(a.algorithm)}: {a.rule}" if a is not None and a.steps and a.rule else ""
        if text and a.space == "context":
            text += " (theta does not move: the arrows are in the context's plane, right)"
        if text != self.rule_label.text():
            self.rule_label.setText(text)
            self.rule_label.setToolTip(text)

    # -- interaction ---------------------------------------------------------------------------------
    def _on_algorithm(self, _index: int) -> None:
        if self.projected is None:
            return
        if self.origin.currentData() == "final":
            self.recompute()  # the origin is this algorithm's final theta: a new plane
            return
        name = self.selected_algorithm()
        if name in self.projected.iterations:
            self._follow = True
            its = self.projected.iterations[name]
            self.slider.blockSignals(True)
            self.slider.setRange(0, len(its) - 1)
            self.slider.setValue(len(its) - 1)
            self.slider.blockSignals(False)
            self._update_label()
            self._draw_markers()
            self.arrows = None
            self._draw_arrows()
            self._request_arrows()

    def set_checkpoint(self, index: int) -> None:
        self.slider.setValue(int(index))

    def _on_slider(self, value: int) -> None:
        if self.projected is None:
            return
        self._follow = value >= self.slider.maximum()
        self._update_label()
        self._draw_markers()
        if self.arrows is not None and self.arrows.steps:
            # move the arrows with the marker at once; their new directions follow from the worker
            self._draw_arrows()
        self._request_arrows()
        self._emit_timer.start()

    def _emit_checkpoint(self) -> None:
        run, name = self._projected_run, self.selected_algorithm()
        if run is None or name not in run.paths:
            return
        index = min(self.slider.value(), len(run.paths[name]) - 1)
        key = repr(run.model_spec)
        if key not in self._models:
            self._models[key] = build_model_and_like(run.model_spec)
        model, like = self._models[key]
        from ..core.analysis.trajectory import unflatten

        params = unflatten(np.array(run.paths[name].snapshots[index]), like)  # a writable copy of its own
        self.checkpoint_selected.emit({"algorithm": name, "iteration": int(run.paths[name].iterations[index]),
                                       "params": params, "adaptation": run.adaptation(name, index), "model": model,
                                       "model_spec": run.model_spec, "latest": self._follow})

    def _hit(self, scene_pos):
        if self.projected is None:
            return None
        vb = self.plot.getViewBox()
        if not vb.sceneBoundingRect().contains(scene_pos):
            return None
        p = vb.mapSceneToView(scene_pos)
        hit = nearest_point(vb, p.x(), p.y(), self.projected.coords)
        return hit if hit is not None and hit[2] <= 12 else None

    def _on_mouse_moved(self, scene_pos) -> None:
        hit = self._hit(scene_pos)
        if hit is None:
            self.hover_item.setData([])
            return
        name, i, _ = hit
        xy = self.projected.coords[name][i]
        self.hover_item.setData([xy[0]], [xy[1]])
        self.readout.setText(self.describe_point(name, i))

    def describe_point(self, name: str, i: int) -> str:
        it = int(self.projected.iterations[name][i])
        m = self.projected.metrics[name][i] if i < len(self.projected.metrics[name]) else {}
        color = algorithm_color(name)
        parts = [f"<b style='color:{color}'>{algorithm_label(name)}</b>", f"iteration {it:,}"]
        if "pre_loss" in m:
            parts.append(f"loss before adaptation {m['pre_loss']:.4g}")
        if "post_loss" in m:
            parts.append(f"after {m['post_loss']:.4g}")
        if not m:
            parts.append("initialization")
        return " · ".join(parts)

    def _on_click(self, ev) -> None:
        hit = self._hit(ev.scenePos())
        if hit is None or ev.button() != Qt.MouseButton.LeftButton:
            return
        name, i, _ = hit
        if name != self.selected_algorithm():
            self.algorithm.setCurrentIndex(self.algorithm.findData(name))
            if self.origin.currentData() == "final":
                return
        self.set_checkpoint(i)

    # -- export --------------------------------------------------------------------------------------
    def export_item(self):
        return self.plot

    def view_title(self) -> str:
        return "paths"


def _make_view(window) -> PathsView:
    view = PathsView()
    view.checkpoint_selected.connect(window.preview_checkpoint)
    return view


def _applies(kind, algorithms) -> str | None:
    return steps_reason("Paths", algorithms)


VIEW = ViewSpec("paths", "Paths", _make_view, applies_to=_applies)
