"""The main views, registered. A view is one module that declares itself: its `VIEW`, a `ViewSpec` (name, title,
a factory taking the main window, and where it applies); this module lists those modules only. The window builds
its tabs and View menu from `VIEWS`, `--screenshot --view NAME` takes its names, and plug-ins add views through
the entry-point group `maml_lab.views` with no change to the window.

Where a view applies: `applies_to(family_kind, algorithms) -> None | reason` (family_kind: the task family's
registry entry, a core.tasks.base.TaskFamilyKind subclass, or None when no family is known; algorithms: the
names trained or chosen). Where it returns a reason, the view's tab is disabled with the reason as its tooltip,
and a view with `set_applicable(reason)` shows it in place of its content (and offers no Compute).

What the window does for every view, by duck typing, so a plug-in only writes a widget: subscribes
`initializations_changed(changed, removed)` to `window.inits`; subscribes it to the run's model
(lab.run_state.RunModel, `window.run_model`): `set_run(run_paths)` when a run's parameter path arrives,
`set_training(on)` when a run starts and ends, the spec's `clear_run` method (default `clear_run`) when the
results shown belong to another run or family (a new run, an opened one, another family, Reset),
`set_experiment(config)` when the form changes (not while training); calls `shutdown()` on close; connects an
`export_plot_requested` signal to File ▸ Export plot and a `message(str)` signal to the status bar.
`export_item()` / `view_title()` make File ▸ Export plot work on it, `wait_until_idle(timeout_s)` makes a
screenshot wait for its background computation. A view that wants more subscribes to `window.run_model.events`
itself in its factory.

No Qt import here: `app.py` reads the names to build its argument parser (loading the registry imports the view
modules, which do import Qt).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..core.registry import Registry

GROUP = "maml_lab.views"

Applies = Callable[[object, tuple], "str | None"]


@dataclass(frozen=True)
class ViewSpec:
    name: str  # `--view NAME`, the key of window.views
    title: str  # the tab and View-menu text
    factory: Callable[[object], object]  # window -> QWidget
    applies_to: Applies | None = None  # (family kind, algorithms) -> None where it applies, else the reason
    clear_run: str = "clear_run"  # the method that drops what the view shows of a run (another run or family)
    message_ms: int = 6000  # how long its `message` signal stays in the status bar

    def reason(self, kind, algorithms=()) -> str | None:
        """Why this view does not apply to `kind` and `algorithms`; None where it does."""
        return None if self.applies_to is None else self.applies_to(kind, tuple(algorithms))


# the built-in views, in tab order: each module's VIEW
BUILTINS = tuple(f"maml_lab.ui.{module}:VIEW" for module in (
    "playground", "training_plots", "landscape_view", "paths_view", "adaptation_view", "tasks_view",
    "per_layer_view", "navigation_view"))


def family_label(kind) -> str:
    """How a reason names a task family: '2-D navigation tasks'."""
    if kind is None:
        return "this task family"
    return f"{kind.label or kind.name} tasks"


def sampled_from_policy(kind) -> bool:
    """Tasks whose data are sampled from the adapted parameters (reinforcement learning: 2-D navigation): no fixed
    support and query sets to evaluate a loss surface or a layer's activations on."""
    return kind is not None and kind.loss == "policy_gradient"


# how a rule that is not gradient steps reads where a view would show steps
ADAPTATION_KINDS = {"prototypes": "prototypes", "head_fit": "a head fit on frozen features"}


def adaptation_kind(algorithm: str) -> str:
    """How algorithm `algorithm` (a name) adapts at test time: its `adaptation_kind`, "gradient" for names nobody
    registered (initializations of unknown origin fine-tune by SGD)."""
    from ..core.algorithms.registry import ALGORITHMS  # imports torch: not when app.py only reads view names

    return ALGORITHMS.get(algorithm).adaptation_kind if algorithm in ALGORITHMS else "gradient"


