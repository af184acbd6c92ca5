"""What the "looking inside" views share: a computation too long for the GUI thread, run on a worker thread when
the inputs change, with progress, Cancel, a status line, stale-result handling, and plot and data export.

`ComputedView` (the Landscape view) owns the plumbing: a BackgroundRunner, a StaleRecompute, the Compute and Cancel
buttons, the progress bar, the status line, Export image…, the plot area (`graphics`) and the views' layout. A view
that subclasses it writes only what is its own:

- `title` (its `view_title()`, File ▸ Export plot's file name, and the worker thread's name);
- its controls and plots (`self.graphics.addPlot(...)`), then, last in `__init__`, `self.lay_out([control bar],
  [[widget, ...], ...])`, which also sets the buttons' state;
- `compute()`: read the controls, build a job `fn(progress, cancel)` from the application layer (maml_lab/lab) and
  `return self.start(fn, tag, total)`; call `self._inputs_changed()` when an input changes;
- `result_text(result)` for the status line and `show_result(result)` (by default `self._draw()`);
- `can_compute()` / `can_export()`, and its data export: `self.data_button(text, tip, export)` and `ask_path`;
- `clear_result()`: draw nothing (the base's `clear_run` drops the result when it belongs to another run or
  family, and `set_applicable(reason)` shows why the view does not apply, with no Compute).

`HeldOutView` (the Adaptation and Per layer views) adds what the views comparing every initialization on the same
held-out tasks share: the initializations they keep (lab.initializations.compared), the run (`set_run`, then the
subclass's `defaults_from(run)` once), the requests (`request_type`) for those that fit the held-out family,
`compute()` (the subclass's `job(requests, family, queries)` on the worker thread, its result a `result_type`),
one legend with the curves or bars drawn on it, and the hint that says what Compute will do or why it cannot.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import pyqtgraph as pg
from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from ..lab.initializations import Initialization, compared, fits_family, follow_store, heldout_family
from .background import BackgroundRunner, StaleRecompute
from .inside_plots import hint_text, place_center, reason_label, show_reason
from .theme import TEXT


def set_quietly(widget, value) -> None:
    """`widget.setValue(value)` without its signals: a default from the run, not the user's change of an input."""
    widget.blockSignals(True)
    widget.setValue(value)
    widget.blockSignals(False)


def plain_plot(plot: pg.PlotItem, axis_width: int | None = 56) -> pg.PlotItem:
    """A plot without pyqtgraph's context menu and auto-range button, its left axis `axis_width` pixels wide (so
    plots side by side line up)."""
    plot.setMenuEnabled(False)
    plot.hideButtons()
    if axis_width is not None:
        plot.getAxis("left").setWidth(axis_width)
    return plot


