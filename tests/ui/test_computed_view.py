"""The plumbing the "looking inside" views share (ui/computed_view.py), on minimal views: a job on the worker thread
with progress, its result drawn and announced, Cancel and failures that keep the last result, the buttons following
the state, the save dialog's suffix; and which initializations a held-out comparison keeps and computes on."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import pyqtgraph as pg
import pytest
import torch
from PySide6.QtWidgets import QFileDialog

from maml_lab.core.models.conv4 import Conv4
from maml_lab.core.models.mlp import MLP
from maml_lab.lab.initializations import Initialization
from maml_lab.ui.computed_view import ComputedView, HeldOutView


class EchoView(ComputedView):
    """Computes whatever job the test sets; draws by remembering what it drew."""

    title = "echo"

    def __init__(self):
        super().__init__()
        self.job = None
        self.drawn = []
        self.data_button("Export…", "Save the numbers", lambda: None)
        self.lay_out([self.compute_button], [[self.status]])

    def compute(self) -> bool:
        if self.job is None:
            return False
        return self.start(self.job, "echo", 3)

    def result_text(self, result) -> str:
        return f"got {result}"

    def _draw(self) -> None:
        self.drawn.append(self.result)


@pytest.fixture
def echo(qtbot):
    view = EchoView()
    qtbot.addWidget(view, before_close_func=lambda v: v.shutdown())
    return view


def test_a_result_is_drawn_announced_and_enables_the_export(echo, qtbot):
    assert not echo.export_data_button.isEnabled() and not echo.cancel_button.isEnabled()
    assert echo.compute_button.isEnabled() and echo.view_title() == "echo" and echo.export_item() is echo.graphics.ci
    assert not echo.compute()  # no job: nothing starts
    seen = []
    echo.job = lambda progress, cancel: (progress(2, 3), seen.append(threading.current_thread()), 42)[-1]
    with qtbot.waitSignal(echo.computed, timeout=10000):
        assert echo.compute()
    assert seen[0] is not threading.main_thread()  # computed on the worker thread
    assert echo.result == 42 and echo.drawn == [42] and echo.status.text() == "got 42"
    assert echo.progress.value() == echo.progress.maximum() == 3
    assert echo.export_data_button.isEnabled() and echo.compute_button.isEnabled()
    assert not echo.recompute.stale


def test_cancel_and_failure_keep_the_last_result(echo, qtbot):
    echo.job = lambda progress, cancel: "first"
    with qtbot.waitSignal(echo.computed, timeout=10000):
        echo.compute()
    started = threading.Event()

    def slow(progress, cancel):
        started.set()
        while True:
            progress(0, 1)  # raises Cancelled once the job is cancelled
            cancel.wait(0.01)

    echo.job = slow
    assert echo.compute()
    assert echo.status.text() == "Computing…" and echo.cancel_button.isEnabled()
    assert not echo.compute_button.isEnabled()
    assert started.wait(10)
    assert echo.cancel()
    qtbot.waitUntil(lambda: not echo.runner.busy, timeout=10000)
    assert echo.status.text() == "Cancelled" and echo.result == "first" and echo.drawn == ["first"]
    assert echo.compute_button.isEnabled() and not echo.cancel_button.isEnabled()
    assert not echo.cancel()  # nothing left to cancel

    def fails(progress, cancel):
        raise ValueError("no tasks of that kind")

    echo.job = fails
    echo.compute()
    qtbot.waitUntil(lambda: not echo.runner.busy, timeout=10000)
    assert echo.status.text() == "Failed: ValueError: no tasks of that kind" and echo.result == "first"


def test_a_stale_view_computes_when_waited_for(echo):
    echo.job = lambda progress, cancel: "fresh"
    echo._inputs_changed()
    assert echo.recompute.stale
    assert echo.wait_until_idle(10)
    assert echo.result == "fresh" and not echo.recompute.stale


def test_ask_path_takes_the_path_or_asks_and_adds_the_suffix(echo, monkeypatch, tmp_path):
    answers = []
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (answers.pop(0), ""))
    assert echo.ask_path(tmp_path / "given", "Save", "x.csv", "CSV (*.csv)", ".csv") == tmp_path / "given"
    answers += [str(tmp_path / "numbers"), str(tmp_path / "UPPER.CSV"), ""]
    assert echo.ask_path(None, "Save", "x.csv", "CSV (*.csv)", ".csv") == tmp_path / "numbers.csv"
    assert echo.ask_path(None, "Save", "x.csv", "CSV (*.csv)", ".csv") == tmp_path / "UPPER.CSV"
    assert echo.ask_path(None, "Save", "x.csv", "CSV (*.csv)", ".csv") is None  # the dialog was cancelled
    answers.append(str(tmp_path / "any"))
    assert echo.ask_path(None, "Save", "x", "All (*)") == Path(tmp_path / "any")  # no suffix asked for


@dataclass
class KeyRequest:
    key: str
    label: str
    algorithm: str
    model: object
    params: object
    adaptation: object


class KeysView(HeldOutView):
    """Computes the keys of its requests; draws one point per key on its plot."""

    title = "keys"
    request_type = KeyRequest

    def __init__(self):
        super().__init__()
        self.plot = self.graphics.addPlot()
        self.decorate(self.plot, (10, 8), "Nothing yet")
        self.lay_out([self.compute_button], [[self.status]])

    def compute(self) -> bool:
        reqs = self.requests()
        self.recompute.stale = False
        if not reqs:
            return False
        return self.start(lambda progress, cancel: [r.key for r in reqs], "keys", len(reqs))

    def _draw(self) -> None:
        self.clear_items()
        for i, key in enumerate(self.result or []):
            point = pg.ScatterPlotItem([i], [i])
            self.add_items(self.plot, point)
            self.legend.addItem(point, key)


def _init(key: str, source: str, model) -> Initialization:
    return Initialization(key, "maml", key.upper(), model, model.init_params(torch.Generator().manual_seed(0)), 0.01,
                          source)


def test_a_held_out_view_keeps_trained_and_imported_mlps_and_computes_on_those_that_fit(qtbot):
    view = KeysView()
    qtbot.addWidget(view, before_close_func=lambda v: v.shutdown())
    assert not view.compute_button.isEnabled()  # no initialization yet
    mlp, conv = MLP((1, 8, 1)), Conv4(in_channels=1, image_size=14, ways=2, filters=4)
    view.initializations_changed([_init("maml", "trained", mlp), _init("file:a", "imported", mlp),
                                  _init("file:c", "imported", conv), _init("checkpoint", "checkpoint", mlp),
                                  _init("cnn", "trained", conv)], [])
    assert list(view.inits) == ["maml", "file:a", "cnn"] and view.recompute.stale
    assert view.compute_button.isEnabled()
    assert [r.key for r in view.requests()] == ["maml", "file:a"]  # no run: sinusoids, which a conv-4 does not fit
    assert view.imported("file:a") and not view.imported("maml") and not view.imported("nothing")
    with qtbot.waitSignal(view.computed, timeout=10000):
        assert view.compute()
    assert view.result == ["maml", "file:a"] and len(view.items) == 2 and len(view.legend.items) == 2
    view._draw()  # drawing again replaces what was drawn
    assert len(view.items) == 2 and sum(isinstance(i, pg.ScatterPlotItem) for i in view.plot.items) == 2
    view.initializations_changed([], ["maml"])
    assert list(view.inits) == ["file:a", "cnn"]
    view.clear_run()
    assert list(view.inits) == ["file:a"] and view.run is None


def test_a_long_status_line_wraps_instead_of_being_cut(echo, qtbot):
    """The Landscape's status names the adaptation rule and can run longer than the window is wide: every word stays
    visible, on more lines, and the line does not widen the view."""
    echo.resize(420, 320)
    echo.show()
    qtbot.waitExposed(echo)
    long_text = " · ".join(f"adapting by learned per-parameter step sizes, part {i}" for i in range(4))
    echo.job = lambda progress, cancel: "x"
    echo.result_text = lambda result: long_text
    with qtbot.waitSignal(echo.computed, timeout=10000):
        echo.compute()
    qtbot.wait(50)
    label = echo.status
    assert label.text() == long_text and echo.width() == 420
    line = label.fontMetrics().height()
    assert label.width() < label.fontMetrics().horizontalAdvance(long_text)  # it cannot fit on one line...
    assert label.height() >= label.heightForWidth(label.width()) >= 2 * line  # ...so it has the lines it needs
