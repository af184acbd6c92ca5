"""Computations off the GUI thread for the "looking inside" views: one QThread per view, one job at a time.

A job is a plain function `fn(progress, cancel) -> result` that touches no widget: `progress(done, total)`
may be called from the job's thread (it is forwarded as a queued signal) and `cancel` is a threading.Event
the job checks between chunks (core.landscape.surface raises LandscapeCancelled). Submitting a new job
cancels the one running and drops any that were waiting: only the newest request matters to a view.
Results reach the view through queued signals, tagged with the job id, so a late result of a superseded
job is recognized and ignored.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from PySide6.QtCore import QCoreApplication, QEvent, QEventLoop, QObject, QThread, QTimer, Signal, Slot

from ..lab.jobs import Cancelled  # noqa: F401  (re-exported for the views)
from ..lab.threads import use_gui_threads


@dataclass
class Job:
    id: int
    fn: Callable
    tag: str = ""
    cancel: threading.Event = field(default_factory=threading.Event)


class _Worker(QObject):
    done = Signal(int, object)  # job id, result
    failed = Signal(int, str)  # job id, one-line message ("" when cancelled)
    progress = Signal(int, int, int)  # job id, done, total

    def __init__(self):
        super().__init__()
        self._lock = threading.Lock()
        self._queue: list[Job] = []

    def put(self, job: Job) -> None:
        with self._lock:
            for old in self._queue:
                old.cancel.set()
            self._queue = [job]

    @Slot()
    def run_next(self) -> None:
        with self._lock:
            if not self._queue:
                return
            job = self._queue.pop(0)
        if job.cancel.is_set():
            self.failed.emit(job.id, "")
            return
        last = [0.0]

        def progress(done: int, total: int) -> None:
            now = time.perf_counter()
            if done >= total or now - last[0] >= 0.05:  # at most ~20 progress signals per second
                last[0] = now
                self.progress.emit(job.id, int(done), int(total))
            if job.cancel.is_set():
                raise Cancelled()

        try:
            use_gui_threads()  # not a training run's count (lab/threads.py)
            result = job.fn(progress, job.cancel)
        except Exception as exc:  # noqa: BLE001 - reported to the view, never raised into Qt
            from ..core.analysis.landscape import LandscapeCancelled

            if isinstance(exc, (Cancelled, LandscapeCancelled)) or job.cancel.is_set():
                self.failed.emit(job.id, "")
            else:
                if not isinstance(exc, (ValueError, OSError)):  # bad input is reported, not a bug to trace
                    traceback.print_exc()
                text = str(exc).splitlines()[0] if str(exc) else ""
                self.failed.emit(job.id, f"{type(exc).__name__}: {text}".rstrip(": "))
            return
        if job.cancel.is_set():
            self.failed.emit(job.id, "")
        else:
            self.done.emit(job.id, result)


class BackgroundRunner(QObject):
    """Owns one worker thread; lives in the GUI thread. Signals carry the job's tag."""

    finished = Signal(str, object)  # tag, result
    failed = Signal(str, str)  # tag, message
    cancelled = Signal(str)  # tag
    progress = Signal(str, int, int)  # tag, done, total
    busy_changed = Signal(bool)
    _kick = Signal()

    def __init__(self, name: str, parent=None):
        super().__init__(parent)
        self.name = name
        self._thread: QThread | None = None
        self._worker: _Worker | None = None
        self._next_id = 0
        self._current: Job | None = None  # the newest job submitted and not yet answered
        self._closed = False

    def _ensure_thread(self) -> None:
        if self._thread is not None:
            return
        self._thread = QThread()
        self._thread.setObjectName(f"maml-lab-{self.name}")
        self._worker = _Worker()
        self._worker.moveToThread(self._thread)
        self._kick.connect(self._worker.run_next)
        self._worker.done.connect(self._on_done)
        self._worker.failed.connect(self._on_failed)
        self._worker.progress.connect(self._on_progress)
        self._thread.start()
        app = QCoreApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.shutdown)

    @property
    def busy(self) -> bool:
        return self._current is not None

    @property
    def current_tag(self) -> str:
        return self._current.tag if self._current is not None else ""

    def submit(self, fn: Callable, tag: str = "") -> int:
        """Run `fn(progress, cancel)` on the worker thread, cancelling the job before it; returns the job id."""
        if self._closed:
            return -1
        self._ensure_thread()
        if self._current is not None:
            self._current.cancel.set()
        self._next_id += 1
        job = Job(self._next_id, fn, tag)
        was_busy = self._current is not None
        self._current = job
        self._worker.put(job)
        self._kick.emit()
        if not was_busy:
            self.busy_changed.emit(True)
        return job.id

    def cancel(self) -> bool:
        """Ask the running job to stop (it stops at its next check); True when there was one."""
        job = self._current
        if job is None:
            return False
        job.cancel.set()
        return True

    def _answer(self, job_id: int) -> Job | None:
        job = self._current
        if job is None or job.id != job_id:
            return None  # a superseded job: its answer is stale
        self._current = None
        self.busy_changed.emit(False)
        return job

    def _on_done(self, job_id: int, result) -> None:
        job = self._answer(job_id)
        if job is not None:
            self.finished.emit(job.tag, result)

    def _on_failed(self, job_id: int, message: str) -> None:
        job = self._answer(job_id)
        if job is None:
            return
        if message:
            self.failed.emit(job.tag, message)
        else:
            self.cancelled.emit(job.tag)

    def _on_progress(self, job_id: int, done: int, total: int) -> None:
        if self._current is not None and self._current.id == job_id:
            self.progress.emit(self._current.tag, done, total)

    def wait(self, timeout_s: float = 60.0) -> bool:
        """Process events until no job is pending (tests, screenshots); True when idle in time."""
        if not self.busy:
            return True
        loop = QEventLoop()
        timer = QTimer()
        timer.setSingleShot(True)
        timer.timeout.connect(loop.quit)
        self.busy_changed.connect(loop.quit)
        deadline = time.perf_counter() + timeout_s
        while self.busy and time.perf_counter() < deadline:
            timer.start(max(1, int((deadline - time.perf_counter()) * 1000)))
            loop.exec()
        self.busy_changed.disconnect(loop.quit)
        return not self.busy

    def shutdown(self) -> None:
        self._closed = True
        if self._current is not None:
            self._current.cancel.set()
        if self._thread is not None:
            self._thread.quit()
            self._thread.wait(3000)
            self._thread = None
            self._worker = None
        self._current = None


