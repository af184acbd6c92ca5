"""The Arena: the 2-D navigation playground (MAML paper, Figure 4). Click or drag to place the goal (or Random
goal); every navigation initialization (trained, live while training, or imported) samples trajectories from the
origin before adaptation (dashed) and after k policy-gradient steps on those trajectories (solid), in its colour,
with its mean path bold; the table gives the average return before and after k steps, and the oracle's. The
numbers come from core/tasks/navigation.py `goal_paths`, the same rollouts and steps as training and `eval`.
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict

import numpy as np
import pyqtgraph as pg
import torch
from PySide6.QtCore import QPointF, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSlider,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core.tasks.navigation import GoalPaths, NavigationFamily, NavigationTasks, goal_paths
from ..lab.initializations import Initialization
from .colors import algorithm_color, qcolor
from .slider_player import SliderPlayer
from .theme import style_plot
from .views import ViewSpec, family_label

POLICY_KIND = "gaussian_mlp_policy"
ARENA = 0.6  # the view shows [-ARENA, ARENA]^2; goals are drawn from [-0.5, 0.5]^2
MAX_STEPS = 5
GOAL_COLOR = "#F0E442"
DEBOUNCE_MS = 150  # after a goal or steps change
LIVE_SHARE = 0.25  # while training: new parameters are sampled at most this share of the GUI thread's time


def environment_of(init: Initialization) -> NavigationFamily | None:
    """The environment an initialization was trained in (its metadata's task description: horizon, speed, ...),
    or None when the metadata does not describe a navigation environment."""
    task = (init.metadata or {}).get("task")
    if not isinstance(task, dict) or task.get("name") != NavigationTasks.name:
        return None
    try:
        return NavigationTasks.from_description(task)
    except ValueError:
        return None


def mean_path(paths: list[np.ndarray]) -> np.ndarray:
    """The mean over trajectories of the position at each time step (a finished trajectory stays where it ended)."""
    length = max(len(p) for p in paths)
    padded = np.stack([np.concatenate([p, np.repeat(p[-1:], length - len(p), axis=0)]) for p in paths])
    return padded.mean(0)


class ArenaPlot(pg.PlotWidget):
    """The arena; a left click or drag moves the goal."""

    goal_moved = Signal(float, float)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setMenuEnabled(False)
        item = self.getPlotItem()
        item.setAspectLocked(True)
        item.setRange(xRange=(-ARENA, ARENA), yRange=(-ARENA, ARENA), padding=0.02)
        item.getViewBox().setMouseEnabled(False, False)
        style_plot(item, "2-D navigation: trajectories from the origin", "x", "y")
        for name in ("left", "bottom"):  # arena units as they are (no "x0.001" SI scaling of the ticks)
            axis = item.getAxis(name)
            if hasattr(axis, "setSIPrefixEnableRanges"):
                axis.setSIPrefixEnableRanges(())
            axis.enableAutoSIPrefix(False)

    @property
    def viewbox(self):
        return self.getPlotItem().getViewBox()

    def data_to_widget(self, x: float, y: float) -> QPointF:
        """Viewport pixel position of a point of the arena (what the tests click on)."""
        return QPointF(self.mapFromScene(self.viewbox.mapViewToScene(QPointF(x, y))))

    def _goal_at(self, ev) -> tuple[float, float] | None:
        scene = self.mapToScene(ev.position().toPoint())
        if not self.viewbox.sceneBoundingRect().contains(scene):
            return None
        p = self.viewbox.mapSceneToView(scene)
        return min(max(p.x(), -ARENA), ARENA), min(max(p.y(), -ARENA), ARENA)

    def mousePressEvent(self, ev) -> None:
        goal = self._goal_at(ev) if ev.button() == Qt.MouseButton.LeftButton else None
        if goal is None:
            super().mousePressEvent(ev)
            return
        self.goal_moved.emit(*goal)
        ev.accept()

    def mouseMoveEvent(self, ev) -> None:
        goal = self._goal_at(ev) if ev.buttons() & Qt.MouseButton.LeftButton else None
        if goal is None:
            super().mouseMoveEvent(ev)
            return
        self.goal_moved.emit(*goal)
        ev.accept()


HINT = ("Click or drag in the arena to place the goal; dashed: before adaptation, solid: after k policy-gradient "
        "steps (the trained step, then half of it), bold: the mean path.")


class NavigationView(QWidget):
    """The arena playground for navigation initializations."""

    export_plot_requested = Signal()
    message = Signal(str)

    def __init__(self, parent=None, trajectories: int = 10, seed: int = 0):
        super().__init__(parent)
        self.family = NavigationFamily()
        self.inits: OrderedDict[str, Initialization] = OrderedDict()
        self.results: dict[str, GoalPaths] = {}
        self.goal = (0.3, 0.3)
        self.trajectories = trajectories
        self.seed = seed
        self.rng = random.Random(seed)
        self.plot = ArenaPlot()
        self.plot.goal_moved.connect(self.set_goal)
        self.random_button = QPushButton("Random goal")
        self.random_button.clicked.connect(self.random_goal)
        self.steps = QSlider(Qt.Orientation.Horizontal)
        self.steps.setRange(0, 3)
        self.steps.setValue(1)
        self.steps.valueChanged.connect(lambda _: self._draw())
        self.steps_label = QLabel()
        self.max_steps = QSpinBox()
        self.max_steps.setRange(1, MAX_STEPS)
        self.max_steps.setValue(3)
        self.max_steps.setPrefix("up to ")
        self.max_steps.setSuffix(" steps")
        self.max_steps.valueChanged.connect(self._max_steps_changed)
        self.play = QPushButton("▶ Play")
        self.player = SliderPlayer(self.play, self.steps, 700, parent=self)
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["initialization", "return before", "return after k steps"])
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.setMaximumHeight(150)
        self.not_applicable: str | None = None  # why the arena does not apply to the family shown
        self.hint = QLabel(HINT)
        self.hint.setWordWrap(True)
        self.oracle_label = QLabel()
        self.oracle_label.setWordWrap(True)  # a long status line must not widen the whole window
        self._recompute = QTimer(self)
        self._recompute.setSingleShot(True)
        self._recompute.setInterval(DEBOUNCE_MS)
        self._recompute.timeout.connect(self.compute)
        self._stale = False  # inputs changed while the view was hidden: compute when it is shown
        self._last_compute_s = 0.0  # how long the last compute took (sampling runs on the GUI thread)

        controls = QHBoxLayout()
        for w in (self.random_button, QLabel("steps k"), self.steps, self.steps_label, self.max_steps, self.play):
            controls.addWidget(w)
        layout = QVBoxLayout(self)
        layout.addLayout(controls)
        layout.addWidget(self.plot, 1)
        layout.addWidget(self.hint)
        layout.addWidget(self.oracle_label)
        layout.addWidget(self.table)
        self._draw()

    # -- what the window calls ---------------------------------------------------------------------------
    @staticmethod
    def accepts_model(model) -> bool:
        """The Arena shows 2-D navigation policies (imports of them open here)."""
        return model.spec().get("kind") == POLICY_KIND

    def initializations_changed(self, changed: list[Initialization], removed: list[str]) -> None:
        mine = [i for i in changed if i.model.spec().get("kind") == POLICY_KIND]
        gone = [k for k in removed + [i.key for i in changed if i not in mine] if k in self.inits]
        for init in mine:
            self.inits[init.key] = init
            env = environment_of(init)
            if env is not None and env != self.family:  # the arena's environment: the newest policy's
                self.family = env
                self.results.clear()  # sampled in another environment
        for key in gone:
            del self.inits[key]
            self.results.pop(key, None)
        if mine or gone:
            self._schedule_live()

    def _schedule_live(self) -> None:
        """New parameters (a training snapshot, every quarter second): sample them soon, but leave the GUI thread
        most of its time (rollouts of every policy take tens of milliseconds each)."""
        if not self._recompute.isActive():
            wait_s = self._last_compute_s * (1 - LIVE_SHARE) / LIVE_SHARE
            self._recompute.start(max(DEBOUNCE_MS, int(1000 * wait_s)))

    def clear_run(self) -> None:
        """Another run or family: the trained policies and their paths go (imported ones stay)."""
        for key in [k for k, v in self.inits.items() if v.source == "trained"]:
            del self.inits[key]
            self.results.pop(key, None)
        self._draw()

    def set_applicable(self, reason: str | None) -> None:
        """Not 2-D navigation: the arena says so in place of its hint, and samples nothing."""
        self.not_applicable = reason
        self.hint.setText(reason or HINT)
        for w in (self.random_button, self.steps, self.max_steps, self.play):
            w.setEnabled(not reason)

    def export_item(self):
        return self.plot.getPlotItem()

    def view_title(self) -> str:
        return "arena"

    def shutdown(self) -> None:
        self.player.stop()
        self._recompute.stop()

    def wait_until_idle(self, timeout_s: float = 60.0) -> bool:
        """Sample what is pending now (screenshots, tests): the table and paths then show the latest parameters."""
        if self._recompute.isActive() or self._stale:
            self.compute(force=True)
        return True

    # -- goal and steps ----------------------------------------------------------------------------------
    def set_goal(self, x: float, y: float) -> None:
        self.goal = (float(x), float(y))
        self._recompute.start(DEBOUNCE_MS)
        self._draw()

    def random_goal(self) -> None:
        lo, hi = self.family.goal_range
        self.set_goal(self.rng.uniform(lo, hi), self.rng.uniform(lo, hi))

    def _max_steps_changed(self, value: int) -> None:
        self.steps.setRange(0, value)
        self._recompute.start(DEBOUNCE_MS)

    def showEvent(self, ev) -> None:
        super().showEvent(ev)
        if self._stale:
            self._recompute.start(0)

    def compute(self, force: bool = False) -> None:
        """Sample every initialization's trajectories for the goal (one goal: tens of milliseconds per policy).
        A hidden view only notes that it is stale (it computes when shown), unless `force`."""
        self._recompute.stop()
        if self.not_applicable:
            return
        if not force and not self.isVisible():
            self._stale = True
            return
        self._stale = False
        start = time.perf_counter()
        self.results = {}
        for key, init in self.inits.items():
            self.results[key] = goal_paths(init.model, OrderedDict((k, v.detach().cpu()) for k, v in
                                                                   init.params.items()),
                                           self.goal, self.max_steps.value(), init.inner_lr, self.trajectories,
                                           self.seed, environment_of(init) or self.family)
        self._draw()
        self._last_compute_s = time.perf_counter() - start

    # -- drawing -----------------------------------------------------------------------------------------
    def _draw(self) -> None:
        item = self.plot.getPlotItem()
        item.clear()
        k = self.steps.value()
        self.steps_label.setText(str(k))
        box = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5]])
        item.plot(box[:, 0], box[:, 1], pen=pg.mkPen("#B8BFC7", width=1, style=Qt.PenStyle.DotLine))
        self.table.setRowCount(0)
        for key, res in self.results.items():
            init = self.inits.get(key)
            if init is None:
                continue
            color = algorithm_color(init.algorithm)
            for step, dashed in ((0, True), (k, False)) if k else ((0, True),):
                pen = pg.mkPen(qcolor(color, 70), width=1, style=Qt.PenStyle.DashLine if dashed else
                               Qt.PenStyle.SolidLine)
                for path in res.paths[step]:
                    item.plot(path[:, 0], path[:, 1], pen=pen).setZValue(1)
                mean = mean_path(res.paths[step])
                # every mean path above every policy's faint trajectories (another policy's cloud must not hide it)
                item.plot(mean[:, 0], mean[:, 1], pen=pg.mkPen(qcolor(color), width=3, style=Qt.PenStyle.DashLine
                                                               if dashed else Qt.PenStyle.SolidLine)).setZValue(5)
            row = self.table.rowCount()
            self.table.insertRow(row)
            for col, text in enumerate((init.label, f"{res.returns[0]:.2f}", f"{res.returns[k]:.2f}")):
                self.table.setItem(row, col, QTableWidgetItem(text))
        # the goal in Okabe-Ito yellow, no algorithm's colour (vermillion was the pretrained baseline's)
        item.plot([self.goal[0]], [self.goal[1]], pen=None, symbol="star", symbolSize=20,
                  symbolBrush=qcolor(GOAL_COLOR), symbolPen=pg.mkPen("#1B1F23", width=1.5)).setZValue(10)
        item.plot([0.0], [0.0], pen=None, symbol="o", symbolSize=7, symbolBrush=qcolor("#1B1F23")).setZValue(10)
        self.table.setHorizontalHeaderLabels(["initialization", "return before",
                                              f"return after {k} step{'' if k == 1 else 's'}"])
        oracle = float(self.family.oracle_returns(torch.tensor([self.goal]))[0])
        self.oracle_label.setText(f"goal ({self.goal[0]:.2f}, {self.goal[1]:.2f}) · oracle return {oracle:.2f} "
                                  f"(heads straight for the goal) · {self.trajectories} trajectories per step"
                                  + ("" if self.inits else " · train or import a navigation policy to see it"))


def _applies(kind, algorithms) -> str | None:
    if kind is None or kind.name == NavigationTasks.name:
        return None
    return f"The Arena shows 2-D navigation policies; {family_label(kind)} have no arena"


VIEW = ViewSpec("arena", "Arena", lambda window: NavigationView(), applies_to=_applies)
