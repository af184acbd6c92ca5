"""The playground: the user's few-shot task of a 1-D regression family and every initialization adapting to it.

What it shows is the task family's (its `playground`, a CurvePlayground in core/tasks/base.py): the x range, the
true function of a random task and that task's fields (a sinusoid's amplitude and phase, a line's slope and
intercept). A family without one (images, navigation) gets its reason here instead.

Click to add a support point at the data coordinates under the mouse, drag it to move it, right-click or
Delete removes it, Ctrl+Z undoes. "Random task" draws a task from the family's distribution (its true
curve shown, its fields editable); in draw mode a freehand stroke becomes the true curve and K
support points are sampled from it. Each initialization shows its prediction before adaptation (dashed)
and after k test-time steps (solid), with the query MSE against the true or drawn curve.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QCoreApplication, QObject, QPointF, Qt, QThread, Signal, Slot
from PySide6.QtGui import QCursor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QButtonGroup,
    QCheckBox,
    QDoubleSpinBox,
    QFrame,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSlider,
    QSpinBox,
    QSplitter,
    QStackedWidget,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from ..core.tasks.base import CurvePlayground
from ..core.tasks.sinusoid import sinusoid_playground
from ..lab.initializations import Initialization
from ..lab.playground import MAX_STEPS, Prediction, SupportTask, mlp_for_playground, predict
from ..lab.threads import use_gui_threads
from .colors import (
    POINT_COLOR,
    SELECTED_COLOR,
    STROKE_COLOR,
    TRUTH_COLOR,
    curve_pen,
    qcolor,
)
from .initializations_model import InitializationsModel
from .slider_player import SliderPlayer
from .theme import MUTED, style_plot
from .views import ViewSpec, steps_reason

HIT_RADIUS_PX = 10.0
UNDO_LIMIT = 200


# -- the task, as plain data ------------------------------------------------------------------------------
@dataclass
class PlaygroundState:
    """Support points and the true function: None, a task of the family ({"kind": "task", field: value, ...}, its
    curve the family's function of those values), or a drawn curve ({"kind": "drawn", "x", "y"}, x ascending)."""

    points: list[tuple[float, float]] = field(default_factory=list)
    truth: dict | None = None

    def copy(self) -> "PlaygroundState":
        truth = None
        if self.truth is not None:
            truth = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in self.truth.items()}
        return PlaygroundState(list(self.points), truth)

    def task_values(self) -> dict[str, float] | None:
        """The field values of a task of the family (None for no truth or a drawn curve)."""
        if self.truth is None or self.truth["kind"] != "task":
            return None
        return {k: float(v) for k, v in self.truth.items() if k != "kind"}

    def truth_fn(self, curve: CurvePlayground):
        t = self.truth
        if t is None:
            return None
        if t["kind"] == "task":
            return curve.truth(self.task_values())
        gx, gy = t["x"], t["y"]
        return lambda x: np.interp(np.asarray(x, dtype=np.float64), gx, gy)

    def truth_range(self, x_range: tuple[float, float]) -> tuple[float, float]:
        if self.truth is not None and self.truth["kind"] == "drawn":
            return float(self.truth["x"][0]), float(self.truth["x"][-1])
        return x_range

    def support_task(self, curve: CurvePlayground) -> SupportTask:
        xs = np.array([p[0] for p in self.points], dtype=np.float64)
        ys = np.array([p[1] for p in self.points], dtype=np.float64)
        return SupportTask(xs, ys, self.truth_fn(curve), self.truth_range(curve.x_range), curve.x_range)


def curve_from_stroke(xs, ys, x_range=(-5.0, 5.0), bins: int = 256):
    """A function of x from a freehand stroke: the mean y of the stroke in each x bin, ends included.

    Returns (x ascending, y) or None when the stroke covers too little of the x axis.
    """
    xs = np.clip(np.asarray(xs, dtype=np.float64), *x_range)
    ys = np.asarray(ys, dtype=np.float64)
    if xs.size < 2:
        return None
    lo, hi = float(xs.min()), float(xs.max())
    if hi - lo < 0.25:
        return None
    edges = np.linspace(lo, hi, bins + 1)
    idx = np.clip(np.searchsorted(edges, xs, side="right") - 1, 0, bins - 1)
    sums = np.bincount(idx, ys, bins)
    counts = np.bincount(idx, minlength=bins)
    have = counts > 0
    centers = 0.5 * (edges[:-1] + edges[1:])
    gx, gy = centers[have], sums[have] / counts[have]
    first, last = ys[np.argmin(xs)], ys[np.argmax(xs)]
    return np.concatenate([[lo], gx, [hi]]), np.concatenate([[first], gy, [last]])


