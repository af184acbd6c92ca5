"""The run's state as one model without Qt: what is trained or shown (the family, the algorithms, a live run or an
opened one), its state, progress, snapshots, parameter paths, run folder and messages, each change an event.

The window's toolbar, status bar and views subscribe to it (napari's evented components are the example: small
event emitters with connect / disconnect); the run controller only writes to it. So nothing of the run reaches
into a widget, and a view learns that the results it shows belong to another run or family from one event
(`scope`) instead of a list of clear-methods the window calls.
"""

from __future__ import annotations

import enum
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .metrics_history import MetricsHistory


class Event:
    """What an emitter passes its callbacks: `type` (the emitter's name) and the emitted values as attributes."""

    def __init__(self, type: str, **values):
        self.type = type
        self.__dict__.update(values)

    def __repr__(self) -> str:
        return f"Event({self.type!r}, {', '.join(f'{k}={v!r}' for k, v in self.__dict__.items() if k != 'type')})"


class EventEmitter:
    """Callbacks connected to one kind of change, called in order with an Event. Bound methods are held weakly
    (as napari's emitters do): a widget that subscribes does not stay alive for the model, and no reference cycle
    ties a window to the model it owns."""

    def __init__(self, name: str):
        self.name = name
        self._callbacks: list = []  # WeakMethod or a plain callable

    @staticmethod
    def _ref(callback: Callable):
        return weakref.WeakMethod(callback) if hasattr(callback, "__self__") and hasattr(callback, "__func__") \
            else callback

    def _resolve(self, ref):
        return ref() if isinstance(ref, weakref.WeakMethod) else ref

    def connect(self, callback: Callable) -> Callable:
        """Call `callback(event)` on every emission (once, however often it is connected); returns it."""
        if callback not in self.callbacks:
            self._callbacks.append(self._ref(callback))
        return callback

    def disconnect(self, callback: Callable | None = None) -> None:
        """Stop calling `callback` (None: every callback)."""
        if callback is None:
            self._callbacks.clear()
        else:
            self._callbacks = [r for r in self._callbacks if self._resolve(r) not in (callback, None)]

    @property
    def callbacks(self) -> list[Callable]:
        return [c for c in map(self._resolve, self._callbacks) if c is not None]

    def __call__(self, **values) -> Event:
        event = Event(self.name, **values)
        for callback in self.callbacks:
            callback(event)
        return event


class EmitterGroup:
    """The emitters of one model, by name: `model.events.progress.connect(fn)`."""

    def __init__(self, *names: str):
        for name in names:
            setattr(self, name, EventEmitter(name))
        self.names = names


class RunState(enum.StrEnum):
    """What the run is doing. A str enum: `state == "running"` and f-strings read as plain names."""

    IDLE = "idle"
    STARTING = "starting"  # until the first iteration: the task family loads (an image set), the models build
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


@dataclass(frozen=True)
class Scope:
    """What the shown results belong to: a task family, the algorithms, and where they come from ("live": a run
    training or trained in this window, "opened": a past run's folder, "none": nothing trained, the form's family).
    A result computed under another scope is stale and is cleared."""

    task: str | None = None
    algorithms: tuple[str, ...] = ()
    source: str = "none"
    folder: Path | None = None
    config: object = None  # the run's ExperimentConfig, when known
    total: int | None = None  # the run's meta-iterations, when known

    @property
    def opened(self) -> bool:
        return self.source == "opened"


@dataclass(frozen=True)
class ProgressLine:
    """The progress bar and its line of text: `value` of `total` (total 0: busy, no known end)."""

    value: int = 0
    total: int = 1
    text: str = "Ready"


