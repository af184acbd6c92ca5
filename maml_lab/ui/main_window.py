"""The main window: experiment panel, run controls, the views (playground, training curves, and the "looking
inside" views: landscape, paths, adaptation) and the File menu.

Every run trains into a run folder under the runs root (ui.run_library.runs_root); File ▸ Past runs lists
them (open one: its curves, parameter path and exported initializations) and File ▸ Resume run continues one
from its latest checkpoint."""

from __future__ import annotations

import math
import sys
from importlib import resources
from pathlib import Path

import tomli_w
from PySide6.QtCore import QBuffer, QByteArray, QIODevice, QSettings, QSize, Qt, QTimer, QUrl
from PySide6.QtGui import QAction, QDesktopServices, QIcon, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QInputDialog,
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

from ..core.algorithms.registry import ALGORITHMS
from ..core.export import InitializationError, atomic_write_bytes, export_initialization, load_initialization
from ..core.training.config import ExperimentConfig
from ..core.training.runs import RunFolder, RunFolderError
from ..lab.initializations import Initialization, InitializationStore, adaptation_from_metadata
from ..lab.metrics_history import MetricsHistory
from ..lab.run_library import SETTINGS_KEY as RUNS_ROOT_KEY
from ..lab.run_library import open_run as read_run
from ..lab.run_library import runs_root
from .adaptation_view import AdaptationView
from .colors import algorithm_label
from .experiment_panel import ExperimentPanel, FormError
from .image_dialogs import DownloadDialog, ImageSetDialog
from .landscape_view import LandscapeView
from .past_runs import app_runs_folder
from .paths_view import PathsView
from .playground import PlaygroundView
from .preview import mlp_for_playground
from .tasks_view import TasksView
from .theme import STATE_STYLE
from .training_plots import TrainingPlotsView
from .worker import TrainingController

RECENT_LIMIT = 8
INIT_FILTERS = [("safetensors + metadata", ".safetensors"), ("PyTorch state dict", ".pt")]
PLOT_FILTERS = [("PNG image", ".png"), ("SVG vector image", ".svg")]
RUNNING_STATES = ("starting", "running", "paused", "stopping")


