"""Every command of the main window, declared once: text, shortcut, icon, tip, where it shows (menu, toolbar),
the MainWindow method it calls and when it is enabled.

One table builds the QActions, the menus, the toolbar and Help ▸ Keyboard shortcuts, so a command cannot
get a shortcut in one place and lose it in another, and a new command is one row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QAction, QIcon, QKeySequence

from ..lab.resources import resource
from .run_controller import RunState

MENUS = ("&File", "&Edit", "&Run", "&View", "&Help")
TOOLBAR = ("run", "files")  # the toolbar's groups, left to right (table order within a group)
Key = Qt.Key
Std = QKeySequence.StandardKey


def icon(name: str) -> QIcon:
    try:
        path = resource(f"icon-{name}.svg")
        return QIcon(str(path))
    except (OSError, ModuleNotFoundError):
        return QIcon()


@dataclass(frozen=True)
class ActionSpec:
    """One command. `menu` is "Menu/group" (groups are separated by a line, in table order); `slot` the name
    of the MainWindow method (a dotted path on the window) called with `args` (a checkable action: with its
    checked state last); `enabled` a predicate of the window, evaluated by `sync_enabled`."""

    id: str  # the window attribute is act_<id>
    text: str
    slot: str
    shortcut: str | Std | Key | None = None
    tip: str = ""
    icon: str | None = None
    menu: str | None = None
    toolbar: str | None = None  # the toolbar group ("run", "files"); None: not on the toolbar
    icon_text: str = ""
    checkable: bool = False
    enabled: Callable[[object], bool] | None = None
    args: tuple = ()


@dataclass(frozen=True)
class SubmenuSpec:
    """A submenu filled when it opens, by the MainWindow method `fill` (the window attribute is `id`)."""

    id: str
    text: str
    menu: str
    fill: str


def _busy(w) -> bool:
    return w.running


ACTIONS: tuple[ActionSpec | SubmenuSpec, ...] = (
    # File
    ActionSpec("open_config", "Open experiment…", "open_config", Std.Open, "Open an experiment config (TOML)", "open",
               "&File/config", enabled=lambda w: not _busy(w)),
    SubmenuSpec("recent_menu", "Open recent", "&File/config", "fill_recent_menu"),
    ActionSpec("save_config", "Save experiment…", "save_config", Std.Save, "Save the experiment config (TOML)", "save",
               "&File/config"),
    ActionSpec("past_runs", "Past runs…", "show_past_runs", "Ctrl+Shift+H",
               "List the run folders: open one's curves, path and exports, or resume it", menu="&File/runs"),
    ActionSpec("resume_run", "Resume run…", "resume_run", "Ctrl+Shift+R",
               "Continue a run folder from its latest checkpoint, with its own config", menu="&File/runs",
               enabled=lambda w: not _busy(w)),
    ActionSpec("open_images", "Open image set…", "open_image_set", "Ctrl+Shift+O",
               "Train on an image set: a zip or a folder of class folders (Omniglot)", menu="&File/images"),
    ActionSpec("download", "Download Omniglot…", "download_omniglot", None,
               "Download the official Omniglot zips into a folder", menu="&File/images"),
    ActionSpec("import", "Import initialization…", "import_initialization", "Ctrl+I",
               "Load an exported initialization into the playground", "import", "&File/inits", "files", "Import"),
    ActionSpec("export", "Export initialization…", "export_initialization", "Ctrl+E",
               "Save a trained initialization (safetensors + metadata, or .pt)", "export", "&File/inits", "files",
               "Export", enabled=lambda w: w.latest_snapshot is not None),
    SubmenuSpec("export_menu", "Export initialization of", "&File/inits", "fill_export_menu"),
    ActionSpec("export_plot", "Export plot…", "export_plot", "Ctrl+Shift+P", "Save the current view as PNG or SVG",
               menu="&File/export"),
    ActionSpec("export_metrics", "Export metrics (CSV)…", "export_metrics", "Ctrl+Shift+M",
               "Save every iteration's losses as CSV", menu="&File/export",
               enabled=lambda w: bool(w.history.algorithms)),
    ActionSpec("quit", "Quit", "close", Std.Quit, "Quit MAML Lab", menu="&File/quit"),
    # Edit: the playground's task
    ActionSpec("undo", "Undo", "views.playground.undo", Std.Undo, "Undo the last change to the playground task",
               menu="&Edit/points"),
    ActionSpec("delete", "Delete point", "views.playground.remove_selected", Key.Key_Delete,
               "Remove the selected support point", menu="&Edit/points"),
    ActionSpec("clear", "Clear task", "views.playground.clear", "Ctrl+Shift+Backspace",
               "Remove every point and the true curve", menu="&Edit/points"),
    ActionSpec("random", "Random task", "views.playground.random_task", "Ctrl+T",
               "A task from the family's distribution",
               menu="&Edit/task"),
    ActionSpec("draw", "Draw mode", "set_draw_mode", "Ctrl+D", "Draw the true curve freehand", menu="&Edit/task",
               checkable=True),
    # Run (Start and Pause are the toolbar's; Space toggles them)
    ActionSpec("toggle", "Start / Pause", "toggle_run", Key.Key_Space, "Start training, or pause / resume it",
               menu="&Run/run"),
    ActionSpec("start", "Start", "start", None, "Train the checked algorithms (Space)", "start", toolbar="run",
               enabled=lambda w: not _busy(w) and w.panel.valid),
    ActionSpec("pause", "Pause", "pause_or_resume", None, "Pause or resume training (Space)", "pause",
               toolbar="run", enabled=lambda w: w.state in (RunState.RUNNING, RunState.PAUSED)),
    ActionSpec("stop", "Stop", "stop", "Ctrl+.", "Stop training; the parameters so far are kept", "stop",
               "&Run/run", "run",
               enabled=lambda w: w.state in (RunState.STARTING, RunState.RUNNING, RunState.PAUSED)),
    ActionSpec("reset", "Reset", "reset", "Ctrl+R", "Discard the trained parameters and curves", "reset",
               "&Run/run", "run", enabled=lambda w: w.state not in (RunState.STARTING, RunState.STOPPING)),
    # View (the views' own entries come from the view registry: view_actions)
    ActionSpec("log", "Log scale", "views.training.set_log", "Ctrl+L", "Logarithmic loss axis", menu="&View/options",
               checkable=True),
    # Help
    ActionSpec("shortcuts", "Keyboard shortcuts", "show_shortcuts", Std.HelpContents, menu="&Help/help"),
    ActionSpec("about", "About MAML Lab", "show_about", menu="&Help/help"),
)


def view_actions(views) -> tuple[ActionSpec, ...]:
    """View ▸ <title> for each registered view (Ctrl+1 … Ctrl+9 in tab order)."""
    return tuple(ActionSpec(f"view_{v.name}", v.title, "show_view", f"Ctrl+{i}" if i <= 9 else None,
                            menu="&View/views", args=(v.name,))
                 for i, v in enumerate(views, start=1))


def all_specs(views) -> tuple[ActionSpec | SubmenuSpec, ...]:
    """ACTIONS with the views' entries first in the View menu."""
    at = next(i for i, s in enumerate(ACTIONS) if (s.menu or "").startswith("&View/"))
    return (*ACTIONS[:at], *view_actions(views), *ACTIONS[at:])