def adapts_by_steps(algorithm: str) -> bool:
    """Whether test-time adaptation is gradient steps on theta (what views of inner-loop steps draw)."""
    return adaptation_kind(algorithm) == "gradient"


# how a view's step axis reads for a rule that is not gradient steps on theta (Baseline: the head fit's epochs)
STEP_AXIS = {"head_fit": "steps: epochs of a head fit"}


def no_steps_text(algorithm: str) -> str:
    """'prototypes: no steps' for an algorithm that does not adapt by steps ('' for one that does): how views that
    have a step axis label its line (a head fit's steps are its epochs, said so)."""
    kind = adaptation_kind(algorithm)
    if kind == "gradient":
        return ""
    return STEP_AXIS.get(kind, f"{ADAPTATION_KINDS.get(kind, kind)}: no steps")


def steps_reason(view: str, algorithms) -> str | None:
    """Why a view whose content is inner-loop gradient steps (`view`: its title) does not apply: every algorithm in
    `algorithms` adapts otherwise (ProtoNets' prototypes, Baseline's head fit). None where one of them takes
    steps, or none is named; the view then leaves the others out (`adapts_by_steps`)."""
    others = [a for a in algorithms if not adapts_by_steps(a)]
    if not others or len(others) < len(algorithms):
        return None
    from ..core.algorithms.registry import algorithm_label

    names = ", ".join(algorithm_label(a) for a in others)
    rules = sorted({ADAPTATION_KINDS.get(adaptation_kind(a), adaptation_kind(a)) for a in others})
    return (f"{view} shows inner-loop gradient steps; {names} adapt{'s' if len(others) == 1 else ''} by "
            f"{' and '.join(rules)}, not by steps")


def as_view(name: str, obj) -> ViewSpec:
    """A ViewSpec from anything with `name`, `title` and a callable `factory` (a class, a dataclass, a spec), and
    optionally `applies_to`, `clear_run` and `message_ms`."""
    if isinstance(obj, ViewSpec):
        return obj
    factory = getattr(obj, "factory", None)
    title = getattr(obj, "title", None)
    if not callable(factory) or not isinstance(title, str) or not isinstance(name, str) or not name:
        raise TypeError("a view needs a name, a title and a factory(window)")
    applies = getattr(obj, "applies_to", None)
    if applies is not None and not callable(applies):
        raise TypeError("a view's applies_to must be callable: (family kind, algorithms) -> None | reason")
    return ViewSpec(name, title, factory, applies_to=applies,
                    clear_run=str(getattr(obj, "clear_run", "") or "clear_run"),
                    message_ms=int(getattr(obj, "message_ms", 6000)))


def make_registry(builtins: tuple[str, ...] = BUILTINS) -> Registry[ViewSpec]:
    return Registry("view", GROUP, builtins, as_view, lambda obj: getattr(obj, "name", None))


VIEWS: Registry[ViewSpec] = make_registry()


def view_names() -> tuple[str, ...]:
    """The names `--view` takes: the built-in views, then the plug-ins' (loads the plug-ins)."""
    return VIEWS.names()


class ViewHooks:
    """One view's subscriptions to the run's model (see the module docstring): the model holds this object's
    methods weakly and the view holds this object, so a view's lifetime is its own."""

    def __init__(self, widget, spec: ViewSpec, model):
        self.widget = widget
        self.spec = spec
        self._busy = False
        model.events.scope.connect(self.on_scope)
        model.events.paths.connect(self.on_paths)
        model.events.state.connect(self.on_state)

    def call(self, method: str, *args) -> None:
        fn = getattr(self.widget, method, None)
        if callable(fn):
            fn(*args)

    def on_scope(self, event) -> None:
        self.call(self.spec.clear_run)
        if event.scope.config is not None:
            self.call("set_experiment", event.scope.config)

    def on_paths(self, event) -> None:
        if event.paths is not None:
            self.call("set_run", event.paths)

    def on_state(self, event) -> None:
        busy = event.state.busy
        if busy != self._busy:
            self._busy = busy
            self.call("set_training", busy)
