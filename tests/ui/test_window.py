"""The window's structure: it fits the screen it opens on, views come from the registry (plug-ins too), the
commands from one table (menus, toolbar, the shortcuts list), and the run state is an enum."""

import numpy as np
import pytest
from PySide6.QtCore import QByteArray, QRect, QSize
from PySide6.QtGui import QScreen
from PySide6.QtWidgets import QLabel, QMessageBox

from maml_lab.ui import actions
from maml_lab.ui.main_window import MainWindow, clamp_rect, first_size
from maml_lab.ui.run_controller import RunState


def make_window(qtbot, settings, persist=False):
    w = MainWindow(settings=settings, persist=persist, rng=np.random.default_rng(0))
    qtbot.addWidget(w)
    return w


def test_first_size_fits_the_available_screen():
    assert first_size(QSize(2560, 1400)) == QSize(1440, 900)
    small = first_size(QSize(1366, 728))  # a 1366 x 768 screen less a panel
    assert small.width() <= 1366 * 0.92 and small.height() <= 728 * 0.92


def test_clamp_rect_keeps_a_window_on_the_screen():
    screen = QRect(0, 0, 1366, 728)
    assert clamp_rect(QRect(100, 50, 800, 600), screen) == QRect(100, 50, 800, 600)
    assert clamp_rect(QRect(900, 400, 1440, 900), screen) == QRect(0, 0, 1366, 728)
    assert clamp_rect(QRect(2000, -30, 600, 400), screen) == QRect(766, 0, 600, 400)


def test_a_first_window_on_a_small_screen_is_not_cut_off(qtbot, settings, monkeypatch):
    monkeypatch.setattr(QScreen, "availableGeometry", lambda self: QRect(0, 0, 1366, 728))
    w = make_window(qtbot, settings)
    assert w.width() <= 1366 and w.height() <= 728
    assert w.width() < 1440 and w.height() < 900


def test_a_restored_geometry_larger_than_the_screen_is_clamped(qtbot, settings, monkeypatch):
    big = make_window(qtbot, settings)
    big.setGeometry(QRect(300, 200, 1440, 900))
    settings.setValue("window/geometry", big.saveGeometry())
    big.close()
    monkeypatch.setattr(QScreen, "availableGeometry", lambda self: QRect(0, 0, 1024, 700))
    w = make_window(qtbot, settings, persist=True)
    assert isinstance(settings.value("window/geometry"), QByteArray)
    assert w.width() <= 1024 and w.height() <= 700
    assert w.x() >= 0 and w.y() >= 0 and w.x() + w.width() <= 1024 and w.y() + w.height() <= 700


class _EntryPoint:
    def __init__(self, name, value, obj=None, error=None):
        self.name, self.value, self._obj, self._error = name, value, obj, error
        self.dist = type("Dist", (), {"name": "maml-lab-hello"})()

    def load(self):
        if self._error:
            raise self._error
        return self._obj


class HelloView:
    """A plug-in view: a class with name, title and factory(window); it sees the initialization store."""

    name = "hello"
    title = "Hello"
    seen: list = []

    @staticmethod
    def factory(window):
        label = QLabel("hello")
        label.initializations_changed = lambda changed, removed: HelloView.seen.append((changed, removed))
        return label

    @staticmethod
    def applies_to(kind, algorithms):
        return "Hello greets regression tasks only" if kind is not None and kind.loss != "mse" else None


@pytest.fixture
def plugin_views(monkeypatch):
    from maml_lab.core import registry
    from maml_lab.ui import views

    eps = [_EntryPoint("hello", "hello_plugin:HelloView", HelloView),
           _EntryPoint("broken", "broken_plugin:View", error=ImportError("no module named broken_plugin"))]
    monkeypatch.setattr(registry, "_entry_points", lambda group: eps if group == views.GROUP else [])
    fresh = views.make_registry()
    monkeypatch.setattr(views, "VIEWS", fresh)
    return fresh


def test_a_plugin_view_gets_a_tab_a_menu_entry_and_a_screenshot_name(qtbot, settings, plugin_views, capsys):
    from maml_lab import app

    w = make_window(qtbot, settings)
    err = capsys.readouterr().err
    assert err.count("skipped view plug-in 'broken'") == 1 and len(plugin_views.problems) == 1
    assert list(w.views)[:6] == ["playground", "training", "landscape", "paths", "adaptation", "tasks"]
    assert "hello" in w.views and w.tabs.tabText(w.tabs.indexOf(w.views["hello"])) == "Hello"
    # the built-in views take Ctrl+1.., a plug-in view the next number after them
    assert w.act_view_hello.shortcut().toString() == f"Ctrl+{list(w.views).index('hello') + 1}"
    assert list(w.views).index("hello") == len(plugin_views.names()) - 1
    w.act_view_hello.trigger()
    assert w.current_view() is w.views["hello"]
    w.inits.remove("nothing")  # the store tells its subscribers, the plug-in among them
    hello = w.tabs.indexOf(w.views["hello"])
    assert w.tabs.isTabEnabled(hello) and w.tabs.tabToolTip(hello) == ""
    w.panel.task.setCurrentIndex(w.panel.task.findData("navigation"))  # where it declares it does not apply
    assert not w.tabs.isTabEnabled(hello) and w.tabs.tabToolTip(hello) == "Hello greets regression tasks only"
    assert not w.act_view_hello.isEnabled()
    assert app.build_parser().parse_args(["--view", "hello"]).view == "hello"