class ComputedView(QWidget):
    """A view drawing one result computed in the background from its inputs (see the module's docstring)."""

    computed = Signal()  # a result arrived and is drawn
    export_plot_requested = Signal()  # File ▸ Export plot

    title = "view"  # view_title(): File ▸ Export plot's file name; also the worker thread's name
    progress_width = 120

    def __init__(self, parent=None):
        super().__init__(parent)
        self.run = None  # the run's RunPaths (set_run)
        self.result = None  # the last result: kept, and drawn, until a newer one arrives
        self.training = False
        self.not_applicable: str | None = None  # why the view does not apply to the family shown (set_applicable)
        self.runner = BackgroundRunner(self.title, self)
        self.runner.finished.connect(self._on_result)
        self.runner.failed.connect(self._on_failed)
        self.runner.cancelled.connect(self._on_cancelled)
        self.runner.progress.connect(self._on_progress)
        self.runner.busy_changed.connect(lambda _busy: self._sync_buttons())

        self.compute_button = QPushButton("Compute")
        self.compute_button.setProperty("primary", True)
        self.compute_button.clicked.connect(self.compute)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.progress.setFixedWidth(self.progress_width)
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status = QLabel("")
        self.status.setProperty("hint", True)
        self.status.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.status.setWordWrap(True)  # a long line (the Landscape's adaptation rule) wraps instead of being cut
        self.export_image_button = QPushButton("Export image…")
        self.export_image_button.setToolTip("Save the plot as PNG or SVG (File ▸ Export plot)")
        self.export_image_button.clicked.connect(self.export_plot_requested)
        self.export_data_button: QPushButton | None = None  # data_button()
        self.graphics = pg.GraphicsLayoutWidget()
        # where the view does not apply: the reason in place of the plots (set_applicable)
        self.reason_label = reason_label()
        self.graphics.ci.setContentsMargins(6, 4, 10, 4)
        self.graphics.ci.setSpacing(12)
        self.recompute = StaleRecompute(self, self.compute)

    def data_button(self, text: str, tip: str, export: Callable) -> QPushButton:
        """The button that saves the result's numbers by `export()`, enabled when `can_export()`."""
        self.export_data_button = QPushButton(text)
        self.export_data_button.setToolTip(tip)
        self.export_data_button.clicked.connect(lambda: export())
        return self.export_data_button

    def lay_out(self, bars: list[QWidget], rows: list[list[QWidget]]) -> None:
        """The view's layout: `bars` (control bars) on top, the plots in the middle, then one line per row; the
        buttons' state (last in a view's __init__: it asks `can_compute()`)."""
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 6)
        layout.setSpacing(6)
        for bar in bars:
            layout.addWidget(bar)
        layout.addWidget(self.graphics, 1)
        layout.addWidget(self.reason_label, 1)
        for widgets in rows:
            row = QHBoxLayout()
            row.setContentsMargins(12, 0, 12, 0)
            for widget in widgets:
                row.addWidget(widget, 1)
            layout.addLayout(row)
        self._sync_buttons()

    # -- data in -------------------------------------------------------------------------------------
    def set_training(self, running: bool) -> None:
        """While training runs, results are computed only on request (the CPU is busy)."""
        self.training = running
        self.recompute.set_training(running)

    def _inputs_changed(self) -> None:
        self.recompute.mark_stale()
        self._sync_buttons()

    def set_applicable(self, reason: str | None) -> None:
        """`reason`: why this view does not apply to the family shown (None: it does). Not applying, it drops its
        result, says why in place of its plots and offers no Compute."""
        if reason == self.not_applicable:
            return
        self.not_applicable = reason
        if reason:
            self.clear_run()
        show_reason(self.reason_label, reason)
        self.graphics.setVisible(not reason)
        self.show_hint(self.hint_now())
        self._sync_buttons()

    def clear_run(self) -> None:
        """The results shown belong to another run or family (a new run, an opened one, another family, Reset):
        cancel the computation, drop the result and draw nothing."""
        self.runner.cancel()
        self.run = None
        self.result = None
        self.recompute.clear()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status.setText("")
        self.status.setToolTip("")
        self.clear_result()
        self.show_hint(self.hint_now())
        self._sync_buttons()

    def clear_result(self) -> None:
        """Remove what was drawn of the result."""

    def idle_hint(self) -> str:
        """The hint in place of a result: what to do to get one."""
        return ""

    def hint_now(self) -> str:
        """The hint to show without a result: none where the view does not apply (the reason replaces the plots)."""
        return "" if self.not_applicable else self.idle_hint()

    def show_hint(self, text: str) -> None:
        """Show `text` in place of the plots (empty: hide the hint)."""

    # -- computing -----------------------------------------------------------------------------------
    def compute(self) -> bool:
        """Start computing the current inputs (`start`); False when there is nothing to compute."""
        raise NotImplementedError

    def start(self, fn: Callable, tag: str, total: int = 1) -> bool:
        """Run the job `fn(progress, cancel)` on the worker thread (cancelling the one before): the result is no
        longer stale, the progress bar restarts at 0 of `total`. Nothing starts where the view does not apply."""
        self.recompute.stale = False
        if self.not_applicable:
            return False
        self.progress.setRange(0, total)
        self.progress.setValue(0)
        self.status.setText("Computing…")
        self.runner.submit(fn, tag)
        self._sync_buttons()
        return True

    def cancel(self) -> bool:
        """Ask the running job to stop; True when there was one. The last result stays."""
        return self.runner.cancel()

    def can_compute(self) -> bool:
        return True

    def can_export(self) -> bool:
        return self.result is not None

    def _sync_buttons(self) -> None:
        busy = self.runner.busy
        self.compute_button.setEnabled(not self.not_applicable and self.can_compute() and not busy)
        self.compute_button.setToolTip(self.not_applicable or "")
        self.cancel_button.setEnabled(busy)
        if self.export_data_button is not None:
            self.export_data_button.setEnabled(self.result is not None and self.can_export())

    def _on_progress(self, _tag: str, done: int, total: int) -> None:
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)

    def _on_failed(self, _tag: str, message: str) -> None:
        self.status.setText(f"Failed: {message}")

    def _on_cancelled(self, _tag: str) -> None:
        self.status.setText("Cancelled")

    def _on_result(self, _tag: str, result) -> None:
        self.result = result
        self.progress.setValue(self.progress.maximum())
        self.status.setText(self.result_text(result))
        self.show_result(result)
        self._sync_buttons()
        self.computed.emit()

    def result_text(self, result) -> str:
        """The status line under the plots for a new result."""
        return ""

    def show_result(self, result) -> None:
        """Draw a new result (`self.result` is already it)."""
        self._draw()

    def _draw(self) -> None:
        raise NotImplementedError

    def wait_until_idle(self, timeout_s: float = 120.0) -> bool:
        """Start a pending computation now and wait for it (screenshots, tests)."""
        return self.recompute.wait(self.runner, timeout_s)

    def shutdown(self) -> None:
        self.runner.shutdown()

    # -- export --------------------------------------------------------------------------------------
    def ask_path(self, path: str | Path | None, caption: str, filename: str, filters: str,
                 suffix: str = "") -> Path | None:
        """`path`, or without one the file picked in a save dialog (`suffix` appended to a name that lacks it);
        None when the dialog was cancelled."""
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, caption, filename, filters)
            if not path:
                return None
            if suffix and not path.lower().endswith(suffix):
                path += suffix
        return Path(path)

    def export_item(self):
        return self.graphics.ci

    def view_title(self) -> str:
        return self.title


