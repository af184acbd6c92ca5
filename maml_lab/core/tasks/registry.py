"""The task family registry: config, CLI, panel, run library and views read it. Built-in families are listed by
the same `module:Class` reference a plug-in's entry point (group `maml_lab.tasks`) gives."""

from __future__ import annotations

from ..registry import Registry
from .base import TaskFamilyKind

BUILTIN_TASKS = (
    "maml_lab.core.tasks.sinusoid:SinusoidTasks",
    "maml_lab.core.tasks.images:ImageTasks",
    "maml_lab.core.tasks.navigation:NavigationTasks",
)


def _check(name: str, kind):
    if not (isinstance(kind, type) and issubclass(kind, TaskFamilyKind)):
        raise TypeError(f"{kind!r} is not a TaskFamilyKind subclass")
    if not name:
        raise ValueError(f"{kind.__name__} has no name")
    if kind.build.__func__ is TaskFamilyKind.build.__func__ or kind.model.__func__ is TaskFamilyKind.model.__func__:
        raise TypeError(f"{kind.__name__} must implement build() and model()")
    from .losses import LOSSES

    if kind.loss not in LOSSES:
        raise ValueError(f"{kind.__name__}.loss {kind.loss!r} is not one of {', '.join(LOSSES)}")
    return kind


TASKS = Registry("task family", "maml_lab.tasks", BUILTIN_TASKS, _check, lambda kind: kind.name)


def task_family(name: str) -> type[TaskFamilyKind]:
    return TASKS.get(name)


def task_names() -> tuple[str, ...]:
    return TASKS.names()
