"""The Landscape view: 2D slices of the loss around an algorithm's current theta.

The plane is the algorithm's parameter path (PCA, Li et al. 2018), two filter-normalized random directions,
or the plane through theta and two tasks' adapted parameters. "Before vs after adaptation" draws, side by
side and on one colour scale, the loss averaged over a batch of tasks (what joint training, the pretrained
baseline, minimizes) and the query loss after k inner steps from each point (MAML's meta-objective), each step by
the centre algorithm's own test-time rule (Meta-SGD's and MAML++'s learned rates held fixed at their newest trained
values, ANIL's head only, Reptile's inner optimizer on the whole support set; the status line says which).
"One task" draws one task's loss with its adaptation path, and animates it step by step next to the
prediction after each step (live adaptation). Surfaces are computed on a worker thread
(core.landscape.surface), with progress, and can be cancelled; they export as .npz, the plot as PNG/SVG.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QSpinBox,
    QWidget,
)

from ..core.tasks.registry import TASKS, task_family
from ..lab.inside import (
    PLANE_LABELS,
    PLANES,
    LandscapeRequest,
    LandscapeResult,
    RunPaths,
    compute_landscape,
    contour_levels,
)
from .colors import POINT_COLOR, TRUTH_COLOR, algorithm_color, algorithm_label, curve_pen, qcolor
from .computed_view import ComputedView, plain_plot, set_quietly
from .inside_plots import (
    ARROW_COLOR,
    ArrowLayer,
    auto_arrow_scale,
    compact,
    contour_lines,
    flow_bar,
    halo_curve,
    hint_text,
    labelled,
    log_ticks,
    place_center,
    place_legend,
    readout_label,
    set_halo,
)
from .slider_player import SliderPlayer
from .theme import MUTED, TEXT, style_plot
from .views import ViewSpec, adapts_by_steps, family_label, sampled_from_policy, steps_reason

COLORMAP = "CET-L17"  # white (low loss) to purple: light where paths end, so colours and arrows read well
MODES = (("compare", "Before vs after adaptation"), ("task", "One task and its adaptation"))
SURFACE_TITLES = {"pre": "Before adaptation: mean task loss (joint training's objective)",
                  "post": "After {k} inner step{s} by {who}'s rule: query loss",
                  "task": "Task {t}: its loss and its adaptation path"}


def default_resolution(model_spec: dict) -> int:
    """51 x 51 for MLPs; image models (conv-4) are far costlier per point: 21 x 21."""
    return 51 if model_spec.get("kind") == "mlp" else 21


def default_tasks(model_spec: dict) -> int:
    return 25 if model_spec.get("kind") == "mlp" else 4


def _colormap():
    return pg.colormap.get(COLORMAP)


class SurfacePlot:
    """One heatmap panel: image, contours, the centre algorithm's path, markers, arrows, the task path."""

    def __init__(self, plot: pg.PlotItem):
        self.plot = plot
        style_plot(plot)
        plain_plot(plot, axis_width=54)
        for name in ("top", "right"):
            plot.showAxis(name)
            plot.getAxis(name).setStyle(showValues=False)
        plot.showGrid(x=False, y=False)
        self.image = pg.ImageItem()
        self.image.setZValue(-10)
        plot.addItem(self.image)
        self.contours = pg.PlotDataItem(pen=pg.mkPen(qcolor("#FFFFFF", 150), width=1.0), connect="finite")
        self.contours.setZValue(0)
        plot.addItem(self.contours)
        self.path = halo_curve(plot, "#000000", width=2.6, z=10)
        self.arrows = ArrowLayer(plot, ARROW_COLOR, z=20, head=10)
        self.markers = pg.ScatterPlotItem(pxMode=True)
        self.markers.setZValue(30)
        plot.addItem(self.markers)
        self.labels: list[pg.TextItem] = []
        self.task_path = halo_curve(plot, "#1F2328", width=2.0, z=22)
        self.task_points = pg.ScatterPlotItem(size=6, brush=pg.mkBrush("#1F2328"), pen=pg.mkPen("w", width=1))
        self.task_points.setZValue(23)
        plot.addItem(self.task_points)
        self.live = pg.ScatterPlotItem(size=16, symbol="o", brush=pg.mkBrush(None), pen=pg.mkPen("#1F2328", width=3))
        self.live.setZValue(35)
        plot.addItem(self.live)
        self.hint = hint_text(plot)
        self.legend = None

    def add_legend(self) -> pg.LegendItem:
        self.legend = pg.LegendItem(labelTextColor=TEXT, labelTextSize="8pt", brush=pg.mkBrush(255, 255, 255, 215),
                                    pen=pg.mkPen("#E1E4E8"), verSpacing=-4)
        self.legend.setParentItem(self.plot.getViewBox())
        self.legend.anchor((0, 1), (0, 1), offset=(6, -6))
        self.legend.setZValue(60)
        return self.legend

    def set_labels(self, items: list[tuple[float, float, str, str]]) -> None:
        for item in self.labels:
            self.plot.removeItem(item)
        self.labels = []
        (x0, x1), _ = self.plot.getViewBox().viewRange()
        for x, y, text, color in items:
            # right of its marker, or left of it in the right third (where "θ Pretrained" ran off the plot)
            right_side = x > x0 + 0.65 * (x1 - x0)
            t = pg.TextItem(text, color=color, anchor=(1.12, 1.05) if right_side else (-0.12, 1.05))
            t.setZValue(31)
            t.setPos(x, y)
            self.plot.addItem(t, ignoreBounds=True)
            self.labels.append(t)

    def clear(self) -> None:
        self.image.clear()
        self.contours.setData([], [])
        set_halo(self.path, [], [])
        self.arrows.clear()
        self.markers.setData([])
        self.set_labels([])
        set_halo(self.task_path, [], [])
        self.task_points.setData([])
        self.live.setData([])
        self.plot.setTitle(None)