class HeldOutView(ComputedView):
    """A ComputedView comparing every initialization it keeps (trained ones, imported MLPs) on the same held-out
    tasks: `request_type(key, label, algorithm, model, params, adaptation)` for each one that fits the held-out
    family goes to the subclass's `job(requests, family, queries)`, whose result is a `result_type`; its plot
    `legend` names them, `items` are what was drawn for the last result."""

    queries = 100  # query points per held-out sinusoid task (image tasks: the run's queries per class)
    request_type = None  # lab.inside.CurveRequest, lab.per_layer.LayerRequest, ...
    result_type = None  # lab.inside.CurveSet, lab.per_layer.PerLayerSet, ...
    what = "compare them"  # the hint's end: "Press Compute to <what>"

    def __init__(self, parent=None):
        super().__init__(parent)
        self.inits: OrderedDict[str, Initialization] = OrderedDict()
        self.items: list = []  # (plot, item) drawn for the result: removed before the next drawing
        self.legend: pg.LegendItem | None = None
        self.hint: pg.TextItem | None = None
        self._computing: tuple | None = None  # (family, queries, requests) of the computation under way

    def decorate(self, plot: pg.PlotItem, legend_offset: tuple[int, int], hint: str = "") -> None:
        """The legend (at `legend_offset` from a corner) and the centred hint before any result, on `plot`."""
        self.legend = pg.LegendItem(offset=legend_offset, labelTextColor=TEXT, labelTextSize="9pt",
                                    brush=pg.mkBrush(255, 255, 255, 225), pen=pg.mkPen("#E1E4E8"))
        self.legend.setParentItem(plot.getViewBox())
        self.legend.setZValue(60)
        self.hint = hint_text(plot, hint or self.idle_hint())
        plot.getViewBox().sigResized.connect(lambda *_: place_center(plot, self.hint))

    def show_hint(self, text: str) -> None:
        if self.hint is not None:
            self.hint.setText(text)
            self.hint.setVisible(bool(text) and (self.result is None or not self.drawn()))

    def drawn(self) -> bool:
        """Whether the result drew anything (curves, bars)."""
        return bool(self.items)

    def idle_hint(self) -> str:
        """What Compute will do, or why there is nothing to compute: no initialization, or none that fits."""
        if not self.inits:
            return f"Train, or import an initialization, to {self.what}"
        family, _ = self.family()
        fitting = len(self.requests(family))
        if not fitting:
            return (f"None of the {len(self.inits)} initializations can adapt to these held-out tasks "
                    f"({getattr(family, 'name', 'tasks')})")
        return f"Press Compute to {self.what} ({fitting} initialization{'s' if fitting != 1 else ''})"

    # -- data in -------------------------------------------------------------------------------------
    def keeps(self, init: Initialization) -> bool:
        return compared(init)

    def initializations_changed(self, changed: list[Initialization], removed: list[str]) -> None:
        """The lab's InitializationStore changed: the view follows the initializations it `keeps`."""
        if follow_store(self.inits, changed, removed, self.keeps):
            self._inputs_changed()
            if self.result is None:
                self.show_hint(self.hint_now())

    def set_run(self, run) -> None:
        """The run's paths: its held-out tasks; the first time, the subclass's `defaults_from(run)`."""
        first = self.run is None
        self.run = run
        if first:
            self.defaults_from(run)
        if self.result is None:
            self.show_hint(self.hint_now())
        self._sync_buttons()

    def defaults_from(self, run) -> None:
        """Take the run's K, steps, tasks into the controls (once per run)."""

    def clear_run(self) -> None:
        """Another run or family: the trained models and the result go (imported ones stay in `inits`)."""
        for key in [k for k, v in self.inits.items() if v.source == "trained"]:
            del self.inits[key]
        self._computing = None
        super().clear_run()

    def clear_result(self) -> None:
        if self.legend is not None:
            self.clear_items()

    # -- computing -----------------------------------------------------------------------------------
    def family(self):
        """Held-out tasks and queries per task: the run's (image sets: its held-out classes); without a run, those
        the initializations were trained on (sinusoids when they name none)."""
        return heldout_family(self.run, self.queries, self.inits.values())

    def fits(self, init: Initialization, family) -> bool:
        """Whether `init` takes part in a computation on `family`'s tasks."""
        return fits_family(init.model, family)

    def requests(self, family=None) -> list:
        family = family if family is not None else self.family()[0]
        return [self.request_type(key, init.label, init.algorithm, init.model, init.params, init.adaptation)
                for key, init in self.inits.items() if self.fits(init, family)]

    def can_compute(self) -> bool:
        return bool(self.inits) and bool(self.requests())

    def compute(self) -> bool:
        """Compare the initializations that fit on the held-out tasks (`job`); False when none does (the hint
        says why)."""
        self.recompute.stale = False
        reqs = self.requests() if not self.not_applicable else []
        if not reqs:
            self.show_hint(self.hint_now())
            return False
        family, queries = self.family()
        self._computing = (family, queries, reqs)
        return self.start(self.job(reqs, family, queries), self.title, len(reqs))

    def job(self, requests: list, family, queries: int) -> Callable:
        """The computation: a function (progress, cancel) -> result_type, run on the worker thread."""
        raise NotImplementedError

    def can_export(self) -> bool:
        return self.result is not None and self.drawn()

    # -- drawing -------------------------------------------------------------------------------------
    def clear_items(self) -> None:
        for plot, item in self.items:
            plot.removeItem(item)
        self.items = []
        self.legend.clear()

    def add_items(self, plot: pg.PlotItem, *items) -> None:
        for item in items:
            plot.addItem(item)
            self.items.append((plot, item))

    def imported(self, key: str) -> bool:
        """Whether the curve or bars of `key` are an imported file's (drawn lighter or dotted)."""
        init = self.inits.get(key)
        return init is not None and init.source == "imported"