def icon(name: str) -> QIcon:
    try:
        path = resources.files("maml_lab").joinpath(f"resources/icon-{name}.svg")
        return QIcon(str(path))
    except (OSError, ModuleNotFoundError):
        return QIcon()


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds <= 0:
        return "–"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


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
        self.setWindowTitle("MAML Lab")
        self.setWindowIcon(icon("app"))
        self.history = MetricsHistory()
        self.controller = TrainingController(self, progress_hz=30.0, snapshot_interval=0.25)
        self.controller.started.connect(self._on_started)
        self.controller.progress.connect(self._on_progress)
        self.controller.snapshot.connect(self._on_snapshot)
        self.controller.paths.connect(self._on_paths)
        self.controller.finished.connect(self._on_finished)
        self.controller.failed.connect(self._on_failed)
        self.controller.loading.connect(self._on_loading)
        self.controller.refused.connect(self._on_refused)
        self.state = "idle"
        self.run_folder: Path | None = None  # the folder the current (or last) run trains into
        self.opened_run: Path | None = None  # the past run whose curves the views show (File ▸ Past runs ▸ Open)
        self._resuming: dict | None = None  # a resume request not started yet: what to restore if it is refused
        self.past_runs_dialog = None
        self._opened_keys: list[str] = []  # the playground / Tasks entries of the opened run's exports
        self.run_config: ExperimentConfig | None = None
        self.latest_snapshot: dict | None = None
        self.last_progress: dict | None = None
        self._failure = ""
        self._reset_after_stop = False
        self._closed = False

        self.panel = ExperimentPanel()
        self.panel.validity_changed.connect(lambda *_: self._sync_actions())
        self.panel.changed.connect(self._sync_device_label)
        self.panel.shots.valueChanged.connect(lambda k: self.playground.k.setValue(k))

        self.playground = PlaygroundView(rng=rng)
        # every initialization (trained, imported, a checkpoint preview): the views subscribe to it
        self.inits = InitializationStore()
        self.inits.subscribe(self.playground.initializations_changed)
        self.playground.message.connect(lambda text: self.statusBar().showMessage(text, 4000))
        self.playground.k.setValue(self.panel.shots.value())
        self.plots = TrainingPlotsView(self.history, max_fps=12.0)
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(False)
        self.tabs.addTab(self.playground, "Playground")
        self.tabs.addTab(self.plots, "Training curves")
        self.views = {"playground": self.playground, "training": self.plots}
        self.message_bar = MessageBar()

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

        self._build_actions()
        self._build_toolbar()
        self._build_menus()
        self._build_status_bar()
        self._build_inside_views()
        self._build_tasks_view()
        self.resize(1440, 900)
        if persist:
            self._restore_settings()
        self._sync_actions()
        self._sync_device_label()
        self._set_state("idle")

    # -- construction --------------------------------------------------------------------------------
    def _action(self, text: str, slot, shortcut=None, tip: str = "", icon_name: str | None = None,
                checkable: bool = False) -> QAction:
        act = QAction(text, self)
        if icon_name:
            act.setIcon(icon(icon_name))
        if shortcut is not None:
            act.setShortcut(QKeySequence(shortcut))
            act.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        if tip:
            shortcut_text = act.shortcut().toString(QKeySequence.SequenceFormat.NativeText)
            act.setToolTip(f"{tip} ({shortcut_text})" if shortcut_text else tip)
            act.setStatusTip(tip)
        act.setCheckable(checkable)
        act.triggered.connect(slot)
        self.addAction(act)
        return act

    def _build_actions(self) -> None:
        self.act_toggle = self._action("Start / Pause", self.toggle_run, Qt.Key.Key_Space,
                                       "Start training, or pause / resume it")
        self.act_start = self._action("Start", self.start, None, "Train the checked algorithms (Space)", "start")
        self.act_pause = self._action("Pause", self.pause_or_resume, None, "Pause or resume training (Space)",
                                      "pause")
        self.act_stop = self._action("Stop", self.stop, "Ctrl+.", "Stop training; the parameters so far are kept",
                                     "stop")
        self.act_reset = self._action("Reset", self.reset, "Ctrl+R", "Discard the trained parameters and curves",
                                      "reset")
        self.act_open_config = self._action("Open experiment…", self.open_config, QKeySequence.StandardKey.Open,
                                            "Open an experiment config (TOML)", "open")
        self.act_save_config = self._action("Save experiment…", self.save_config, QKeySequence.StandardKey.Save,
                                            "Save the experiment config (TOML)", "save")
        self.act_import = self._action("Import initialization…", self.import_initialization, "Ctrl+I",
                                       "Load an exported initialization into the playground", "import")
        self.act_export = self._action("Export initialization…", self.export_initialization, "Ctrl+E",
                                       "Save a trained initialization (safetensors + metadata, or .pt)", "export")
        self.act_export_plot = self._action("Export plot…", self.export_plot, "Ctrl+Shift+P",
                                            "Save the current view as PNG or SVG")
        self.act_export_metrics = self._action("Export metrics (CSV)…", self.export_metrics, "Ctrl+Shift+M",
                                               "Save every iteration's losses as CSV")
        self.act_open_images = self._action("Open image set…", lambda: self.open_image_set(), "Ctrl+Shift+O",
                                            "Train on an image set: a zip or a folder of class folders (Omniglot)")
        self.act_download = self._action("Download Omniglot…", lambda: self.download_omniglot(), None,
                                         "Download the official Omniglot zips into a folder")
        self.act_past_runs = self._action("Past runs…", lambda: self.show_past_runs(), "Ctrl+Shift+H",
                                          "List the run folders: open one's curves, path and exports, or resume it")
        self.act_resume_run = self._action("Resume run…", lambda: self.resume_run(), "Ctrl+Shift+R",
                                           "Continue a run folder from its latest checkpoint, with its own config")
        self.act_quit = self._action("Quit", self.close, QKeySequence.StandardKey.Quit, "Quit MAML Lab")
        self.act_undo = self._action("Undo", self.playground.undo, QKeySequence.StandardKey.Undo,
                                     "Undo the last change to the playground task")
        self.act_delete = self._action("Delete point", self.playground.remove_selected, Qt.Key.Key_Delete,
                                       "Remove the selected support point")
        self.act_random = self._action("Random task", lambda: self.playground.random_task(), "Ctrl+T",
                                       "A sinusoid from the task distribution")
        self.act_clear = self._action("Clear task", self.playground.clear, "Ctrl+Shift+Backspace",
                                      "Remove every point and the true curve")
        self.act_draw = self._action("Draw mode", lambda on: self.playground.set_mode("draw" if on else "points"),
                                     "Ctrl+D", "Draw the true curve freehand", checkable=True)
        self.playground.mode_group.buttonToggled.connect(
            lambda *_: self.act_draw.setChecked(self.playground.draw_mode.isChecked()))
        self.act_view_playground = self._action("Playground", lambda: self.tabs.setCurrentIndex(0), "Ctrl+1")
        self.act_view_training = self._action("Training curves", lambda: self.tabs.setCurrentIndex(1), "Ctrl+2")
        self.act_log = self._action("Log scale", self.plots.set_log, "Ctrl+L", "Logarithmic loss axis",
                                    checkable=True)
        self.act_log.setChecked(self.plots.log_scale.isChecked())
        self.plots.log_scale.toggled.connect(self.act_log.setChecked)
        self.act_shortcuts = self._action("Keyboard shortcuts", self.show_shortcuts,
                                          QKeySequence.StandardKey.HelpContents)
        self.act_about = self._action("About MAML Lab", self.show_about)

    def _build_toolbar(self) -> None:
        bar = self.addToolBar("Run")
        bar.setObjectName("RunToolbar")
        bar.setMovable(False)
        bar.setIconSize(QSize(18, 18))
        bar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        for act in (self.act_start, self.act_pause, self.act_stop, self.act_reset):
            bar.addAction(act)
        bar.widgetForAction(self.act_start).setObjectName("StartButton")
        bar.addSeparator()
        box = QWidget()
        row = QHBoxLayout(box)
        row.setContentsMargins(8, 0, 8, 0)
        row.setSpacing(10)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("%p%")
        self.progress.setMinimumWidth(220)
        self.progress.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.progress_label = QLabel("Ready")
        self.progress_label.setProperty("hint", True)
        self.progress_label.setMinimumWidth(300)
        row.addWidget(self.progress, 1)
        row.addWidget(self.progress_label)
        bar.addWidget(box)
        bar.addSeparator()
        self.act_import.setIconText("Import")
        self.act_export.setIconText("Export")
        for act in (self.act_import, self.act_export):
            bar.addAction(act)
        self.toolbar = bar

    def _build_menus(self) -> None:
        menu = self.menuBar()
        file = menu.addMenu("&File")
        file.addAction(self.act_open_config)
        self.recent_menu = file.addMenu("Open recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent_menu)
        file.addAction(self.act_save_config)
        file.addSeparator()
        file.addAction(self.act_past_runs)
        file.addAction(self.act_resume_run)
        file.addSeparator()
        file.addAction(self.act_open_images)
        file.addAction(self.act_download)
        file.addSeparator()
        file.addAction(self.act_import)
        file.addAction(self.act_export)
        self.export_menu = file.addMenu("Export initialization of")
        self.export_menu.aboutToShow.connect(self._fill_export_menu)
        file.addSeparator()
        file.addAction(self.act_export_plot)
        file.addAction(self.act_export_metrics)
        file.addSeparator()
        file.addAction(self.act_quit)
        edit = menu.addMenu("&Edit")
        for act in (self.act_undo, self.act_delete, self.act_clear, None, self.act_random, self.act_draw):
            edit.addSeparator() if act is None else edit.addAction(act)
        run = menu.addMenu("&Run")
        for act in (self.act_toggle, self.act_stop, self.act_reset):
            run.addAction(act)
        view = menu.addMenu("&View")
        for act in (self.act_view_playground, self.act_view_training, None, self.act_log, None):
            view.addSeparator() if act is None else view.addAction(act)
        self.view_menu = view  # add_view appends the views registered later
        help_menu = menu.addMenu("&Help")
        help_menu.addAction(self.act_shortcuts)
        help_menu.addAction(self.act_about)

    def _build_status_bar(self) -> None:
        status = self.statusBar()
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

    def add_view(self, key: str, widget: QWidget, title: str) -> QWidget:
        """Register a main view: a tab, `--view key` for screenshots (app.VIEWS), and a View-menu entry with
        Ctrl+<its number>. A view may offer export_item()/view_title() (File ▸ Export plot) and
        wait_until_idle(timeout_s) (a screenshot waits for its background computation)."""
        self.tabs.addTab(widget, title)
        self.views[key] = widget
        number = self.tabs.indexOf(widget) + 1
        act = self._action(title, lambda: self.tabs.setCurrentWidget(widget),
                           f"Ctrl+{number}" if number <= 9 else None)
        self.view_menu.addAction(act)
        return widget

    def _build_inside_views(self) -> None:
        """Looking inside: the loss landscape, the parameter paths and the adaptation curves."""
        self.landscape = self.add_view("landscape", LandscapeView(), "Landscape")
        self.paths = self.add_view("paths", PathsView(), "Paths")
        self.adaptation = self.add_view("adaptation", AdaptationView(), "Adaptation")
        self.inits.subscribe(self.adaptation.initializations_changed)
        self.paths.checkpoint_selected.connect(self._on_checkpoint)
        self.landscape.export_plot_requested.connect(lambda: self.export_plot())
        self.adaptation.export_plot_requested.connect(lambda: self.export_plot())
        self.inside_views = (self.landscape, self.paths, self.adaptation)

    def _build_tasks_view(self) -> None:
        """Few-shot image tasks: held-out tasks with predictions, picked shots, drawings."""
        self.tasks = self.add_view("tasks", TasksView(), "Tasks")
        self.inits.subscribe(self.tasks.initializations_changed)
        self.tasks.message.connect(lambda text: self.statusBar().showMessage(text, 6000))
        self.panel.changed.connect(self._sync_tasks_view)
        self.panel.open_image_set_requested.connect(lambda: self.open_image_set())
        self._sync_tasks_view()

    def _sync_tasks_view(self) -> None:
        if not self.running:
            config, _ = self.panel.try_config()
            if config is not None:
                self.tasks.set_experiment(config)

    def _on_paths(self, run) -> None:
        for view in self.inside_views:
            view.set_run(run)

    def _on_checkpoint(self, info: dict) -> None:
        """The Paths view's slider: preview that checkpoint in the playground (the newest one: nothing extra)."""
        if info.get("latest") or mlp_for_playground(info.get("model_spec") or {}):
            self.inits.remove("checkpoint")
            return
        name = info["algorithm"]
        label = f"{algorithm_label(name)} @ {info['iteration']:,}"
        self.inits.put(Initialization("checkpoint", name, label, info["model"], info["params"], info["adaptation"],
                                      "checkpoint"))

    def _clear_inside_views(self) -> None:
        self.inits.remove("checkpoint")
        self.inits.clear("trained")
        self.paths.clear()
        self.landscape.clear()
        self.adaptation.clear_trained()

    # -- state ---------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.state in RUNNING_STATES

    def _set_state(self, state: str) -> None:
        self.state = state
        label, color = STATE_STYLE.get(state, (state.title(), "#8A939C"))
        self.state_label.setText(f"<span style='color:{color}; font-size:13pt'>●</span>&nbsp;{label}&nbsp;")
        self.panel.set_running(self.running)
        self._sync_actions()

    def _sync_actions(self) -> None:
        running = self.running
        self.act_start.setEnabled(not running and self.panel.valid)
        self.act_start.setToolTip("Train the checked algorithms (Space)" if self.panel.valid
                                  else f"Fix the experiment first: {self.panel.message}")
        self.act_pause.setEnabled(self.state in ("running", "paused"))
        paused = self.state == "paused"
        self.act_pause.setText("Resume" if paused else "Pause")
        self.act_pause.setIcon(icon("resume" if paused else "pause"))
        self.act_stop.setEnabled(self.state in ("starting", "running", "paused"))
        self.act_reset.setEnabled(self.state not in ("starting", "stopping"))
        self.act_open_config.setEnabled(not running)
        self.act_resume_run.setEnabled(not running)
        if self.past_runs_dialog is not None:
            from shiboken6 import isValid

            if isValid(self.past_runs_dialog):
                self.past_runs_dialog.set_busy(running, self.run_folder if running else None)
        has_params = self.latest_snapshot is not None
        self.act_export.setEnabled(has_params)
        self.export_menu.setEnabled(has_params)
        self.act_export_metrics.setEnabled(bool(self.history.algorithms))

    def _sync_device_label(self) -> None:
        from ..core.training.device import resolve_device

        if self.running and self.run_config is not None and getattr(self, "_device", None):
            text = self._device
        else:
            name = self.panel.device.currentData() or "auto"
            try:
                resolved = str(resolve_device(name))
                text = f"{name} → {resolved}" if name == "auto" else resolved
            except ValueError:
                text = f"{name} (unavailable)"
        self.device_label.setText(f"Device: {text}")

    # -- run control ---------------------------------------------------------------------------------
    def toggle_run(self) -> None:
        if self.state == "running":
            self.pause_or_resume()
        elif self.state == "paused":
            self.pause_or_resume()
        elif not self.running:
            self.start()

    def start(self) -> bool:
        if self.running or self.controller.running:
            return False
        config, message = self.panel.try_config()
        if config is None:
            self.message_bar.show_message("error", f"Cannot start: {message}")
            return False
        self.message_bar.clear()
        self._failure = ""
        self._begin_run_views(config)
        self.progress_label.setText(f"0 / {config.iterations:,} iterations · starting…")
        self._set_state("starting")
        self.controller.start(config, runs_root=self.runs_root())
        return True

    def _begin_run_views(self, config: ExperimentConfig) -> None:
        """Empty curves, paths and trained models for a run of `config` (a new one, or a resumed one)."""
        self.run_config = config
        self._device = None
        self.run_folder = None
        self.opened_run = None
        self._show_folder(None)
        self.history.clear()
        self.plots.reset([a.name for a in config.algorithms], config.iterations,
                         "MSE" if config.task == "sinusoid" else "cross-entropy", accuracy=config.task == "images")
        self._clear_inside_views()
        for view in (self.landscape, self.adaptation, self.tasks):
            view.set_training(True)
        self.tasks.set_experiment(config)
        self.latest_snapshot = None
        self.last_progress = None
        self.progress.setRange(0, config.iterations)
        self.progress.setValue(0)

    def pause_or_resume(self) -> None:
        if self.state == "running":
            self.controller.pause()
            self._set_state("paused")
            self.statusBar().showMessage("Paused: training waits after this meta-iteration", 3000)
        elif self.state == "paused":
            self.controller.resume()
            self._set_state("running")

    def stop(self) -> None:
        if self.state in ("starting", "running", "paused"):
            self.controller.stop()
            self._set_state("stopping")

    def reset(self) -> None:
        if self.running:
            self._reset_after_stop = True
            self.stop()
            return
        self._reset_after_stop = False
        self.history.clear()
        self.plots.reset([])
        self._clear_inside_views()
        self.latest_snapshot = None
        self.last_progress = None
        self.run_config = None
        self.run_folder = None
        self.opened_run = None
        self._show_folder(None)
        self._remove_opened_exports()
        self.message_bar.clear()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress_label.setText("Ready")
        self._set_state("idle")

    def _on_started(self, info: dict) -> None:
        if info.get("config") is not None:  # a resumed run: its views start from the restored history
            self._begin_resumed_views(info)
        self._device = info.get("device", "")
        folder = info.get("run_folder")
        self.run_folder = Path(folder) if folder else None
        self._show_folder(self.run_folder)
        if folder and info.get("config") is None:  # (a resumed run says where it resumes instead)
            self.statusBar().showMessage(f"Run folder: {folder}", 8000)
        elif info.get("run_folder_error"):
            self.message_bar.show_message(
                "warning", f"<b>No run folder</b>: {_html(info['run_folder_error'])}. Training goes on, but this run "
                "leaves no metrics, checkpoints or exports on disk and cannot be resumed. Choose another runs folder "
                "in File ▸ Past runs ▸ Change….")
        self._sync_device_label()
        if self.state == "starting":
            self._set_state("running")

    def _begin_resumed_views(self, info: dict) -> None:
        config = info["config"]
        self._resuming = None
        self.message_bar.clear()
        self._failure = ""
        self._begin_run_views(config)
        self.panel.set_config(config)  # the form shows the run's experiment (locked while it trains)
        self.history.add_chunk(info.get("history") or {})
        self.plots.mark_dirty()
        name = Path(info["run_folder"]).name if info.get("run_folder") else "the run"
        at = info.get("resumed_at")
        self.progress.setValue(int(at or 0))
        self.progress_label.setText(f"{int(at or 0):,} / {config.iterations:,} iterations · resuming…")
        if at is None:
            self.message_bar.show_message("info", f"{_html(name)} had no checkpoint yet: training it again from the "
                                          "start, with its config.")
        else:
            self.statusBar().showMessage(f"Resuming {name} at iteration {int(at):,} of {config.iterations:,}", 8000)

    def _on_progress(self, p: dict) -> None:
        self.last_progress = p
        self.history.add_chunk(p.get("chunk") or {})
        self.plots.mark_dirty()
        total = max(int(p["total"]), 1)
        self.progress.setRange(0, total)
        self.progress.setValue(int(p["iteration"]))
        if p["state"] == "running":
            rate = p.get("tasks_per_s", 0.0)
            rate_text = f"{rate:,.0f} tasks/s" if rate > 0 else "measuring…"
            self.progress_label.setText(f"{int(p['iteration']):,} / {total:,} iterations · {rate_text} · "
                                        f"ETA {format_duration(p.get('eta_s', 0.0))}")
        elif p["state"] == "paused":
            self.progress_label.setText(f"{int(p['iteration']):,} / {total:,} iterations · paused")
        if not self.act_export_metrics.isEnabled() and self.history.algorithms:
            self._sync_actions()

    def _on_snapshot(self, snap: dict) -> None:
        self.latest_snapshot = snap
        self.inits.update_from_snapshot(snap)
        if not self.act_export.isEnabled():
            self._sync_actions()

    def _on_loading(self, info: dict) -> None:
        """The image set loads (off the GUI thread) before training starts."""
        if self.state != "starting":
            return
        total = max(int(info.get("total", 0)), 1)
        self.progress.setRange(0, total)
        self.progress.setValue(int(info.get("done", 0)))
        self.progress_label.setText(f"Loading the image set… {int(info.get('done', 0)):,} / {total:,}")

    def _on_failed(self, message: str) -> None:
        self._failure = message
        kept = " The last good parameters are kept: File ▸ Export initialization." if self.latest_snapshot else ""
        self.message_bar.show_message("error", f"<b>Training failed</b>: {_html(message)}.{kept}")

    def _on_refused(self, message: str) -> None:
        self._error("Cannot resume run", f"The run was not resumed:\n{message}\n\nNothing was changed: the run "
                    "folder is as it was.")

    def _on_finished(self, info: dict) -> None:
        if self._resuming is not None:  # a resume that never started (refused, or cancelled while loading)
            before, self._resuming = self._resuming, None
            self.progress.setRange(*before["range"])
            self.progress.setValue(before["value"])
            self.progress_label.setText(before["label"])
            self._set_state(before["state"])
            self._sync_device_label()
            if self._reset_after_stop:
                self.reset()
            return
        state = info.get("state", "stopped")
        self._set_state(state)
        self.plots.mark_dirty()
        for view in (self.landscape, self.adaptation, self.tasks):
            view.set_training(False)
        it, total = int(info.get("iteration", 0)), int(info.get("total", 0))
        reason = info.get("reason", "")
        elapsed = format_duration((self.last_progress or {}).get("elapsed_s", 0.0))
        if state == "finished":
            self.progress_label.setText(f"{it:,} / {total:,} iterations · finished in {elapsed}")
            self.statusBar().showMessage(f"Finished {it:,} meta-iterations", 5000)
        elif state == "stopped":
            self.progress_label.setText(f"{it:,} / {total:,} iterations · stopped")
            if self.run_folder is not None:
                self.statusBar().showMessage(f"Stopped; its checkpoint is in {self.run_folder} "
                                             "(File ▸ Resume run continues it)", 8000)
        elif state == "diverged":
            self.progress_label.setText(f"{it:,} / {total:,} iterations · diverged")
            kept = "" if "kept" in reason else " The last good parameters are kept."
            self.message_bar.show_message(
                "error", f"<b>Training stopped</b>: {_html(reason)}.{kept} Export them (Ctrl+E), or lower the "
                "inner or meta learning rate and press Start to try again.")
        elif state == "failed":
            self.progress_label.setText(f"{it:,} / {total:,} iterations · failed")
        self._sync_device_label()
        self._refresh_past_runs()
        if self._reset_after_stop:
            self.reset()

    # -- dialogs (patched in tests) -------------------------------------------------------------------
    def _error(self, title: str, text: str) -> None:
        QMessageBox.warning(self, title, text)

    def _last_dir(self) -> str:
        d = str(self.settings.value("paths/last_dir", "") or "")
        return d if d and Path(d).is_dir() else str(Path.home())

    def _remember_dir(self, path: str | Path) -> None:
        self.settings.setValue("paths/last_dir", str(Path(path).parent))

    def _write_error(self, path, exc: OSError) -> None:
        reason = exc.strerror or str(exc)
        self._error("Could not write file", f"Could not write {path}:\n{reason}.\n\nNothing was changed: the "
                    "previous file, if there was one, is kept.")

    # -- File: initializations ------------------------------------------------------------------------
    def exportable(self) -> list[str]:
        return list(self.latest_snapshot["params"]) if self.latest_snapshot else []

    def export_initialization(self, name: str | None = None) -> list[Path]:
        """Export one algorithm's initialization (all of them with `name='*'`); returns the files written."""
        names = self.exportable()
        if not names:
            self._error("Nothing to export", "There is no trained initialization yet: press Start first.")
            return []
        if not name:
            if len(names) == 1:
                name = names[0]
            else:
                labels = [algorithm_label(n) for n in names] + ["All (one file each)"]
                choice, ok = QInputDialog.getItem(self, "Export initialization", "Initialization to export:",
                                                  labels, 0, False)
                if not ok:
                    return []
                name = "*" if choice == labels[-1] else names[labels.index(choice)]
        snap = self.latest_snapshot
        stem = f"{name if name != '*' else 'maml-lab'}-{snap['iteration']}it"
        title = "Export initialization" + (f" of {algorithm_label(name)}" if name != "*" else "s")
        path = self._ask_save_path(title, f"{stem}.safetensors", INIT_FILTERS)
        if path is None:
            return []
        targets = {name: path} if name != "*" else {
            n: path.with_name(f"{path.stem}-{n}{path.suffix}") for n in names}
        written = []
        for n, target in targets.items():
            try:
                export_initialization(target, snap["params"][n], snap["metadata"].get(n, {}))
            except OSError as exc:
                self._write_error(target, exc)
                return written
            except (InitializationError, ValueError) as exc:
                self._error("Cannot export", str(exc))
                return written
            written.append(target)
        self._remember_dir(path)
        for target in written:
            self._add_recent(target)
        self.statusBar().showMessage(f"Exported {', '.join(str(t) for t in written)}", 6000)
        return written

    def import_initialization(self, path: str | None = None) -> Initialization | None:
        path = Path(path) if path else self._ask_open_path("Import initialization",
                                                           "Initializations (*.safetensors *.pt)")
        if path is None:
            return None
        init, why = self._read_initialization(path)
        if init is None:
            self._error("Cannot import initialization", f"{path.name} was not imported{why}")
            return None
        where = self._place_initialization(init)
        if where == "tasks":
            self.tasks.show_heldout_of(init)  # the classes it was not trained on, unless the panel's tasks fit
        self._remember_dir(path)
        self._add_recent(path)
        if where == "tasks":  # the Tasks view uses it on image tasks with the same N ways and image size
            self.tabs.setCurrentWidget(self.tasks)
            spec = init.model.spec()
            self.statusBar().showMessage(
                f"Imported {path.name}: a {spec.get('ways')}-way conv-4 for {spec.get('image_size')}x"
                f"{spec.get('image_size')} images, shown in Tasks on image tasks of that shape", 8000)
            return init
        self.tabs.setCurrentWidget(self.playground)
        self.statusBar().showMessage(f"Imported {path.name} ({algorithm_label(init.algorithm)}, "
                                     f"{init.metadata.get('iterations', 0)} iterations)", 6000)
        return init

    def _read_initialization(self, path: Path, label: str | None = None) -> tuple[Initialization | None, str]:
        """(the initialization in `path`, "") or (None, why not: the text that follows "<name> was not imported")."""
        try:
            params, meta, model = load_initialization(path)
        except (InitializationError, OSError, ValueError) as exc:
            return None, f":\n{exc}"
        image_model = model.spec().get("kind") == "conv4"
        problem = None if image_model else mlp_for_playground(model.spec())
        if problem:
            return None, f": {problem}."
        algorithm = meta.get("algorithm", "unknown")
        algorithm = algorithm if algorithm in ALGORITHMS else "unknown"
        label = label or f"{algorithm_label(algorithm) if algorithm != 'unknown' else 'Imported'} · {path.name}"
        return Initialization(f"file:{path.resolve()}", algorithm, label, model, params,
                              adaptation_from_metadata(meta), "imported", meta), ""

    def _place_initialization(self, init: Initialization) -> str:
        """Put an imported initialization where it can adapt: the Tasks view (conv-4) or the playground and
        Adaptation view (MLP). Returns "tasks" or "playground"."""
        self.inits.put(init)
        return "tasks" if init.model.spec().get("kind") == "conv4" else "playground"

    def _fill_export_menu(self) -> None:
        self.export_menu.clear()
        for name in self.exportable():
            act = self.export_menu.addAction(f"{algorithm_label(name)}…")
            act.triggered.connect(lambda _=False, n=name: self.export_initialization(n))
        if len(self.exportable()) > 1:
            self.export_menu.addSeparator()
            self.export_menu.addAction("All (one file each)…").triggered.connect(
                lambda: self.export_initialization("*"))

    # -- File: past runs ---------------------------------------------------------------------------------
    def runs_root(self) -> Path:
        """Where run folders go: $MAML_LAB_RUNS, else the folder chosen in Past runs, else <app data>/runs."""
        return runs_root(str(self.settings.value(RUNS_ROOT_KEY, "") or ""), app_runs_folder())

    def _set_runs_root(self, path: str) -> None:
        self.settings.setValue(RUNS_ROOT_KEY, str(path))
        self.statusBar().showMessage(f"New runs go to {path}", 5000)

    def _ask_directory(self, title: str, start: Path) -> Path | None:
        """A folder dialog opening in `start` (or the last-used folder); None when cancelled."""
        where = str(start) if Path(start).is_dir() else self._last_dir()
        path = QFileDialog.getExistingDirectory(self, title, where)
        return Path(path) if path else None

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

    def show_past_runs(self):
        """File ▸ Past runs: the run folders under the runs root, newest first (non-modal)."""
        from shiboken6 import isValid

        from .past_runs import PastRunsDialog

        dialog = self.past_runs_dialog
        if dialog is None or not isValid(dialog):
            dialog = PastRunsDialog(self, self.runs_root(), self.run_folder if self.running else None)
            dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
            dialog.open_requested.connect(lambda p: self._from_dialog(self.open_run, p))
            dialog.resume_requested.connect(lambda p: self._from_dialog(self.resume_run, p))
            dialog.root_changed.connect(self._set_runs_root)
            self.past_runs_dialog = dialog
        else:
            dialog.root = self.runs_root()
            dialog.refresh()
        dialog.set_busy(self.running, self.run_folder if self.running else None)
        dialog.show()
        dialog.raise_()
        dialog.activateWindow()
        return dialog

    def _from_dialog(self, action, path: str) -> None:
        if action(path) and self.past_runs_dialog is not None:
            self.past_runs_dialog.close()

    def _refresh_past_runs(self) -> None:
        from shiboken6 import isValid

        dialog = self.past_runs_dialog
        if dialog is not None and isValid(dialog) and dialog.isVisible():
            dialog.set_busy(self.running, self.run_folder if self.running else None)
            dialog.refresh()

    def open_run(self, path: str | None = None) -> bool:
        """Show a past run: its curves (metrics.csv) in Training curves, its parameter path (latest checkpoint)
        in the looking-inside views, its exported initializations in the playground or Tasks view, its config in
        the form. A damaged folder shows what it can and says what is missing."""
        if self.running or self.controller.running:
            self._error("Cannot open run", "A run is training: stop it before opening another (one run at a time).")
            return False
        path = Path(path) if path else self._ask_directory("Open run folder", self.runs_root())
        if path is None:
            return False
        try:
            run = read_run(path)
        except (RunFolderError, OSError) as exc:
            self._error("Cannot open run", f"{path} was not opened:\n{exc}")
            return False
        config, summary = run.config, run.summary
        task = config.task if config is not None else summary.task
        names = list(dict.fromkeys([*(run.chunk.get("train") or {}), *(run.chunk.get("val") or {})]))
        names = names or ([a.name for a in config.algorithms] if config is not None else summary.algorithms)
        total = summary.total or (config.iterations if config is not None else 0)
        self.message_bar.clear()
        self._failure = ""
        self.history.clear()
        self.plots.reset(names, total or None, "MSE" if task == "sinusoid" else "cross-entropy",
                         accuracy=task == "images")
        self.history.add_chunk(run.chunk)
        self.plots.mark_dirty()
        self._clear_inside_views()
        self._remove_opened_exports()  # those of the run opened before
        self.latest_snapshot = None
        self.last_progress = None
        self.run_config = config
        if config is not None:
            self.panel.set_config(config)
        if run.paths is not None:
            self._on_paths(run.paths)
        problems = list(run.problems)
        for export in run.exports:
            algo = export.stem
            init, why = self._read_initialization(export, f"{algorithm_label(algo)} · run")
            if init is None:
                problems.append(f"exports/{export.name} was not loaded{why.rstrip('.')}")
                continue
            self._place_initialization(init)
            self._opened_keys.append(init.key)
        self.opened_run = run.folder.path
        self.run_folder = run.folder.path
        self._show_folder(run.folder.path)
        it = summary.iteration or self.history.last_iteration()
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(min(it, max(total, 1)))
        status = summary.status_text()
        self.progress_label.setText(f"{it:,} / {total:,} iterations · {status} (opened)")
        self._set_state(status if status in ("finished", "stopped", "diverged", "failed") else "idle")
        self.tabs.setCurrentWidget(self.plots)
        loaded = f"{len(self._opened_keys)} exported initialization{'s' if len(self._opened_keys) != 1 else ''}"
        if problems:
            self.message_bar.show_message(
                "warning", f"<b>Opened {_html(summary.name)}</b>, showing what could be read: "
                + _html("; ".join(problems)) + ".")
        else:
            self.statusBar().showMessage(f"Opened {summary.name}: {it:,} iterations, {loaded}", 8000)
        self._sync_actions()
        return True

    def _remove_opened_exports(self) -> None:
        self.inits.remove(*self._opened_keys)
        self._opened_keys = []

    def resume_run(self, path: str | None = None) -> bool:
        """File ▸ Resume run: continue a run folder from its latest checkpoint with its own config (a finished
        run is opened instead; a folder without a checkpoint trains again from the start)."""
        if self.running or self.controller.running:
            self._error("Cannot resume run", "A run is training: stop it before resuming another (one run at a "
                        "time).")
            return False
        path = Path(path) if path else self._ask_directory("Resume run folder", self.runs_root())
        if path is None:
            return False
        try:
            folder = RunFolder.open(path)
            config = folder.config()
        except (RunFolderError, OSError) as exc:
            self._error("Cannot resume run", f"The run was not resumed:\n{exc}\n\nNothing was changed.")
            return False
        status = folder.status()
        try:
            done = status.get("status") == "finished" and int(status.get("iteration") or 0) >= config.iterations
        except (TypeError, ValueError):
            done = False
        if done:
            if self.open_run(folder.path):
                self.statusBar().showMessage(f"{folder.name} is finished: opened it (nothing left to train)", 8000)
                return True
            return False
        self._resuming = {"state": self.state, "range": (self.progress.minimum(), self.progress.maximum()),
                          "value": self.progress.value(), "label": self.progress_label.text()}
        self.progress.setRange(0, 0)  # busy until the checkpoint is restored
        self.progress_label.setText(f"Resuming {folder.name}…")
        self._set_state("starting")
        self.controller.resume_run(folder.path)
        return True

    # -- File: image sets ------------------------------------------------------------------------------
    def open_image_set(self, path: str | None = None) -> ImageSetDialog | None:
        """File ▸ Open image set: a dialog loads the set off the GUI thread and shows its report; "Use image set"
        makes it the experiment's (image tasks). With `path` it starts loading that path at once."""
        if self.running:
            self._error("Cannot open image set", "Stop training before choosing another image set.")
            return None
        config, _ = self.panel.try_config()
        if config is not None and config.task == "images":
            values = {"image_size": config.image_size, "image_mode": config.image_mode, "ways": config.ways,
                      "shots": config.shots, "queries": config.queries}
        else:
            values = {"ways": self.panel.ways.value()}
        dialog = ImageSetDialog(self, self._last_dir(), **values)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.accepted.connect(lambda: self._use_image_set(dialog.path, dialog.image_set))
        self.image_set_dialog = dialog
        dialog.open()
        if path:
            dialog.load(path)
        return dialog

    def _use_image_set(self, path: str | None, image_set) -> None:
        if not path or image_set is None or self.running:
            return
        self.panel.set_image_data(path)
        self._remember_dir(path)
        self.tabs.setCurrentWidget(self.tasks)
        self.statusBar().showMessage(f"Image tasks from {Path(path).name}: {image_set.num_classes:,} classes, "
                                     f"{image_set.num_images:,} images", 6000)

    def download_omniglot(self, folder: str | None = None, **options) -> DownloadDialog:
        """File ▸ Download Omniglot: the official zips into a folder (options: base_url, files, checksums, md5)."""
        folder = folder or str(Path(self._last_dir()) / "omniglot")
        dialog = DownloadDialog(self, folder, **options)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.open_requested.connect(lambda p: self.open_image_set(p))
        self.download_dialog = dialog
        dialog.open()
        return dialog

    # -- File: plot, metrics, config ------------------------------------------------------------------
    def current_view(self):
        return self.tabs.currentWidget()

    def export_plot(self, path: str | None = None) -> Path | None:
        view = self.current_view()
        if not hasattr(view, "export_item"):
            self._error("Cannot export plot", "This view has no plot to export.")
            return None
        path = Path(path) if path else self._ask_save_path("Export plot", f"maml-lab-{view.view_title()}.png",
                                                            PLOT_FILTERS)
        if path is None:
            return None
        try:
            data = render_plot(view.export_item(), path.suffix.lower())
            atomic_write_bytes(path, data)
        except OSError as exc:
            self._write_error(path, exc)
            return None
        self._remember_dir(path)
        self.statusBar().showMessage(f"Saved {path}", 5000)
        return path

    def _ask_open_path(self, title: str, file_filter: str) -> Path | None:
        """An open dialog in the last-used folder (any file may be chosen too); None when cancelled."""
        path, _ = QFileDialog.getOpenFileName(self, title, self._last_dir(), f"{file_filter};;All files (*)")
        return Path(path) if path else None

    def _ask_save_path(self, title: str, filename: str, filters: list[tuple[str, str]]) -> Path | None:
        """A save dialog opening in the last-used folder; a name without one of `filters`' suffixes gets the
        suffix of the filter the user picked (the first when none). None when cancelled."""
        spec = ";;".join(f"{label} (*{suffix})" for label, suffix in filters)
        path, selected = QFileDialog.getSaveFileName(self, title, str(Path(self._last_dir()) / filename), spec)
        if not path:
            return None
        suffixes = [suffix for _, suffix in filters]
        if Path(path).suffix.lower() not in suffixes:
            path += next((suffix for label, suffix in filters if (selected or "").startswith(label)), suffixes[0])
        return Path(path)

    def export_metrics(self, path: str | None = None) -> Path | None:
        if not self.history.algorithms:
            self._error("Nothing to export", "There are no training metrics yet: press Start first.")
            return None
        path = Path(path) if path else self._ask_save_path("Export metrics", "maml-lab-metrics.csv", [("CSV", ".csv")])
        if path is None:
            return None
        try:
            atomic_write_bytes(path, self.history.to_csv().encode("utf-8"))
        except OSError as exc:
            self._write_error(path, exc)
            return None
        self._remember_dir(path)
        self.statusBar().showMessage(f"Saved {path}", 5000)
        return path

    def save_config(self, path: str | None = None) -> Path | None:
        try:
            config = self.panel.config()
        except FormError as exc:
            self._error("Cannot save experiment", f"The experiment has an invalid value:\n{exc}")
            return None
        path = Path(path) if path else self._ask_save_path("Save experiment", "experiment.toml", [("TOML", ".toml")])
        if path is None:
            return None
        try:
            config.save_toml(path)
        except OSError as exc:
            self._write_error(path, exc)
            return None
        self._remember_dir(path)
        self._add_recent(path)
        self.statusBar().showMessage(f"Saved {path}", 5000)
        return path

    def open_config(self, path: str | None = None) -> ExperimentConfig | None:
        if self.running:
            self._error("Cannot open experiment", "Stop training before opening another experiment.")
            return None
        path = Path(path) if path else self._ask_open_path("Open experiment", "TOML (*.toml)")
        if path is None:
            return None
        try:
            config = ExperimentConfig.load_toml(path)
        except (ValueError, OSError) as exc:
            self._error("Cannot open experiment", f"{path.name} was not opened:\n{exc}")
            return None
        self.panel.set_config(config)
        self._remember_dir(path)
        self._add_recent(path)
        self.statusBar().showMessage(f"Opened {path}", 5000)
        return config

    # -- recent files --------------------------------------------------------------------------------
    def recent_files(self) -> list[str]:
        value = self.settings.value("recent/files", [])
        if isinstance(value, str):
            value = [value]
        return [str(v) for v in (value or [])]

    def _add_recent(self, path) -> None:
        path = str(Path(path).resolve())
        files = [path] + [p for p in self.recent_files() if p != path]
        self.settings.setValue("recent/files", files[:RECENT_LIMIT])

    def _fill_recent_menu(self) -> None:
        self.recent_menu.clear()
        files = self.recent_files()
        for p in files:
            kind = "experiment" if p.endswith(".toml") else "initialization"
            act = self.recent_menu.addAction(f"{Path(p).name}  —  {kind}")
            act.setToolTip(p)
            act.setEnabled(Path(p).exists())
            if kind == "experiment":
                act.triggered.connect(lambda _=False, p=p: self.open_config(p))
            else:
                act.triggered.connect(lambda _=False, p=p: self.import_initialization(p))
        if files:
            self.recent_menu.addSeparator()
            self.recent_menu.addAction("Clear recent files").triggered.connect(
                lambda: self.settings.setValue("recent/files", []))
        else:
            self.recent_menu.addAction("No recent files").setEnabled(False)

    # -- settings ------------------------------------------------------------------------------------
    def _restore_settings(self) -> None:
        s = self.settings
        geometry = s.value("window/geometry")
        if isinstance(geometry, QByteArray) and not geometry.isEmpty():
            self.restoreGeometry(geometry)
        state = s.value("window/state")
        if isinstance(state, QByteArray) and not state.isEmpty():
            self.restoreState(state)
        for key, splitter in (("window/splitter", self.splitter), ("playground/splitter", self.playground.splitter)):
            value = s.value(key)
            if isinstance(value, QByteArray) and not value.isEmpty():
                splitter.restoreState(value)
        try:
            self.tabs.setCurrentIndex(int(s.value("window/tab", 0)))
        except (TypeError, ValueError):
            pass
        log = s.value("plots/log_scale")
        if log is not None:
            self.plots.set_log(str(log).lower() in ("true", "1"))
        text = s.value("experiment/last_config")
        if text:
            import tomllib

            try:
                self.panel.set_config(ExperimentConfig.from_dict(tomllib.loads(str(text))))
            except (ValueError, tomllib.TOMLDecodeError):
                pass  # an old or broken saved config: keep the defaults

    def save_settings(self) -> None:
        s = self.settings
        s.setValue("window/geometry", self.saveGeometry())
        s.setValue("window/state", self.saveState())
        s.setValue("window/splitter", self.splitter.saveState())
        s.setValue("playground/splitter", self.playground.splitter.saveState())
        s.setValue("window/tab", self.tabs.currentIndex())
        s.setValue("plots/log_scale", self.plots.log_scale.isChecked())
        config, _ = self.panel.try_config()
        if config is not None:
            s.setValue("experiment/last_config", tomli_w.dumps(config.to_dict()))
        s.sync()

    # -- help ----------------------------------------------------------------------------------------
    def show_shortcuts(self) -> None:
        rows = [(a.text().replace("…", ""), a.shortcut().toString(QKeySequence.SequenceFormat.NativeText))
                for a in (self.act_toggle, self.act_stop, self.act_reset, self.act_open_config, self.act_save_config,
                          self.act_past_runs, self.act_resume_run, self.act_import, self.act_export,
                          self.act_export_plot, self.act_export_metrics,
                          self.act_undo, self.act_delete, self.act_random, self.act_draw, self.act_log,
                          self.act_view_playground, self.act_view_training)]
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
        self.playground.shutdown()
        for view in (*self.inside_views, self.tasks):
            view.shutdown()
        from shiboken6 import isValid

        for dialog in (getattr(self, "image_set_dialog", None), getattr(self, "download_dialog", None)):
            if dialog is not None and isValid(dialog):
                dialog.runner.shutdown()  # their worker threads end with the window
        if not self.controller.shutdown(2000):
            print("maml-lab: the training thread is taking long to stop; waiting for it", file=sys.stderr)
            self.controller.thread.wait()

    def wait_for_training(self, timeout_s: float = 600.0) -> str:
        """Process events until the current run ends (for --screenshot and tests); returns the final state."""
        from PySide6.QtCore import QEventLoop

        if not self.running:
            return self.state
        loop = QEventLoop()
        self.controller.finished.connect(loop.quit)
        timer = QTimer()
        timer.setSingleShot(True)
        timer.timeout.connect(loop.quit)
        timer.start(int(timeout_s * 1000))
        loop.exec()
        self.controller.finished.disconnect(loop.quit)
        return self.state


def render_plot(item, suffix: str) -> bytes:
    """PNG (at twice the screen resolution) or SVG bytes of a pyqtgraph item (a plot, or a layout of plots).

    Items cached as pixmaps on screen (the axes) are drawn uncached, so an export is vector (SVG) or sharp
    (PNG). SVG is drawn with Qt's own SVG generator: pyqtgraph 0.14's SVG exporter cannot parse the path
    data Qt 6.12 writes (closed paths end in a bare 'Z').
    """
    from PySide6.QtWidgets import QGraphicsItem

    scene = item.scene()
    cached = [i for i in scene.items() if i.cacheMode() != QGraphicsItem.CacheMode.NoCache]
    modes = [i.cacheMode() for i in cached]
    for i in cached:
        i.setCacheMode(QGraphicsItem.CacheMode.NoCache)
    try:
        return _render_svg(item) if suffix == ".svg" else _render_png(item)
    finally:
        for i, mode in zip(cached, modes, strict=True):
            i.setCacheMode(mode)


def _render_svg(item) -> bytes:
    import re

    from PySide6.QtCore import QRectF
    from PySide6.QtGui import QPainter
    from PySide6.QtSvg import QSvgGenerator

    source = item.sceneBoundingRect()
    width, height = int(source.width()), int(source.height())
    buffer = QBuffer()
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    generator = QSvgGenerator()
    generator.setOutputDevice(buffer)
    generator.setSize(QSize(width, height))
    generator.setViewBox(QRectF(0, 0, width, height))
    generator.setTitle("MAML Lab")
    # the resolution the items were drawn for: pyqtgraph replays cached QPictures scaled by the DPI ratio
    generator.setResolution(round(QApplication.primaryScreen().logicalDotsPerInch()))
    painter = QPainter(generator)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    item.scene().render(painter, QRectF(0, 0, width, height), source)
    painter.end()
    text = bytes(buffer.data()).decode("utf-8")
    text = re.sub(r"<path[^>]*\sd=\"\"[^>]*/>\s*", "", text)  # empty curves: invalid path data for readers
    return text.encode("utf-8")


def _render_png(item, scale: float = 2.0) -> bytes:
    """The item as on a high-DPI screen (device pixel ratio `scale`): lines, text and symbols all sharp."""
    import pyqtgraph as pg
    from PySide6.QtGui import QPen

    # curve pens are cosmetic (a width in device pixels): widen them with the scale, so lines keep their weight
    curves = [i for i in item.scene().items() if isinstance(i, pg.PlotCurveItem)]
    pens = [QPen(c.opts["pen"]) for c in curves]
    for curve, pen in zip(curves, pens, strict=True):
        wide = QPen(pen)
        wide.setWidthF(max(pen.widthF(), 1.0) * scale)
        curve.setPen(wide)
    try:
        return _paint_png(item, scale)
    finally:
        for curve, pen in zip(curves, pens, strict=True):
            curve.setPen(pen)


def _paint_png(item, scale: float) -> bytes:
    from PySide6.QtCore import QRectF
    from PySide6.QtGui import QColor, QImage, QPainter

    source = item.sceneBoundingRect()
    width, height = source.width(), source.height()
    image = QImage(int(width * scale), int(height * scale), QImage.Format.Format_ARGB32)
    image.setDevicePixelRatio(scale)
    image.fill(QColor("white"))
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setRenderHint(QPainter.RenderHint.TextAntialiasing)
    item.scene().render(painter, QRectF(0, 0, width, height), source)
    painter.end()
    buffer = QBuffer()
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    if not image.save(buffer, "PNG"):
        raise OSError("could not encode the PNG image")
    return bytes(buffer.data())


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

