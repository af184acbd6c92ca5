"""The main views, registered: each is a `ViewSpec` (name, title, a factory taking the main window). The window
builds its tabs and View menu from `VIEWS`, `--screenshot --view NAME` takes its names, and plug-ins add
views through the entry-point group `maml_lab.views` with no change to the window.

What the window does for every view, by duck typing, so a plug-in only writes a widget: subscribes
`initializations_changed(changed, removed)` to `window.inits`; calls `set_run(run_paths)` when a run's
parameter path arrives, `set_training(on)` when a run starts and ends, `set_experiment(config)` when the form
changes (not while training), `shutdown()` on close and the spec's `clear_run` method when the trained
models are discarded; connects an `export_plot_requested` signal to File ▸ Export plot and a
`message(str)` signal to the status bar. `export_item()` / `view_title()` make File ▸ Export plot work
on it, `wait_until_idle(timeout_s)` makes a screenshot wait for its background computation.

No Qt import at module level: `app.py` reads the names to build its argument parser.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..core.registry import Registry

GROUP = "maml_lab.views"


@dataclass(frozen=True)
class ViewSpec:
    name: str  # `--view NAME`, the key of window.views
    title: str  # the tab and View-menu text
    factory: Callable[[object], object]  # window -> QWidget
    attr: str = ""  # built-ins: the window attribute that names the widget (window.plots, window.tasks, …)
    clear_run: str = ""  # the method that drops a run's trained models and paths (Reset, a new run)
    message_ms: int = 6000  # how long its `message` signal stays in the status bar


def _playground(window):
    from .playground import PlaygroundView

    view = PlaygroundView(rng=window.rng)
    view.k.setValue(window.panel.shots.value())
    window.panel.shots.valueChanged.connect(view.k.setValue)
    return view


def _training(window):
    from .training_plots import TrainingPlotsView

    return TrainingPlotsView(window.history, max_fps=12.0)


def _landscape(window):
    from .landscape_view import LandscapeView

    return LandscapeView()


def _paths(window):
    from .paths_view import PathsView

    view = PathsView()
    view.checkpoint_selected.connect(window.preview_checkpoint)
    return view


def _adaptation(window):
    from .adaptation_view import AdaptationView

    return AdaptationView()


def _tasks(window):
    from .tasks_view import TasksView

    view = TasksView()
    window.panel.open_image_set_requested.connect(lambda: window.open_image_set())
    return view


def _per_layer(window):
    from .per_layer_view import PerLayerView

    return PerLayerView()


def _arena(window):
    from .navigation_view import NavigationView

    return NavigationView()


PLAYGROUND = ViewSpec("playground", "Playground", _playground, attr="playground", message_ms=4000)
TRAINING = ViewSpec("training", "Training curves", _training, attr="plots")
LANDSCAPE = ViewSpec("landscape", "Landscape", _landscape, attr="landscape", clear_run="clear")
PATHS = ViewSpec("paths", "Paths", _paths, attr="paths", clear_run="clear")
ADAPTATION = ViewSpec("adaptation", "Adaptation", _adaptation, attr="adaptation", clear_run="clear_trained")
TASKS = ViewSpec("tasks", "Tasks", _tasks, attr="tasks")
PER_LAYER = ViewSpec("per_layer", "Per layer", _per_layer, attr="per_layer", clear_run="clear_trained")
ARENA = ViewSpec("arena", "Arena", _arena, clear_run="clear_trained")  # 2-D navigation (navigation_view.py)
BUILTINS = tuple(f"{__name__}:{name}" for name in ("PLAYGROUND", "TRAINING", "LANDSCAPE", "PATHS", "ADAPTATION",
                                                   "TASKS", "PER_LAYER", "ARENA"))


def as_view(name: str, obj) -> ViewSpec:
    """A ViewSpec from anything with `name`, `title` and a callable `factory` (a class, a dataclass, a spec)."""
    if isinstance(obj, ViewSpec):
        return obj
    factory = getattr(obj, "factory", None)
    title = getattr(obj, "title", None)
    if not callable(factory) or not isinstance(title, str) or not isinstance(name, str) or not name:
        raise TypeError("a view needs a name, a title and a factory(window)")
    return ViewSpec(name, title, factory, clear_run=str(getattr(obj, "clear_run", "") or ""),
                    message_ms=int(getattr(obj, "message_ms", 6000)))


def make_registry(builtins: tuple[str, ...] = BUILTINS) -> Registry[ViewSpec]:
    return Registry("view", GROUP, builtins, as_view, lambda obj: getattr(obj, "name", None))


VIEWS: Registry[ViewSpec] = make_registry()


def view_names() -> tuple[str, ...]:
    """The names `--view` takes: the built-in views, then the plug-ins' (loads the plug-ins)."""
    return VIEWS.names()