class LandscapeView(ComputedView):
    title = "landscape"

    def __init__(self, parent=None):
        super().__init__(parent)
        self.result: LandscapeResult | None = None
        self._model_kind = None

        self.center = QComboBox()
        self.center.setMinimumWidth(110)
        self.center.currentIndexChanged.connect(self._on_center)
        self.plane = QComboBox()
        for key in PLANES:
            self.plane.addItem(PLANE_LABELS[key], key)
        self.mode = QComboBox()
        for key, text in MODES:
            self.mode.addItem(text, key)
        self.resolution = QSpinBox()
        self.resolution.setRange(21, 101)
        self.resolution.setSingleStep(10)
        self.resolution.setValue(51)
        self.resolution.setSuffix(" ²")
        self.tasks = QSpinBox()
        self.tasks.setRange(2, 200)
        self.tasks.setValue(25)
        self.steps = QSpinBox()
        self.steps.setRange(1, 20)
        self.steps.setValue(1)
        self.zoom = QDoubleSpinBox()
        self.zoom.setRange(0.1, 20.0)
        self.zoom.setDecimals(2)
        self.zoom.setSingleStep(0.25)
        self.zoom.setValue(1.0)
        self.zoom.setSuffix("×")
        self.log_scale = QCheckBox("Log scale")
        self.log_scale.setChecked(True)
        self.log_scale.toggled.connect(lambda _: self._draw())
        for w in (self.plane, self.mode):
            w.currentIndexChanged.connect(lambda _: self._inputs_changed())
        for w in (self.resolution, self.tasks, self.steps):
            w.valueChanged.connect(lambda _: self._inputs_changed())
        self.zoom.valueChanged.connect(lambda _: self._inputs_changed())

        self.compute_button.setToolTip("Compute the surfaces on a worker thread")
        self.data_button("Export surface…", "Save the computed surface(s) as .npz (grid, values, plane)",
                         self.export_surface)
        for combo, chars in ((self.center, 10), (self.plane, 20), (self.mode, 22)):
            compact(combo, chars)
        for spin in (self.resolution, self.tasks, self.steps, self.zoom):
            spin.setMaximumWidth(78)
        controls = flow_bar([
            labelled("Around", self.center, "The algorithm whose current θ is the centre (0, 0)"),
            labelled("Plane", self.plane, "The 2D slice of parameter space"),
            labelled("Show", self.mode, "Before vs after adaptation side by side, or one task's loss with its "
                                        "adaptation path"),
            labelled("Grid", self.resolution, "Grid points per side (21-101): the cost grows with the square"),
            labelled("Tasks", self.tasks, "Tasks the surfaces average over"),
            labelled("Inner steps k", self.steps, "Steps of adaptation by the centre algorithm's own test-time rule: "
                                                  "SGD at its inner learning rate (ANIL: the head only, BOIL: the "
                                                  "body only), Meta-SGD's and MAML++'s learned rates (held fixed at "
                                                  "their newest trained values: the surface is over θ alone), "
                                                  "Reptile's inner optimizer on the whole support set"),
            labelled("Zoom", self.zoom, "Zoom into the plane around θ"),
            self.log_scale, self.compute_button, self.cancel_button, self.progress, self.export_data_button,
            self.export_image_button])

        self.task_index = QSpinBox()
        self.task_index.setRange(1, 200)
        self.task_index.setToolTip("Which task of the batch (one task's loss and adaptation)")
        self.task_index.valueChanged.connect(lambda _: self._inputs_changed())
        self.task_steps = QSpinBox()
        self.task_steps.setRange(1, 50)
        self.task_steps.setValue(10)
        self.task_steps.valueChanged.connect(lambda _: self._inputs_changed())
        self.animate = QPushButton("▶ Animate")
        self.animate.setCheckable(True)
        self.animate.setToolTip("Step through the task's adaptation: the point moves on the landscape while the "
                                "prediction updates")
        self.step_slider = QSlider(Qt.Orientation.Horizontal)
        self.step_slider.setRange(0, 10)
        self.step_slider.valueChanged.connect(self._on_step)
        self.step_label = QLabel("step 0")
        self.step_label.setMinimumWidth(150)
        self.task_row = QWidget()
        row3 = QHBoxLayout(self.task_row)
        row3.setContentsMargins(10, 0, 10, 0)
        row3.setSpacing(12)
        row3.addWidget(labelled("Task", self.task_index))
        row3.addWidget(labelled("Adaptation steps", self.task_steps, "Steps of the task's adaptation path"))
        row3.addWidget(self.animate)
        row3.addWidget(self.step_slider, 1)
        row3.addWidget(self.step_label)
        self.task_row.setVisible(False)

        self.panels = {"a": SurfacePlot(pg.PlotItem()), "b": SurfacePlot(pg.PlotItem())}
        for panel in self.panels.values():
            # fixed ranges, set per result (linked views would align by screen position, not data)
            panel.plot.getViewBox().setMouseEnabled(False, False)
        self.panels["a"].add_legend()
        self.colorbar = pg.ColorBarItem(values=(0, 1), colorMap=_colormap(), interactive=False, width=14,
                                        label="log₁₀ loss", colorMapMenu=False)
        self.prediction = pg.PlotItem()
        style_plot(self.prediction, None, "x", "y")
        plain_plot(self.prediction, axis_width=None)
        self.pred_truth = pg.PlotDataItem(pen=pg.mkPen(qcolor(TRUTH_COLOR, 200), width=2, style=Qt.PenStyle.DashLine))
        self.pred_before = pg.PlotDataItem()
        self.pred_after = pg.PlotDataItem()
        self.pred_points = pg.ScatterPlotItem(size=9, brush=pg.mkBrush(POINT_COLOR), pen=pg.mkPen("w", width=1.2))
        self.pred_marker = pg.ScatterPlotItem(size=11, brush=pg.mkBrush("#1F2328"), pen=pg.mkPen("w", width=1.5))
        for item in (self.pred_truth, self.pred_before, self.pred_after, self.pred_points, self.pred_marker):
            self.prediction.addItem(item)
        self.pred_legend = pg.LegendItem(offset=(8, 6), labelTextColor=TEXT, labelTextSize="9pt",
                                         brush=pg.mkBrush(255, 255, 255, 215), pen=pg.mkPen("#E1E4E8"))
        self.pred_legend.setParentItem(self.prediction.getViewBox())
        self._layout_mode = None
        self._arrange("compare")
        self.graphics.scene().sigMouseMoved.connect(self._on_mouse_moved)

        self.readout = readout_label()
        self._player = SliderPlayer(self.animate, self.step_slider, 350, parent=self)
        self._set_hint(self.idle_hint())
        self.lay_out([controls, self.task_row], [[self.status, self.readout]])

    # -- layout --------------------------------------------------------------------------------------
    def _arrange(self, mode: str) -> None:
        if mode == self._layout_mode:
            return
        self._layout_mode = mode
        ci = self.graphics.ci
        ci.clear()
        a, b = self.panels["a"].plot, self.panels["b"].plot
        if mode == "compare":
            ci.addItem(a, row=0, col=0)
            ci.addItem(b, row=0, col=1)
            ci.addItem(self.colorbar, row=0, col=2)
        else:
            ci.addItem(a, row=0, col=0)
            ci.addItem(self.colorbar, row=0, col=1)
            ci.addItem(self.prediction, row=0, col=2)
        self.task_row.setVisible(mode == "task")

    def _set_hint(self, text: str) -> None:
        for panel in self.panels.values():
            panel.hint.setText(text)
            panel.hint.setVisible(bool(text))
            place_center(panel.plot, panel.hint)

    # -- data in -------------------------------------------------------------------------------------
    def set_run(self, run: RunPaths) -> None:
        self.run = run
        # the centre adapts by gradient steps: ProtoNets' prototypes and Baseline's head fit have none to draw
        names = [n for n in run.names if len(run.paths[n]) and adapts_by_steps(n)]
        if [self.center.itemData(i) for i in range(self.center.count())] != names:
            current = self.center.currentData()
            self.center.blockSignals(True)
            self.center.clear()
            for n in names:
                self.center.addItem(algorithm_label(n), n)
            if current in names:
                self.center.setCurrentIndex(names.index(current))
            self.center.blockSignals(False)
            self._on_center(self.center.currentIndex(), recompute=False)
        kind = run.model_spec.get("kind")
        if kind != self._model_kind:
            self._model_kind = kind
            set_quietly(self.resolution, default_resolution(run.model_spec))
            set_quietly(self.tasks, default_tasks(run.model_spec))
        self.recompute.mark_stale()
        if self.result is None:
            self._set_hint("" if self.not_applicable else "Press Compute" if self.training else "")
        self._sync_buttons()

    def idle_hint(self) -> str:
        return "Train first: the landscape is drawn around a trained θ"

    def show_hint(self, text: str) -> None:
        self._set_hint(text)

    def clear_result(self) -> None:
        """No surfaces, axes, prediction or readout of an earlier run (its θ, its family's axes)."""
        self.center.clear()
        for panel in self.panels.values():
            panel.clear()
            panel.plot.setLabel("bottom", "")
            panel.plot.setLabel("left", "")
            if panel.legend is not None:
                panel.legend.clear()
        self.pred_legend.clear()
        for item in (self.pred_truth, self.pred_before, self.pred_after, self.pred_points, self.pred_marker):
            item.setData([], [])
        self.prediction.setTitle(None)
        self.colorbar.getAxis("left").setLabel("")
        self.readout.setText(" ")

    def _on_center(self, _index: int, recompute: bool = True) -> None:
        name = self.center.currentData()
        if self.run is not None and name in self.run.paths:
            set_quietly(self.steps, self.run.inner_steps(name))
            set_quietly(self.task_steps, self.run.test_steps(name))
        if recompute:
            self._inputs_changed()

    def _inputs_changed(self) -> None:
        self._arrange(self.mode.currentData())
        if self.run is None:
            return
        self.recompute.mark_stale()

    # -- computing -----------------------------------------------------------------------------------
    def request(self) -> LandscapeRequest | None:
        if self.run is None or not self.run.names or self.run.family is None:
            return None
        return LandscapeRequest(self.run, self.center.currentData() or self.run.names[0],
                                self.plane.currentData(), self.mode.currentData(), self.resolution.value(),
                                self.tasks.value(), self.steps.value(), self.zoom.value(),
                                self.task_index.value() - 1, self.task_steps.value())

    def compute(self) -> bool:
        req = self.request()
        if req is None:
            return False
        self._arrange(req.mode)
        req.task_index = min(req.task_index, req.tasks - 1)
        return self.start(lambda progress, cancel: compute_landscape(req, progress, cancel), "surface")

    def can_compute(self) -> bool:
        return self.run is not None

    def can_export(self) -> bool:
        return self.result is not None and not self.runner.busy

    def _on_cancelled(self, tag: str) -> None:
        super()._on_cancelled(tag)
        self.progress.setValue(0)
        self.recompute.stale = True

    def _on_failed(self, tag: str, message: str) -> None:
        super()._on_failed(tag, message)
        self.recompute.stale = True

    def result_text(self, result: LandscapeResult) -> str:
        s = next(iter(result.surfaces.values()))
        self.status.setToolTip(f"Adaptation ({algorithm_label(result.request.center)}): {result.rule}"
                               if result.rule else "")
        return (f"{len(s.alphas)}×{len(s.betas)} grid, {s.meta['tasks']} task{'s' if s.meta['tasks'] != 1 else ''} "
                f"· θ of {algorithm_label(result.request.center)} at iteration {result.iteration:,}"
                + (f" · adapting by {result.rule}" if result.rule else ""))

    def show_result(self, result: LandscapeResult) -> None:
        self._set_hint("")
        self.step_slider.blockSignals(True)
        self.step_slider.setRange(0, result.request.task_steps)
        self.step_slider.setValue(0 if result.task_path is not None else self.step_slider.value())
        self.step_slider.blockSignals(False)
        self._draw()

    def shutdown(self) -> None:
        self._player.stop()
        super().shutdown()

    # -- drawing -------------------------------------------------------------------------------------
    def _display(self, values: np.ndarray) -> np.ndarray:
        v = np.where(np.isfinite(values), values, np.nan)
        if self.log_scale.isChecked():
            positive = v[v > 0]
            floor = float(positive.min()) if positive.size else 1e-12
            v = np.log10(np.clip(v, floor, None))
        return v

    def _draw(self) -> None:
        r = self.result
        if r is None:
            return
        mode = r.request.mode
        self._arrange(mode)
        kinds = list(r.surfaces)
        shown = {k: self._display(r.surfaces[k].values) for k in kinds}
        finite = np.concatenate([v[np.isfinite(v)] for v in shown.values()])
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if hi <= lo:
            hi = lo + 1e-6
        # a few diverged points should not wash out the picture: clip the scale at a high percentile
        hi_clip = float(np.percentile(finite, 99.0)) if finite.size > 50 else hi
        hi = hi_clip if hi_clip > lo else hi
        levels = contour_levels(lo, hi, 12)
        task = r.request.run.task
        loss = task_family(task).loss_label if task in TASKS else r.request.run.loss
        self.colorbar.getAxis("left").setLabel(f"{loss} (log scale)" if self.log_scale.isChecked() else loss)
        # log scale: the image holds log10(loss); the colour bar's ticks are labelled in loss units
        self.colorbar.axis.setTicks([log_ticks(lo, hi)] if self.log_scale.isChecked() else None)
        extent = r.extent
        center = r.request.center
        k = r.request.inner_steps
        images = []
        for key, kind in zip(("a", "b"), kinds, strict=False):
            panel = self.panels[key]
            s = r.surfaces[kind]
            data = np.nan_to_num(shown[kind], nan=hi)
            panel.image.setImage(data.T, autoLevels=False, levels=(lo, hi))
            da = (s.alphas[-1] - s.alphas[0]) / max(len(s.alphas) - 1, 1)
            db = (s.betas[-1] - s.betas[0]) / max(len(s.betas) - 1, 1)
            panel.image.setRect(QRectF(s.alphas[0] - da / 2, s.betas[0] - db / 2, da * len(s.alphas),
                                       db * len(s.betas)))
            images.append(panel.image)
            cx, cy = contour_lines(np.clip(shown[kind], lo, hi), s.alphas, s.betas, levels)
            panel.contours.setData(cx, cy)
            title = SURFACE_TITLES[kind].format(k=k, s="s" if k != 1 else "", t=r.request.task_index + 1,
                                                who=algorithm_label(center))
            panel.plot.setTitle(f"<span style='color:{TEXT}; font-weight:600'>{title}</span>", size="10pt")
            panel.plot.setLabel("bottom", f"<span style='color:{MUTED}'>{r.labels[0]}</span>")
            panel.plot.setLabel("left", f"<span style='color:{MUTED}'>{r.labels[1]}</span>")
            self._draw_overlays(panel, r, center, kind)
            panel.plot.setXRange(extent[0], extent[1], padding=0)
            panel.plot.setYRange(extent[2], extent[3], padding=0)
        if mode == "task":
            self.panels["b"].clear()
        self.colorbar.setImageItem(images)
        self.colorbar.setLevels((lo, hi))
        self._draw_prediction()

    def _draw_overlays(self, panel: SurfacePlot, r: LandscapeResult, center: str, kind: str) -> None:
        color = algorithm_color(center)
        line, under = panel.path
        pen = pg.mkPen(color, width=2.6)
        pen.setCapStyle(Qt.PenCapStyle.RoundCap)
        line.setPen(pen)
        # the meta path and the other algorithms' theta lie (nearly) in the PCA plane of that path; on the other
        # planes their projections would be meaningless, so only theta (the origin) is marked there
        pca = r.request.plane == "pca"
        if pca:
            set_halo(panel.path, r.path[:, 0], r.path[:, 1])
        else:
            set_halo(panel.path, [], [])
        spots, labels = [], []
        for name, xy in r.markers.items():
            is_center = name == center
            if not (pca or is_center):
                continue
            if is_center:
                xy = np.zeros(2)
            spots.append({"pos": (float(xy[0]), float(xy[1])), "size": 18 if is_center else 12,
                          "symbol": "star" if is_center else "d", "brush": pg.mkBrush(algorithm_color(name)),
                          "pen": pg.mkPen("w", width=1.5)})
            labels.append((float(xy[0]), float(xy[1]), f"θ {algorithm_label(name)}", "#1F2328"))
        if r.request.plane == "tasks":
            for xy, text in (((1.0, 0.0), "θ'_A"), ((0.0, 1.0), "θ'_B")):
                spots.append({"pos": xy, "size": 9, "symbol": "s", "brush": pg.mkBrush("#4A4F55"),
                              "pen": pg.mkPen("w", width=1.2)})
                labels.append((xy[0], xy[1], text, "#1F2328"))
        panel.markers.setData(spots)
        panel.set_labels(labels)
        scale = 1.0
        if kind == "task" and r.task_path is not None:
            panel.arrows.clear()
            set_halo(panel.task_path, r.task_path[:, 0], r.task_path[:, 1])
            panel.task_points.setData(r.task_path[:, 0], r.task_path[:, 1])
            step = min(self.step_slider.value(), len(r.task_path) - 1)
            panel.live.setData([r.task_path[step, 0]], [r.task_path[step, 1]])
        else:
            e = r.extent
            lengths = np.array([np.hypot(*(p[-1] - p[0])) for p in r.arrows]) if r.arrows else np.empty(0)
            reach = max((float(np.max(np.hypot(*(p - p[0]).T))) for p in r.arrows), default=0.0)
            scale = auto_arrow_scale(lengths, max(e[1] - e[0], e[3] - e[2]), reach)
            panel.arrows.set_paths([p[0] + scale * (p - p[0]) for p in r.arrows])
            set_halo(panel.task_path, [], [])
            panel.task_points.setData([])
            panel.live.setData([])
        if panel.legend is not None:
            self._fill_legend(panel, r, center, kind, scale)
            e = r.extent
            panel.plot.setXRange(e[0], e[1], padding=0)
            panel.plot.setYRange(e[2], e[3], padding=0)
            shown = [np.zeros((1, 2))] + [p[0] + scale * (p - p[0]) for p in r.arrows]
            if pca:
                shown.append(r.path)
                shown += [xy[None] for xy in r.markers.values()]
            if kind == "task" and r.task_path is not None:
                shown.append(r.task_path)
            place_legend(panel.legend, panel.plot.getViewBox(), np.vstack(shown))

    def _fill_legend(self, panel: SurfacePlot, r: LandscapeResult, center: str, kind: str, scale: float) -> None:
        legend = panel.legend
        legend.clear()
        color = algorithm_color(center)
        pca = r.request.plane == "pca"
        if pca:
            legend.addItem(panel.path[0], f"{algorithm_label(center)} meta path")
        legend.addItem(pg.ScatterPlotItem(symbol="star", size=13, brush=pg.mkBrush(color), pen=pg.mkPen("w")),
                       f"θ of {algorithm_label(center)} (centre)")
        if pca and len(r.markers) > 1:
            legend.addItem(pg.ScatterPlotItem(symbol="d", size=10, brush=pg.mkBrush("#8A939C"), pen=pg.mkPen("w")),
                           "θ of the other algorithms (projected)")
        if kind == "task":
            legend.addItem(panel.task_path[0], f"the task's adaptation ({r.request.task_steps} steps)")
        elif r.arrows:
            magnified = f", ×{scale:g}" if scale != 1 else ""
            legend.addItem(pg.PlotDataItem(pen=pg.mkPen(ARROW_COLOR, width=1.8)),
                           f"task adaptation, {r.request.inner_steps} step{'s' if r.request.inner_steps != 1 else ''}"
                           f"{magnified}")

    def _draw_prediction(self) -> None:
        r = self.result
        if r is None or r.request.mode != "task":
            return
        step = min(self.step_slider.value(), r.request.task_steps)
        self.step_label.setText(self._step_text(r, step))
        panel = self.panels["a"]
        if r.task_path is not None:
            panel.live.setData([r.task_path[step, 0]], [r.task_path[step, 1]])
        name = r.request.center
        self.pred_legend.clear()
        p = r.prediction
        if p is not None:
            style_plot(self.prediction, None, "x", "y")
            self.pred_truth.setData(p["x"], p["truth"] if p["truth"] is not None else np.full_like(p["x"], np.nan))
            self.pred_before.setPen(curve_pen(name, width=1.6, dashed=True))
            self.pred_before.setData(p["x"], np.clip(p["curves"][0], -1e3, 1e3))
            self.pred_after.setPen(curve_pen(name, width=3.0))
            self.pred_after.setData(p["x"], np.clip(p["curves"][step], -1e3, 1e3))
            self.pred_points.setData(p["support_x"], p["support_y"])
            self.pred_marker.setData([])
            self.prediction.setTitle(f"<span style='color:{TEXT}; font-weight:600'>Prediction after {step} "
                                     f"step{'s' if step != 1 else ''}</span>", size="10pt")
            self.pred_legend.addItem(self.pred_after, f"{algorithm_label(name)}, step {step}")
            self.pred_legend.addItem(self.pred_before, "before adaptation")
            if p["truth"] is not None:
                self.pred_legend.addItem(self.pred_truth, "true function")
            self.pred_legend.addItem(self.pred_points, "support points")
            y = np.concatenate([p["support_y"], p["truth"] if p["truth"] is not None else p["support_y"]])
            curves = p["curves"][np.isfinite(p["curves"])]
            spread = float(np.percentile(np.abs(curves), 98)) if curves.size else 0.0
            lim = min(max(float(np.abs(y).max()), spread, 1.0) * 1.15, 8.0)
            self.prediction.setXRange(float(p["x"][0]), float(p["x"][-1]), padding=0.02)
            self.prediction.setYRange(-lim, lim * 1.25, padding=0)
        else:  # not a 1-D regression: the task's query loss (or accuracy) along its adaptation
            values = r.task_accuracy if r.task_accuracy is not None else r.task_losses
            label = "query accuracy" if r.task_accuracy is not None else "query loss"
            style_plot(self.prediction, None, "inner step", label)
            steps = np.arange(len(values))
            self.pred_truth.setData([], [])
            self.pred_before.setData([], [])
            self.pred_after.setPen(curve_pen(name, width=2.4))
            self.pred_after.setData(steps, values)
            self.pred_points.setData([])
            self.pred_marker.setData([step], [values[step]])
            self.prediction.setTitle(f"<span style='color:{TEXT}; font-weight:600'>Task {label} per step</span>",
                                     size="10pt")
            self.prediction.enableAutoRange()

    def _step_text(self, r: LandscapeResult, step: int) -> str:
        if r.task_losses is None:
            return f"step {step}"
        loss = r.task_losses[min(step, len(r.task_losses) - 1)]
        text = f"step {step} · query loss {loss:.3g}"
        if r.task_accuracy is not None:
            text += f" · accuracy {100 * r.task_accuracy[step]:.0f}%"
        return text

    # -- live adaptation -----------------------------------------------------------------------------
    def _on_step(self, _value: int) -> None:
        self._draw_prediction()

    # -- hover ---------------------------------------------------------------------------------------
    def _on_mouse_moved(self, scene_pos) -> None:
        r = self.result
        if r is None:
            return
        for key, kind in zip(("a", "b"), r.surfaces, strict=False):
            vb = self.panels[key].plot.getViewBox()
            if vb.sceneBoundingRect().contains(scene_pos):
                p = vb.mapSceneToView(scene_pos)
                s = r.surfaces[kind]
                i = int(np.argmin(np.abs(s.alphas - p.x())))
                j = int(np.argmin(np.abs(s.betas - p.y())))
                if not (s.alphas[0] <= p.x() <= s.alphas[-1] and s.betas[0] <= p.y() <= s.betas[-1]):
                    return
                name = {"pre": "before adaptation", "post": f"after {r.request.inner_steps} step(s)",
                        "task": f"task {r.request.task_index + 1}"}[kind]
                self.readout.setText(f"({p.x():.3g}, {p.y():.3g}) · loss {name}: <b>{s.values[j, i]:.4g}</b>")
                return

    # -- export --------------------------------------------------------------------------------------
    def export_surface(self, path: str | None = None) -> list[Path]:
        """Save the surface(s) as .npz (one file per surface: NAME-pre.npz and NAME-post.npz side by side)."""
        r = self.result
        if r is None:
            return []
        path = self.ask_path(path or None, "Export surface", "landscape.npz", "NumPy archive (*.npz)")
        if path is None:
            return []
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        targets = OrderedDict()
        if len(r.surfaces) == 1:
            targets[next(iter(r.surfaces))] = path
        else:
            for kind in r.surfaces:
                targets[kind] = path.with_name(f"{path.stem}-{kind}.npz")
        written = []
        try:
            for kind, target in targets.items():
                r.surfaces[kind].save_npz(target)
                written.append(target)
        except OSError as exc:
            self.status.setText(f"Could not write {exc.filename or path}: {exc.strerror or exc}")
            return written
        self.status.setText("Saved " + ", ".join(p.name for p in written))
        return written



def _applies(kind, algorithms) -> str | None:
    if sampled_from_policy(kind):
        return (f"The Landscape evaluates the loss on fixed support and query sets; {family_label(kind)} sample "
                "their data from the policy, so there is no fixed loss surface to draw")
    return steps_reason("The Landscape", algorithms)


VIEW = ViewSpec("landscape", "Landscape", lambda window: LandscapeView(), applies_to=_applies)
