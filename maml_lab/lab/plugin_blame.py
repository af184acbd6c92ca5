"""Which plug-in a failure came from, read off the exception's traceback: the CLI and the app name it in their one
line instead of printing a traceback of someone else's code."""

from __future__ import annotations


def plugin_in(exc: BaseException) -> str | None:
    """"algorithm 'name' (from dist)" when a plug-in's code is on the exception's traceback (the entry whose class
    the failing method belongs to, where one package holds several), else None."""
    from ..core.algorithms.registry import ALGORITHMS
    from ..core.registry import BUILTIN
    from ..core.tasks.registry import TASKS

    plugins = [(registry.kind, e) for registry in (ALGORITHMS, TASKS) for e in registry.entries()
               if e.source != BUILTIN]
    tb, found = exc.__traceback__, None
    while tb is not None:
        package = str(tb.tb_frame.f_globals.get("__name__", "")).split(".")[0]
        mine = [(kind, e) for kind, e in plugins if e.reference.partition(":")[0].split(".")[0] == package]
        if mine:
            local = tb.tb_frame.f_locals
            exact = [(kind, e) for kind, e in mine
                     if ("self" in local and type(local["self"]) is e.obj) or local.get("cls") is e.obj]
            if exact or len(mine) == 1:
                kind, e = (exact or mine)[0]
                found = f"{kind} {e.name!r} (from {e.source})"
            elif found is None:
                found = f"from {mine[0][1].source}"
        tb = tb.tb_next
    return found
