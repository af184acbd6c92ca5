"""The main window: the experiment panel, the run toolbar, the registered views in tabs, the status bar.

It only assembles and shows: the commands are declared in ui.actions, a run's state machine lives in
ui.run_controller, which writes the run to a Qt-free model (lab.run_state.RunModel) that the toolbar, the status
bar and the views subscribe to, the File menu's work is in ui.file_actions, and the views come from ui.views
(plug-ins too), each declaring the task families it applies to.
Every run trains into a run folder under the runs root (lab.run_library.runs_root); File ▸ Past runs lists
them and File ▸ Resume run continues one from its latest checkpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path

import tomli_w
from PySide6.QtCore import QByteArray, QRect, QSettings, QSize, Qt, QUrl
from PySide6.QtGui import QDesktopServices, QGuiApplication
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QSizePolicy,
    QSplitter,
    QTabWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..core.training.config import ExperimentConfig
from ..lab.initializations import Initialization, InitializationStore
from ..lab.playground import mlp_for_playground
from ..lab.run_state import RunModel, RunState
from . import actions
from . import views as view_registry
from .actions import icon
from .colors import algorithm_label
from .elided import ElidedLabel, ElidingStatusBar
from .experiment_panel import ExperimentPanel
from .file_actions import FileActions
from .run_controller import RunController, _html
from .theme import STATE_STYLE
from .worker import TrainingController

PREFERRED_SIZE = QSize(1440, 900)
SCREEN_FRACTION = 0.92  # of the screen's available area, at most, for a first window


def first_size(available: QSize, preferred: QSize = PREFERRED_SIZE) -> QSize:
    """The size of a window opened without saved geometry: `preferred`, or less so that it fits `available`."""
    return QSize(min(preferred.width(), int(available.width() * SCREEN_FRACTION)),
                 min(preferred.height(), int(available.height() * SCREEN_FRACTION)))


def clamp_rect(rect: QRect, available: QRect) -> QRect:
    """`rect` made no larger than `available` and moved inside it."""
    width, height = min(rect.width(), available.width()), min(rect.height(), available.height())
    x = min(max(rect.x(), available.x()), available.x() + available.width() - width)
    y = min(max(rect.y(), available.y()), available.y() + available.height() - height)
    return QRect(x, y, width, height)


class MessageBar(QFrame):
    """An inline message above the views (errors of a run, hints); closable."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("MessageBar")
        self.setProperty("kind", "info")
        row = QHBoxLayout(self)
        row.setContentsMargins(12, 8, 8, 8)
        row.setSpacing(10)
        self.icon = QLabel()
        self.icon.setObjectName("Badge")
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.label.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        close = QToolButton()
        close.setText("✕")
        close.setAutoRaise(True)
        close.setToolTip("Dismiss")
        close.clicked.connect(self.clear)
        row.addWidget(self.icon, 0, Qt.AlignmentFlag.AlignTop)
        row.addWidget(self.label, 1)
        row.addWidget(close, 0, Qt.AlignmentFlag.AlignTop)
        self.setVisible(False)

    def show_message(self, kind: str, text: str) -> None:
        self.setProperty("kind", kind)
        self.icon.setProperty("kind", kind)
        self.icon.setText({"error": "!", "warning": "!", "info": "i"}.get(kind, ""))
        self.icon.style().unpolish(self.icon)
        self.icon.style().polish(self.icon)
        self.label.setText(text)
        self.style().unpolish(self)
        self.style().polish(self)
        self.setVisible(True)

    def clear(self) -> None:
        self.label.setText("")
        self.setVisible(False)

    @property
    def text(self) -> str:
        return self.label.text() if self.isVisible() else ""

    @property
    def kind(self) -> str:
        return str(self.property("kind"))


