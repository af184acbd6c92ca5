"""The run state machine: start / pause / resume / stop / reset, resuming and opening run folders, and the
handlers of the TrainingController's signals.

Its own module so the state of a run (an enum, not loose strings) has one owner: the window only reads
`RunController.state` and shows it; menus, toolbar and form are enabled from it.
"""

from __future__ import annotations

import enum
import math
import weakref
from pathlib import Path

from ..core.tasks.registry import TASKS, task_family
from ..core.training.config import ExperimentConfig
from ..core.training.cost import cost_brief, cost_details
from ..core.training.runs import RunFolder, RunFolderError
from ..lab.messages import Loading, Preparing, RunEnded, RunProgress, RunStarted, Snapshot
from ..lab.run_library import open_run as read_run
from .colors import algorithm_label


class RunState(enum.StrEnum):
    """What the run is doing. A str enum: `state == "running"` and f-strings read as before."""

    IDLE = "idle"
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    FINISHED = "finished"
    STOPPED = "stopped"
    DIVERGED = "diverged"
    FAILED = "failed"
    REFUSED = "refused"

    @classmethod
    def of(cls, value) -> RunState:
        """The state named `value` (a worker's "state" string); an unknown name is a failure."""
        try:
            return cls(value)
        except ValueError:
            return cls.FAILED

    @property
    def busy(self) -> bool:
        """A run is on its way (a new run, another opened or resumed, must wait)."""
        return self in BUSY


BUSY = frozenset({RunState.STARTING, RunState.RUNNING, RunState.PAUSED, RunState.STOPPING})
ENDED = frozenset({RunState.FINISHED, RunState.STOPPED, RunState.DIVERGED, RunState.FAILED})


