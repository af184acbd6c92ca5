"""The run state machine: start / pause / resume / stop / reset, resuming and opening run folders, and the
handlers of the TrainingController's signals.

It writes what happens to the run's model (lab.run_state.RunModel): its state, progress, snapshots, paths, folder
and messages. It never touches a widget: the toolbar, the status bar and the views subscribe to the model. What
it needs from the window is named in its constructor: the experiment form, the File actions (folders, reading
exported initializations) and the initialization store.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..core.tasks.registry import TASKS
from ..core.training.config import ExperimentConfig
from ..core.training.runs import RunFolder, RunFolderError
from ..lab.messages import Loading, Preparing, RunEnded, RunProgress, RunStarted
from ..lab.run_library import open_run as read_run
from ..lab.run_state import ENDED, RunModel, RunState, Scope
from .colors import algorithm_label

__all__ = ["RunController", "RunState", "format_duration"]  # RunState: lab.run_state's, read here by the window


class RunController:
    """Drives `controller` (a worker.TrainingController) and writes the run to `model`. `panel` gives the experiment
    (try_config, set_config), `files` the run folders and exported initializations (runs_root, ask_directory,
    read_initialization, place_initialization, refresh_past_runs), `inits` is the initialization store."""

    def __init__(self, model: RunModel, controller, panel, files, inits):
        self.model = model
        self.controller = controller
        self.panel = panel
        self.files = files
        self.inits = inits
        self._resuming: dict | None = None  # a resume request not started yet: what to restore if it is refused
        self._opened_keys: list[str] = []  # the playground / Tasks entries of the opened run's exports
        self._reset_after_stop = False
        for signal, slot in ((controller.started, self._on_started), (controller.progress, self._on_progress),
                             (controller.snapshot, self.model.set_snapshot), (controller.paths, self.model.set_paths),
                             (controller.finished, self._on_finished), (controller.failed, self._on_failed),
                             (controller.loading, self._on_loading), (controller.refused, self._on_refused)):
            signal.connect(slot)
        self.model.events.snapshot.connect(self._on_snapshot)

    # -- reading -------------------------------------------------------------------------------------
    @property
    def state(self) -> RunState:
        return self.model.state

    @property
    def running(self) -> bool:
        return self.model.running

    @property
    def device(self) -> str | None:
        return self.model.device

    @property
    def run_config(self) -> ExperimentConfig | None:
        return self.model.scope.config

    @property
    def run_folder(self) -> Path | None:
        return self.model.folder

    @property
    def opened_run(self) -> Path | None:
        return self.model.opened

    @property
    def latest_snapshot(self):
        return self.model.snapshot

    @property
    def last_progress(self):
        return self.model.progress

    # -- commands ------------------------------------------------------------------------------------
    def toggle_run(self) -> None:
        if self.state in (RunState.RUNNING, RunState.PAUSED):
            self.pause_or_resume()
        elif not self.running:
            self.start()

    def start(self) -> bool:
        if self.running or self.controller.running:
            return False
        config, message = self.panel.try_config()
        if config is None:
            self.model.say("error", f"Cannot start: {message}")
            return False
        self.model.say("clear")
        self._begin_run(config)
        self.model.set_line(0, config.iterations, f"0 / {config.iterations:,} iterations · starting…")
        self.model.set_state(RunState.STARTING)
        self.controller.start(config, runs_root=self.files.runs_root())
        return True

    def _begin_run(self, config: ExperimentConfig) -> None:
        """Results from now on are those of a run of `config` (a new one, or a resumed one): the earlier run's
        curves, paths, trained models and costs are dropped."""
        self._drop_trained()
        self.model.begin(Scope(config.task, tuple(a.name for a in config.algorithms), "live", None, config,
                               config.iterations))

    def _drop_trained(self) -> None:
        self.inits.remove("checkpoint")
        self.inits.clear("trained")
        self._remove_opened_exports()

    def pause_or_resume(self) -> None:
        if self.state is RunState.RUNNING:
            self.controller.pause()
            self.model.set_state(RunState.PAUSED)
            self.model.status("Paused: training waits after this meta-iteration", 3000)
        elif self.state is RunState.PAUSED:
            self.controller.resume()
            self.model.set_state(RunState.RUNNING)

    def stop(self) -> None:
        if self.state in (RunState.STARTING, RunState.RUNNING, RunState.PAUSED):
            self.controller.stop()
            self.model.set_state(RunState.STOPPING)

    def reset(self, task: str | None = None) -> None:
        """Discard the run: nothing trained is shown; `task` (default: the form's family) is what views show."""
        if self.running:
            self._reset_after_stop = True
            self.stop()
            return
        self._reset_after_stop = False
        self._drop_trained()
        if task is None:
            config, _ = self.panel.try_config()
            task = config.task if config is not None else self.model.task
        self.model.begin(Scope(task))
        self.model.say("clear")
        self.model.set_line(0, 1, "Ready")
        self.model.set_state(RunState.IDLE)

    # -- the worker's signals ------------------------------------------------------------------------
    def _on_started(self, info: RunStarted) -> None:
        if info.config is not None:  # a resumed run: its views start from the restored history
            self._begin_resumed(info)
        folder = Path(info.run_folder) if info.run_folder else None
        self.model.set_folder(folder)
        if info.run_folder_error:  # (the folder itself is the status bar's permanent "Run folder:" link)
            self.model.say(
                "warning", f"<b>No run folder</b>: {_html(info.run_folder_error)}. Training goes on, but this run "
                "leaves no metrics, checkpoints or exports on disk and cannot be resumed. Choose another runs folder "
                "in File ▸ Past runs ▸ Change….")
        self.model.set_device(info.device)
        if self.state is RunState.STARTING:
            self.model.set_state(RunState.RUNNING)

    def _begin_resumed(self, info: RunStarted) -> None:
        config = info.config
        self._resuming = None
        self.model.say("clear")
        self._begin_run(config)
        self.panel.set_config(config)  # the form shows the run's experiment (locked while it trains)
        self.model.add_chunk(info.history or {})
        name = Path(info.run_folder).name if info.run_folder else "the run"
        at = info.resumed_at
        self.model.set_line(int(at or 0), config.iterations,
                            f"{int(at or 0):,} / {config.iterations:,} iterations · resuming…")
        if at is None:
            self.model.say("info", f"{_html(name)} had no checkpoint yet: training it again from the start, with its "
                           "config.")
        else:
            self.model.status(f"Resuming {name} at iteration {int(at):,} of {config.iterations:,}", 8000)

    def _on_progress(self, p: RunProgress) -> None:
        self.model.add_progress(p)
        total = max(int(p.total), 1)
        if p.state == "running":
            rate = p.tasks_per_s
            rate_text = f"{rate:,.0f} tasks/s" if rate > 0 else "measuring…"
            self.model.set_line(p.iteration, total, f"{p.iteration:,} / {total:,} iterations · {rate_text} · "
                                f"ETA {format_duration(p.eta_s)}")
        elif p.state == "paused":
            self.model.set_line(p.iteration, total, f"{p.iteration:,} / {total:,} iterations · paused")
        elif p.state != "starting":  # (starting: the line names what runs before the first iteration)
            self.model.set_line(p.iteration, total, self.model.line.text)

    def _on_snapshot(self, event) -> None:
        if event.snapshot is not None:
            self.inits.update_from_snapshot(event.snapshot)

    def _on_loading(self, info: Loading | Preparing) -> None:
        """The image set loads (off the GUI thread) before training starts; then what else runs before the first
        iteration is named (a busy bar)."""
        if isinstance(info, Preparing):
            if self.state is RunState.STARTING or self.running and self.last_progress is None:
                self.model.set_line(0, 0, f"{info.what[:1].upper()}{info.what[1:]}…")
            return
        if self.state is not RunState.STARTING:
            return
        total = max(info.total, 1)
        self.model.set_line(info.done, total, f"Loading the image set… {info.done:,} / {total:,}")

    def _on_failed(self, message: str) -> None:
        kept = " The last good parameters are kept: File ▸ Export initialization." if self.model.snapshot else ""
        self.model.say("error", f"<b>Training failed</b>: {_html(message)}.{kept}")

    def _on_refused(self, message: str) -> None:
        self.model.error("Cannot resume run", f"The run was not resumed:\n{message}\n\nNothing was changed: the "
                         "run folder is as it was.")

    def _on_finished(self, info: RunEnded) -> None:
        if self._resuming is not None:  # a resume that never started (refused, or cancelled while loading)
            before, self._resuming = self._resuming, None
            self.model.set_line(*before["line"])
            self.model.set_state(before["state"])
            self.model.set_device(None)
            if self._reset_after_stop:
                self.reset()
            return
        state = RunState.of(info.state)
        self.model.set_device(None)
        self.model.set_state(state)
        it, total, reason = info.iteration, info.total, info.reason
        progress = self.model.progress
        elapsed = format_duration(progress.elapsed_s if progress is not None else 0.0)
        value = min(it, max(total, 1))
        if state is RunState.FINISHED:
            self.model.set_line(value, total, f"{it:,} / {total:,} iterations · finished in {elapsed}")
            self.model.status(f"Finished {it:,} meta-iterations", 5000)
        elif state is RunState.STOPPED:
            self.model.set_line(value, total, f"{it:,} / {total:,} iterations · stopped")
            if self.model.folder is not None:
                self.model.status(f"Stopped; its checkpoint is in {self.model.folder} (File ▸ Resume run continues "
                                  "it)", 8000)
        elif state is RunState.DIVERGED:
            self.model.set_line(value, total, f"{it:,} / {total:,} iterations · diverged")
            kept = "" if "kept" in reason else " The last good parameters are kept."
            self.model.say(
                "error", f"<b>Training stopped</b>: {_html(reason)}.{kept} Export them (Ctrl+E), or lower the "
                "inner or meta learning rate and press Start to try again.")
        elif state is RunState.FAILED:
            self.model.set_line(value, total, f"{it:,} / {total:,} iterations · failed")
        self.files.refresh_past_runs()
        if self._reset_after_stop:
            self.reset()

    # -- run folders ---------------------------------------------------------------------------------
    def open_run(self, path: str | None = None) -> bool:
        """Show a past run: its curves (metrics.csv) in Training curves, its parameter path (latest checkpoint)
        in the looking-inside views, its exported initializations in the playground or Tasks view, its config in
        the form. A damaged folder shows what it can and says what is missing."""
        if self.running or self.controller.running:
            self.model.error("Cannot open run", "A run is training: stop it before opening another (one run at a "
                             "time).")
            return False
        path = Path(path) if path else self.files.ask_directory("Open run folder", self.files.runs_root())
        if path is None:
            return False
        try:
            run = read_run(path)
        except (RunFolderError, OSError) as exc:
            self.model.error("Cannot open run", f"{path} was not opened:\n{exc}")
            return False
        config, summary = run.config, run.summary
        task = config.task if config is not None else summary.task
        names = list(dict.fromkeys([*(run.chunk.get("train") or {}), *(run.chunk.get("val") or {})]))
        names = names or ([a.name for a in config.algorithms] if config is not None else summary.algorithms)
        total = summary.total or (config.iterations if config is not None else 0)
        self.model.say("clear")
        self._drop_trained()  # (and the exports of the run opened before)
        if config is not None:
            self.panel.set_config(config)  # (before the scope: a family change in the form clears nothing of it)
        self.model.begin(Scope(task if task in TASKS else None, tuple(names), "opened", run.folder.path, config,
                               total or None))
        self.model.add_chunk(run.chunk)
        if run.paths is not None:
            self.model.set_paths(run.paths)
        problems = list(run.problems)
        for export in run.exports:
            algo = export.stem
            init, why = self.files.read_initialization(export, f"{algorithm_label(algo)} · run")
            if init is None:
                problems.append(f"exports/{export.name} was not loaded{why.rstrip('.')}")
                continue
            self.files.place_initialization(init)
            self._opened_keys.append(init.key)
        it = summary.iteration or self.model.history.last_iteration()
        status = summary.status_text()
        self.model.set_line(min(it, max(total, 1)), max(total, 1),
                            f"{it:,} / {total:,} iterations · {status} (opened)")
        self.model.set_state(RunState(status) if status in ENDED else RunState.IDLE)
        loaded = f"{len(self._opened_keys)} exported initialization{'s' if len(self._opened_keys) != 1 else ''}"
        if problems:
            self.model.say("warning", f"<b>Opened {_html(summary.name)}</b>, showing what could be read: "
                           + _html("; ".join(problems)) + ".")
        else:
            self.model.status(f"Opened {summary.name}: {it:,} iterations, {loaded}", 8000)
        return True

    def _remove_opened_exports(self) -> None:
        self.inits.remove(*self._opened_keys)
        self._opened_keys = []

    def resume_run(self, path: str | None = None) -> bool:
        """File ▸ Resume run: continue a run folder from its latest checkpoint with its own config (a finished
        run is opened instead; a folder without a checkpoint trains again from the start)."""
        if self.running or self.controller.running:
            self.model.error("Cannot resume run", "A run is training: stop it before resuming another (one run at a "
                             "time).")
            return False
        path = Path(path) if path else self.files.ask_directory("Resume run folder", self.files.runs_root())
        if path is None:
            return False
        try:
            folder = RunFolder.open(path)
            config = folder.config()
        except (RunFolderError, OSError) as exc:
            self.model.error("Cannot resume run", f"The run was not resumed:\n{exc}\n\nNothing was changed.")
            return False
        status = folder.status()
        try:
            done = status.get("status") == "finished" and int(status.get("iteration") or 0) >= config.iterations
        except (TypeError, ValueError):
            done = False
        if done:
            if self.open_run(folder.path):
                self.model.status(f"{folder.name} is finished: opened it (nothing left to train)", 8000)
                return True
            return False
        line = self.model.line
        self._resuming = {"state": self.state, "line": (line.value, line.total, line.text)}
        self.model.set_line(0, 0, f"Resuming {folder.name}…")  # busy until the checkpoint is restored
        self.model.set_state(RunState.STARTING)
        self.controller.resume_run(folder.path)
        return True

    def wait_for_training(self, timeout_s: float | None = 600.0) -> str:
        """Process events until the current run ends or `timeout_s` passes (None: no limit; for --screenshot and
        tests); returns the state then."""
        from PySide6.QtCore import QEventLoop, QTimer

        if not self.running:
            return self.state
        loop = QEventLoop()
        self.controller.finished.connect(loop.quit)
        timer = QTimer()
        timer.setSingleShot(True)
        timer.timeout.connect(loop.quit)
        if timeout_s is not None:
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