class MainWindow(QMainWindow):
    def __init__(self, settings: QSettings | None = None, persist: bool = True, rng=None):
        super().__init__()
        self.settings = settings if settings is not None else QSettings()
        self.persist = persist
        self.rng = rng
        self.setWindowTitle("MAML Lab")
        self.setWindowIcon(icon("app"))
        # the run: its state, progress, snapshots, paths and messages; the toolbar, status bar and views subscribe
        self.run_model = RunModel()
        # every initialization (trained, imported, a checkpoint preview): the views subscribe to it
        self.inits = InitializationStore()
        self.controller = TrainingController(self, progress_hz=30.0, snapshot_interval=0.25)
        self.files = FileActions(self)
        self.past_runs_dialog = None
        self.image_set_dialog = None
        self.download_dialog = None
        self._closed = False

        self.panel = ExperimentPanel()
        self.run_control = RunController(self.run_model, self.controller, self.panel, self.files, self.inits)
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(False)
        self.message_bar = MessageBar()
        self.views: dict[str, QWidget] = {}
        self._view_hooks: dict[str, view_registry.ViewHooks] = {}
        self.view_specs = view_registry.VIEWS.entries()
        for entry in self.view_specs:
            self._add_view(entry.obj)

        right = QWidget()
        rv = QVBoxLayout(right)
        rv.setContentsMargins(0, 8, 10, 8)
        rv.setSpacing(8)
        rv.addWidget(self.message_bar)
        rv.addWidget(self.tabs, 1)
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.setObjectName("MainSplitter")
        self.splitter.addWidget(self.panel)
        self.splitter.addWidget(right)
        self.splitter.setStretchFactor(0, 0)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setCollapsible(1, False)
        self.splitter.setSizes([self.panel.minimumWidth(), 1100])
        self.setCentralWidget(self.splitter)

        self.action_specs = actions.all_specs(entry.obj for entry in self.view_specs)
        actions.build(self, self.action_specs)
        self._build_toolbar_progress()
        self._build_status_bar()
        playground, plots = self.views.get("playground"), self.views.get("training")
        if playground is not None:
            playground.mode_group.buttonToggled.connect(
                lambda *_: self.act_draw.setChecked(playground.draw_mode.isChecked()))
        if plots is not None:
            self.act_log.setChecked(plots.log_scale.isChecked())
            plots.log_scale.toggled.connect(self.act_log.setChecked)
        self._subscribe(self.run_model)
        self.panel.validity_changed.connect(lambda *_: self._sync_actions())
        self.panel.changed.connect(self._sync_device_label)
        self.panel.changed.connect(self._sync_experiment)
        self.run_control.reset(self.panel.task.currentData())  # nothing trained: the views of the form's family
        self._sync_experiment()
        screen = self.screen() or QGuiApplication.primaryScreen()
        self.resize(first_size(screen.availableGeometry().size()) if screen is not None else PREFERRED_SIZE)
        if persist:
            self._restore_settings()
        self._sync_actions()
        self._sync_device_label()
        self.show_state(self.state)

    # -- views ---------------------------------------------------------------------------------------
    def _add_view(self, spec) -> QWidget:
        """One registered view: a tab, window.views[name], and the wiring every view gets (see ui.views)."""
        widget = spec.factory(self)
        self.tabs.addTab(widget, spec.title)
        self.views[spec.name] = widget
        self._view_hooks[spec.name] = view_registry.ViewHooks(widget, spec, self.run_model)
        if hasattr(widget, "initializations_changed"):
            self.inits.subscribe(widget.initializations_changed)
        if hasattr(widget, "export_plot_requested"):
            widget.export_plot_requested.connect(lambda: self.export_plot())
        if hasattr(widget, "message"):
            widget.message.connect(lambda text, ms=spec.message_ms: self.statusBar().showMessage(text, ms))
        return widget

    def views_call(self, method: str, *args) -> None:
        """Call `method(*args)` on every view that has it (set_training, set_experiment, set_run, shutdown)."""
        for widget in self.views.values():
            fn = getattr(widget, method, None)
            if callable(fn):
                fn(*args)

    def show_view(self, name: str) -> None:
        self.tabs.setCurrentWidget(self.views[name])

    def current_view(self):
        return self.tabs.currentWidget()

    def set_draw_mode(self, on: bool) -> None:
        if "playground" in self.views:
            self.views["playground"].set_mode("draw" if on else "points")

    def _sync_experiment(self) -> None:
        """The form changed: another family discards what is shown of the earlier one (not while training)."""
        if self.running:
            return
        task = self.panel.task.currentData()
        if task != self.run_model.task:
            self.run_control.reset(task)
        config, _ = self.panel.try_config()
        if config is not None:
            self.views_call("set_experiment", config)
        self._sync_applicability()

    def applicability(self) -> dict[str, str | None]:
        """Each view's reason not to apply to the current family and algorithms (None: it applies)."""
        from ..core.tasks.registry import TASKS

        task = self.run_model.task
        kind = TASKS.get(task) if task in TASKS else None
        algorithms = self.run_model.algorithms if self.run_model.scope.source != "none" else tuple(
            name for name, column in self.panel.columns.items() if column.enabled.isChecked())
        return {entry.name: entry.obj.reason(kind, algorithms) for entry in self.view_specs}

    def _sync_applicability(self) -> None:
        """A view that does not apply: its tab disabled with the reason as tooltip, the reason in the view."""
        for name, reason in self.applicability().items():
            widget = self.views[name]
            index = self.tabs.indexOf(widget)
            self.tabs.setTabEnabled(index, reason is None)
            self.tabs.setTabToolTip(index, reason or "")
            fn = getattr(widget, "set_applicable", None)
            if callable(fn):
                fn(reason)
            action = getattr(self, f"act_view_{name}", None)
            if action is not None:
                action.setEnabled(reason is None)
                action.setToolTip(reason or "")
        if not self.tabs.isTabEnabled(self.tabs.currentIndex()):
            first = next((i for i in range(self.tabs.count()) if self.tabs.isTabEnabled(i)), None)
            if first is not None:
                self.tabs.setCurrentIndex(first)

    # -- the run's model: what the window shows of it ---------------------------------------------------
    def _subscribe(self, model: RunModel) -> None:
        events = model.events
        events.scope.connect(self._on_scope)
        events.state.connect(self._on_state)
        events.line.connect(self._on_line)
        events.progress.connect(self._on_progress)
        events.snapshot.connect(self._on_snapshot)
        events.folder.connect(self._on_folder)
        events.device.connect(self._on_device)
        events.message.connect(self._on_message)

    def _on_scope(self, event) -> None:
        if hasattr(self, "state_label"):  # (built)
            self._sync_applicability()
            if event.scope.opened and "training" in self.views:
                self.tabs.setCurrentWidget(self.views["training"])
            self._sync_actions()

    def _on_state(self, event) -> None:
        self.show_state(event.state)
        self._sync_device_label()

    def _on_line(self, event) -> None:
        line = event.line
        self.progress.setRange(0, max(line.total, 0))
        self.progress.setValue(min(line.value, line.total) if line.total else 0)
        self.progress_label.setText(line.text)

    def _on_progress(self, event) -> None:
        self._show_cost(event.cost)
        if not self.act_export_metrics.isEnabled() and self.history.algorithms:
            self._sync_actions()

    def _show_cost(self, cost: dict) -> None:
        """The cost meter in the toolbar: each algorithm's time and memory per meta-step; the tooltip adds what it
        measures and the expected cost of more inner steps. Empty when the run has no cost (yet)."""
        from ..core.training.cost import cost_brief, cost_details, cost_time

        self.cost_label.setText(" · ".join(f"{algorithm_label(n)} {cost_brief(c)}" for n, c in cost.items()))
        # three or more algorithms with their memory do not fit beside the progress text at 1366 px: then each one's
        # time, the memory in the tooltip
        self.cost_label.compact_text = (" · ".join(f"{algorithm_label(n)} {cost_time(c)}" for n, c in cost.items())
                                        if len(cost) >= 3 else "")
        self.cost_label.updateGeometry()
        self.cost_label.update()
        self.cost_label.setToolTip("\n".join(cost_details(algorithm_label(n), c) for n, c in cost.items()))

    def _on_snapshot(self, _event) -> None:
        if self.act_export.isEnabled() != (self.latest_snapshot is not None):
            self._sync_actions()

    def _on_folder(self, event) -> None:
        self._show_folder(event.folder)

    def _on_device(self, _event) -> None:
        self._sync_device_label()

    def _on_message(self, event) -> None:
        if event.kind == "dialog":
            QMessageBox.warning(self, event.title, event.text)
        elif event.kind == "status":
            self.statusBar().showMessage(event.text, event.ms)
        elif event.kind == "clear":
            self.message_bar.clear()
        else:
            self.message_bar.show_message(event.kind, event.text)

    def preview_checkpoint(self, info: dict) -> None:
        """The Paths view's slider: preview that checkpoint in the playground (the newest one: nothing extra)."""
        if info.get("latest") or mlp_for_playground(info.get("model_spec") or {}):
            self.inits.remove("checkpoint")
            return
        name = info["algorithm"]
        label = f"{algorithm_label(name)} @ {info['iteration']:,}"
        self.inits.put(Initialization("checkpoint", name, label, info["model"], info["params"], info["adaptation"],
                                      "checkpoint"))

    # -- construction --------------------------------------------------------------------------------
    def _build_toolbar_progress(self) -> None:
        """The progress bar, its label (iterations, rate, ETA) and the cost meter, in the toolbar after the run and
        the file buttons. The buttons keep their size; the progress area takes the rest of the row and its texts
        elide (whole in their tooltips), so nothing is pushed off a small laptop's screen (1366x768)."""
        bar = self.toolbar
        bar.widgetForAction(self.act_start).setObjectName("StartButton")
        box = QWidget()
        box.setObjectName("ProgressArea")
        box.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        row = QHBoxLayout(box)
        row.setContentsMargins(8, 0, 8, 0)
        row.setSpacing(10)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("%p%")
        self.progress.setMinimumWidth(80)
        self.progress.setMaximumWidth(200)
        self.progress.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        # elided in the middle: the iteration count at the start and the ETA at the end stay in view
        self.progress_label = ElidedLabel("Ready", Qt.TextElideMode.ElideMiddle, min_chars=24)
        self.progress_label.setProperty("hint", True)
        self.progress_label.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        # the cost meter (core/training/cost.py): time and memory per meta-step; the tooltip has the expected cost of
        # more inner steps
        self.cost_label = ElidedLabel("", min_chars=10)
        self.cost_label.setProperty("hint", True)
        self.cost_label.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)
        # the cost meter keeps its whole text where the row allows (no stretch: its size hint), the progress text
        # takes the rest and elides first: it has its own tooltip, and "30 / 300 iterations" survives the middle cut
        row.addWidget(self.progress, 1)
        row.addWidget(self.progress_label, 3)
        row.addWidget(self.cost_label, 0)
        bar.addSeparator()
        bar.addWidget(box)

    def _build_status_bar(self) -> None:
        status = ElidingStatusBar()  # a long message elides before the "Run folder:" link instead of overlapping it
        self.setStatusBar(status)
        status.setSizeGripEnabled(False)
        self.state_label = QLabel()
        self.state_label.setTextFormat(Qt.TextFormat.RichText)
        self.device_label = QLabel()
        self.device_label.setProperty("hint", True)
        self.folder_label = QLabel()  # the run folder of the current run, a link that opens it
        self.folder_label.setProperty("hint", True)
        self.folder_label.setTextFormat(Qt.TextFormat.RichText)
        self.folder_label.linkActivated.connect(lambda url: QDesktopServices.openUrl(QUrl(url)))
        self.folder_label.setVisible(False)
        status.addPermanentWidget(self.folder_label)
        status.addPermanentWidget(self.device_label)
        status.addPermanentWidget(self.state_label)

    def _show_folder(self, folder: Path | None) -> None:
        """The run folder in the status bar: its name, a link that opens it."""
        if folder is None:
            self.folder_label.setVisible(False)
            self.folder_label.setText("")
            return
        url = QUrl.fromLocalFile(str(folder)).toString()
        self.folder_label.setText(f"Run folder: <a href='{url}'>{_html(folder.name)}</a>")
        self.folder_label.setToolTip(f"{folder}\n(click to open it)")
        self.folder_label.setVisible(True)

    # -- state (read from the run's model) ------------------------------------------------------------
    @property
    def history(self):  # lab.metrics_history.MetricsHistory of the run shown
        return self.run_model.history

    @property
    def state(self) -> RunState:
        return self.run_model.state

    @property
    def running(self) -> bool:
        return self.run_control.running

    @property
    def latest_snapshot(self):  # lab.messages.Snapshot | None
        return self.run_control.latest_snapshot

    @property
    def last_progress(self):  # lab.messages.RunProgress | None
        return self.run_control.last_progress

    @property
    def run_folder(self) -> Path | None:
        return self.run_control.run_folder

    @property
    def opened_run(self) -> Path | None:
        return self.run_control.opened_run

    @property
    def run_config(self) -> ExperimentConfig | None:
        return self.run_control.run_config

    def show_state(self, state: RunState) -> None:
        label, color = STATE_STYLE.get(state, (state.title(), "#8A939C"))
        self.state_label.setText(f"<span style='color:{color}; font-size:13pt'>●</span>&nbsp;{label}&nbsp;")
        self.panel.set_running(self.running)
        self._sync_actions()

    def _sync_actions(self) -> None:
        actions.sync_enabled(self, self.action_specs)
        self.act_start.setToolTip("Train the checked algorithms (Space)" if self.panel.valid
                                  else f"Fix the experiment first: {self.panel.message}")
        paused = self.state is RunState.PAUSED
        self.act_pause.setText("Resume" if paused else "Pause")
        self.act_pause.setIcon(icon("resume" if paused else "pause"))
        if self.past_runs_dialog is not None:
            from shiboken6 import isValid

            if isValid(self.past_runs_dialog):
                self.past_runs_dialog.set_busy(self.running, self.run_folder if self.running else None)
        self.export_menu.setEnabled(self.latest_snapshot is not None)

    def _sync_device_label(self) -> None:
        from ..core.training.device import resolve_device

        if self.running and self.run_config is not None and self.run_model.device:
            text = self.run_model.device
        else:
            name = self.panel.device.currentData() or "auto"
            try:
                resolved = str(resolve_device(name))
                text = f"{name} → {resolved}" if name == "auto" else resolved
            except ValueError:
                text = f"{name} (unavailable)"
        if text.endswith("cpu"):  # how many torch threads a run of the chosen family trains on (lab/threads.py)
            from ..lab.threads import training_threads

            config = self.run_config if self.running and self.run_config is not None else None
            n = training_threads(config.task if config is not None else self.panel.task.currentData())
            text += f" · {n} thread{'s' if n != 1 else ''}"
        self.device_label.setText(f"Device: {text}")
        self.device_label.setToolTip("CPU training: image tasks use every core (up to 4), the others one thread per "
                                     "two cores, so the window keeps one; python main.py --threads N fixes it")

    # -- commands (the slots of ui.actions; the work is the run controller's or the File actions') --------
    def toggle_run(self) -> None:
        self.run_control.toggle_run()

    def start(self) -> bool:
        return self.run_control.start()

    def pause_or_resume(self) -> None:
        self.run_control.pause_or_resume()

    def stop(self) -> None:
        self.run_control.stop()

    def reset(self) -> None:
        self.run_control.reset()

    def open_run(self, path: str | None = None) -> bool:
        return self.run_control.open_run(path)

    def resume_run(self, path: str | None = None) -> bool:
        return self.run_control.resume_run(path)

    def wait_for_training(self, timeout_s: float | None = 600.0) -> str:
        """Process events until the current run ends or `timeout_s` passes (None: no limit; for --screenshot and
        tests); returns the state then."""
        return self.run_control.wait_for_training(timeout_s)

    def export_initialization(self, name: str | None = None) -> list[Path]:
        return self.files.export_initialization(name)

    def import_initialization(self, path: str | None = None) -> Initialization | None:
        return self.files.import_initialization(path)

    def export_plot(self, path: str | None = None) -> Path | None:
        return self.files.export_plot(path)

    def export_metrics(self, path: str | None = None) -> Path | None:
        return self.files.export_metrics(path)

    def save_config(self, path: str | None = None) -> Path | None:
        return self.files.save_config(path)

    def open_config(self, path: str | None = None) -> ExperimentConfig | None:
        return self.files.open_config(path)

    def recent_files(self) -> list[str]:
        return self.files.recent_files()

    def fill_recent_menu(self) -> None:
        self.files.fill_recent_menu()

    def fill_export_menu(self) -> None:
        self.files.fill_export_menu()

    def show_past_runs(self):
        return self.files.show_past_runs()

    def runs_root(self) -> Path:
        return self.files.runs_root()

    def open_image_set(self, path: str | None = None):
        return self.files.open_image_set(path)

    def download_omniglot(self, folder: str | None = None, **options):
        return self.files.download_omniglot(folder, **options)

    # -- settings ------------------------------------------------------------------------------------
    def _restore_settings(self) -> None:
        s = self.settings
        geometry = s.value("window/geometry")
        if isinstance(geometry, QByteArray) and not geometry.isEmpty():
            self.restoreGeometry(geometry)
            self._clamp_to_screen()
        state = s.value("window/state")
        if isinstance(state, QByteArray) and not state.isEmpty():
            self.restoreState(state)
        for key, splitter in (("window/splitter", self.splitter), ("playground/splitter", self._playground_splitter())):
            if splitter is None:
                continue
            value = s.value(key)
            if isinstance(value, QByteArray) and not value.isEmpty():
                splitter.restoreState(value)
        try:
            self.tabs.setCurrentIndex(int(s.value("window/tab", 0)))
        except (TypeError, ValueError):
            pass
        log = s.value("plots/log_scale")
        if log is not None and "training" in self.views:
            self.views["training"].set_log(str(log).lower() in ("true", "1"))
        text = s.value("experiment/last_config")
        if text:
            from ..core.validation import parse_toml

            try:
                self.panel.set_config(ExperimentConfig.from_dict(parse_toml(str(text), "the saved experiment")))
            except ValueError:
                pass  # an old or broken saved config: keep the defaults

    def _playground_splitter(self):
        return getattr(self.views.get("playground"), "splitter", None)

    def _clamp_to_screen(self) -> None:
        """A restored geometry fits the screen it lands on (a smaller or a missing monitor since it was saved)."""
        rect = self.geometry()
        screen = QGuiApplication.screenAt(rect.center()) or self.screen() or QGuiApplication.primaryScreen()
        if screen is None:
            return
        fitted = clamp_rect(rect, screen.availableGeometry())
        if fitted != rect:
            self.setGeometry(fitted)

    def save_settings(self) -> None:
        s = self.settings
        s.setValue("window/geometry", self.saveGeometry())
        s.setValue("window/state", self.saveState())
        s.setValue("window/splitter", self.splitter.saveState())
        if self._playground_splitter() is not None:
            s.setValue("playground/splitter", self._playground_splitter().saveState())
        s.setValue("window/tab", self.tabs.currentIndex())
        if "training" in self.views:
            s.setValue("plots/log_scale", self.views["training"].log_scale.isChecked())
        config, _ = self.panel.try_config()
        if config is not None:
            s.setValue("experiment/last_config", tomli_w.dumps(config.to_dict()))
        s.sync()

    # -- help ----------------------------------------------------------------------------------------
    def show_shortcuts(self) -> None:
        rows = actions.shortcut_rows(self, self.action_specs)
        html = "<table cellspacing=4>" + "".join(f"<tr><td>{t}</td><td><b>{k}</b></td></tr>" for t, k in rows)
        QMessageBox.information(self, "Keyboard shortcuts", html + "</table>")

    def show_about(self) -> None:
        from .. import __version__

        QMessageBox.about(self, "About MAML Lab", f"<b>MAML Lab</b> {__version__}<br>A visual laboratory for "
                          "gradient-based meta-learning: MAML, first-order MAML, Reptile and the pretrained baseline."
                          "<br><br>Colours: the Okabe–Ito colour-blind-safe palette.")

    # -- closing -------------------------------------------------------------------------------------
    def closeEvent(self, ev) -> None:
        if not self._closed:
            self._closed = True
            if self.persist:
                self.save_settings()
            self.shutdown()
        super().closeEvent(ev)

    def shutdown(self) -> None:
        """Stop the worker and its thread (within 2 s: the Trainer stops after the current iteration)."""
        self.views_call("shutdown")
        from shiboken6 import isValid

        for dialog in (self.image_set_dialog, self.download_dialog):
            if dialog is not None and isValid(dialog):
                dialog.runner.shutdown()  # their worker threads end with the window
        if not self.controller.shutdown(2000):
            print("maml-lab: the training thread is taking long to stop; waiting for it", file=sys.stderr)
            self.controller.thread.wait()