class StaleRecompute(QObject):
    """One lifecycle for a view that recomputes in the background when its inputs change: `mark_stale()` after
    any change; a debounce timer then calls `compute()` once the view is visible and training is not using the CPU
    (`set_training`); showing the view catches up at once. `compute()` must return True when it started a job.
    `wait(runner, timeout)` runs anything pending now and waits (screenshots, tests)."""

    def __init__(self, view, compute, delay_ms: int = 350):
        super().__init__(view)
        self.view = view
        self.compute = compute
        self.stale = False
        self.training = False
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(delay_ms)
        self.timer.timeout.connect(self._fire)
        view.installEventFilter(self)

    def mark_stale(self) -> None:
        self.stale = True
        if not self.training:
            self.timer.start()

    def set_training(self, running: bool) -> None:
        self.training = running
        if not running and self.stale:
            self.timer.start()

    def clear(self) -> None:
        self.stale = False
        self.timer.stop()

    def _fire(self) -> None:
        if self.view.isVisible() and self.stale and not self.training:
            self.compute()

    def eventFilter(self, obj, event) -> bool:
        if obj is self.view and event.type() == QEvent.Type.Show and self.stale and not self.training:
            self.timer.start(0)
        return False

    def wait(self, runner: "BackgroundRunner", timeout_s: float) -> bool:
        return run_pending_and_wait(self.timer, self.stale and not runner.busy, self.compute, runner, timeout_s)


def run_pending_and_wait(timer, stale: bool, compute, runner: "BackgroundRunner", timeout_s: float) -> bool:
    """For screenshots and tests: start a computation now if one waits on `timer` (or the view is `stale`),
    then wait for `runner` to finish; returns False on time-out."""
    from PySide6.QtWidgets import QApplication

    QApplication.processEvents()
    if timer.isActive() or stale:
        timer.stop()
        compute()
    ok = runner.wait(timeout_s)
    QApplication.processEvents()
    return ok
