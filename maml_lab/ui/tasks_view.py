"""The Tasks view: few-shot image tasks from the classes training never saw, and what every trained
initialization makes of them.

"Held-out task": the task's support set (a row per label), its queries with the label each initialization
predicts before and after adapting to the support set (right / wrong in colour), and the accuracy. "New task"
samples another task; clicking images in the class browser (or a support image) picks the shots by hand.
"Draw": one drawing cell per class and a query cell, drawn with the mouse like OpenAI's Reptile demo; every
initialization adapts to the drawn shots and shows its class probabilities for the drawn query.

Loading the held-out classes and adapting run off the GUI thread (ui.background); while training runs the
predictions follow the newest parameters at most every couple of seconds.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass

import numpy as np
import pyqtgraph as pg
import torch
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QFrame,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from ..core.algorithms.config import predict
from ..core.analysis.card import EvaluationCard
from ..core.tasks.losses import loss_function
from ..core.tasks.losses import model_loss as convention_loss
from ..lab.initializations import Initialization
from .background import BackgroundRunner
from .colors import algorithm_color, qcolor
from .image_widgets import DrawCell, PredictionGrid, PredictionRow, ThumbGrid, ThumbRow, qimage_from_array
from .theme import ACCENT, MUTED, TEXT, style_plot
from .views import ViewSpec, adapts_by_steps, family_label

SUPPORT_FRAME = ACCENT
QUERY_BADGE = "#8A939C"
BROWSER_LIMIT = 20  # images per class in the class browser
TRAINING_INTERVAL_S = 2.0  # at most one prediction update this often while training


# ----------------------------------------------------------------------------------------------------------------
# The task and the computations (no Qt)


PLACEHOLDER = ("<p style='font-size:12pt'><b>Few-shot image tasks</b></p>"
               "<p>Choose <b>Family ▸ Images</b> in the experiment panel (the built-in glyphs, or File ▸ Open image "
               "set… for Omniglot or any folder of class folders) and press <b>Start</b>.<br>Here you will see tasks "
               "from the classes training never saw, and what each trained initialization makes of them.</p>")


@dataclass
class ImageTask:
    """One N-way task over the held-out family: label j is class `classes[j]`; image rows (into the family's
    image set) of its support and query images per label."""

    classes: list[int]
    support: list[list[int]]
    queries: list[list[int]]

    @property
    def ways(self) -> int:
        return len(self.classes)

    def support_rows(self) -> tuple[list[int], list[int]]:
        rows = [r for label in self.support for r in label]
        labels = [j for j, label in enumerate(self.support) for _ in label]
        return rows, labels

    def query_rows(self) -> tuple[list[int], list[int]]:
        rows = [r for label in self.queries for r in label]
        labels = [j for j, label in enumerate(self.queries) for _ in label]
        return rows, labels


def sample_task(family, shots: int, queries: int, generator: torch.Generator) -> ImageTask:
    """An N-way task with `shots` support and (up to) `queries` query images per class."""
    least = int(family.image_set.counts.min())
    queries = max(0, min(queries, least - shots))
    classes, rows = family.sample_indices(1, shots, queries, generator)
    rows = rows[0].tolist()
    return ImageTask([int(c) for c in classes[0].tolist()], [r[:shots] for r in rows], [r[shots:] for r in rows])


def _pixels(family, rows: list[int], dtype=torch.float32) -> torch.Tensor:
    x = torch.from_numpy(family.image_set.pixels[np.asarray(rows, dtype=np.int64)]).to(dtype)
    return x.mul_(1 / 255)


def _usable(init: Initialization, ways: int, shape) -> bool:
    model = init.model
    return (getattr(model, "ways", None) == ways and getattr(model, "in_channels", None) == shape[0]
            and tuple(getattr(model, "image_size", ())) == tuple(shape[1:]))


def classify(init: Initialization, xs: torch.Tensor, ys: torch.Tensor, xq: torch.Tensor, steps: int,
             with_support: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities of the queries xq [M, C, H, W] before and after `steps` SGD steps (the
    initialization's inner lr) on the support set xs [S, C, H, W], ys [S]: two float arrays [M, N].

    Batch norm normalizes over the images of one forward pass: the queries go together, as in training, or
    (`with_support`, for a single drawn query) after the support images, as in the Reptile demo.
    """
    params = OrderedDict((k, v.detach()) for k, v in init.params.items())
    dtype = next(iter(params.values())).dtype
    xs, xq, ys = xs.to(dtype), xq.to(dtype), ys.long()

    def probs(p) -> np.ndarray:
        with torch.no_grad():
            if not adapts_by_steps(init.algorithm):  # ProtoNets' prototypes: its own rule, before = after
                logits = predict(init.adaptation, init.model, p, xs.unsqueeze(0), ys.unsqueeze(0),
                                 xq.unsqueeze(0))[0]
            else:
                x = torch.cat([xs, xq]) if with_support else xq
                logits = init.model.forward(p, x.unsqueeze(0))[0, -len(xq):]
        return torch.softmax(logits.double(), dim=-1).numpy()

    before = probs(params)
    if steps > 0 and len(xs):
        loss_fn = loss_function(model_loss(init.model))
        adapted = deque(init.trajectory(loss_fn, xs.unsqueeze(0), ys.unsqueeze(0), steps), maxlen=1)[0]
        after = probs(OrderedDict((k, v[0]) for k, v in adapted.items()))
    else:
        after = before
    return before, after


