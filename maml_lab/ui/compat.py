"""Work-arounds for binding bugs the app cannot avoid by itself.

PySide6 6.12 on Python 3.11: every call of a C++ method that returns void gives back `None` without
taking a reference to it (harmless from Python 3.12 on, where None is immortal); `Signal.emit` does the
same with `True`, a failed `disconnect` with `False`. Each such call lowers the singleton's reference
count by one, and after seconds to minutes of painting the interpreter aborts with "Fatal Python error:
none_dealloc" (or bool_dealloc). PySide6 6.8 does not have the bug. Where it is detected,
`guard_none_refcount` gives None, True and False reference counts so large that they cannot reach zero,
as Python 3.12 does for immortal objects. The lasting fix is PySide6 < 6.12 (or a fixed release) or
Python >= 3.12.
"""

from __future__ import annotations

import ctypes
import sys

_TOP_UP = 1 << 40  # decrements needed to reach zero: ~35 years at a million void calls a second
_guarded = False


def void_calls_leak_none() -> bool:
    """True when a void PySide6 method call drops a reference to None (measured, not guessed)."""
    if sys.version_info >= (3, 12):
        return False
    from PySide6.QtCore import QObject

    obj = QObject()
    before = sys.getrefcount(None)
    for _ in range(200):
        obj.setObjectName("probe")
    return sys.getrefcount(None) - before <= -100


def _refcount_cell(obj):
    """ctypes view of obj's ob_refcnt, or None where the object layout is not the plain one."""
    try:
        cell = ctypes.c_ssize_t.from_address(id(obj))
    except (ValueError, TypeError):
        return None
    # sys.getrefcount counts its own argument; the cell must agree, else this is not ob_refcnt
    return cell if cell.value == sys.getrefcount(obj) - 1 else None


def guard_none_refcount() -> bool:
    """Install the guard when needed; returns True when it is active."""
    global _guarded
    if _guarded:
        return True
    if not void_calls_leak_none():
        return False
    for singleton in (None, True, False):
        cell = _refcount_cell(singleton)
        if cell is None:
            _keep.extend([singleton] * 2_000_000)  # fallback: references held by a list (16 MB each)
        else:
            cell.value += _TOP_UP
    _guarded = True
    return True


_keep: list = []
