"""Registries: algorithms, task families and views, filled from the same `module:attribute` references whether
they ship with MAML Lab or come from an installed plug-in (entry points), the way pytest and napari take plug-ins.

A registry loads lazily on first use: first its built-in references, then every entry point of its group. A
plug-in that fails to import (any exception, `sys.exit()` included; only Ctrl+C goes through), or whose object is
not what the registry takes, is reported in one line on stderr and skipped, so the lab still starts; `problems`
keeps those lines for `maml-lab list`.
"""

from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from typing import Generic, TypeVar

T = TypeVar("T")
BUILTIN = "maml_lab"


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    source: str  # "maml_lab", or the distribution (package) an entry point came from
    reference: str  # "module:attribute"


def load_reference(reference: str):
    """The object a `module:attribute` reference names."""
    module_name, _, attr = reference.partition(":")
    obj = importlib.import_module(module_name)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


class Registry(Generic[T]):
    """Name -> object, with where each came from. `check(name, obj)` validates and may return a normalized object."""

    def __init__(self, kind: str, group: str, builtins: tuple[str, ...], check: Callable[[str, object], T],
                 name_of: Callable[[T], str]):
        self.kind = kind
        self.group = group
        self._builtins = builtins
        self._check = check
        self._name_of = name_of
        self._entries: dict[str, Entry[T]] = {}
        self._loaded = False
        self._lock = threading.RLock()
        self.problems: list[str] = []

    # -- filling ---------------------------------------------------------------------------------------
    def register(self, obj, source: str = BUILTIN, reference: str = "") -> T:
        """Add `obj` (replacing nothing: a second object under a taken name is refused)."""
        with self._lock:
            name = self._name_of(obj)
            checked = self._check(name, obj)
            if name in self._entries and self._entries[name].obj is not checked:
                raise ValueError(f"{self.kind} {name!r} is already registered by {self._entries[name].source}")
            self._entries[name] = Entry(name, checked, source, reference or _reference_of(obj))
            return checked

    def _load(self) -> None:
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            self._loaded = True
            for reference in self._builtins:
                self.register(load_reference(reference), BUILTIN, reference)  # a broken built-in is a bug: raise
            for ep in _entry_points(self.group):
                dist = getattr(getattr(ep, "dist", None), "name", None) or "a plug-in"
                try:
                    self.register(ep.load(), source=dist, reference=ep.value)
                except KeyboardInterrupt:
                    raise
                except BaseException as exc:  # noqa: BLE001 - a broken plug-in never stops the lab (sys.exit too)
                    line = (f"maml-lab: skipped {self.kind} plug-in {ep.name!r} from {dist} ({ep.value}): "
                            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": "))
                    self.problems.append(line)
                    print(line, file=sys.stderr)

    def reload(self) -> None:
        """Forget every entry and problem and load again: built-ins, then the entry points installed now (a test
        that puts a plug-in on sys.path, or takes it away, calls this)."""
        with self._lock:
            importlib.invalidate_caches()
            self._entries.clear()
            self.problems.clear()
            self._loaded = False
            self._load()

    # -- reading ---------------------------------------------------------------------------------------
    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[T]:
        self._load()
        return iter([e.obj for e in self._entries.values()])

    def names(self) -> tuple[str, ...]:
        self._load()
        return tuple(self._entries)

    def entries(self) -> list[Entry[T]]:
        self._load()
        return list(self._entries.values())

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._entries[name].obj
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r} (one of {', '.join(self._entries)})") from None


def _reference_of(obj) -> str:
    module = getattr(obj, "__module__", None) or type(obj).__module__
    qual = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{module}:{qual}"


def _entry_points(group: str):
    try:
        return list(metadata.entry_points(group=group))
    except Exception as exc:  # noqa: BLE001 - a damaged installation must not stop the lab
        print(f"maml-lab: could not read installed plug-ins: {exc}", file=sys.stderr)
        return []