def model_loss(model) -> str:
    """The loss a conv-4 adapts with: its convention's (cbfinn/maml: sum / K; the lab: the per-task mean)."""
    return convention_loss("cross_entropy", model)


def task_cards(inits, task, steps: int) -> "OrderedDict[str, EvaluationCard]":
    """The evaluation card of each initialization's predictions on one held-out task."""
    shots = sorted({len(s) for s in task.support})
    queries = sorted({len(q) for q in task.queries})
    return OrderedDict((init.key, EvaluationCard.build(
        "images", 1, shots, [steps], init.adaptation, queries=queries[0] if len(queries) == 1 else None,
        ways=task.ways, loss=model_loss(init.model), model=init.model, algorithm=init.algorithm,
        notes={"initialization": init.label})) for init in inits)


def classify_all(inits: list[Initialization], xs, ys, xq, steps: int, with_support: bool = False,
                 cancel=None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for init in inits:
        if cancel is not None and cancel.is_set():
            break
        out[init.key] = classify(init, xs, ys, xq, steps, with_support)
    return out


# ----------------------------------------------------------------------------------------------------------------
# The view


def _group(title: str) -> tuple[QGroupBox, QVBoxLayout]:
    box = QGroupBox(title)
    col = QVBoxLayout(box)
    col.setContentsMargins(10, 14, 10, 10)
    col.setSpacing(6)
    return box, col


def _hint(text: str) -> QLabel:
    label = QLabel(text)
    label.setProperty("hint", True)
    label.setWordWrap(True)
    return label


class ProbabilityChart(pg.PlotWidget):
    """Grouped bars: the probability of each class for the drawn query, one bar per initialization."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.plot = self.getPlotItem()
        style_plot(self.plot, "Class probabilities of the drawn query", "class", "probability")
        self.plot.setMenuEnabled(False)
        self.plot.hideButtons()
        self.plot.setMouseEnabled(x=False, y=False)
        self.plot.setYRange(-0.01, 1.2, padding=0)  # the band above 100% holds the legend
        self.plot.getAxis("left").setTicks([[(v / 4, f"{v * 25}%") for v in range(5)]])
        self.legend = self.plot.addLegend(offset=(-8, 4), labelTextColor=TEXT, labelTextSize="9pt", colCount=4)
        self.bars: list[pg.BarGraphItem] = []
        self.hint = pg.TextItem("", anchor=(0.5, 0.5), color=MUTED)
        self.plot.addItem(self.hint, ignoreBounds=True)
        self.set_probabilities(5, {}, "")

    def set_probabilities(self, ways: int, probs: dict[str, tuple[str, str, np.ndarray]], hint: str) -> None:
        """probs: key -> (label, colour, probabilities [ways])."""
        for bar in self.bars:
            self.plot.removeItem(bar)
        self.bars = []
        self.legend.clear()
        n = max(len(probs), 1)
        width = 0.8 / n
        for i, (label, color, p) in enumerate(probs.values()):
            x = np.arange(ways) - 0.4 + width * (i + 0.5)
            bar = pg.BarGraphItem(x=x, height=np.asarray(p, dtype=float), width=width * 0.92,
                                  brush=qcolor(color, 220), pen=pg.mkPen(color, width=1))
            self.plot.addItem(bar)
            self.bars.append(bar)
            self.legend.addItem(bar, label)
        self.plot.setXRange(-0.6, ways - 0.4, padding=0)
        self.plot.getAxis("bottom").setTicks([[(j, str(j)) for j in range(ways)]])
        self.hint.setText(hint)
        self.hint.setPos((ways - 1) / 2, 0.55)
        self.hint.setVisible(bool(hint))


class TasksView(QWidget):
    """Feed it the experiment (`set_experiment`) and the trained parameters (`update_from_snapshot`)."""

    predictions_updated = Signal()
    drawing_updated = Signal()
    message = Signal(str)

    def __init__(self, parent=None, seed: int = 0):
        super().__init__(parent)
        self.config = None  # the image experiment whose held-out classes are shown
        self.family = None  # its held-out ImageTaskFamily
        self._family_key = None
        self._wanted_key = None
        self.task: ImageTask | None = None
        self.inits: OrderedDict[str, Initialization] = OrderedDict()
        self.predictions: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.predicted_steps = 0
        self.draw_probs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.training = False
        self._generator = torch.Generator().manual_seed(seed)
        self._dirty = False
        self._draw_dirty = False
        self._last_compute = 0.0
        self._task_generation = 0
        self._closed = False

        self.loader = BackgroundRunner("tasks-load", self)
        self.loader.finished.connect(self._on_family)
        self.loader.failed.connect(self._on_family_failed)
        self.loader.cancelled.connect(lambda _t: self._set_status("Loading cancelled"))
        self.loader.progress.connect(self._on_load_progress)
        self.loader.busy_changed.connect(self._sync_busy)
        self.runner = BackgroundRunner("tasks-predict", self)
        self.runner.finished.connect(self._on_predictions)
        self.runner.failed.connect(lambda _t, msg: self._set_status(f"Adaptation failed: {msg}", error=True))
        self.runner.busy_changed.connect(self._sync_busy)
        self.draw_runner = BackgroundRunner("tasks-draw", self)
        self.draw_runner.finished.connect(self._on_draw_probs)
        self.draw_runner.failed.connect(lambda _t, msg: self._set_status(f"Adaptation failed: {msg}", error=True))
        self.draw_runner.busy_changed.connect(self._sync_busy)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._compute)
        self._draw_timer = QTimer(self)
        self._draw_timer.setSingleShot(True)
        self._draw_timer.timeout.connect(self._compute_drawing)

        # header ---------------------------------------------------------------------------------------------
        self.task_mode = QPushButton("Held-out task")
        self.task_mode.setToolTip("A task from the classes training never saw: support set, queries, predictions")
        self.draw_mode = QPushButton("Draw")
        self.draw_mode.setToolTip("Draw one example per class and a query; see the class probabilities")
        self.mode_group = QButtonGroup(self)
        for b in (self.task_mode, self.draw_mode):
            b.setCheckable(True)
            self.mode_group.addButton(b)
        self.task_mode.setChecked(True)
        self.mode_group.buttonToggled.connect(self._on_mode)
        self.new_button = QPushButton("New task")
        self.new_button.setProperty("primary", True)
        self.new_button.setToolTip("Sample another task from the held-out classes")
        self.new_button.clicked.connect(lambda: self.new_task())
        self.steps = QSpinBox()
        self.steps.setRange(0, 100)
        self.steps.setValue(3)
        self.steps.setToolTip("Adaptation steps: each initialization adapts by its own rule (SGD at its inner lr, "
                              "its learned rates, or its inner optimizer)")
        self.steps.valueChanged.connect(lambda _v: self._inputs_changed(draw=True))
        self.queries = QSpinBox()
        self.queries.setRange(1, 19)
        self.queries.setValue(3)
        self.queries.setToolTip("Query images per class of a new task")
        self.queries.setSuffix(" / class")
        self.queries.setMaximumWidth(86)
        self.queries.valueChanged.connect(lambda _v: self.new_task())
        self.progress = QProgressBar()
        self.progress.setFixedWidth(64)
        self.progress.setTextVisible(False)
        self.progress.setVisible(False)
        self.status = QLabel(" ")
        self.status.setProperty("hint", True)
        self.status.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        header = QHBoxLayout()
        header.setContentsMargins(10, 8, 10, 2)
        header.setSpacing(8)
        header.addWidget(self.task_mode)
        header.addWidget(self.draw_mode)
        header.addSpacing(6)
        header.addWidget(self.new_button)
        self.steps.setMaximumWidth(58)
        for text, w in (("Steps", self.steps), ("Queries", self.queries)):
            label = QLabel(text)
            label.setProperty("hint", True)
            header.addSpacing(4)
            header.addWidget(label)
            header.addWidget(w)
        header.addSpacing(6)
        header.addWidget(self.progress)
        header.addWidget(self.status, 1)

        self.stack = QStackedWidget()
        self.stack.addWidget(self._build_task_page())
        self.stack.addWidget(self._build_draw_page())
        self.placeholder = QLabel()
        self.placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.placeholder.setWordWrap(True)
        self.placeholder.setProperty("hint", True)
        self.not_applicable: str | None = None  # why the view does not apply to the family shown
        self.placeholder.setText(PLACEHOLDER)
        self.stack.addWidget(self.placeholder)
        self.stack.setCurrentWidget(self.placeholder)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        layout.addLayout(header)
        layout.addWidget(self.stack, 1)
        self._sync_header()

    # -- pages ---------------------------------------------------------------------------------------------
    def _build_task_page(self) -> QWidget:
        self.show_before = QCheckBox("Before adaptation")
        self.show_before.setChecked(True)
        self.show_before.setToolTip("Also show each initialization's predictions before adapting (dashed swatch)")
        self.show_before.toggled.connect(lambda _on: self._render_task())
        page = QWidget()
        col = QVBoxLayout(page)
        col.setContentsMargins(8, 0, 8, 8)
        col.setSpacing(8)
        top = QHBoxLayout()
        top.setSpacing(8)
        box, inner = _group("Support set")
        self.support_grid = ThumbGrid(cell=44, label_width=112, row_height=50, empty_text="No task yet")
        self.support_grid.clicked.connect(self._on_support_clicked)
        inner.addWidget(self.support_grid)
        self.support_hint = _hint("Label, class · shots")
        inner.addWidget(self.support_hint)
        inner.addStretch(1)
        top.addWidget(box, 0)
        box, inner = _group("Class browser: click an image to make it a shot (again to remove it)")
        self.browser = ThumbGrid(cell=44, gap=3, label_width=0, row_height=50, fit=True, min_cell=15)
        self.browser.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.browser.clicked.connect(self._on_browser_clicked)
        inner.addWidget(self.browser)
        legend = _hint(f"<span style='color:{SUPPORT_FRAME}'>■</span> shot in the support set &nbsp; "
                       f"<span style='color:{QUERY_BADGE}'>■ Q</span> query")
        legend.setTextFormat(Qt.TextFormat.RichText)
        inner.addWidget(legend)
        inner.addStretch(1)
        top.addWidget(box, 1)
        col.addLayout(top)

        box, inner = _group("Queries: the label each initialization predicts, before and after adaptation")
        self.accuracy_label = QLabel(" ")
        self.accuracy_label.setTextFormat(Qt.TextFormat.RichText)
        self.accuracy_label.setWordWrap(True)
        row = QHBoxLayout()
        row.addWidget(self.accuracy_label, 1)
        row.addWidget(self.show_before, 0, Qt.AlignmentFlag.AlignTop)
        inner.addLayout(row)
        self.card_label = _hint(" ")  # the protocol of these predictions; the full cards in its tooltip
        self.cards: OrderedDict[str, EvaluationCard] = OrderedDict()
        inner.addWidget(self.card_label)
        self.prediction_grid = PredictionGrid(cell=28, max_cell=56)
        inner.addWidget(self.prediction_grid)
        col.addWidget(box)
        col.addStretch(1)
        # small windows scroll the page rather than squeezing it
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(page)
        self.task_scroll = scroll
        return scroll

    def _build_draw_page(self) -> QWidget:
        page = QWidget()
        col = QVBoxLayout(page)
        col.setContentsMargins(8, 0, 8, 8)
        col.setSpacing(8)
        box, inner = _group("Draw one example of each class (the support set), then a query")
        self.cells_row = QGridLayout()
        self.cells_row.setHorizontalSpacing(14)
        self.cells_row.setVerticalSpacing(4)
        inner.addLayout(self.cells_row)
        buttons = QHBoxLayout()
        self.clear_all = QPushButton("Clear all")
        self.clear_all.setToolTip("Clear every drawing")
        self.clear_all.clicked.connect(self.clear_drawings)
        self.copy_task = QPushButton("Copy the task's shots")
        self.copy_task.setToolTip("Start from the current held-out task: its first shot of each class and a query")
        self.copy_task.clicked.connect(self.copy_task_to_drawings)
        buttons.addWidget(self.clear_all)
        buttons.addWidget(self.copy_task)
        buttons.addWidget(_hint("Left button draws, right button clears a cell. Strokes are white on black, "
                                "28×28, like the preprocessed images."), 1)
        inner.addLayout(buttons)
        col.addWidget(box)
        self.chart = ProbabilityChart()
        self.chart.setMinimumHeight(200)
        col.addWidget(self.chart, 1)
        self.draw_cells: list[DrawCell] = []
        self.query_cell = DrawCell()
        self.query_cell.changed.connect(lambda: self._inputs_changed(task=False, draw=True))
        self._build_cells(5)
        return page

    def _build_cells(self, ways: int) -> None:
        while self.cells_row.count():
            item = self.cells_row.takeAt(0)
            if item.widget() is not None and item.widget() is not self.query_cell:
                item.widget().deleteLater()
        self.draw_cells = []
        for j in range(ways):
            cell = DrawCell()
            cell.changed.connect(lambda: self._inputs_changed(task=False, draw=True))
            title = QLabel(f"<b>class {j}</b>")
            title.setAlignment(Qt.AlignmentFlag.AlignCenter)
            clear = QPushButton("Clear")
            clear.clicked.connect(cell.clear)
            self.cells_row.addWidget(title, 0, j)
            self.cells_row.addWidget(cell, 1, j, Qt.AlignmentFlag.AlignCenter)
            self.cells_row.addWidget(clear, 2, j)
            self.draw_cells.append(cell)
        spacer = QWidget()
        spacer.setFixedWidth(18)
        self.cells_row.addWidget(spacer, 1, ways)
        title = QLabel(f"<b style='color:{ACCENT}'>query</b>")
        title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        clear = QPushButton("Clear")
        clear.clicked.connect(self.query_cell.clear)
        self.cells_row.addWidget(title, 0, ways + 1)
        self.cells_row.addWidget(self.query_cell, 1, ways + 1, Qt.AlignmentFlag.AlignCenter)
        self.cells_row.addWidget(clear, 2, ways + 1)
        self.cells_row.setColumnStretch(ways + 2, 1)
        self._size_cells()

    # -- inputs --------------------------------------------------------------------------------------------
    @staticmethod
    def _key(config) -> tuple:
        return (config.data, getattr(config, "eval_data", None), (config.task_options or {}).get("split"),
                int(config.image_size), getattr(config, "image_mode", "grayscale"), int(config.ways),
                int(config.shots), int(config.queries))

    def set_experiment(self, config) -> None:
        """The experiment in the panel (or of the run): image tasks show its held-out classes."""
        if config is None or config.task != "images":
            self.config = None
            self._sync_header()
            return
        self.config = config
        test_steps = [a.test_inner_steps for a in config.algorithms]
        if test_steps and not self.inits:
            self.steps.setValue(max(test_steps))
        key = self._key(config)
        if key != self._family_key and key != self._wanted_key:
            self._wanted_key = key
            if self.isVisible():
                self._load_family()
        self._sync_header()

    def _load_family(self) -> None:
        config = self.config
        if config is None or self._wanted_key is None or self._wanted_key == self._family_key:
            return
        from ..core.tasks.images import image_family_from_config

        key = self._wanted_key
        self._set_status("Loading the held-out classes…")
        self.progress.setRange(0, 0)
        self.progress.setVisible(True)
        self.loader.submit(lambda progress, cancel: (key, image_family_from_config(
            config, progress=progress, cancel=cancel, split="heldout")), tag="family")

    def show_heldout_of(self, init: Initialization) -> bool:
        """Show the held-out classes an imported conv-4 was *not* trained on, rebuilt from its metadata (image
        set, size, split seed) off the GUI thread, when the current experiment's tasks do not fit it. Returns
        whether it started loading them; changing the experiment panel goes back to the panel's tasks."""
        from ..core.tasks.images import heldout_family_from_metadata
        from ..core.training.config import ExperimentConfig

        meta = init.metadata or {}
        task = meta.get("task") or {}
        model = init.model
        if task.get("name") != "images" or getattr(model, "ways", None) is None:
            return False
        if self.family is not None and self.config is not None and _usable(init, self.family.ways,
                                                                            self.family.input_shape):
            return False
        hyper = meta.get("hyperparameters") or {}
        try:
            config = ExperimentConfig(
                task="images", data=task.get("data"), ways=int(model.ways), image_size=int(model.image_size[0]),
                image_mode="rgb" if int(model.in_channels) == 3 else "grayscale", rotations=False,
                shots=max(1, int(hyper.get("shots", 1))), queries=max(1, int(hyper.get("queries", 5))))
        except (TypeError, ValueError) as exc:
            self._set_status(f"Cannot show the tasks of {init.label}: {exc}", error=True)
            return False
        self.config = config
        self.steps.setValue(max(1, int(hyper.get("test_inner_steps", 3))))
        key = ("metadata", init.key)
        self._wanted_key = key
        self._set_status(f"Loading the held-out classes {init.label} was not trained on…")
        self.progress.setRange(0, 0)
        self.progress.setVisible(True)
        hint = "open an image set in the experiment panel to test it on tasks of your own"
        self.loader.submit(lambda progress, cancel: (key, heldout_family_from_metadata(
            task, progress=progress, cancel=cancel, hint=hint)), tag="family")
        self._sync_header()
        return True

    def _on_load_progress(self, _tag: str, done: int, total: int) -> None:
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)

    def _on_family(self, _tag: str, result) -> None:
        key, family = result
        self.family = family
        self._family_key = key
        self._wanted_key = None
        self.progress.setVisible(False)
        self._set_status("")
        if len(self.draw_cells) != family.ways:
            self._build_cells(family.ways)
        self.new_task()

    def _on_family_failed(self, _tag: str, message: str) -> None:
        self._wanted_key = None
        self.progress.setVisible(False)
        self._set_status(f"Cannot load the image set: {message}", error=True)

    def initializations_changed(self, changed: list[Initialization], removed: list[str]) -> None:
        """The lab's InitializationStore changed: conv-4 initializations are this view's (live ones follow
        training); a key that became another kind of model, or was removed, leaves."""
        mine = [i for i in changed if i.model.spec().get("kind") == "conv4" and i.source != "checkpoint"]
        gone = [k for k in removed + [i.key for i in changed if i not in mine] if k in self.inits]
        for init in mine:
            self.inits[init.key] = init
        for key in gone:
            self.remove_initialization(key)
        if mine:
            self._inputs_changed(draw=True, follow=all(i.source == "trained" for i in mine))

    def set_initialization(self, init: Initialization) -> None:
        self.inits[init.key] = init
        self._inputs_changed(draw=True)

    def remove_initialization(self, key: str) -> None:
        if self.inits.pop(key, None) is None:
            return
        self.predictions.pop(key, None)
        self.draw_probs.pop(key, None)
        self._render_task()
        self._render_drawing()

    def clear_run(self) -> None:
        """Another run or family: the trained models and their predictions go (imported ones stay), and the header
        counts again."""
        for key in [k for k, v in self.inits.items() if v.source == "trained"]:
            del self.inits[key]
        self.predictions = {k: v for k, v in self.predictions.items() if k in self.inits}
        self.draw_probs = {k: v for k, v in self.draw_probs.items() if k in self.inits}
        self._render_task()
        self._render_drawing()
        self._sync_header()

    def set_applicable(self, reason: str | None) -> None:
        """Not image tasks: the reason in place of the tasks (the header empty)."""
        self.not_applicable = reason
        self.placeholder.setText(f"<p style='font-size:12pt'>{reason}</p>" if reason else PLACEHOLDER)
        self._sync_header()

    def set_training(self, on: bool) -> None:
        self.training = on
        if not on:
            self._inputs_changed(draw=True)

    # -- the task ------------------------------------------------------------------------------------------
    def new_task(self) -> ImageTask | None:
        """Sample another task from the held-out classes (K from the experiment)."""
        if self.family is None or self.config is None:
            return None
        try:
            self.task = sample_task(self.family, int(self.config.shots), self.queries.value(), self._generator)
        except ValueError as exc:
            self.task = None
            self._set_status(str(exc), error=True)
            return None
        self.predictions = {}
        self._task_generation += 1
        self._render_task()
        self._inputs_changed()
        return self.task

    def _class_rows(self, j: int) -> list[int]:
        lo, hi = self.family.image_set.class_range(self.task.classes[j])
        return list(range(lo, min(hi, lo + BROWSER_LIMIT)))

    def toggle_shot(self, label: int, row: int) -> bool:
        """Make image `row` a shot of `label` (a query no longer), or remove it from the shots; False when the
        change is refused (the last shot of a class stays)."""
        task = self.task
        if task is None:
            return False
        shots = task.support[label]
        if row in shots:
            if len(shots) == 1:
                self._set_status("Each class keeps at least one shot: add another before removing this one")
                return False
            shots.remove(row)
        else:
            shots.append(row)
            if row in task.queries[label]:
                task.queries[label].remove(row)
                used = set(shots) | set(task.queries[label])
                spare = [r for r in self._class_rows(label) if r not in used]
                if spare:  # keep the number of queries: an unused image of the class takes its place
                    task.queries[label].append(spare[int(torch.randint(len(spare), (1,),
                                                                       generator=self._generator))])
        self.predictions = {}
        self._render_task()
        self._inputs_changed()
        return True

    def _on_browser_clicked(self, r: int, c: int) -> None:
        if self.task is not None:
            self.toggle_shot(r, self._class_rows(r)[c])

    def _on_support_clicked(self, r: int, c: int) -> None:
        if self.task is not None and c < len(self.task.support[r]):
            self.toggle_shot(r, self.task.support[r][c])

    # -- computing -----------------------------------------------------------------------------------------
    def _usable_inits(self) -> list[Initialization]:
        if self.family is None:
            return []
        return [i for i in self.inits.values() if _usable(i, self.family.ways, self.family.input_shape)]

    def _inputs_changed(self, task: bool = True, draw: bool = False, follow: bool = False) -> None:
        """Recompute soon: at once after an edit; following training (`follow`), at most every
        TRAINING_INTERVAL_S."""
        wait = 0.0
        if follow and self.training:
            wait = TRAINING_INTERVAL_S - (time.perf_counter() - self._last_compute)
        if draw:
            self._draw_dirty = True
            if not self._draw_timer.isActive():
                self._draw_timer.start(max(60, int(wait * 1000)))
        if task:
            self._dirty = True
            if not self._timer.isActive():
                self._timer.start(max(30, int(wait * 1000)))

    def _compute(self) -> None:
        if not self._dirty or self._closed:
            return
        if not self.isVisible() or self.task is None:
            return  # computed when shown
        if self.runner.busy:
            self._timer.start(150)
            return
        inits = self._usable_inits()
        self._dirty = False
        if not inits:
            self._render_task()
            return
        self._last_compute = time.perf_counter()
        family, task, steps = self.family, self.task, self.steps.value()
        s_rows, s_labels = task.support_rows()
        q_rows, _ = task.query_rows()
        xs, xq = _pixels(family, s_rows), _pixels(family, q_rows)
        ys = torch.tensor(s_labels)
        generation = self._task_generation

        def job(progress, cancel):
            return generation, steps, classify_all(inits, xs, ys, xq, steps, cancel=cancel)

        self.runner.submit(job, tag="task")

    def _on_predictions(self, _tag: str, result) -> None:
        generation, steps, predictions = result
        if generation != self._task_generation:
            return
        self.predictions = predictions
        self.predicted_steps = steps
        self._render_task()
        self.predictions_updated.emit()
        if self._dirty and not self._timer.isActive():
            self._timer.start(30)

    def drawn_support(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The drawn shots [N, 1, 28, 28] and labels [N], or None while a class cell is empty."""
        if not self.draw_cells or any(c.empty for c in self.draw_cells):
            return None
        x = np.stack([c.image()[None] for c in self.draw_cells]).astype(np.float32)
        return x, np.arange(len(self.draw_cells))

    def _compute_drawing(self) -> None:
        if not self._draw_dirty or self._closed:
            return
        if not self.isVisible() or self.stack.currentIndex() != 1:
            self._render_drawing()
            return  # computed when the Draw page is shown
        if self.draw_runner.busy:
            self._draw_timer.start(100)
            return
        self._draw_dirty = False
        support = self.drawn_support()
        inits = [i for i in self._usable_inits() if i.model.image_size == (28, 28) and i.model.in_channels == 1]
        if support is None or self.query_cell.empty or not inits:
            self.draw_probs = {}
            self._render_drawing()
            return
        self._last_compute = time.perf_counter()
        xs, ys = torch.from_numpy(support[0]), torch.from_numpy(support[1])
        xq = torch.from_numpy(self.query_cell.image()[None, None].astype(np.float32))
        steps = self.steps.value()

        def job(progress, cancel):
            return classify_all(inits, xs, ys, xq, steps, with_support=True, cancel=cancel)

        self.draw_runner.submit(job, tag="draw")

    def _on_draw_probs(self, _tag: str, result) -> None:
        self.draw_probs = result
        self._render_drawing()
        self.drawing_updated.emit()
        if self._draw_dirty and not self._draw_timer.isActive():
            self._draw_timer.start(30)

    def drawn_probabilities(self) -> dict[str, np.ndarray]:
        """Per initialization: the class probabilities [N] of the drawn query after adaptation."""
        return {k: after[0] for k, (_before, after) in self.draw_probs.items()}

    # -- drawing helpers -----------------------------------------------------------------------------------
    def clear_drawings(self) -> None:
        for cell in [*self.draw_cells, self.query_cell]:
            cell.blockSignals(True)
            cell.clear()
            cell.blockSignals(False)
        self._inputs_changed(task=False, draw=True)

    def copy_task_to_drawings(self) -> None:
        """The current task's first shot of each class into the class cells, and its first query."""
        if self.task is None or self.family is None:
            return
        pixels = self.family.image_set.pixels
        for cell, shots in zip(self.draw_cells, self.task.support, strict=False):
            cell.blockSignals(True)
            cell.set_image(pixels[shots[0]])
            cell.blockSignals(False)
        q_rows, _ = self.task.query_rows()
        if q_rows:
            self.query_cell.blockSignals(True)
            self.query_cell.set_image(pixels[q_rows[0]])
            self.query_cell.blockSignals(False)
        self._inputs_changed(task=False, draw=True)

    # -- rendering -----------------------------------------------------------------------------------------
    def _class_label(self, j: int) -> tuple[str, str]:
        name = self.family.class_name(self.task.classes[j])
        return f"{j}", name.replace("/", " · ").replace("character", "char. ")

    def _render_task(self) -> None:
        task, family = self.task, self.family
        if task is None or family is None:
            self.support_grid.set_rows([])
            self.browser.set_rows([])
            self.prediction_grid.set_data([], [], [], "")
            self.accuracy_label.setText(" ")
            return
        pixels = family.image_set.pixels
        images: dict[int, object] = {}

        def image(row: int):
            if row not in images:
                images[row] = qimage_from_array(pixels[row])
            return images[row]

        support_rows, browser_rows = [], []
        for j in range(task.ways):
            label, name = self._class_label(j)
            shots = task.support[j]
            support_rows.append(ThumbRow(f"label {label}", [image(r) for r in shots], name,
                                         frames=[SUPPORT_FRAME] * len(shots),
                                         tooltips=["Click to remove this shot"] * len(shots)))
            rows = self._class_rows(j)
            queries = set(task.queries[j])
            browser_rows.append(ThumbRow(
                label, [image(r) for r in rows], name,
                frames=[SUPPORT_FRAME if r in shots else None for r in rows],
                badges=["Q" if r in queries else "" for r in rows],
                tooltips=[("A shot: click to remove it" if r in shots else
                           "A query: click to make it a shot instead" if r in queries else
                           "Click to make it a shot of label " + label) for r in rows],
                faded=[False] * len(rows)))
        self.support_grid.set_rows(support_rows)
        self.browser.set_rows(browser_rows)
        k = [len(s) for s in task.support]
        shots_text = f"{k[0]}-shot" if len(set(k)) == 1 else f"{min(k)}–{max(k)} shots per class"
        where = family.info.get("eval_data") or family.info.get("data") or "built-in glyphs"
        self.support_hint.setText(f"{task.ways}-way {shots_text} · held-out classes of "
                                  f"{where if isinstance(where, str) else 'the set'}")
        self.support_hint.setToolTip(str(where))

        q_rows, q_labels = task.query_rows()
        rows: list[PredictionRow] = []
        summary = []
        for key, init in self.inits.items():
            if key not in self.predictions:
                continue
            before, after = self.predictions[key]
            if before.shape[0] != len(q_labels):
                continue
            truth = np.asarray(q_labels)
            pb, pa = before.argmax(1), after.argmax(1)
            acc_b, acc_a = float((pb == truth).mean()), float((pa == truth).mean())
            color = algorithm_color(init.algorithm)
            if self.show_before.isChecked():
                rows.append(PredictionRow(f"{init.label} · before", color, pb.tolist(), acc_b, dashed=True))
            steps = self.predicted_steps
            rows.append(PredictionRow(f"{init.label} · after {steps} step{'s' if steps != 1 else ''}", color,
                                      pa.tolist(), acc_a))
            summary.append(f"<span style='color:{color}'>■</span> <b>{init.label}</b> "
                           f"{acc_b:.0%} → <b>{acc_a:.0%}</b>")
        if rows:
            empty = ""
        elif self._usable_inits():
            empty = "Adapting…"
        elif self.inits:
            empty = "The trained initializations were made for other tasks (N, image size): train on these."
        else:
            empty = "Press Start to train: each trained initialization's predictions appear here."
        self.prediction_grid.set_data([image(r) for r in q_rows], q_labels, rows, empty)
        if summary:
            n = len(q_labels)
            self.accuracy_label.setText(f"Accuracy on the {n} queries, before → after adaptation: &nbsp; "
                                        + " &nbsp;&nbsp; ".join(summary))
        else:
            self.accuracy_label.setText(" ")
        shown = [init for key, init in self.inits.items() if key in self.predictions]
        self.cards = task_cards(shown, task, self.predicted_steps) if summary else OrderedDict()
        if self.cards:
            first = next(iter(self.cards.values()))
            self.card_label.setText(f"Evaluation card: {first.what()}, {first.steps[0]} step"
                                    f"{'s' if first.steps[0] != 1 else ''}; "
                                    + "; ".join(f"{self.inits[k].label}: {c.inner_optimizer}, {c.convention} "
                                                f"conventions" for k, c in self.cards.items())
                                    + " · hover for the full cards")
            self.card_label.setToolTip("\n\n".join(f"{self.inits[k].label}\n{c.text()}"
                                                    for k, c in self.cards.items()))
        else:
            self.card_label.setText(" ")
            self.card_label.setToolTip("")
        self._sync_header()

    def _render_drawing(self) -> None:
        ways = len(self.draw_cells) or 5
        probs = {}
        for key, init in self.inits.items():
            if key in self.draw_probs:
                probs[key] = (init.label, algorithm_color(init.algorithm), self.draw_probs[key][1][0])
        if probs:
            hint = ""
        elif not self._usable_inits():
            hint = "Press Start to train an initialization first"
        elif self.drawn_support() is None:
            missing = sum(c.empty for c in self.draw_cells)
            hint = f"Draw an example of every class ({missing} still empty)"
        elif self.query_cell.empty:
            hint = "Draw a query to classify"
        else:
            hint = "Adapting…"
        self.chart.set_probabilities(ways, probs, hint)
        steps = self.steps.value()
        self.chart.plot.setTitle(f"<span style='color:{TEXT}; font-weight:600'>Class probabilities of the drawn "
                                 f"query after {steps} step{'s' if steps != 1 else ''} on the drawn shots</span>")

    # -- header --------------------------------------------------------------------------------------------
    def _on_mode(self, button, checked: bool) -> None:
        if not checked:
            return
        self._sync_header()
        if button is self.draw_mode:
            self._draw_dirty = True
            self._draw_timer.start(0)

    def _sync_header(self) -> None:
        images = self.config is not None and not self.not_applicable
        if not images:
            self.stack.setCurrentWidget(self.placeholder)
            if not self.loader.busy:
                self._set_status("")
        else:
            self.stack.setCurrentIndex(1 if self.draw_mode.isChecked() else 0)
        for w in (self.task_mode, self.draw_mode, self.steps, self.queries, self.show_before):
            w.setEnabled(images)
        self.new_button.setEnabled(images and self.family is not None)
        if images and not self.loader.busy and self.task is not None and not self.status.property("error"):
            n = self.family.image_set.num_classes if self.family is not None else 0
            self.status.setText(f"{n:,} held-out classes · {len(self._usable_inits())} trained initialization(s)")

    def _set_status(self, text: str, error: bool = False) -> None:
        self.status.setProperty("error", error)
        self.status.setStyleSheet("color: #C62828;" if error else "")
        self.status.setText(text)
        if text and error:
            self.message.emit(text)

    def _sync_busy(self, _busy: bool = False) -> None:
        if not self.loader.busy:
            self.progress.setVisible(False)

    # -- lifecycle -----------------------------------------------------------------------------------------
    def resizeEvent(self, ev):
        super().resizeEvent(ev)
        self._size_cells()

    def _size_cells(self) -> None:
        """Drawing cells as large as the width allows (72 to 128 pixels); never wider than that, so they do not
        hold the window wide."""
        n = len(self.draw_cells) + 1
        size = int(max(72, min(128, (self.width() - 60) / n - 22)))
        for cell in [*self.draw_cells, self.query_cell]:
            cell.set_size(size)

    def showEvent(self, ev):
        super().showEvent(ev)
        if self._wanted_key is not None and not self.loader.busy:
            self._load_family()
        if self._dirty:
            self._timer.start(0)
        if self._draw_dirty:
            self._draw_timer.start(0)

    @property
    def busy(self) -> bool:
        return (self.loader.busy or self.runner.busy or self.draw_runner.busy or self._timer.isActive()
                or self._draw_timer.isActive())

    def wait_until_idle(self, timeout_s: float = 60.0) -> bool:
        """Process events until the held-out classes are loaded and the predictions are up to date."""
        from PySide6.QtWidgets import QApplication

        if self._wanted_key is not None and not self.loader.busy:
            self._load_family()
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            QApplication.processEvents()
            pending = self.busy or self._wanted_key is not None or (
                self.isVisible() and self.task is not None and self._dirty and bool(self._usable_inits()))
            if not pending:
                return True
            for runner in (self.loader, self.runner, self.draw_runner):
                if runner.busy:
                    runner.wait(max(0.01, min(0.2, deadline - time.perf_counter())))
            time.sleep(0.005)
        return False

    def shutdown(self) -> None:
        self._closed = True
        self._timer.stop()
        self._draw_timer.stop()
        for runner in (self.loader, self.runner, self.draw_runner):
            runner.shutdown()

    # -- for File ▸ Export plot ------------------------------------------------------------------------------
    def view_title(self) -> str:
        return "tasks"


def _make_view(window) -> TasksView:
    view = TasksView()
    window.panel.open_image_set_requested.connect(lambda: window.open_image_set())
    return view


def _applies(kind, algorithms) -> str | None:
    if kind is None or getattr(kind.playground, "kind", None) == "images":
        return None
    return f"Tasks shows image classification tasks; {family_label(kind)} are not images"


VIEW = ViewSpec("tasks", "Tasks", _make_view, applies_to=_applies)