class RunController:
    """Drives `controller` (a worker.TrainingController) for `window` and keeps what the current run left."""

    def __init__(self, window, controller):
        # a weak reference: the window owns this object, and a cycle would leave the window (and its Qt objects)
        # to Python's cyclic garbage collector, which then deletes them at some later moment, in the middle of
        # whatever Qt is doing (a segfault, seen in the UI tests)
        self._window = weakref.ref(window)
        self.controller = controller
        self.state = RunState.IDLE
        self.run_folder: Path | None = None  # the folder the current (or last) run trains into
        self.opened_run: Path | None = None  # the past run whose curves the views show (File ▸ Past runs ▸ Open)
        self._resuming: dict | None = None  # a resume request not started yet: what to restore if it is refused
        self._opened_keys: list[str] = []  # the playground / Tasks entries of the opened run's exports
        self.run_config: ExperimentConfig | None = None
        self.latest_snapshot: Snapshot | None = None
        self.last_progress: RunProgress | None = None
        self._failure = ""
        self._reset_after_stop = False
        self._device: str | None = None
        for signal, slot in ((controller.started, self._on_started), (controller.progress, self._on_progress),
                             (controller.snapshot, self._on_snapshot), (controller.paths, self.w._on_paths),
                             (controller.finished, self._on_finished), (controller.failed, self._on_failed),
                             (controller.loading, self._on_loading), (controller.refused, self._on_refused)):
            signal.connect(slot)

    @property
    def w(self):
        return self._window()

    @property
    def running(self) -> bool:
        return self.state.busy

    @property
    def device(self) -> str | None:
        return self._device

    def toggle_run(self) -> None:
        if self.state is RunState.RUNNING:
            self.pause_or_resume()
        elif self.state is RunState.PAUSED:
            self.pause_or_resume()
        elif not self.running:
            self.start()

    def start(self) -> bool:
        if self.running or self.controller.running:
            return False
        config, message = self.w.panel.try_config()
        if config is None:
            self.w.message_bar.show_message("error", f"Cannot start: {message}")
            return False
        self.w.message_bar.clear()
        self._failure = ""
        self._begin_run_views(config)
        self.w.progress_label.setText(f"0 / {config.iterations:,} iterations · starting…")
        if hasattr(self.w, "cost_label"):
            self.w.cost_label.setText("")
            self.w.cost_label.setToolTip("")
        self._set_state(RunState.STARTING)
        self.controller.start(config, runs_root=self.w.files.runs_root())
        return True

    def _begin_run_views(self, config: ExperimentConfig) -> None:
        """Empty curves, paths and trained models for a run of `config` (a new one, or a resumed one)."""
        self.run_config = config
        self._device = None
        self.run_folder = None
        self.opened_run = None
        self.w._show_folder(None)
        self.w.history.clear()
        kind = task_family(config.task)
        self.w.plots.reset([a.name for a in config.algorithms], config.iterations, kind.loss_label,
                           accuracy=kind.metric == "accuracy", metric=kind.plot_metric, val_every=config.val_every)
        self.w._clear_inside_views()
        self.w.views_call("set_training", True)
        self.w.views_call("set_experiment", config)
        self.latest_snapshot = None
        self.last_progress = None
        self.w.progress.setRange(0, config.iterations)
        self.w.progress.setValue(0)

    def pause_or_resume(self) -> None:
        if self.state is RunState.RUNNING:
            self.controller.pause()
            self._set_state(RunState.PAUSED)
            self.w.statusBar().showMessage("Paused: training waits after this meta-iteration", 3000)
        elif self.state is RunState.PAUSED:
            self.controller.resume()
            self._set_state(RunState.RUNNING)

    def stop(self) -> None:
        if self.state in (RunState.STARTING, RunState.RUNNING, RunState.PAUSED):
            self.controller.stop()
            self._set_state(RunState.STOPPING)

    def reset(self) -> None:
        if self.running:
            self._reset_after_stop = True
            self.stop()
            return
        self._reset_after_stop = False
        self.w.history.clear()
        self.w.plots.reset([])
        self.w._clear_inside_views()
        self.latest_snapshot = None
        self.last_progress = None
        self.run_config = None
        self.run_folder = None
        self.opened_run = None
        self.w._show_folder(None)
        self._remove_opened_exports()
        self.w.message_bar.clear()
        self.w.progress.setRange(0, 1)
        self.w.progress.setValue(0)
        self.w.progress_label.setText("Ready")
        self._set_state(RunState.IDLE)

    def _on_started(self, info: RunStarted) -> None:
        if info.config is not None:  # a resumed run: its views start from the restored history
            self._begin_resumed_views(info)
        self._device = info.device
        folder = info.run_folder
        self.run_folder = Path(folder) if folder else None
        self.w._show_folder(self.run_folder)
        if folder and info.config is None:  # (a resumed run says where it resumes instead)
            self.w.statusBar().showMessage(f"Run folder: {folder}", 8000)
        elif info.run_folder_error:
            self.w.message_bar.show_message(
                "warning", f"<b>No run folder</b>: {_html(info.run_folder_error)}. Training goes on, but this run "
                "leaves no metrics, checkpoints or exports on disk and cannot be resumed. Choose another runs folder "
                "in File ▸ Past runs ▸ Change….")
        self.w._sync_device_label()
        if self.state is RunState.STARTING:
            self._set_state(RunState.RUNNING)

    def _begin_resumed_views(self, info: RunStarted) -> None:
        config = info.config
        self._resuming = None
        self.w.message_bar.clear()
        self._failure = ""
        self._begin_run_views(config)
        self.w.panel.set_config(config)  # the form shows the run's experiment (locked while it trains)
        self.w.history.add_chunk(info.history or {})
        self.w.plots.mark_dirty()
        name = Path(info.run_folder).name if info.run_folder else "the run"
        at = info.resumed_at
        self.w.progress.setValue(int(at or 0))
        self.w.progress_label.setText(f"{int(at or 0):,} / {config.iterations:,} iterations · resuming…")
        if at is None:
            self.w.message_bar.show_message("info", f"{_html(name)} had no checkpoint yet: training it again from the "
                                          "start, with its config.")
        else:
            self.w.statusBar().showMessage(f"Resuming {name} at iteration {int(at):,} of {config.iterations:,}", 8000)

    def _on_progress(self, p: RunProgress) -> None:
        self.last_progress = p
        self.w.history.add_chunk(p.chunk)
        self.w.plots.mark_dirty()
        total = max(int(p.total), 1)
        self.w.progress.setRange(0, total)
        self.w.progress.setValue(int(p.iteration))
        if p.state == "running":
            rate = p.tasks_per_s
            rate_text = f"{rate:,.0f} tasks/s" if rate > 0 else "measuring…"
            self.w.progress_label.setText(f"{p.iteration:,} / {total:,} iterations · {rate_text} · "
                                        f"ETA {format_duration(p.eta_s)}")
            self._show_cost(p.cost)
        elif p.state == "paused":
            self.w.progress_label.setText(f"{p.iteration:,} / {total:,} iterations · paused")
        if not self.w.act_export_metrics.isEnabled() and self.w.history.algorithms:
            self.w._sync_actions()

    def _show_cost(self, cost: dict) -> None:
        """The cost meter in the status area: each algorithm's time and memory per meta-step; the tooltip adds what
        it measures and the expected cost of more inner steps."""
        label = getattr(self.w, "cost_label", None)
        if label is None or not cost:
            return
        label.setText(" · ".join(f"{algorithm_label(n)} {cost_brief(c)}" for n, c in cost.items()))
        label.setToolTip("\n".join(cost_details(algorithm_label(n), c) for n, c in cost.items()))

    def _on_snapshot(self, snap: Snapshot) -> None:
        self.latest_snapshot = snap
        self.w.inits.update_from_snapshot(snap)
        if not self.w.act_export.isEnabled():
            self.w._sync_actions()

    def _on_loading(self, info: Loading | Preparing) -> None:
        """The image set loads (off the GUI thread) before training starts; then what else runs before the first
        iteration is named (a busy bar)."""
        if isinstance(info, Preparing):
            if self.state is RunState.STARTING or self.running and self.last_progress is None:
                self.w.progress.setRange(0, 0)
                self.w.progress_label.setText(f"{info.what[:1].upper()}{info.what[1:]}…")
            return
        if self.state is not RunState.STARTING:
            return
        total = max(info.total, 1)
        self.w.progress.setRange(0, total)
        self.w.progress.setValue(info.done)
        self.w.progress_label.setText(f"Loading the image set… {info.done:,} / {total:,}")

    def _on_failed(self, message: str) -> None:
        self._failure = message
        kept = " The last good parameters are kept: File ▸ Export initialization." if self.latest_snapshot else ""
        self.w.message_bar.show_message("error", f"<b>Training failed</b>: {_html(message)}.{kept}")

    def _on_refused(self, message: str) -> None:
        self.w._error("Cannot resume run", f"The run was not resumed:\n{message}\n\nNothing was changed: the run "
                    "folder is as it was.")

    def _on_finished(self, info: RunEnded) -> None:
        if self._resuming is not None:  # a resume that never started (refused, or cancelled while loading)
            before, self._resuming = self._resuming, None
            self.w.progress.setRange(*before["range"])
            self.w.progress.setValue(before["value"])
            self.w.progress_label.setText(before["label"])
            self._set_state(before["state"])
            self.w._sync_device_label()
            if self._reset_after_stop:
                self.reset()
            return
        state = RunState.of(info.state)
        self._set_state(state)
        self.w.plots.mark_dirty()
        self.w.views_call("set_training", False)
        it, total, reason = info.iteration, info.total, info.reason
        elapsed = format_duration(self.last_progress.elapsed_s if self.last_progress is not None else 0.0)
        if state is RunState.FINISHED:
            self.w.progress_label.setText(f"{it:,} / {total:,} iterations · finished in {elapsed}")
            self.w.statusBar().showMessage(f"Finished {it:,} meta-iterations", 5000)
        elif state is RunState.STOPPED:
            self.w.progress_label.setText(f"{it:,} / {total:,} iterations · stopped")
            if self.run_folder is not None:
                self.w.statusBar().showMessage(f"Stopped; its checkpoint is in {self.run_folder} "
                                             "(File ▸ Resume run continues it)", 8000)
        elif state is RunState.DIVERGED:
            self.w.progress_label.setText(f"{it:,} / {total:,} iterations · diverged")
            kept = "" if "kept" in reason else " The last good parameters are kept."
            self.w.message_bar.show_message(
                "error", f"<b>Training stopped</b>: {_html(reason)}.{kept} Export them (Ctrl+E), or lower the "
                "inner or meta learning rate and press Start to try again.")
        elif state is RunState.FAILED:
            self.w.progress_label.setText(f"{it:,} / {total:,} iterations · failed")
        self.w._sync_device_label()
        self.w.files.refresh_past_runs()
        if self._reset_after_stop:
            self.reset()

    def open_run(self, path: str | None = None) -> bool:
        """Show a past run: its curves (metrics.csv) in Training curves, its parameter path (latest checkpoint)
        in the looking-inside views, its exported initializations in the playground or Tasks view, its config in
        the form. A damaged folder shows what it can and says what is missing."""
        if self.running or self.controller.running:
            self.w._error("Cannot open run", "A run is training: stop it before opening another (one run at a time).")
            return False
        path = Path(path) if path else self.w.files.ask_directory("Open run folder", self.w.files.runs_root())
        if path is None:
            return False
        try:
            run = read_run(path)
        except (RunFolderError, OSError) as exc:
            self.w._error("Cannot open run", f"{path} was not opened:\n{exc}")
            return False
        config, summary = run.config, run.summary
        task = config.task if config is not None else summary.task
        names = list(dict.fromkeys([*(run.chunk.get("train") or {}), *(run.chunk.get("val") or {})]))
        names = names or ([a.name for a in config.algorithms] if config is not None else summary.algorithms)
        total = summary.total or (config.iterations if config is not None else 0)
        self.w.message_bar.clear()
        self._failure = ""
        self.w.history.clear()
        kind = task_family(task) if task in TASKS else None
        self.w.plots.reset(names, total or None, kind.loss_label if kind else "loss",
                           accuracy=kind is not None and kind.metric == "accuracy",
                           metric=kind.plot_metric if kind else None,
                           val_every=config.val_every if config is not None else None)
        self.w.history.add_chunk(run.chunk)
        self.w.plots.mark_dirty()
        self.w._clear_inside_views()
        self._remove_opened_exports()  # those of the run opened before
        self.latest_snapshot = None
        self.last_progress = None
        self.run_config = config
        if config is not None:
            self.w.panel.set_config(config)
        if run.paths is not None:
            self.w._on_paths(run.paths)
        problems = list(run.problems)
        for export in run.exports:
            algo = export.stem
            init, why = self.w.files.read_initialization(export, f"{algorithm_label(algo)} · run")
            if init is None:
                problems.append(f"exports/{export.name} was not loaded{why.rstrip('.')}")
                continue
            self.w.files.place_initialization(init)
            self._opened_keys.append(init.key)
        self.opened_run = run.folder.path
        self.run_folder = run.folder.path
        self.w._show_folder(run.folder.path)
        it = summary.iteration or self.w.history.last_iteration()
        self.w.progress.setRange(0, max(total, 1))
        self.w.progress.setValue(min(it, max(total, 1)))
        status = summary.status_text()
        self.w.progress_label.setText(f"{it:,} / {total:,} iterations · {status} (opened)")
        self._set_state(RunState(status) if status in ENDED else RunState.IDLE)
        self.w.tabs.setCurrentWidget(self.w.plots)
        loaded = f"{len(self._opened_keys)} exported initialization{'s' if len(self._opened_keys) != 1 else ''}"
        if problems:
            self.w.message_bar.show_message(
                "warning", f"<b>Opened {_html(summary.name)}</b>, showing what could be read: "
                + _html("; ".join(problems)) + ".")
        else:
            self.w.statusBar().showMessage(f"Opened {summary.name}: {it:,} iterations, {loaded}", 8000)
        self.w._sync_actions()
        return True

    def _remove_opened_exports(self) -> None:
        self.w.inits.remove(*self._opened_keys)
        self._opened_keys = []

    def resume_run(self, path: str | None = None) -> bool:
        """File ▸ Resume run: continue a run folder from its latest checkpoint with its own config (a finished
        run is opened instead; a folder without a checkpoint trains again from the start)."""
        if self.running or self.controller.running:
            self.w._error("Cannot resume run", "A run is training: stop it before resuming another (one run at a "
                        "time).")
            return False
        path = Path(path) if path else self.w.files.ask_directory("Resume run folder", self.w.files.runs_root())
        if path is None:
            return False
        try:
            folder = RunFolder.open(path)
            config = folder.config()
        except (RunFolderError, OSError) as exc:
            self.w._error("Cannot resume run", f"The run was not resumed:\n{exc}\n\nNothing was changed.")
            return False
        status = folder.status()
        try:
            done = status.get("status") == "finished" and int(status.get("iteration") or 0) >= config.iterations
        except (TypeError, ValueError):
            done = False
        if done:
            if self.open_run(folder.path):
                self.w.statusBar().showMessage(f"{folder.name} is finished: opened it (nothing left to train)", 8000)
                return True
            return False
        self._resuming = {"state": self.state, "range": (self.w.progress.minimum(), self.w.progress.maximum()),
                          "value": self.w.progress.value(), "label": self.w.progress_label.text()}
        self.w.progress.setRange(0, 0)  # busy until the checkpoint is restored
        self.w.progress_label.setText(f"Resuming {folder.name}…")
        self._set_state(RunState.STARTING)
        self.controller.resume_run(folder.path)
        return True

    def _set_state(self, state) -> None:
        self.state = RunState.of(state)
        self.w.show_state(self.state)

    def wait_for_training(self, timeout_s: float = 600.0) -> str:
        """Process events until the current run ends (for --screenshot and tests); returns the final state."""
        from PySide6.QtCore import QEventLoop, QTimer

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


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds <= 0:
        return "–"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
