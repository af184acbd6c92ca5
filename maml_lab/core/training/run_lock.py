"""One writer per run folder: an advisory lock (flock) on `<run>/run.lock`, recording the holder's pid and host.

The kernel drops a flock when its process dies, so a lock is never stuck; the pid and host left in the file by a
process that was killed tell the next writer that it takes over a stale lock (and whose). A clean release empties
the file. Where flock does not exist (Windows) the lock is a no-op, as are locks on file systems without it.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_NAME = "run.lock"


class RunLockedError(ValueError):
    """Another live process writes to this run folder."""


def _holder(text: str) -> dict:
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


class RunLock:
    """The lock on one run folder, held from `acquire` until `release` (or the process's end)."""

    NAME = LOCK_NAME

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / LOCK_NAME
        self._fh = None
        self._previous: bytes | None = None  # the file's bytes before we took it (None: there was no file)
        self.stale: dict = {}  # the holder a killed process left behind, when we took its lock over

    @property
    def held(self) -> bool:
        return self._fh is not None

    def acquire(self) -> "RunLock":
        """Take the lock or raise RunLockedError naming the live holder (pid, host). OSError when the folder
        cannot hold a lock file (read-only: then nothing here can be written anyway)."""
        if self._fh is not None:
            return self
        try:
            self._previous = self.path.read_bytes()
        except FileNotFoundError:
            self._previous = None
        fh = open(self.path, "a+b")
        if fcntl is not None:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = _holder(fh.read().decode("utf-8", "replace"))
                fh.close()
                who = f"pid {holder.get('pid', '?')} on {holder.get('host', 'an unknown host')}"
                if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
                    raise RunLockedError(f"{self.path.parent} is in use by another training session of this "
                                         f"process ({who}); close that session first") from None
                raise RunLockedError(f"{self.path.parent} is in use by another MAML Lab process ({who}); "
                                     "wait for it to end or stop it") from None
            except OSError:  # a file system without flock: go on unlocked
                pass
        fh.seek(0)
        holder = _holder(fh.read().decode("utf-8", "replace"))
        if isinstance(holder.get("pid"), int) and holder["pid"] != os.getpid():
            self.stale = holder  # the flock was free, yet a holder is named: it died holding the lock
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
        fh.flush()
        self._fh = fh
        return self

    def release(self, restore: bool = False) -> None:
        """Let go. restore=True puts the file back exactly as it was before `acquire` (a refused resume changes
        nothing in the folder); otherwise the file is left empty: no holder."""
        fh, self._fh = self._fh, None
        if fh is None:
            return
        try:
            if restore and self._previous is None:
                self.path.unlink(missing_ok=True)
            else:
                fh.seek(0)
                fh.truncate()
                if restore:
                    fh.write(self._previous)
                fh.flush()
        except OSError:
            pass  # a read-only folder: the kernel still drops the flock below
        finally:
            fh.close()

    def stale_text(self) -> str:
        """"taking over a stale lock from pid N on HOST", or "" when the lock was free and clean."""
        if not self.stale:
            return ""
        return f"taking over a stale lock from pid {self.stale.get('pid')} on {self.stale.get('host', '?')}"
