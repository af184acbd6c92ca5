"""Limits that make opening an untrusted image set safe: an image set is data from anywhere (a zip off the web, a
shared folder), so every file is checked against these before it is read or decoded, and the whole set before
its pixels are allocated.

The defaults load any usual few-shot set (Omniglot's ~32k 105x105 images; mini-ImageNet-size class folders of
photos at 84x84) and keep one image's decoding to a few hundred MB at most; a set that truly is larger raises
them (`maml-lab train|eval` and `python main.py` take --max-image-pixels, --max-file-bytes, --max-zip-ratio,
--max-set-bytes). The loader reads the limits in effect (`current_limits`): `LoadLimits.applied()` sets them for
the code inside it (the CLI's commands), `set_default_limits` for the whole process, every thread included (the
app loads sets in worker threads, which a context variable does not reach). So they need not travel through every
config and registry call, and are not part of any experiment's config.
"""

from __future__ import annotations

import contextvars
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
RATIO_FLOOR_BYTES = MIB  # zip entries up to this size may inflate any amount (a small blank BMP compresses 100x+)


@dataclass(frozen=True)
class LoadLimits:
    """What one image set may cost before it is refused (whole set) or a file is skipped (the others).

    max_image_pixels: width x height an image header may declare (read before decoding; decoding costs up to
        ~9 bytes a pixel with the conversions); max_file_bytes: size of one file, or of one zip entry inflated;
    max_zip_ratio: how much a zip entry larger than 1 MiB may inflate (uncompressed / compressed size);
    max_set_bytes: the decoded set (images x channels x size x size bytes), checked before anything decodes.
    """

    max_image_pixels: int = 25_000_000  # 5000 x 5000, a 25-megapixel photo
    max_file_bytes: int = 128 * MIB
    max_zip_ratio: float = 100.0
    max_set_bytes: int = 4 * GIB  # mini-ImageNet's 60,000 images at 84x84 RGB: 1.3 GB

    def __post_init__(self) -> None:
        for name in ("max_image_pixels", "max_file_bytes", "max_set_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.max_zip_ratio, bool) or not isinstance(self.max_zip_ratio, (int, float)) \
                or not 1 <= self.max_zip_ratio < float("inf"):
            raise ValueError(f"max_zip_ratio must be a number >= 1, got {self.max_zip_ratio!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        """One line for a load report."""
        return (f"{self.max_image_pixels / 1e6:g} M pixels an image, {format_bytes(self.max_file_bytes)} a file or "
                f"zip entry, zip entries over {format_bytes(RATIO_FLOOR_BYTES)} inflating at most "
                f"{self.max_zip_ratio:g}x, {format_bytes(self.max_set_bytes)} decoded in all")

    @contextmanager
    def applied(self) -> Iterator["LoadLimits"]:
        """These limits for every image set loaded inside (this thread or task only)."""
        token = _CURRENT.set(self)
        try:
            yield self
        finally:
            _CURRENT.reset(token)


_CURRENT: contextvars.ContextVar[LoadLimits | None] = contextvars.ContextVar("maml_lab_image_limits", default=None)
_BUILTIN = LoadLimits()
_process_default = _BUILTIN


def set_default_limits(limits: LoadLimits | None) -> None:
    """These limits for every thread of this process where none are applied (the app's flags); None restores
    the built-in defaults."""
    global _process_default
    if limits is not None and not isinstance(limits, LoadLimits):
        raise TypeError(f"expected LoadLimits or None, got {type(limits).__name__}")
    _process_default = limits or _BUILTIN


def current_limits() -> LoadLimits:
    """The limits in effect: those applied in this thread or task (`LoadLimits.applied`), else the process's
    (`set_default_limits`), else the built-in defaults."""
    return _CURRENT.get() or _process_default


def format_bytes(n: float) -> str:
    """1.3 GB, 128 MiB-style sizes for people: binary units, one decimal where it matters."""
    for unit, size in (("GB", GIB), ("MB", MIB), ("KB", KIB)):
        if n >= size:
            value = n / size
            return f"{value:.0f} {unit}" if value >= 10 or value == int(value) else f"{value:.1f} {unit}"
    return f"{int(n)} bytes"


_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_bytes(text: str) -> int:
    """'4G', '512MB', '1.5GiB', '1000000' -> bytes (K/M/G/T are powers of 1024). ValueError otherwise."""
    m = _SIZE.match(str(text))
    if not m:
        raise ValueError(f"not a size: {text!r} (e.g. 4G, 512M, 1000000)")
    scale = {"": 1, "k": KIB, "m": MIB, "g": GIB, "t": 1 << 40}[m.group(2).lower()]
    value = int(float(m.group(1)) * scale)
    if value < 1:
        raise ValueError(f"a size must be at least 1 byte, got {text!r}")
    return value


def machine_memory() -> int | None:
    """Bytes of memory this process may use at most: the machine's total, or a smaller cgroup (container)
    limit; None where neither can be read."""
    total = None
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        try:
            with open("/proc/meminfo", encoding="ascii") as f:
                for line in f:
                    if line.startswith("MemTotal:"):
                        total = int(line.split()[1]) * KIB
                        break
        except (OSError, ValueError, IndexError):
            pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path, encoding="ascii") as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and (total is None or 0 < int(text) < total):
            total = int(text)
    return total if total and total > 0 else None


def check_memory(needed: int, what: str) -> None:
    """Refuse, in one line, what needs more memory than the machine has ("this needs about 130 GB; ...")."""
    have = machine_memory()
    if have is not None and needed > have:
        raise MemoryNeedError(f"{what}: this needs about {format_bytes(needed)}; the machine has "
                              f"{format_bytes(have)}")


class MemoryNeedError(ValueError):
    """A request refused before allocating: it would need more memory than the machine has."""