@dataclass
class RunModel:
    """The run's state (see the module docstring). Write through the methods, which emit; read the fields.

    Events (each an Event with the named values):
    scope(scope) - the results now belong to `scope` (a new run, an opened one, another family, Reset): views
      drop what they show of the earlier one;
    state(state) - the run's RunState changed;
    progress(progress, cost) - a lab.messages.RunProgress arrived (its metrics are in `history` already) and its
      cost meter numbers (an empty dict: no cost to show);
    line(line) - the progress bar and text (a ProgressLine);
    snapshot(snapshot) - a lab.messages.Snapshot of every algorithm's current initialization;
    paths(paths) - a lab.inside.RunPaths (the parameter paths of the run);
    folder(folder) - the run folder (a Path, or None);
    device(device) - the device the run trains on (None when no run trains);
    message(kind, text, ms, title) - something to tell: kind "error" / "warning" / "info" (the message bar),
      "status" (the status bar for `ms` milliseconds), "dialog" (a dialog titled `title`), "clear" (the message bar
      is dismissed).
    """

    history: MetricsHistory = field(default_factory=MetricsHistory)
    scope: Scope = field(default_factory=Scope)
    state: RunState = RunState.IDLE
    progress: object = None  # the last lab.messages.RunProgress
    cost: dict = field(default_factory=dict)  # algorithm -> the cost meter's numbers (last progress that had them)
    line: ProgressLine = field(default_factory=ProgressLine)
    snapshot: object = None  # the latest lab.messages.Snapshot
    paths: object = None  # the latest lab.inside.RunPaths
    folder: Path | None = None
    device: str | None = None
    events: EmitterGroup = field(default_factory=lambda: EmitterGroup(
        "scope", "state", "progress", "line", "snapshot", "paths", "folder", "device", "message"), repr=False)

    # -- reading -------------------------------------------------------------------------------------
    @property
    def task(self) -> str | None:
        return self.scope.task

    @property
    def algorithms(self) -> tuple[str, ...]:
        return self.scope.algorithms

    @property
    def running(self) -> bool:
        return self.state.busy

    @property
    def opened(self) -> Path | None:
        """The past run's folder whose results are shown (File ▸ Past runs ▸ Open), else None."""
        return self.scope.folder if self.scope.opened else None

    # -- writing -------------------------------------------------------------------------------------
    def begin(self, scope: Scope) -> None:
        """Results from now on belong to `scope`: everything of the earlier one is dropped (history, progress,
        cost, snapshot, paths, folder, device), then `scope` is emitted."""
        self.history.clear()
        self.scope = scope
        self.progress = None
        self.cost = {}
        self.snapshot = None
        self.paths = None
        self.device = None
        self.events.scope(scope=scope)
        self.set_folder(scope.folder)
        self.events.progress(progress=None, cost={})

    def set_state(self, state) -> None:
        self.state = RunState.of(state)
        self.events.state(state=self.state)

    def add_progress(self, progress) -> None:
        """A RunProgress: its metrics chunk goes into `history`, its cost (when it has one) replaces the last."""
        self.progress = progress
        self.history.add_chunk(getattr(progress, "chunk", None) or {})
        cost = getattr(progress, "cost", None)
        if cost:
            self.cost = dict(cost)
        self.events.progress(progress=progress, cost=self.cost)

    def add_chunk(self, chunk: dict) -> None:
        """Metrics read from elsewhere (a run folder, a resumed run's history) join `history`."""
        self.history.add_chunk(chunk or {})
        self.events.progress(progress=self.progress, cost=self.cost)

    def set_line(self, value: int, total: int, text: str) -> None:
        self.line = ProgressLine(int(value), int(total), text)
        self.events.line(line=self.line)

    def set_text(self, text: str) -> None:
        """The progress line's text, its bar as it is."""
        self.set_line(self.line.value, self.line.total, text)

    def set_snapshot(self, snapshot) -> None:
        self.snapshot = snapshot
        self.events.snapshot(snapshot=snapshot)

    def set_paths(self, paths) -> None:
        self.paths = paths
        self.events.paths(paths=paths)

    def set_folder(self, folder: Path | None) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.events.folder(folder=self.folder)

    def set_device(self, device: str | None) -> None:
        self.device = device
        self.events.device(device=device)

    def say(self, kind: str, text: str = "", ms: int = 0, title: str = "") -> None:
        """Tell the user (see `message` in the class docstring)."""
        self.events.message(kind=kind, text=text, ms=ms, title=title)

    def error(self, title: str, text: str) -> None:
        """A problem the user must acknowledge (a dialog): a file not read, a command refused."""
        self.say("dialog", text, title=title)

    def status(self, text: str, ms: int = 5000) -> None:
        self.say("status", text, ms)