def _resolve(window, path: str):
    """The object `path` names from the window: attributes, and entries of dicts ("views.playground.undo")."""
    obj = window
    for part in path.split("."):
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    return obj


def _connect(window, act: QAction, spec: ActionSpec) -> None:
    if spec.checkable:
        act.triggered.connect(lambda checked=False: _resolve(window, spec.slot)(*spec.args, checked))
    else:
        act.triggered.connect(lambda _checked=False: _resolve(window, spec.slot)(*spec.args))


def make_action(window, spec: ActionSpec) -> QAction:
    act = QAction(spec.text, window)
    if spec.icon:
        act.setIcon(icon(spec.icon))
    if spec.icon_text:
        act.setIconText(spec.icon_text)
    if spec.shortcut is not None:
        act.setShortcut(QKeySequence(spec.shortcut))
        act.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
    if spec.tip:
        shortcut_text = act.shortcut().toString(QKeySequence.SequenceFormat.NativeText)
        act.setToolTip(f"{spec.tip} ({shortcut_text})" if shortcut_text else spec.tip)
        act.setStatusTip(spec.tip)
    act.setCheckable(spec.checkable)
    _connect(window, act, spec)
    window.addAction(act)
    setattr(window, f"act_{spec.id}", act)
    return act


def build(window, specs) -> dict[str, QAction]:
    """The QActions (window.act_<id>), the menus and the toolbar ("RunToolbar") of `specs`; returns id -> action.
    The toolbar gets a separator between groups; `window.toolbar` is it."""
    actions: dict[str, QAction] = {}
    menus: dict[str, object] = {}
    groups: dict[str, str] = {}
    bar = window.addToolBar("Run")
    bar.setObjectName("RunToolbar")
    bar.setMovable(False)
    bar.setIconSize(QSize(18, 18))
    bar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
    on_bar: dict[str, list[QAction]] = {group: [] for group in TOOLBAR}
    for name in MENUS:
        menus[name] = window.menuBar().addMenu(name)
    for spec in specs:
        menu_name, _, group = (spec.menu or "").partition("/")
        menu = menus.get(menu_name)
        if menu is None and spec.menu:
            menu = menus[menu_name] = window.menuBar().addMenu(menu_name)
        if menu is not None:
            if groups.get(menu_name, group) != group:
                menu.addSeparator()
            groups[menu_name] = group
        if isinstance(spec, SubmenuSpec):
            sub = menu.addMenu(spec.text)
            sub.aboutToShow.connect(lambda fill=spec.fill: _resolve(window, fill)())
            setattr(window, spec.id, sub)
            continue
        act = actions[spec.id] = make_action(window, spec)
        if menu is not None:
            menu.addAction(act)
        if spec.toolbar:
            on_bar.setdefault(spec.toolbar, []).append(act)
    for i, group in enumerate(a for a in on_bar.values() if a):
        if i:
            bar.addSeparator()
        bar.addActions(group)
    window.toolbar = bar
    window.menus = menus
    return actions


def sync_enabled(window, specs) -> None:
    """Enable each action whose spec has an `enabled` predicate as that predicate says now."""
    for spec in specs:
        if isinstance(spec, ActionSpec) and spec.enabled is not None:
            getattr(window, f"act_{spec.id}").setEnabled(bool(spec.enabled(window)))


def shortcut_rows(window, specs) -> list[tuple[str, str]]:
    """(text, shortcut) of every action with a shortcut, in table order: Help ▸ Keyboard shortcuts."""
    rows = []
    for spec in specs:
        if isinstance(spec, ActionSpec) and spec.shortcut is not None:
            keys = getattr(window, f"act_{spec.id}").shortcut().toString(QKeySequence.SequenceFormat.NativeText)
            if keys:
                rows.append((spec.text.replace("…", ""), keys))
    return rows
