"""Files written through a temporary file get the permissions any new file would: 0o666 less the umask.

`tempfile.mkstemp` creates its file mode 0600 (private, whatever the umask), and renaming it over the target keeps
that mode, so exports, PNGs, config.toml and checkpoints came out readable by their owner only. Every atomic writer
calls `follow_umask(tmp)` before its rename.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, without changing it where the system says it (Linux), else by setting and restoring
    it under a lock."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def follow_umask(path: str | os.PathLike) -> None:
    """Give `path` (a temporary file about to be renamed into place) the mode a new file gets: 0o666 & ~umask."""
    os.chmod(path, 0o666 & ~current_umask())
