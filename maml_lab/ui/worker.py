"""Training off the GUI thread: a QObject living in a QThread runs the core Trainer.

Everything the worker says reaches the UI through queued signals; it never touches a widget. The
Trainer calls back after every iteration; the worker batches those metrics and emits at most
`progress_hz` progress signals per second (the first iteration's at once; rate, ETA and cost as the Trainer
computed them) and a parameter snapshot every `snapshot_interval` seconds, so the GUI's work does not grow with
the training speed. Before the first iteration it names what runs (lab.messages.Preparing on `loading`).
Every `paths_interval` seconds (and at the end) it also hands over copies of the recorded parameter paths
(ui.inside.RunPaths) for the looking-inside views.
Each run sets the worker thread's torch threads by its task family (lab/threads.py: image tasks take every
core up to 4, small-op families one per two cores) and puts the app's default back when it ends.
pause/resume/stop are thread-safe calls straight into the Trainer (the worker thread is busy inside
`Trainer.run`, so a queued slot would only run after training ends); they take effect within one
meta-iteration.

The run itself is a lab.session.TrainingSession, the same code the CLI runs: every run trains into a run folder
(config, metrics.csv, checkpoints, exports, TensorBoard) when
the request names a runs root; a folder that cannot be created is reported in `started` and the run trains
without one. A resume request names a run folder instead: the Trainer is rebuilt from the folder's config,
its latest checkpoint restored, and the restored history handed over in `started` before training goes on.
"""

from __future__ import annotations

import math
import threading
import time
import traceback
from dataclasses import replace

from PySide6.QtCore import QCoreApplication, QObject, QThread, Signal, Slot

from ..core.tasks.imagesets import LoadCancelled as _LoadCancelled
from ..core.training.metrics import TRAIN_FIELDS, VAL_FIELDS
from ..core.training.runs import RunFolder
from ..lab import threads as thread_policy
from ..lab.messages import Loading, Preparing, RunEnded, RunProgress, RunStarted, Snapshot
from ..lab.session import CHECKPOINT_EVERY

PATHS_BUDGET_BYTES = 512 * 2**20  # all recorded parameter paths of a run together (MLPs never come close)
# validation may take at most this fraction of an app run's training time (Trainer.val_budget): the app validates
# often (every 50 iterations for images) with a small meta-batch, where a validation costs ~6 meta-steps
VAL_BUDGET = 0.04