# -- the canvas ---------------------------------------------------------------------------------------------
class Canvas(pg.PlotWidget):
    """The plot the user edits. Mouse handling is done here, in data coordinates; the view owns the state."""

    empty_pressed = Signal(float, float)  # left press on empty space (points mode): add a point there
    point_pressed = Signal(int)  # left press on a point: select it (a drag may follow)
    point_dragged = Signal(int, float, float)
    drag_finished = Signal(int)
    point_removed = Signal(int)  # right click on a point
    stroke_finished = Signal(object, object)  # xs, ys of a freehand stroke (draw mode)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.mode = "points"
        self.points = np.empty((0, 2))
        self.x_range: tuple[float, float] = (-5.0, 5.0)
        self._drag: int | None = None
        self._stroke: list[tuple[float, float]] | None = None
        item = self.getPlotItem()
        style_plot(item, x_label="x", y_label="y")
        item.setMenuEnabled(False)
        item.hideButtons()
        vb = item.getViewBox()
        vb.setMouseEnabled(False, False)
        vb.disableAutoRange()
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setMouseTracking(True)
        self.setMinimumSize(360, 300)

        self.truth_item = pg.PlotDataItem(pen=pg.mkPen(qcolor(TRUTH_COLOR, 200), width=2.2))
        self.truth_item.setZValue(5)
        self.stroke_item = pg.PlotDataItem(pen=pg.mkPen(STROKE_COLOR, width=2.5))
        self.stroke_item.setZValue(30)
        self.scatter = pg.ScatterPlotItem(size=11, brush=pg.mkBrush(POINT_COLOR), pen=pg.mkPen("w", width=1.5))
        self.scatter.setZValue(20)
        self.selected_item = pg.ScatterPlotItem(size=20, brush=pg.mkBrush(None),
                                                pen=pg.mkPen(SELECTED_COLOR, width=2.5))
        self.selected_item.setZValue(21)
        for it in (self.truth_item, self.stroke_item, self.scatter, self.selected_item):
            item.addItem(it)
        self.hint = pg.TextItem(anchor=(0.5, 0.5), color=MUTED)
        self.hint.setZValue(1)
        item.addItem(self.hint, ignoreBounds=True)
        self.legend = pg.LegendItem(offset=(8, 4), labelTextColor=MUTED, labelTextSize="9pt", colCount=6,
                                    horSpacing=14,
                                    brush=pg.mkBrush(255, 255, 255, 215), pen=pg.mkPen("#E1E4E8"))
        self.legend.setParentItem(vb)
        self.legend.setZValue(40)
        self.set_ranges((-5.0, 5.0), (-6.0, 6.8))

    def set_ranges(self, x_range: tuple[float, float], y_range: tuple[float, float]) -> None:
        """The family's x range (points stay in it) and a y range that holds its tasks."""
        self.x_range = (float(x_range[0]), float(x_range[1]))
        item = self.getPlotItem()
        item.setXRange(*self.x_range, padding=0.02)
        item.setYRange(*y_range, padding=0.0)
        self.hint.setPos(0.5 * sum(self.x_range), 0.5 * (y_range[0] + y_range[1]))

    # -- coordinates --------------------------------------------------------------------------------
    @property
    def viewbox(self):
        return self.getPlotItem().getViewBox()

    def data_to_widget(self, x: float, y: float) -> QPointF:
        """Viewport pixel position of a data point (what the tests click on)."""
        return QPointF(self.mapFromScene(self.viewbox.mapViewToScene(QPointF(x, y))))

    def _data_pos(self, ev) -> tuple[float, float] | None:
        scene = self.mapToScene(ev.position().toPoint())
        vb = self.viewbox
        if not vb.sceneBoundingRect().contains(scene):
            return None
        p = vb.mapSceneToView(scene)
        return p.x(), p.y()

    def _clamp(self, x: float, y: float) -> tuple[float, float]:
        (x0, x1), (y0, y1) = self.viewbox.viewRange()
        return (min(max(x, max(x0, self.x_range[0])), min(x1, self.x_range[1])), min(max(y, y0), y1))

    def point_at(self, pos: QPointF) -> int | None:
        """Index of the support point within HIT_RADIUS_PX of a viewport position (the nearest), or None."""
        best, best_d = None, HIT_RADIUS_PX
        for i, (x, y) in enumerate(self.points):
            p = self.data_to_widget(x, y)
            d = math.hypot(p.x() - pos.x(), p.y() - pos.y())
            if d <= best_d:
                best, best_d = i, d
        return best

    # -- mouse ---------------------------------------------------------------------------------------
    def mousePressEvent(self, ev):
        hit = self._data_pos(ev)
        if hit is None:
            return super().mousePressEvent(ev)
        self.setFocus(Qt.FocusReason.MouseFocusReason)
        x, y = self._clamp(*hit)
        if ev.button() == Qt.MouseButton.LeftButton:
            if self.mode == "draw":
                self._stroke = [(x, y)]
                self.stroke_item.setData([x], [y])
            else:
                i = self.point_at(ev.position())
                if i is None:
                    self.empty_pressed.emit(x, y)
                    i = len(self.points) - 1 if len(self.points) else None
                else:
                    self.point_pressed.emit(i)
                self._drag = i
                if i is not None:
                    self.viewport().setCursor(Qt.CursorShape.ClosedHandCursor)
            ev.accept()
            return None
        if ev.button() == Qt.MouseButton.RightButton:
            i = self.point_at(ev.position())
            if i is not None:
                self.point_removed.emit(i)
            ev.accept()
            return None
        return super().mousePressEvent(ev)

    def mouseMoveEvent(self, ev):
        if self._drag is not None or self._stroke is not None:
            hit = self._data_pos(ev)
            if hit is None:  # outside the plot area: clamp to its edge
                scene = self.mapToScene(ev.position().toPoint())
                p = self.viewbox.mapSceneToView(scene)
                hit = (p.x(), p.y())
            x, y = self._clamp(*hit)
            if self._drag is not None:
                self.point_dragged.emit(self._drag, x, y)
            else:
                self._stroke.append((x, y))
                xs, ys = zip(*self._stroke, strict=True)
                self.stroke_item.setData(np.array(xs), np.array(ys))
            ev.accept()
            return None
        super().mouseMoveEvent(ev)
        if self.mode == "draw":
            self.viewport().setCursor(Qt.CursorShape.CrossCursor)
        elif self.point_at(ev.position()) is not None:
            self.viewport().setCursor(Qt.CursorShape.OpenHandCursor)
        else:
            self.viewport().setCursor(Qt.CursorShape.CrossCursor)
        return None

    def mouseReleaseEvent(self, ev):
        if self._drag is not None:
            i, self._drag = self._drag, None
            self.viewport().setCursor(QCursor(Qt.CursorShape.OpenHandCursor))
            self.drag_finished.emit(i)
            ev.accept()
            return None
        if self._stroke is not None:
            stroke, self._stroke = self._stroke, None
            self.stroke_item.setData([], [])
            xs, ys = zip(*stroke, strict=True)
            self.stroke_finished.emit(np.array(xs), np.array(ys))
            ev.accept()
            return None
        return super().mouseReleaseEvent(ev)

    def wheelEvent(self, ev):  # a fixed canvas: no zoom
        ev.ignore()

    def mouseDoubleClickEvent(self, ev):  # a double click is two clicks, not pyqtgraph's auto-range
        ev.accept()