def test_the_shortcuts_list_is_the_action_table(window, monkeypatch):
    shown = []
    monkeypatch.setattr(QMessageBox, "information", lambda parent, title, text: shown.append(text))
    window.act_shortcuts.trigger()
    text = shown[0]
    specs = [s for s in window.action_specs if isinstance(s, actions.ActionSpec) and s.shortcut is not None]
    bound = [getattr(window, f"act_{s.id}") for s in specs]
    bound = [a for a in bound if not a.shortcut().isEmpty()]  # (a standard key this platform leaves unbound)
    assert len(bound) > 15
    for act in bound:
        assert f"<td>{act.text().replace('…', '')}</td><td><b>{act.shortcut().toString()}</b>" in text
    assert "Landscape" in text and "Ctrl+3" in text
    ids = [s.id for s in window.action_specs]
    assert len(ids) == len(set(ids))  # no command defined twice


def test_menus_and_toolbar_come_from_the_table(window):
    titles = [m.title() for m in window.menuBar().findChildren(type(window.menus["&File"]))
              if m.title() in actions.MENUS]
    assert set(actions.MENUS) <= set(titles)
    toolbar = [a for a in window.toolbar.actions() if a.text()]
    assert [a.text() for a in toolbar][:4] == ["Start", "Pause", "Stop", "Reset"]
    assert window.act_import in toolbar and window.act_export in toolbar
    view_menu = [a.text() for a in window.menus["&View"].actions() if a.text()]
    assert view_menu[:6] == ["Playground", "Training curves", "Landscape", "Paths", "Adaptation", "Tasks"]


def test_the_run_state_is_an_enum_the_window_reads_from_the_controller(window, qtbot, small_config):
    assert window.state is RunState.IDLE and window.state == "idle" and not window.running
    assert not window.act_stop.isEnabled() and window.act_start.isEnabled()
    window.panel.set_config(small_config(iterations=20))
    with qtbot.waitSignal(window.controller.finished, timeout=20000):
        window.start()
        assert window.state is RunState.STARTING and window.run_control.state is window.state
        assert window.act_stop.isEnabled() and not window.act_start.isEnabled()
    assert window.state is RunState.FINISHED and f"{window.state}" == "finished"
    assert RunState.of("something new") is RunState.FAILED


def test_the_panel_shows_the_image_defaults_and_the_outer_schedule(window):
    """Choosing images gives the tuned image defaults (meta-batch 32, 800 iterations, MAML's Adam 3e-3 annealed by a
    cosine); the schedule, which has no field of its own, is named in the outer rate's tooltip."""
    p = window.panel
    p.task.setCurrentIndex(p.task.findData("images"))
    maml = p.columns["maml"]
    assert (p.meta_batch.value(), p.iterations.value()) == (32, 800)
    assert float(maml.meta_lr.text()) == 0.003 and "cosine" in maml.meta_lr.toolTip()
    config = p.config()
    assert config.algorithm("maml").meta_lr_schedule == "cosine" and config.iterations == 800
    p.task.setCurrentIndex(p.task.findData("sinusoid"))
    assert "constant" in maml.meta_lr.toolTip() and p.config().algorithm("maml").meta_lr_schedule == "constant"


def test_the_status_bar_says_how_many_threads_a_cpu_run_trains_on(window, monkeypatch):
    from maml_lab.lab import threads

    monkeypatch.setattr(threads.os, "cpu_count", lambda: 4)
    window.panel.device.setCurrentIndex(window.panel.device.findData("cpu"))
    window.panel.task.setCurrentIndex(window.panel.task.findData("sinusoid"))
    window._sync_device_label()
    assert window.device_label.text() == "Device: cpu · 2 threads"
    window.panel.task.setCurrentIndex(window.panel.task.findData("images"))  # the panel's change updates it
    assert window.device_label.text() == "Device: cpu · 4 threads"
    threads.fix(1)
    try:
        window._sync_device_label()
        assert window.device_label.text() == "Device: cpu · 1 thread"
    finally:
        threads.fix(None)