class TrainingWorker(QObject):
    # the payloads are the typed messages of lab.messages
    started = Signal(object)  # RunStarted
    progress = Signal(object)  # RunProgress (at most progress_hz a second)
    snapshot = Signal(object)  # Snapshot
    paths = Signal(object)  # lab.inside.RunPaths: copies of the recorded parameter paths (every paths_interval s)
    finished = Signal(object)  # RunEnded
    failed = Signal(str)  # an exception in the worker: one-line message
    loading = Signal(object)  # Loading (the image set loads), then Preparing (what runs before the first iteration)
    refused = Signal(str)  # a resume that could not start (broken folder, another experiment's checkpoint)

    def __init__(self, progress_hz: float = 30.0, snapshot_interval: float = 0.15, paths_interval: float = 1.0):
        super().__init__()
        self.checkpoint_every = CHECKPOINT_EVERY  # iterations between checkpoints of an app run (and at the end)
        self.progress_interval = 1.0 / progress_hz
        self.snapshot_interval = snapshot_interval
        self.paths_interval = paths_interval
        self._lock = threading.Lock()
        self._trainer = None
        self._stop_requested = False
        self._pause_requested = False
        self._busy = False
        self._pending: dict = {}
        self._pending_val: dict = {}
        self._latest: dict = {}
        self._last: dict = {}  # the Trainer's latest progress (rate, ETA, cost: computed there, sent as they are)
        self._last_loading = 0.0

    # -- thread-safe control (called from the GUI thread) --------------------------------------------
    def pause(self) -> None:
        with self._lock:
            self._pause_requested = True
            trainer = self._trainer
        if trainer is not None:
            trainer.pause()

    def resume(self) -> None:
        with self._lock:
            self._pause_requested = False
            trainer = self._trainer
        if trainer is not None:
            trainer.resume()

    def stop(self) -> None:
        with self._lock:
            self._stop_requested = True
            trainer = self._trainer
        if trainer is not None:
            trainer.stop()

    @property
    def busy(self) -> bool:
        return self._busy

    # -- the worker thread ---------------------------------------------------------------------------
    @Slot(object)
    def run(self, request) -> None:
        """request: an ExperimentConfig, or (config, options) with options "initial_params", "runs_root" (a run
        folder is created under it) or "resume" (a run folder to continue; config is then None). Trains until
        done or stopped."""
        from ..lab.session import TrainingSession

        config, options = request if isinstance(request, tuple) else (request, {})
        self._busy = True
        session = trainer = None
        resume = options.get("resume")
        try:
            if resume is not None:
                try:  # anything wrong with the folder, its image set or its checkpoint: refused, nothing changed
                    config = RunFolder.open(resume).config()
                    session = TrainingSession.resume(resume, config, self.checkpoint_every, loading=self._loading,
                                                     cancel=self._cancelled, fresh_if_empty=True,
                                                     preparing=self._preparing)
                except _LoadCancelled:
                    raise
                except Exception as exc:  # noqa: BLE001
                    self._refuse(exc, config)
                    return
            else:
                session = TrainingSession(config, initial_params=options.get("initial_params"), loading=self._loading,
                                          cancel=self._cancelled, preparing=self._preparing)
            trainer = session.trainer
            thread_policy.set_for_this_thread(thread_policy.training_threads(config.task))  # lab/threads.py
            trainer.val_budget = VAL_BUDGET
            for recorder in trainer.recorders.values():  # parameter paths: bounded memory for big models too
                recorder.limit_bytes(PATHS_BUDGET_BYTES // max(len(trainer.recorders), 1))
            folder_error = ""
            if resume is None and options.get("runs_root") is not None:
                folder_error = self._attach_new_folder(session, options["runs_root"])
            info = RunStarted(str(trainer.device), list(trainer.runs), config.iterations, trainer.model.spec(),
                              str(session.folder.path) if session.folder is not None else None, folder_error)
            if resume is not None:
                info = replace(info, config=config, resumed_at=session.resumed_at,
                               history=self._history_chunk(trainer))
            with self._lock:
                self._trainer = trainer
                stop, pause = self._stop_requested, self._pause_requested
            if pause:
                trainer.pause()
            self._reset_batch(trainer)
            self.started.emit(info)
            self._emit_snapshot(trainer)
            if resume is not None:
                self._emit_paths(trainer)  # the restored path at once
            # the Trainer's last callback (finished, stopped, diverged) flushes the metrics and sends a snapshot
            if stop:  # stopped before training began: the run folder still ends as "stopped", with its checkpoint
                state = session.end_without_training()
            else:
                state = trainer.run(callback=self._callback(trainer), report_every=1)
            self.finished.emit(RunEnded(state, trainer.stop_reason, trainer.iteration, config.iterations))
        except _LoadCancelled:  # stopped while the image set was loading
            self.finished.emit(RunEnded("stopped", "stopped by the user", 0, getattr(config, "iterations", 0),
                                        cancelled=True))
        except Exception as exc:  # noqa: BLE001 - any failure in the worker is reported, never raised into Qt
            from ..lab.plugin_blame import plugin_in

            message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
            plugin = plugin_in(exc)
            if plugin is None:
                traceback.print_exc()  # the lab's own failure: the traceback is for whoever fixes it
            else:  # someone else's code: one line naming it, as the CLI says it
                message = f"plug-in {plugin} failed: {message}"
            if trainer is not None:
                self._flush(trainer, "failed", message)
                self._emit_snapshot(trainer, only_if_finite=True)
                session.mark_failed(message)  # failed outside Trainer.run (which tells the folder itself)
            self.failed.emit(message)
            self.finished.emit(RunEnded("failed", message, trainer.iteration if trainer is not None else 0,
                                        getattr(config, "iterations", 0)))
        finally:
            if session is not None:
                session.close()  # the run folder's lock: another process may write it now
            thread_policy.use_gui_threads()
            with self._lock:
                self._trainer = None
                self._stop_requested = False
                self._pause_requested = False
            self._busy = False

    # -- run folders ---------------------------------------------------------------------------------
    def _attach_new_folder(self, session, root) -> str:
        """Train into a new folder under `root`; "" or why not (the app trains on without a folder it cannot
        create or write)."""
        from ..core.training.runs import RunFolderError

        try:
            folder = session.create_folder(session.config, runs_root=root, source="app")
        except (RunFolderError, OSError) as exc:
            return str(exc) if isinstance(exc, RunFolderError) else f"cannot create a run folder in {root}: " \
                f"{exc.strerror or exc}"
        try:
            session.attach_folder(folder, self.checkpoint_every)
        except OSError:
            traceback.print_exc()
            return f"cannot write to run folder {folder.path}"
        return ""

    @staticmethod
    def _history_chunk(trainer) -> dict:
        from ..core.training.metrics import chunk_from_logs

        return chunk_from_logs({n: (r.log, r.val_log) for n, r in trainer.runs.items()})

    def _refuse(self, exc: Exception, config) -> None:
        """A resume that could not start: say why (no traceback for the expected refusals)."""
        from ..core.training.runs import RunFolderError

        if isinstance(exc, (RunFolderError, ValueError, OSError)):
            message = str(exc) if not isinstance(exc, OSError) or not exc.strerror else \
                f"{exc.filename or ''}: {exc.strerror}".lstrip(": ")
        else:
            traceback.print_exc()
            message = f"{type(exc).__name__}: {exc}"
        self.refused.emit(message)
        self.finished.emit(RunEnded("refused", message, 0, getattr(config, "iterations", 0)))

    def _loading(self, done, total) -> None:
        """Image-set loading progress (off the GUI thread), at most ten signals a second."""
        now = time.perf_counter()
        if done >= total or now - self._last_loading >= 0.1:
            self._last_loading = now
            self.loading.emit(Loading(int(done), int(total)))

    def _preparing(self, what: str) -> None:
        """A step before the first iteration ("building the model", "first meta-iteration"), as it starts."""
        self.loading.emit(Preparing(what))

    def _cancelled(self) -> bool:
        return self._stop_requested

    def _reset_batch(self, trainer) -> None:
        self._pending = {name: {k: [] for k in ("iteration", *TRAIN_FIELDS)} for name in trainer.runs}
        self._pending_val = {name: {k: [] for k in ("iteration", *VAL_FIELDS)} for name in trainer.runs}
        self._latest: dict = {}
        self._last = {}
        now = time.perf_counter()
        self._last_progress = now
        self._last_snapshot = now
        self._last_paths = now

    def _callback(self, trainer):
        def on_progress(p: dict) -> None:
            if self._stop_requested:
                trainer.stop()  # a stop() that came before Trainer.run had started
            if p["state"] == "starting":
                self._preparing(p["stage"])
                return
            self._last = p
            for name, m in p["metrics"].items():
                cols = self._pending[name]
                cols["iteration"].append(m["iteration"])
                for k in TRAIN_FIELDS:
                    cols[k].append(m.get(k, math.nan))
                self._latest[name] = m
            for name, v in p["val"].items():
                cols = self._pending_val[name]
                cols["iteration"].append(v["iteration"])
                for k in VAL_FIELDS:
                    cols[k].append(v.get(k, math.nan))
            now = time.perf_counter()
            if p["state"] != "running":
                self._flush(trainer, p["state"], p["reason"], p)
                self._emit_snapshot(trainer)
                self._emit_paths(trainer)
                return
            if now - self._last_progress >= self.progress_interval or p["iteration"] == 1:
                self._flush(trainer, "running", "", p)
            if now - self._last_snapshot >= self.snapshot_interval:
                self._emit_snapshot(trainer)
            if now - self._last_paths >= self.paths_interval:
                self._emit_paths(trainer)

        return on_progress

    def _flush(self, trainer, state: str, reason: str, p: dict | None = None) -> None:
        chunk = {"train": {}, "val": {}}
        for target, source in ((chunk["train"], self._pending), (chunk["val"], self._pending_val)):
            for name, cols in source.items():
                if cols["iteration"]:
                    # accuracy only where reported (classification): sinusoid chunks keep their loss-only form
                    target[name] = {k: list(v) for k, v in cols.items()
                                    if "accuracy" not in k or any(math.isfinite(x) for x in v)}
                    for v in cols.values():
                        v.clear()
        p = p or self._last  # rate, ETA and cost as the Trainer computed them (a failure: its last progress)
        rate = p.get("tasks_per_s", 0.0) if state == "running" else 0.0
        self._last_progress = time.perf_counter()
        self.progress.emit(RunProgress(state, trainer.iteration, trainer.config.iterations, rate, p.get("eta_s", 0.0),
                                       p.get("elapsed_s", 0.0), reason, chunk, dict(self._latest),
                                       cost=p.get("cost") or {}))

    def _emit_snapshot(self, trainer, only_if_finite: bool = False) -> None:
        self._last_snapshot = time.perf_counter()
        params = trainer.snapshot()
        if only_if_finite and not all(bool(v.isfinite().all()) for p in params.values() for v in p.values()):
            return
        metadata = {}
        for name in params:
            try:
                metadata[name] = trainer.metadata(name)
            except Exception:  # noqa: BLE001 - metadata is best effort; the parameters matter
                metadata[name] = {}
        self.snapshot.emit(Snapshot(trainer.iteration, params, metadata, trainer.model.spec(),
                                    {n: r.algorithm.adaptation() for n, r in trainer.runs.items()}))

    def _emit_paths(self, trainer) -> None:
        """Copies of the recorded parameter paths for the Paths / Landscape views (never the live recorders)."""
        self._last_paths = time.perf_counter()
        if not trainer.recorders:
            return
        from ..lab.inside import collect_paths

        try:
            self.paths.emit(collect_paths(trainer))
        except Exception:  # noqa: BLE001 - the paths are a view's extra; training goes on
            traceback.print_exc()


class TrainingController(QObject):
    """Owns the worker thread; lives in the GUI thread. Its signals are the worker's, delivered queued."""

    started = Signal(object)
    progress = Signal(object)
    snapshot = Signal(object)
    paths = Signal(object)
    finished = Signal(object)
    failed = Signal(str)
    loading = Signal(object)
    refused = Signal(str)
    _request = Signal(object)

    def __init__(self, parent=None, progress_hz: float = 30.0, snapshot_interval: float = 0.15,
                 paths_interval: float = 1.0):
        super().__init__(parent)
        self.thread = QThread()
        self.thread.setObjectName("maml-lab-training")
        self.worker = TrainingWorker(progress_hz, snapshot_interval, paths_interval)
        self.worker.moveToThread(self.thread)
        self._request.connect(self.worker.run)
        self.worker.started.connect(self.started)
        self.worker.progress.connect(self.progress)
        self.worker.snapshot.connect(self.snapshot)
        self.worker.paths.connect(self.paths)
        self.worker.finished.connect(self._on_finished)
        self.worker.failed.connect(self.failed)
        self.worker.loading.connect(self.loading)
        self.worker.refused.connect(self.refused)
        self.running = False
        self.thread.start()
        app = QCoreApplication.instance()
        if app is not None:  # a window never closed still stops its thread before Qt tears down
            app.aboutToQuit.connect(self.shutdown)

    def start(self, config, initial_params=None, runs_root=None) -> None:
        """Train `config`; with `runs_root`, into a new run folder there."""
        if self.running:
            raise RuntimeError("training is already running")
        self.running = True
        self._request.emit((config, {"initial_params": initial_params, "runs_root": runs_root}))

    def resume_run(self, path) -> None:
        """Continue the run folder at `path` from its latest checkpoint, with its own config."""
        if self.running:
            raise RuntimeError("training is already running")
        self.running = True
        self._request.emit((None, {"resume": path}))

    def pause(self) -> None:
        self.worker.pause()

    def resume(self) -> None:
        self.worker.resume()

    def stop(self) -> None:
        self.worker.stop()

    def _on_finished(self, info) -> None:
        self.running = False
        self.finished.emit(info)

    def shutdown(self, timeout_ms: int = 2000) -> bool:
        """Stop training and the thread; True when the thread ended within the timeout."""
        if not self.thread.isRunning():
            return True
        self.worker.stop()
        self.thread.quit()
        ok = self.thread.wait(timeout_ms)
        self.running = False
        return bool(ok)