# -- adaptation off the GUI thread -------------------------------------------------------------------------
class PreviewWorker(QObject):
    """Computes predictions in its own thread: the hidden widths are the user's, so the cost is unbounded."""

    done = Signal(object)  # (generation, key, Prediction | None, error message)

    @Slot(object)
    def compute(self, job) -> None:
        generation, key, init, task = job
        try:
            use_gui_threads()  # not a training run's count (lab/threads.py)
            self.done.emit((generation, key, predict(init, task, MAX_STEPS), ""))
        except Exception as exc:  # noqa: BLE001 - reported in the status bar, never raised into Qt
            self.done.emit((generation, key, None, str(exc)))


# -- the view -----------------------------------------------------------------------------------------------
class PlaygroundView(QWidget):
    """Canvas + side panel. `set_initialization` / `initializations_changed` feed it initializations;
    `set_experiment(config)` / `set_playground(declaration)` make it the task family's."""

    task_changed = Signal()
    message = Signal(str)  # short status-bar messages
    predictions_updated = Signal()
    _request = Signal(object)

    def __init__(self, parent=None, rng: np.random.Generator | None = None, background: bool = True):
        super().__init__(parent)
        self.curve: CurvePlayground = sinusoid_playground()  # the family's declaration (the last curve one)
        self.reason = ""  # why the current family has no playground ("" while it has one)
        self.field_boxes: dict[str, tuple[QLabel, QDoubleSpinBox]] = {}
        self.rng = rng or np.random.default_rng()
        self.state = PlaygroundState()
        self.undo_stack: list[PlaygroundState] = []
        self.selected: int | None = None
        self._drag_recorded = False
        self._last_edit = ""
        self.inits: OrderedDict[str, Initialization] = OrderedDict()
        self.predictions: dict[str, Prediction] = {}
        self.hidden_keys: set[str] = set()
        self._pending: list[str] = []  # keys whose prediction is out of date, oldest first
        self._generation: dict[str, int] = {}  # bumped on every change that affects a key's prediction
        self._computed: dict[str, int] = {}  # generation of the prediction shown
        self._busy = False
        self._closed = False
        self.background = background
        self._thread: QThread | None = None
        self._worker: PreviewWorker | None = None
        self._items: dict[str, tuple[pg.PlotDataItem, pg.PlotDataItem]] = {}

        self.canvas = Canvas()
        self.canvas.empty_pressed.connect(self._on_empty_pressed)
        self.canvas.point_pressed.connect(self._on_point_pressed)
        self.canvas.point_dragged.connect(self._on_point_dragged)
        self.canvas.drag_finished.connect(self._on_drag_finished)
        self.canvas.point_removed.connect(self.remove_point)
        self.canvas.stroke_finished.connect(self._on_stroke)

        side = self._build_side_panel()
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.setObjectName("PlaygroundSplitter")
        canvas_frame = QWidget()
        cl = QVBoxLayout(canvas_frame)
        cl.setContentsMargins(6, 6, 0, 6)
        cl.addWidget(self.canvas)
        self.splitter.addWidget(canvas_frame)
        scroll = QScrollArea()  # small screens: the side panel scrolls rather than forcing the window taller
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(side)
        scroll.setMinimumWidth(side.minimumWidth() + scroll.verticalScrollBar().sizeHint().width())
        scroll.setMaximumWidth(side.maximumWidth() + scroll.verticalScrollBar().sizeHint().width())
        self.splitter.addWidget(scroll)
        self.splitter.setStretchFactor(0, 1)
        self.splitter.setStretchFactor(1, 0)
        self.splitter.setCollapsible(0, False)
        self.splitter.setSizes([900, 300])
        self.unavailable = QLabel()  # a family without a playground: why, and where its tasks are shown
        self.unavailable.setObjectName("PlaygroundUnavailable")
        self.unavailable.setWordWrap(True)
        self.unavailable.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.unavailable.setProperty("hint", True)
        self.unavailable.setContentsMargins(40, 40, 40, 40)
        self.pages = QStackedWidget()
        self.pages.addWidget(self.splitter)
        self.pages.addWidget(self.unavailable)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.pages)

        self._apply_curve()
        self._render_task()
        self._rebuild_legend()

    # -- side panel ----------------------------------------------------------------------------------
    def _build_side_panel(self) -> QWidget:
        side = QWidget()
        side.setMinimumWidth(290)
        side.setMaximumWidth(440)
        col = QVBoxLayout(side)
        col.setContentsMargins(4, 6, 8, 6)
        col.setSpacing(8)

        task_box = QGroupBox("Task")
        grid = QGridLayout(task_box)
        grid.setContentsMargins(10, 14, 10, 10)
        grid.setHorizontalSpacing(8)
        grid.setVerticalSpacing(6)
        self.points_mode = QPushButton("Points")
        self.draw_mode = QPushButton("Draw")
        self.points_mode.setToolTip("Click to add a point, drag to move it, right-click to remove it")
        self.draw_mode.setToolTip("Press and drag to draw the true curve freehand; K points are sampled from it")
        self.mode_group = QButtonGroup(self)
        for b in (self.points_mode, self.draw_mode):
            b.setCheckable(True)
            self.mode_group.addButton(b)
        self.points_mode.setChecked(True)
        self.mode_group.buttonToggled.connect(self._on_mode)
        grid.addWidget(QLabel("Mode"), 0, 0)
        grid.addWidget(self.points_mode, 0, 1)
        grid.addWidget(self.draw_mode, 0, 2)
        self.random_button = QPushButton("Random task")
        self.random_button.clicked.connect(lambda: self.random_task())
        self.clear_button = QPushButton("Clear")
        self.clear_button.setToolTip("Remove every point and the true curve")
        self.clear_button.clicked.connect(self.clear)
        self.undo_button = QPushButton("Undo")
        self.undo_button.setToolTip("Undo the last change (Ctrl+Z)")
        self.undo_button.clicked.connect(self.undo)
        # never narrower than its caption (the side panel's minimum width squeezed it to "andom tas")
        self.random_button.setMinimumWidth(self.random_button.fontMetrics().horizontalAdvance("Random task") + 28)
        buttons = QHBoxLayout()
        buttons.setSpacing(6)
        buttons.addWidget(self.random_button, 2)
        buttons.addWidget(self.clear_button, 1)
        buttons.addWidget(self.undo_button, 1)
        grid.addLayout(buttons, 1, 0, 1, 3)
        self.k = QSpinBox()
        self.k.setRange(1, 100)
        self.k.setValue(10)
        self.k.setToolTip("K: support points a random task or a drawn curve gets")
        self.k.setAlignment(Qt.AlignmentFlag.AlignRight)
        grid.addWidget(QLabel("K"), 2, 0)
        grid.addWidget(self.k, 2, 1, 1, 2)
        self.fields_grid = grid  # the family's task fields go in rows 3.. (_apply_curve)
        grid.setColumnStretch(1, 1)
        grid.setColumnStretch(2, 1)
        col.addWidget(task_box)

        adapt_box = QGroupBox("Adaptation")
        grid = QGridLayout(adapt_box)
        grid.setContentsMargins(10, 14, 10, 10)
        grid.setVerticalSpacing(6)
        self.steps = QSlider(Qt.Orientation.Horizontal)
        self.steps.setRange(0, MAX_STEPS)
        self.steps.setValue(10)
        self.steps.setPageStep(5)
        self.steps.setToolTip("k: inner SGD steps of adaptation shown (each initialization uses its own inner lr)")
        self.steps.valueChanged.connect(self._on_steps)
        self.steps_label = QLabel()
        self.steps_label.setMinimumWidth(44)
        self.play_button = QPushButton("▶ Play")
        self.play_button.setCheckable(True)
        self.play_button.setToolTip("Animate the adaptation from k = 0 to 20")
        self._player = SliderPlayer(self.play_button, self.steps, 130, parent=self)
        self.show_before = QCheckBox("Show before adaptation (dashed)")
        self.show_before.setChecked(True)
        self.show_before.toggled.connect(self._render_all_curves)
        grid.addWidget(QLabel("Steps"), 0, 0)
        grid.addWidget(self.steps, 0, 1)
        grid.addWidget(self.steps_label, 0, 2)
        grid.addWidget(self.play_button, 1, 0, 1, 3)
        grid.addWidget(self.show_before, 2, 0, 1, 3)
        grid.setColumnStretch(1, 1)
        col.addWidget(adapt_box)

        init_box = QGroupBox("Initializations")
        v = QVBoxLayout(init_box)
        v.setContentsMargins(10, 14, 10, 10)
        v.setSpacing(6)
        self.init_model = InitializationsModel(self.inits, self.predictions, self.hidden_keys,
                                               self.steps.value(), parent=self)
        self.init_model.visibility_changed.connect(self._render_curves)
        self.table = QTableView()
        self.table.setObjectName("InitializationsTable")
        self.table.setModel(self.init_model)
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setShowGrid(False)
        self.table.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        header.setHighlightSections(False)
        # vertical Ignored: the table takes the height left (at least its minimum) instead of asking for its row
        # count's, which made the side panel taller than a 1366x768 window and cut its caption off below
        self.table.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Ignored)
        # at least the header and two rows, whole (84 px left the second row under a scroll bar)
        self.table.setMinimumHeight(self.table.horizontalHeader().sizeHint().height()
                                    + 2 * self.table.verticalHeader().defaultSectionSize()
                                    + 2 * self.table.frameWidth() + 2)
        self.table.selectionModel().selectionChanged.connect(self._sync_remove_button)
        v.addWidget(self.table, 1)
        self.mse_caption = QLabel()
        self.mse_caption.setWordWrap(True)
        self.mse_caption.setProperty("hint", True)
        v.addWidget(self.mse_caption)
        self.remove_button = QPushButton("Remove imported")
        self.remove_button.setEnabled(False)
        self.remove_button.setVisible(False)  # shown once a file is imported
        self.remove_button.clicked.connect(self._remove_selected_init)
        v.addWidget(self.remove_button)
        col.addWidget(init_box, 1)

        hint = QLabel("Click: add a point · drag: move · right-click or Del: remove · Ctrl+Z: undo")
        hint.setWordWrap(True)
        hint.setProperty("hint", True)
        col.addWidget(hint)
        self._on_steps(self.steps.value())
        return side

    # -- the task family ------------------------------------------------------------------------------
    def set_experiment(self, config) -> None:
        """The form's experiment (the window calls this when it changes, not while training): show its family's
        playground, or why it has none."""
        from ..core.tasks.registry import task_family

        try:
            declaration = task_family(config.task).playground_for(config)
        except (ValueError, TypeError):  # an unknown family or options the form has not accepted yet
            return
        self.set_playground(declaration)

    def set_playground(self, declaration) -> None:
        """Show a family's CurvePlayground (a new family clears the task), or the reason a family has none."""
        if isinstance(declaration, CurvePlayground):
            self.reason = ""
            self.pages.setCurrentWidget(self.splitter)
            if declaration != self.curve:
                self.curve = declaration
                self.state = PlaygroundState()
                self.undo_stack.clear()
                self.selected = None
                self._last_edit = ""
                self._apply_curve()
                self._changed()
            return
        reason = getattr(declaration, "reason", "") or "This task family has no 1-D curve to click points onto."
        self.reason = reason
        self.unavailable.setText(reason)
        self.pages.setCurrentWidget(self.unavailable)

    def field(self, name: str) -> QDoubleSpinBox:
        """The numeric field of one of the task's parameters (a sinusoid's "amplitude")."""
        return self.field_boxes[name][1]

    def _apply_curve(self) -> None:
        """Ranges, the Random task tooltip and one numeric field per task parameter, from `self.curve`."""
        curve = self.curve
        self.canvas.set_ranges(curve.x_range, curve.y_range)
        self.random_button.setToolTip(f"A {curve.noun} from the task distribution ({curve.formula}) with K support "
                                      "points (Ctrl+T)")
        for label, box in self.field_boxes.values():
            self.fields_grid.removeWidget(label)
            self.fields_grid.removeWidget(box)
            label.deleteLater()
            box.deleteLater()
        self.field_boxes = {}
        for row, spec in enumerate(curve.fields, start=3):
            label = QLabel(spec.label)
            box = QDoubleSpinBox()
            box.setRange(spec.low, spec.high)
            box.setSingleStep(spec.step)
            box.setDecimals(spec.decimals)
            box.setValue(spec.default)
            box.setAlignment(Qt.AlignmentFlag.AlignRight)
            box.setToolTip(spec.tip or f"{spec.label} of {curve.formula}")
            box.valueChanged.connect(lambda _value, name=spec.name: self._on_field_edit(name))
            self.fields_grid.addWidget(label, row, 0)
            self.fields_grid.addWidget(box, row, 1, 1, 2)
            self.field_boxes[spec.name] = (label, box)
        self._sync_field_controls()

    # -- state changes -------------------------------------------------------------------------------
    def _record(self, action: str = "") -> None:
        """Remember the state before a change, for Ctrl+Z. Repeated edits of one spin box count once."""
        if action and action == self._last_edit:
            return
        self._last_edit = action
        self.undo_stack.append(self.state.copy())
        del self.undo_stack[:-UNDO_LIMIT]

    def _changed(self) -> None:
        self._render_task()
        self._sync_field_controls()
        self._invalidate()
        self.task_changed.emit()

    def add_point(self, x: float, y: float) -> int:
        self._record()
        self.state.points.append((float(x), float(y)))
        self.selected = len(self.state.points) - 1
        self._changed()
        return self.selected

    def move_point(self, i: int, x: float, y: float) -> None:
        self.state.points[i] = (float(x), float(y))
        self._changed()

    def remove_point(self, i: int) -> None:
        if not 0 <= i < len(self.state.points):
            return
        self._record()
        del self.state.points[i]
        if self.selected is not None:
            self.selected = None if self.selected == i else self.selected - (self.selected > i)
        self._changed()

    def remove_selected(self) -> bool:
        if self.selected is None:
            return False
        self.remove_point(self.selected)
        return True

    def clear(self) -> None:
        if not self.state.points and self.state.truth is None:
            return
        self._record()
        self.state = PlaygroundState()
        self.selected = None
        self._changed()

    def undo(self) -> bool:
        if not self.undo_stack:
            self.message.emit("Nothing to undo")
            return False
        self.state = self.undo_stack.pop()
        self._last_edit = ""
        self.selected = None
        self._changed()
        return True

    def random_task(self, **values: float) -> None:
        """A task from the family's distribution (fields given in `values` fixed) and K support points on it."""
        if self.reason:
            self.message.emit(self.reason)
            return
        curve = self.curve
        unknown = set(values) - {f.name for f in curve.fields}
        if unknown:
            raise ValueError(f"the {curve.noun} task has no field {', '.join(sorted(unknown))}")
        drawn = curve.random_values(self.rng)
        drawn.update({k: float(v) for k, v in values.items()})
        self._record()
        xs = self.rng.uniform(*curve.x_range, self.k.value())
        ys = curve.truth(drawn)(xs)
        self.state = PlaygroundState([(float(x), float(y)) for x, y in zip(xs, ys, strict=True)],
                                     {"kind": "task", **drawn})
        self.selected = None
        self._last_edit = ""
        self._changed()

    def set_drawn_curve(self, xs, ys) -> bool:
        """Use a freehand stroke as the true curve and sample K support points from it."""
        curve = curve_from_stroke(xs, ys, self.curve.x_range)
        if curve is None:
            self.message.emit("Draw across more of the x axis to make a curve")
            return False
        self._record()
        gx, gy = curve
        px = np.sort(self.rng.uniform(gx[0], gx[-1], self.k.value()))
        py = np.interp(px, gx, gy)
        self.state = PlaygroundState([(float(x), float(y)) for x, y in zip(px, py, strict=True)],
                                     {"kind": "drawn", "x": gx, "y": gy})
        self.selected = None
        self._last_edit = ""
        self._changed()
        return True

    def set_mode(self, mode: str) -> None:
        (self.draw_mode if mode == "draw" else self.points_mode).setChecked(True)

    # -- canvas callbacks ----------------------------------------------------------------------------
    def _on_empty_pressed(self, x: float, y: float) -> None:
        self.add_point(x, y)
        self._drag_recorded = True  # the add is the undo step of the drag that may follow
        self._last_edit = ""

    def _on_point_pressed(self, i: int) -> None:
        self.selected = i
        self._drag_recorded = False
        self._last_edit = ""
        self._render_task()

    def _on_point_dragged(self, i: int, x: float, y: float) -> None:
        if not self._drag_recorded:
            self._record()
            self._drag_recorded = True
        self.move_point(i, x, y)

    def _on_drag_finished(self, i: int) -> None:
        self._drag_recorded = False

    def _on_stroke(self, xs, ys) -> None:
        self.set_drawn_curve(xs, ys)

    def _on_mode(self, button, checked: bool) -> None:
        if checked:
            self.canvas.mode = "draw" if button is self.draw_mode else "points"
            self._render_task()

    def _on_field_edit(self, name: str) -> None:
        old = self.state.task_values()
        if self._syncing or old is None:
            return
        values = {key: box.value() for key, (_, box) in self.field_boxes.items()}
        if all(abs(values[k] - old.get(k, values[k])) < 1e-12 for k in values):
            return
        self._record(name)  # a run of edits of one field is one undo step
        self.state.truth = {"kind": "task", **values}
        truth = self.curve.truth(values)
        self.state.points = [(x, float(truth(np.array([x]))[0])) for x, _ in self.state.points]
        self._changed()

    _syncing = False

    def _sync_field_controls(self) -> None:
        values = self.state.task_values()
        self._syncing = True
        try:
            for name, (label, box) in self.field_boxes.items():
                for w in (label, box):
                    w.setEnabled(values is not None)
                    w.setVisible(values is not None)  # the task's parameters, shown while the task is one
                if values is not None and name in values:
                    box.setValue(values[name])
        finally:
            self._syncing = False
        self.undo_button.setEnabled(bool(self.undo_stack))
        self.clear_button.setEnabled(bool(self.state.points) or self.state.truth is not None)

    # -- rendering of the task -----------------------------------------------------------------------
    def _render_task(self) -> None:
        pts = np.array(self.state.points, dtype=np.float64).reshape(-1, 2)
        self.canvas.points = pts
        self.canvas.scatter.setData(pts[:, 0], pts[:, 1])
        if self.selected is not None and self.selected < len(pts):
            self.canvas.selected_item.setData([pts[self.selected, 0]], [pts[self.selected, 1]])
        else:
            self.selected = None
            self.canvas.selected_item.setData([], [])
        fn = self.state.truth_fn(self.curve)
        if fn is None:
            self.canvas.truth_item.setData([], [])
        else:
            lo, hi = self.state.truth_range(self.curve.x_range)
            gx = np.linspace(lo, hi, 400)
            self.canvas.truth_item.setData(gx, fn(gx))
        if len(pts) == 0 and fn is None:
            text = ("Press and drag to draw a curve" if self.canvas.mode == "draw"
                    else "Click to add support points, or press Random task")
            self.canvas.hint.setText(text)
            self.canvas.hint.setVisible(True)
        else:
            self.canvas.hint.setVisible(False)
        truth = self.state.truth
        if truth is None:
            caption = ("Fit MSE on the support points (no true curve)" if len(pts)
                       else "Add points to see each initialization adapt")
        elif truth["kind"] == "task":
            lo, hi = self.curve.x_range
            caption = f"Query MSE against the true {self.curve.noun} on [{lo:g},\u00a0{hi:g}]"  # the range on one line
        else:
            caption = "Query MSE against the drawn curve"
        self.mse_caption.setText(caption)

    # -- initializations -----------------------------------------------------------------------------
    def set_initialization(self, init: Initialization) -> None:
        new = init.key not in self.inits
        self.inits[init.key] = init
        if new:
            self._add_curves(init)
            self.init_model.insert(init.key)
            self._sync_remove_button()
            self._rebuild_legend()
        else:
            self.init_model.replace(init.key)
        self._invalidate([init.key])

    def remove_initialization(self, key: str) -> None:
        if key not in self.inits:
            return
        self.init_model.remove(key)
        del self.inits[key]
        self.predictions.pop(key, None)
        self.hidden_keys.discard(key)
        if key in self._pending:
            self._pending.remove(key)
        self._generation.pop(key, None)
        self._computed.pop(key, None)
        for item in self._items.pop(key, ()):
            self.canvas.getPlotItem().removeItem(item)
        self._sync_remove_button()
        self._rebuild_legend()

    def clear_trained(self) -> None:
        for key in [k for k, v in self.inits.items() if v.source == "trained"]:
            self.remove_initialization(key)

    def initializations_changed(self, changed: list[Initialization], removed: list[str]) -> None:
        """The lab's InitializationStore changed: show every MLP that fits the playground (one input, one output)."""
        for init in changed:
            if mlp_for_playground(init.model.spec()) is None:
                self.set_initialization(init)
            else:
                self.remove_initialization(init.key)
        for key in removed:
            self.remove_initialization(key)

    def _add_curves(self, init: Initialization) -> None:
        pre = pg.PlotDataItem(pen=curve_pen(init.algorithm, width=1.6, dashed=True),
                              connect="finite")
        post = pg.PlotDataItem(pen=curve_pen(init.algorithm, width=2.8), connect="finite")
        if init.source in ("imported", "checkpoint"):  # a file, or a training checkpoint (Paths view): dotted
            pen = curve_pen(init.algorithm, width=2.8)
            pen.setStyle(Qt.PenStyle.DotLine)
            post.setPen(pen)
        pre.setZValue(8)
        post.setZValue(10)
        plot = self.canvas.getPlotItem()
        plot.addItem(pre)
        plot.addItem(post)
        self._items[init.key] = (pre, post)

    def _rebuild_legend(self) -> None:
        legend = self.canvas.legend
        legend.clear()
        for key, init in self.inits.items():
            label = init.label if len(init.label) <= 26 else init.label[:25] + "…"
            legend.addItem(self._items[key][1], label)
        if self.inits:
            legend.addItem(pg.PlotDataItem(pen=pg.mkPen("#8A939C", width=1.6, style=Qt.PenStyle.DashLine)),
                           "before adaptation")
        legend.addItem(pg.PlotDataItem(pen=pg.mkPen(qcolor(TRUTH_COLOR, 200), width=2.2)), "true function")
        legend.addItem(pg.ScatterPlotItem(brush=pg.mkBrush(POINT_COLOR), pen=pg.mkPen("w"), size=9),
                       "support points")
        entries = len(self.inits) + (1 if self.inits else 0) + 2
        # one row while it fits beside the plot's narrowest width, else two ("true function" was cut at 1366x768)
        legend.setColumnCount(entries if entries <= 3 else (entries + 1) // 2)

    def _invalidate(self, keys=None) -> None:
        for key in list(self.inits if keys is None else keys):
            self._generation[key] = self._generation.get(key, 0) + 1
            if key not in self._pending:
                self._pending.append(key)
        self._dispatch()

    def _dispatch(self) -> None:
        """Send the oldest out-of-date initialization to the preview thread (one job at a time)."""
        if self._busy or self._closed or not self._pending or not self.isVisible():
            return  # a hidden playground computes when shown again (showEvent)
        key = self._pending.pop(0)
        init = self.inits.get(key)
        if init is None:
            return self._dispatch()
        if not self.background:
            self._compute(key)
            return self._dispatch()
        if self._thread is None:
            self._thread = QThread()
            self._thread.setObjectName("maml-lab-preview")
            self._worker = PreviewWorker()
            self._worker.moveToThread(self._thread)
            self._request.connect(self._worker.compute)
            self._worker.done.connect(self._on_result)
            self._thread.start()
            app = QCoreApplication.instance()
            if app is not None:
                app.aboutToQuit.connect(self.shutdown)
        self._busy = True
        self._request.emit((self._generation[key], key, init, self.state.support_task(self.curve)))
        return None

    def _on_result(self, result) -> None:
        self._busy = False
        generation, key, prediction, error = result
        if key in self.inits and generation == self._generation.get(key):
            self._store(key, generation, prediction, error)
        self._dispatch()

    def _store(self, key: str, generation: int, prediction: Prediction | None, error: str) -> None:
        self._computed[key] = generation
        if prediction is None:
            self.predictions.pop(key, None)
            self.message.emit(f"{self.inits[key].label}: cannot adapt ({error})")
        else:
            self.predictions[key] = prediction
        self._render_curves(key)
        self.init_model.prediction_changed(key)
        self.predictions_updated.emit()

    def _compute(self, key: str) -> None:
        """Compute one prediction on this thread."""
        init = self.inits.get(key)
        if init is None:
            return
        generation = self._generation.get(key, 0)
        try:
            prediction, error = predict(init, self.state.support_task(self.curve), MAX_STEPS), ""
        except (RuntimeError, ValueError) as exc:
            prediction, error = None, str(exc)
        self._store(key, generation, prediction, error)

    def flush(self) -> None:
        """Bring every prediction up to date now, on this thread (tests, screenshots)."""
        for key in list(self.inits):
            if self._computed.get(key) != self._generation.get(key, 0):
                self._compute(key)
        self._pending.clear()

    def up_to_date(self) -> bool:
        return all(self._computed.get(k) == self._generation.get(k, 0) for k in self.inits)

    def shutdown(self) -> None:
        """Stop the preview thread for good (the main window calls this when it closes)."""
        self._closed = True
        if self._thread is not None:
            self._thread.quit()
            self._thread.wait(2000)
            self._thread = None
            self._worker = None
        self._busy = False

    def showEvent(self, ev):
        super().showEvent(ev)
        self._dispatch()

    def closeEvent(self, ev):
        self.shutdown()
        super().closeEvent(ev)

    # -- rendering of predictions ----------------------------------------------------------------------
    def _render_curves(self, key: str) -> None:
        pre, post = self._items[key]
        pred = self.predictions.get(key)
        visible = key not in self.hidden_keys
        if pred is None or not visible:
            pre.setData([], [])
            post.setData([], [])
            return
        k = self.steps.value()
        clip = lambda y: np.clip(np.where(np.isfinite(y), y, np.nan), -1e3, 1e3)  # noqa: E731
        post.setData(pred.grid, clip(pred.curves[k]))
        if self.show_before.isChecked():
            pre.setData(pred.grid, clip(pred.curves[0]))
        else:
            pre.setData([], [])

    def _render_all_curves(self, *_args) -> None:
        for key in self.inits:
            self._render_curves(key)

    def _on_steps(self, k: int) -> None:
        self.steps_label.setText(f"k = {k}")
        self.init_model.set_steps(k)
        self._render_all_curves()

    # -- the table -----------------------------------------------------------------------------------
    def _selected_key(self) -> str | None:
        rows = self.table.selectionModel().selectedRows() if self.table.selectionModel() else []
        return self.init_model.key_at(rows[0].row()) if rows else None

    def _sync_remove_button(self, *_args) -> None:
        key = self._selected_key()
        self.remove_button.setVisible(any(i.source == "imported" for i in self.inits.values()))
        self.remove_button.setEnabled(key is not None and self.inits.get(key) is not None
                                      and self.inits[key].source == "imported")

    def _remove_selected_init(self) -> None:
        key = self._selected_key()
        if key is not None and self.inits[key].source == "imported":
            self.remove_initialization(key)

    # -- for plot export ----------------------------------------------------------------------------
    def export_item(self):
        return self.canvas.getPlotItem()

    def view_title(self) -> str:
        return "playground"



def _make_view(window) -> PlaygroundView:
    view = PlaygroundView(rng=window.rng)
    view.k.setValue(window.panel.shots.value())
    window.panel.shots.valueChanged.connect(view.k.setValue)
    return view


def _applies(kind, algorithms) -> str | None:
    """The family's own declaration: a curve to click points onto, or the reason it has none."""
    if kind is None or isinstance(kind.playground, CurvePlayground):
        return steps_reason("The Playground", algorithms)
    return kind.playground.reason


VIEW = ViewSpec("playground", "Playground", _make_view, applies_to=_applies, message_ms=4000)
