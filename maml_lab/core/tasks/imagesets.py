"""Image sets for few-shot classification: decode once, keep every image of every class in memory.

Sources: an Omniglot zip read in place (`images_background/<Alphabet>/<character>/<id>_<drawer>.png`), the
same layout unpacked, or any class-per-folder set (png, jpg, jpeg, bmp, gif), zipped or not. Images are
resized and converted by a `Preprocessing` (default: 28x28 grayscale with strokes 1.0 on a 0.0 background,
as in the MAML paper), stored as uint8 [num_images, C, H, W] grouped by class, and cached as an .npz under
`~/.cache/maml_lab/imagesets` (never inside the user's folder), so a second load takes milliseconds.

A set is untrusted input (imagelimits.py): only regular files are read, each within size and pixel limits checked
before decoding, and the decoded set's size is checked before it is allocated. Files that fail a check or do not
decode are skipped and listed, with the reason, in a `LoadReport`; a source without usable classes, or over the
set's limit, raises ValueError.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import stat
import tempfile
import threading
import time
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath

import numpy as np

from ..permissions import follow_umask
from .imagelimits import RATIO_FLOOR_BYTES, LoadLimits, check_memory, current_limits, format_bytes
from .miniimagenet import ArrayFile, is_array_file

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
PIL_FORMATS = ("PNG", "JPEG", "BMP", "GIF")  # the decoders an untrusted file may reach (not Pillow's ~40)
MODES = ("grayscale", "rgb")
RESAMPLING = ("lanczos", "bilinear", "bicubic", "box", "nearest")
NORMALIZATIONS = ("unit",)
CACHE_VERSION = 1
CACHE_ENV = "MAML_LAB_CACHE"

ProgressFn = Callable[[int, int], object]


class LoadCancelled(Exception):
    """Raised when the caller cancels a load (progress callback returned False, or the cancel event is set)."""


# --------------------------------------------------------------------------------------------------------------
# Preprocessing


@dataclass(frozen=True)
class Preprocessing:
    """How files become arrays. `invert`: None = auto (grayscale sets with a light background are inverted so
    strokes are 1.0 on 0.0, like Omniglot in the MAML paper; never for rgb), True / False to force it.

    Pixel values are always scaled to [0, 1] ("unit" normalization: value / 255); any per-channel
    standardization is the model's business.
    """

    size: tuple[int, int] = (28, 28)  # (height, width)
    mode: str = "grayscale"
    invert: bool | None = None
    resample: str = "lanczos"
    normalization: str = "unit"

    def __post_init__(self) -> None:
        size = self.size
        if isinstance(size, int):
            size = (size, size)
        size = tuple(int(s) for s in size)
        object.__setattr__(self, "size", size)
        if len(size) != 2 or not all(1 <= s <= 4096 for s in size):
            raise ValueError(f"image size must be (height, width) between 1 and 4096, got {self.size}")
        if self.mode not in MODES:
            raise ValueError(f"unknown image mode {self.mode!r} (one of {', '.join(MODES)})")
        if self.resample not in RESAMPLING:
            raise ValueError(f"unknown resampling {self.resample!r} (one of {', '.join(RESAMPLING)})")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {self.normalization!r} (one of {', '.join(NORMALIZATIONS)})")
        if self.invert not in (None, True, False):
            raise ValueError(f"invert must be None (auto), True or False, got {self.invert!r}")

    @classmethod
    def omniglot(cls, size: int = 28) -> "Preprocessing":
        return cls(size=(size, size), mode="grayscale", invert=None)

    @classmethod
    def miniimagenet(cls, size: int = 84) -> "Preprocessing":
        return cls(size=(size, size), mode="rgb", invert=False)

    @classmethod
    def from_dict(cls, d: Mapping) -> "Preprocessing":
        invert = d.get("invert", None)
        if invert == "auto":
            invert = None
        return cls(size=tuple(d.get("size", (28, 28))), mode=d.get("mode", "grayscale"), invert=invert,
                   resample=d.get("resample", "lanczos"), normalization=d.get("normalization", "unit"))

    @property
    def channels(self) -> int:
        return 1 if self.mode == "grayscale" else 3

    def to_dict(self) -> dict:
        """For export metadata: everything needed to preprocess a new image the same way."""
        return {
            "size": list(self.size),
            "mode": self.mode,
            "channels": self.channels,
            "invert": "auto" if self.invert is None else bool(self.invert),
            "stroke_polarity": ("auto" if self.invert is None else
                                "inverted (dark strokes on light background become 1.0 on 0.0)" if self.invert
                                else "as stored (pixel / 255)"),
            "resample": self.resample,
            "normalization": self.normalization,
            "value_range": [0.0, 1.0],
            "layout": "CHW",
        }


# --------------------------------------------------------------------------------------------------------------
# Report and image set


@dataclass
class LoadReport:
    """What a load found: counts, skipped files with the reason, classes dropped because they were empty."""

    source: str
    layout: str = ""
    num_classes: int = 0
    num_images: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    dropped_classes: list[str] = field(default_factory=list)
    inverted: bool = False
    from_cache: bool = False
    cache_file: str | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    limits: dict = field(default_factory=dict)  # the LoadLimits the files were checked against

    def limits_text(self) -> str:
        """The limits in one line, '' when none applied (the built-in glyphs)."""
        try:
            return LoadLimits(**self.limits).text() if self.limits else ""
        except (TypeError, ValueError):
            return ""

    def skipped_lines(self, limit: int = 20) -> list[str]:
        """'name: why' per skipped file, the first `limit` and then 'and N more'."""
        lines = [f"{name}: {why}" for name, why in self.skipped[:limit]]
        if len(self.skipped) > limit:
            lines.append(f"and {len(self.skipped) - limit:,} more")
        return lines

    def summary(self) -> str:
        parts = [f"{self.num_classes} classes, {self.num_images} images"]
        if self.skipped:
            parts.append(f"{len(self.skipped)} files skipped")
        if self.dropped_classes:
            parts.append(f"{len(self.dropped_classes)} empty classes dropped")
        made = "generated" if self.source == "glyphs" else "decoded"
        parts.append(f"{'from cache' if self.from_cache else made} in {self.seconds:.2f} s")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["skipped"] = [list(s) for s in self.skipped]
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "LoadReport":
        d = dict(d)
        d["skipped"] = [tuple(s) for s in d.get("skipped", [])]
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


class ImageSet:
    """Images of every class in memory, class after class.

    pixels: uint8 [num_images, C, H, W]; class c owns rows offsets[c]:offsets[c + 1].
    class_names[c] is e.g. "Greek/character03"; groups[c] its alphabet ("" when the source has no groups).
    `images` gives the float32 [0, 1] view (computed once on first use).
    """

    def __init__(self, name: str, class_names: Sequence[str], groups: Sequence[str] | None, pixels: np.ndarray,
                 offsets: Sequence[int] | np.ndarray, preprocessing: Preprocessing, source: str = "",
                 report: LoadReport | None = None, meta: dict | None = None):
        pixels = np.asarray(pixels)
        offsets = np.asarray(offsets, dtype=np.int64)
        if pixels.dtype != np.uint8 or pixels.ndim != 4:
            raise ValueError(f"pixels must be uint8 [num_images, C, H, W], got {pixels.dtype} {pixels.shape}")
        if offsets.ndim != 1 or len(offsets) != len(class_names) + 1 or offsets[0] != 0 \
                or offsets[-1] != len(pixels) or np.any(np.diff(offsets) < 0):
            raise ValueError("offsets must run from 0 to num_images, one more entry than classes, non-decreasing")
        groups = list(groups) if groups is not None else [""] * len(class_names)
        if len(groups) != len(class_names):
            raise ValueError(f"{len(groups)} group names for {len(class_names)} classes")
        self.name = name
        self.class_names = list(class_names)
        self.groups = groups
        self.pixels = pixels
        self.offsets = offsets
        self.preprocessing = preprocessing
        self.source = source
        self.report = report
        self.meta = dict(meta or {})
        self._images: np.ndarray | None = None
        self._lock = threading.Lock()

    # --- sizes
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_images(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.pixels.shape[1:])

    @property
    def counts(self) -> np.ndarray:
        """Images per class, int64 [num_classes]."""
        return np.diff(self.offsets)

    @property
    def group_names(self) -> list[str]:
        """Distinct groups (alphabets) in order of first appearance."""
        return list(dict.fromkeys(self.groups))

    def __len__(self) -> int:
        return self.num_classes

    def __repr__(self) -> str:
        return (f"ImageSet({self.name!r}, {self.num_classes} classes, {self.num_images} images, "
                f"{len(self.group_names)} groups, shape {self.image_shape})")

    # --- pixel access
    @property
    def images(self) -> np.ndarray:
        """float32 [num_images, C, H, W] in [0, 1]."""
        with self._lock:
            if self._images is None:
                self._images = self.pixels.astype(np.float32) * np.float32(1 / 255)
            return self._images

    def class_range(self, c: int) -> tuple[int, int]:
        return int(self.offsets[c]), int(self.offsets[c + 1])

    def class_images(self, c: int) -> np.ndarray:
        """float32 [n, C, H, W] of class c."""
        lo, hi = self.class_range(c)
        return self.pixels[lo:hi].astype(np.float32) * np.float32(1 / 255)

    def describe(self) -> dict:
        """For metadata: what was loaded and how it was preprocessed."""
        counts = self.counts
        d = {
            "name": self.name,
            "source": self.source,
            "num_classes": self.num_classes,
            "num_images": self.num_images,
            "num_groups": len([g for g in self.group_names if g]),
            "images_per_class": [int(counts.min()), int(counts.max())] if len(counts) else [0, 0],
            "image_shape": list(self.image_shape),
            "preprocessing": self.preprocessing.to_dict(),
        }
        if self.report is not None:
            d["layout"] = self.report.layout
            d["inverted"] = self.report.inverted
        d.update({k: v for k, v in self.meta.items() if k not in d})
        return d

    # --- derived sets
    def subset(self, classes: Iterable[int], name: str | None = None) -> "ImageSet":
        """The given classes (in the given order), pixels copied."""
        classes = np.asarray(list(classes), dtype=np.int64)
        if len(classes) and (classes.min() < 0 or classes.max() >= self.num_classes):
            raise ValueError(f"class index out of range 0..{self.num_classes - 1}")
        counts = self.counts[classes]
        rows = (np.concatenate([np.arange(self.offsets[c], self.offsets[c + 1]) for c in classes])
                if len(classes) else np.zeros(0, dtype=np.int64))
        offsets = np.concatenate([[0], np.cumsum(counts)])
        return ImageSet(name or self.name, [self.class_names[c] for c in classes], [self.groups[c] for c in classes],
                        self.pixels[rows], offsets, self.preprocessing, self.source, self.report, self.meta)

    def split(self, parts: Mapping[str, float | int], seed: int = 0, by_group: bool = False) -> dict[str, "ImageSet"]:
        return split_classes(self, parts, seed=seed, by_group=by_group)

    def with_rotations(self, angles: Sequence[int] = (90, 180, 270), keep_original: bool = True) -> "ImageSet":
        return rotate_classes(self, angles, keep_original=keep_original)

    def validate(self, ways: int, shots: int, queries: int) -> None:
        validate_task_shape(self, ways, shots, queries)


# --------------------------------------------------------------------------------------------------------------
# Splits, rotations, validation


def _part_sizes(parts: Mapping[str, float | int], n: int, what: str) -> dict[str, int]:
    if not parts:
        raise ValueError("a split needs at least one part")
    values = list(parts.values())
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or not math.isfinite(v)
           for v in values):
        raise ValueError(f"split sizes must be non-negative numbers, got {dict(parts)}")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values) and sum(values) > 1:
        sizes = dict(zip(parts, values))
        if sum(values) > n:
            raise ValueError(f"the split asks for {sum(values)} {what} but the set has {n}")
    else:
        total = float(sum(values))
        if total > 1.0 + 1e-9:
            raise ValueError(f"split fractions add up to {total:g}, more than 1")
        target = int(round(total * n))
        raw = [v * n for v in values]
        sizes_l = [int(math.floor(r)) for r in raw]
        order = sorted(range(len(raw)), key=lambda i: raw[i] - sizes_l[i], reverse=True)
        for i in order[: max(0, target - sum(sizes_l))]:
            sizes_l[i] += 1
        sizes = dict(zip(parts, sizes_l))
    empty = [k for k, v in sizes.items() if v == 0 and parts[k] > 0]
    if empty:
        raise ValueError(f"split part {empty[0]!r} would get 0 of the {n} {what}; ask for a larger share")
    return sizes


def split_classes(image_set: ImageSet, parts: Mapping[str, float | int], seed: int = 0,
                  by_group: bool = False) -> dict[str, ImageSet]:
    """Disjoint class splits, e.g. {"train": 0.7, "val": 0.1, "test": 0.2} (fractions) or counts of classes.

    by_group: split whole alphabets (groups) instead of classes, so no alphabet is shared between parts;
    the sizes then count groups. Seeded, so the same seed gives the same split.
    """
    rng = np.random.default_rng(seed)
    if by_group:
        names = image_set.group_names
        if len(names) < 2 and len(parts) > 1:
            raise ValueError(f"cannot split by alphabet: the set has {len(names)} alphabet(s)")
        sizes = _part_sizes(parts, len(names), "alphabets")
        perm = rng.permutation(len(names))
        out, start = {}, 0
        groups = np.asarray(image_set.groups, dtype=object)
        for key, size in sizes.items():
            chosen = {names[i] for i in perm[start:start + size]}
            start += size
            classes = np.flatnonzero([g in chosen for g in groups])
            out[key] = image_set.subset(classes, name=f"{image_set.name}:{key}")
        return out
    sizes = _part_sizes(parts, image_set.num_classes, "classes")
    perm = rng.permutation(image_set.num_classes)
    out, start = {}, 0
    for key, size in sizes.items():
        out[key] = image_set.subset(np.sort(perm[start:start + size]), name=f"{image_set.name}:{key}")
        start += size
    return out


def rotate_classes(image_set: ImageSet, angles: Sequence[int] = (90, 180, 270),
                   keep_original: bool = True) -> ImageSet:
    """Every rotation by a multiple of 90 degrees (counter-clockwise) becomes a new class (MAML paper, Omniglot).

    Class names get an "@90" suffix; groups are kept. New classes follow all originals, angle by angle.
    """
    ks = []
    for a in angles:
        if int(a) % 90 != 0:
            raise ValueError(f"rotations must be multiples of 90 degrees, got {a}")
        k = (int(a) // 90) % 4
        if k != 0 and k not in ks:
            ks.append(k)
    _, h, w = image_set.image_shape
    if h != w and any(k % 2 for k in ks):
        raise ValueError(f"90 and 270 degree rotations need square images, these are {h}x{w}")
    blocks, names, groups, offsets = [], [], [], [np.int64(0)]
    if keep_original:
        blocks.append(image_set.pixels)
        names += image_set.class_names
        groups += image_set.groups
        offsets += list(image_set.offsets[1:])
    for k in ks:
        blocks.append(np.ascontiguousarray(np.rot90(image_set.pixels, k=k, axes=(2, 3))))
        names += [f"{n}@{90 * k}" for n in image_set.class_names]
        groups += image_set.groups
        offsets += list(offsets[-1] + image_set.offsets[1:])
    if not blocks:
        raise ValueError("no rotation asked for and the originals are not kept")
    meta = dict(image_set.meta)
    meta["rotations"] = ([0] if keep_original else []) + [90 * k for k in ks]
    return ImageSet(image_set.name, names, groups, np.concatenate(blocks), np.asarray(offsets, dtype=np.int64),
                    image_set.preprocessing, image_set.source, image_set.report, meta)


def concat_image_sets(sets: Sequence[ImageSet], name: str | None = None) -> ImageSet:
    """Several sets as one (`--data A --data B`): every class of each, named "<set>/<class>" so classes of two
    sets never merge (two sets of the same name get "#2", "#3"). `meta["parts"]` records each set's name, source
    and class count, in order; the images must have one shape."""
    sets = list(sets)
    if not sets:
        raise ValueError("no image sets to combine")
    if len(sets) == 1:
        return sets[0]
    shape = sets[0].image_shape
    for s in sets[1:]:
        if s.image_shape != shape:
            raise ValueError(f"{s.name} loads as {list(s.image_shape)} images, {sets[0].name} as {list(shape)}")
    labels, seen = [], {}
    for s in sets:
        seen[s.name] = seen.get(s.name, 0) + 1
        labels.append(s.name if seen[s.name] == 1 else f"{s.name}#{seen[s.name]}")
    names = [f"{label}/{c}" for label, s in zip(labels, sets) for c in s.class_names]
    groups = [f"{label}/{g}" if g else label for label, s in zip(labels, sets) for g in s.groups]
    counts = np.concatenate([s.counts for s in sets])
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    reports = [s.report for s in sets if s.report is not None]
    report = LoadReport(source=" + ".join(s.source or s.name for s in sets),
                        layout=", ".join(dict.fromkeys(r.layout for r in reports)),
                        num_classes=len(names), num_images=int(offsets[-1]),
                        skipped=[(f"{label}/{f}", why) for label, s in zip(labels, sets) if s.report
                                 for f, why in s.report.skipped],
                        dropped_classes=[f"{label}/{c}" for label, s in zip(labels, sets) if s.report
                                         for c in s.report.dropped_classes],
                        inverted=any(r.inverted for r in reports), from_cache=all(r.from_cache for r in reports),
                        seconds=sum(r.seconds for r in reports),
                        notes=[f"{label}: {n}" for label, s in zip(labels, sets) if s.report for n in s.report.notes],
                        limits=reports[0].limits if reports else {})
    inverts = {s.preprocessing.invert for s in sets}
    if len(inverts) > 1:
        report.notes.append("the sets' stroke polarity differs: " + ", ".join(
            f"{label} {'inverted' if s.preprocessing.invert else 'as stored'}" for label, s in zip(labels, sets)))
    meta = {"parts": [{"name": label, "source": s.source, "classes": s.num_classes, "images": s.num_images}
                      for label, s in zip(labels, sets)]}
    return ImageSet(name or " + ".join(labels), names, groups, np.concatenate([s.pixels for s in sets]), offsets,
                    sets[0].preprocessing, report.source, report, meta)


def validate_task_shape(image_set: ImageSet, ways: int, shots: int, queries: int) -> None:
    """Refuse task shapes the set cannot supply: fewer classes than ways, or classes too small for
    shots + queries distinct images each. The message names the numbers."""
    if ways < 1 or shots < 1 or queries < 0:
        raise ValueError(f"need ways >= 1, shots >= 1, queries >= 0; got {ways}, {shots}, {queries}")
    if image_set.num_classes < ways:
        raise ValueError(f"{ways}-way tasks need at least {ways} classes, but {image_set.name!r} has "
                         f"{image_set.num_classes}")
    need = shots + queries
    counts = image_set.counts
    short = np.flatnonzero(counts < need)
    if len(short):
        worst = int(short[np.argmin(counts[short])])
        raise ValueError(f"{shots} shots + {queries} queries need {need} images per class, but {len(short)} of "
                         f"{image_set.num_classes} classes have fewer (class {image_set.class_names[worst]!r} has "
                         f"{int(counts[worst])})")


# --------------------------------------------------------------------------------------------------------------
# Sources


def _hidden(parts: Sequence[str]) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" or p == "Thumbs.db" for p in parts)


class FileSkipped(ValueError):
    """A file the loader will not use, with the reason (for the load report)."""


def _utf8(name: str) -> bool:
    """Whether a name from the file system is valid UTF-8 (undecodable bytes arrive as lone surrogates)."""
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _shown(name: str) -> str:
    """A file-system name people can read and any terminal can print: undecodable bytes as \\xNN."""
    return os.fsencode(name).decode("utf-8", "backslashreplace") if not _utf8(name) else name


_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symbolic link"))


def _not_regular(mode: int) -> str:
    """Why a file of this st_mode is not read: '' for a regular file."""
    if stat.S_ISREG(mode):
        return ""
    kind = next((text for test, text in _FILE_KINDS if test(mode)), "a special file")
    return f"{kind}, not a regular file"


class _Source:
    """A zip or a folder listed as POSIX relative paths; reads file bytes. The set is untrusted: only regular
    files are listed (in a folder, links only where they resolve to a regular file inside it; in a zip, entries
    that are regular files, within the size and inflation limits), and every read is bounded. What is left out
    is in `rejected` as (name, reason)."""

    def __init__(self, path: Path, limits: LoadLimits):
        self.path = path
        self.limits = limits
        self.is_zip = path.is_file()
        self._zip: zipfile.ZipFile | None = None
        self._entries: dict[tuple[str, ...], zipfile.ZipInfo] = {}
        self._root = os.path.realpath(path)
        files, dirs = [], set()
        self.rejected: list[tuple[str, str]] = []
        if self.is_zip:
            try:
                self._zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
                raise ValueError(f"cannot open {path} as a zip archive ({e})") from None
            for info in self._zip.infolist():
                parts = PurePosixPath(info.filename).parts
                if not parts or _hidden(parts):
                    continue
                if info.is_dir():
                    dirs.add(parts)
                    continue
                for i in range(1, len(parts)):
                    dirs.add(parts[:i])
                why = self._zip_entry_problem(info)
                if why:
                    self.rejected.append(("/".join(parts), why))
                    continue
                self._entries[parts] = info
                files.append((parts, info.file_size, info.date_time))
        else:
            for root, dnames, fnames in os.walk(path):
                rel = Path(root).relative_to(path).parts
                kept = []
                for d in sorted(dnames):
                    if _hidden((d,)):
                        continue
                    if not _utf8(d):
                        self.rejected.append((_shown("/".join(rel + (d,))) + "/",
                                              "folder name is not valid UTF-8 (skipped with everything in it)"))
                        continue
                    if os.path.islink(os.path.join(root, d)):
                        self.rejected.append(("/".join(rel + (d,)) + "/", "a link to a folder (not followed)"))
                        continue
                    kept.append(d)
                dnames[:] = kept
                if rel:
                    dirs.add(rel)
                for f in sorted(fnames):
                    if _hidden((f,)):
                        continue
                    parts = rel + (f,)
                    if not _utf8(f):
                        self.rejected.append((_shown("/".join(parts)), "name is not valid UTF-8"))
                        continue
                    why, st = self._file_problem(os.path.join(root, f))
                    if why:
                        self.rejected.append(("/".join(parts), why))
                        continue
                    files.append((parts, st.st_size, st.st_mtime_ns))
        self.files = sorted(files)
        self.dirs = dirs

    def _zip_entry_problem(self, info: zipfile.ZipInfo) -> str:
        """Why a zip entry is not read ('' when it may be), from its header alone."""
        mode = info.external_attr >> 16
        if info.create_system == 3 and stat.S_IFMT(mode) and not stat.S_ISREG(mode):
            return f"{_not_regular(mode).split(',')[0]} inside the zip, not a regular file"
        if info.flag_bits & 0x1:
            return "encrypted"
        limits = self.limits
        if info.file_size > limits.max_file_bytes:
            return (f"inflates to {format_bytes(info.file_size)}, over the limit of "
                    f"{format_bytes(limits.max_file_bytes)} a file (--max-file-bytes)")
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_FLOOR_BYTES and ratio > limits.max_zip_ratio:
            return (f"inflates {ratio:.0f}x ({format_bytes(info.compress_size)} to {format_bytes(info.file_size)}), "
                    f"over the limit of {limits.max_zip_ratio:g}x (--max-zip-ratio)")
        return ""

    def _file_problem(self, full: str) -> tuple[str, os.stat_result | None]:
        """Why a file in the folder is not read ('' when it may be), and its stat."""
        try:
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                if not self._inside(full):
                    return "a link to outside the image set", None
                try:
                    st = os.stat(full)
                except OSError:
                    return "a broken link", None
                why = _not_regular(st.st_mode)
                if why:
                    return f"a link to {why.split(',')[0]}, not to a regular file", None
        except OSError as e:
            return f"cannot read: {e.strerror or e}", None
        why = _not_regular(st.st_mode)
        if why:
            return why, None
        if st.st_size > self.limits.max_file_bytes:
            return (f"{format_bytes(st.st_size)}, over the limit of {format_bytes(self.limits.max_file_bytes)} "
                    f"a file (--max-file-bytes)"), None
        return "", st

    def _inside(self, full: str) -> bool:
        real = os.path.realpath(full)
        return real == self._root or real.startswith(self._root.rstrip(os.sep) + os.sep)

    def identity(self) -> dict:
        """What the cache key depends on: the path and the size and time of the archive or of every file."""
        resolved = str(self.path.resolve())
        if self.is_zip:
            st = self.path.stat()
            return {"kind": "zip", "path": resolved, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        h = hashlib.sha256()
        for parts, size, mtime in self.files:
            h.update(f"{'/'.join(parts)}\0{size}\0{mtime}\n".encode())
        for name, why in self.rejected:
            h.update(f"{name}\0{why}\n".encode("utf-8", "surrogateescape"))
        return {"kind": "folder", "path": resolved, "listing": h.hexdigest(), "files": len(self.files)}

    def read(self, parts: tuple[str, ...]) -> bytes:
        """The file's bytes, never more than the file limit (zip headers and file sizes can lie or change)."""
        limit = self.limits.max_file_bytes
        if self._zip is not None:
            with self._zip.open(self._entries[parts]) as f:
                data = f.read(limit + 1)
        else:
            full = os.path.join(self.path, *parts)
            if not self._inside(full):
                raise FileSkipped("a link to outside the image set")
            # O_NONBLOCK: a file swapped for a FIFO since the listing opens at once instead of waiting for a writer
            fd = os.open(full, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
            with open(fd, "rb", closefd=True) as f:
                why = _not_regular(os.fstat(fd).st_mode)
                if why:
                    raise FileSkipped(why)
                data = f.read(limit + 1)
        if len(data) > limit:
            raise FileSkipped(f"more than {format_bytes(limit)}, the limit a file (--max-file-bytes)")
        return data

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


_RESAMPLE_PIL = {"lanczos": "LANCZOS", "bilinear": "BILINEAR", "bicubic": "BICUBIC", "box": "BOX",
                 "nearest": "NEAREST"}


def decode_image(data: bytes, preprocessing: Preprocessing, max_pixels: int | None = None) -> np.ndarray:
    """One encoded image -> uint8 [C, H, W], resized and converted (not yet inverted). Raises on bad data, and
    FileSkipped when the header declares more than `max_pixels` pixels (default: the limits in effect), before
    anything is decoded."""
    from PIL import Image, UnidentifiedImageError

    max_pixels = current_limits().max_image_pixels if max_pixels is None else int(max_pixels)
    try:
        with warnings.catch_warnings():  # the size is checked below, against our own (lower) limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data), formats=PIL_FORMATS)
    except UnidentifiedImageError:
        raise ValueError("not an image format Pillow can read") from None
    except Image.DecompressionBombError:
        raise FileSkipped("declares more pixels than Pillow ever decodes (a decompression bomb)") from None
    with opened as im:
        w, h = im.size
        if w * h > max_pixels:
            raise FileSkipped(f"declares {w}x{h} pixels ({w * h / 1e6:.1f} M), over the limit of "
                              f"{max_pixels / 1e6:g} M (--max-image-pixels)")
        im.seek(0)
        im.load()
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            # flattened onto white, the decoded original released first (RGBA peak: ~9 bytes a pixel, not 16)
            rgba = im if im.mode == "RGBA" else im.convert("RGBA")
            if rgba is not im:
                im.close()
            flat = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
            rgba.close()
            im = flat
        im = im.convert("L" if preprocessing.mode == "grayscale" else "RGB")
        h, w = preprocessing.size
        if im.size != (w, h):
            im = im.resize((w, h), resample=getattr(Image.Resampling, _RESAMPLE_PIL[preprocessing.resample]))
        a = np.asarray(im, dtype=np.uint8)
    return a[None] if a.ndim == 2 else np.ascontiguousarray(a.transpose(2, 0, 1))


def decode_array_images(block: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """uint8 images [n, H, W] or [n, H, W, 1 or 3] (already decoded: a pickle's or an HDF5 file's) -> [n, C, h, w],
    resized and converted as `decode_image` does files (not yet inverted)."""
    from PIL import Image

    block = np.asarray(block, dtype=np.uint8)
    if block.ndim == 3:
        block = block[..., None]
    h, w = preprocessing.size
    c = preprocessing.channels
    if block.shape[1:3] == (h, w) and block.shape[3] == c:
        return np.ascontiguousarray(block.transpose(0, 3, 1, 2))
    out = np.empty((len(block), c, h, w), dtype=np.uint8)
    resample = getattr(Image.Resampling, _RESAMPLE_PIL[preprocessing.resample])
    for i, a in enumerate(block):
        im = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)
        im = im.convert("L" if c == 1 else "RGB")
        if im.size != (w, h):
            im = im.resize((w, h), resample=resample)
        arr = np.asarray(im, dtype=np.uint8)
        out[i] = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return out


def _cancel_requested(cancel) -> bool:
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    return bool(cancel())


def _layout(source: _Source, report: LoadReport):
    """Class folders: (class key, group, [file parts]) plus the common prefix stripped from every path."""
    images = [f[0] for f in source.files if f[0][-1].lower().endswith(IMAGE_EXTENSIONS)]
    for parts, _, _ in source.files:
        if not parts[-1].lower().endswith(IMAGE_EXTENSIONS):
            ext = PurePosixPath(parts[-1]).suffix.lower()
            why = ("an archive inside the archive (unpack it first)" if ext in (".zip", ".tar", ".gz", ".tgz")
                   else "not an image file")
            report.skipped.append(("/".join(parts), why))
    # Strip the directories every image shares (e.g. "images_background/"), keeping one level for the class.
    prefix: tuple[str, ...] = ()
    if images:
        dirs = [p[:-1] for p in images]
        shortest = min(len(d) for d in dirs)
        i = 0
        while i < shortest - 1 and all(d[i] == dirs[0][i] for d in dirs):
            i += 1
        prefix = dirs[0][:i]
    classes: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
    for parts in images:
        rel = parts[len(prefix):]
        if len(rel) < 2 or parts[:len(prefix)] != prefix:
            report.skipped.append(("/".join(parts), "not inside a class folder"))
            continue
        classes.setdefault(rel[:-1], []).append(parts)
    # Empty candidate classes: leaf folders without images, and folders whose only files are not images.
    file_dirs = {f[0][:-1] for f in source.files}
    parents = {d[:-1] for d in source.dirs}
    for d in source.dirs:
        if d[:len(prefix)] != prefix or len(d) <= len(prefix):
            continue
        rel = d[len(prefix):]
        if rel not in classes and (d not in parents or d in file_dirs):
            classes.setdefault(rel, [])
    return prefix, classes


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:60] or "imageset"


def default_cache_dir() -> Path:
    """$MAML_LAB_CACHE/imagesets, else ~/.cache/maml_lab/imagesets."""
    root = os.environ.get(CACHE_ENV)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "maml_lab"
    return base / "imagesets"


def cache_key(identity: Mapping, preprocessing: Preprocessing, extra: Mapping | None = None) -> str:
    blob = json.dumps({"v": CACHE_VERSION, "source": dict(identity), "prep": preprocessing.to_dict(),
                       "extra": dict(extra or {})}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def save_cache(path: Path, image_set: ImageSet) -> bool:
    """Write atomically (temp file + rename). Returns False when the cache folder is not writable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, pixels=image_set.pixels, offsets=image_set.offsets,
                         class_names=np.asarray(image_set.class_names, dtype=str),
                         groups=np.asarray(image_set.groups, dtype=str),
                         header=np.asarray(json.dumps({
                             "name": image_set.name, "source": image_set.source,
                             "preprocessing": image_set.preprocessing.to_dict(),
                             "report": image_set.report.to_dict() if image_set.report else None,
                             "meta": image_set.meta})))
            follow_umask(tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return True
    except OSError:
        return False


def _cached_pixel_bytes(path: Path) -> int:
    """The bytes the cached pixels declare, read from the .npy header inside the .npz (nothing loaded)."""
    with zipfile.ZipFile(path) as z, z.open("pixels.npy") as f:
        version = np.lib.format.read_magic(f)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = reader(f)
    return int(np.prod(shape, dtype=object)) * np.dtype(dtype).itemsize


def load_cache(path: Path, max_pixel_bytes: int | None = None) -> ImageSet | None:
    """The cached set, or None when the file is missing or unreadable. Over `max_pixel_bytes` (the budget left when
    several sets load together): ValueError, before the pixels are read."""
    if not path.is_file():
        return None
    if max_pixel_bytes is not None:
        try:
            size = _cached_pixel_bytes(path)
        except Exception:  # noqa: BLE001 - a damaged cache file is rebuilt, never fatal
            return None
        if size > max_pixel_bytes:
            raise ValueError(f"{path.name}: the cached set takes {format_bytes(size)}, over the "
                             f"{format_bytes(max_pixel_bytes)} left of the limit for all the sets together "
                             f"(raise it with --max-set-bytes)")
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(str(z["header"]))
            names = [str(s) for s in z["class_names"]] if z["class_names"].size else []
            groups = [str(s) for s in z["groups"]] if z["groups"].size else []
            pixels, offsets = z["pixels"], z["offsets"]
        report = LoadReport.from_dict(header["report"]) if header.get("report") else None
        return ImageSet(header["name"], names, groups, pixels, offsets,
                        Preprocessing.from_dict(header["preprocessing"]), header.get("source", ""), report,
                        header.get("meta") or {})
    except Exception:  # noqa: BLE001 - a damaged cache file is rebuilt, never fatal
        return None


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def load_image_set(path: str | os.PathLike, preprocessing: Preprocessing | None = None, *,
                   cache_dir: str | os.PathLike | None = None, use_cache: bool = True,
                   progress: ProgressFn | None = None, cancel=None, name: str | None = None,
                   limits: LoadLimits | None = None, copies: float = 1.0, budget: int | None = None) -> ImageSet:
    """Load a zip or folder of class folders (Omniglot: `<alphabet>/<character>/*.png`) as untrusted data.

    Every file is checked against `limits` (default: those in effect, `current_limits()`) before it is read or
    decoded; what fails is skipped and named in the report, with the reason. The decoded set's size is checked
    before its pixels are allocated: over `limits.max_set_bytes`, or with `copies` of it (what the caller will
    make: splits, rotations) over the machine's memory, the load is refused (ValueError, one line).
    progress(done, total) is called while decoding; returning False from it cancels, as does setting
    `cancel` (a threading.Event, or a callable returning True): both raise LoadCancelled. `budget`: the decoded
    bytes this set may take (default `limits.max_set_bytes`; less when it is one of several sets loaded together).
    A learn2learn mini-ImageNet pickle or a torchmeta HDF5 file (miniimagenet.py) is read by its own reader.
    The result is cached under `cache_dir` (default: `default_cache_dir()`), keyed by the source's path,
    size and modification times, the preprocessing and the limits; `use_cache=False` neither reads nor writes it.
    """
    t0 = time.perf_counter()
    prep = preprocessing or Preprocessing()
    limits = limits or current_limits()
    src_path = Path(path).expanduser()
    if not src_path.exists():
        raise ValueError(f"image set not found: {src_path}")
    if not (src_path.is_dir() or src_path.is_file()):
        raise ValueError(f"image set must be a folder or a zip file: {src_path}")
    set_name = name or (src_path.stem if src_path.is_file() else src_path.name) or "images"
    budget = limits.max_set_bytes if budget is None else int(budget)
    if src_path.is_file() and is_array_file(src_path):
        return _load_array_file(src_path, prep, limits, budget, progress, cancel, set_name, copies)
    source = _Source(src_path, limits)
    try:
        cache_file = None
        report_notes = []
        if use_cache:
            cdir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
            if not src_path.is_file() and _inside(cdir, src_path):
                report_notes.append("cache folder lies inside the image folder; not caching")
            else:
                key = cache_key(source.identity(), prep, {"limits": limits.to_dict()})
                cache_file = cdir / f"{_slug(set_name)}-{key}.npz"
                cached = load_cache(cache_file, max_pixel_bytes=budget)
                if cached is not None:
                    if progress is not None:
                        progress(cached.num_images, cached.num_images)
                    if cached.report is not None:
                        cached.report.from_cache = True
                        cached.report.cache_file = str(cache_file)
                        cached.report.seconds = time.perf_counter() - t0
                    return cached

        report = LoadReport(source=str(src_path), notes=report_notes, limits=limits.to_dict())
        report.skipped.extend(source.rejected)
        prefix, classes = _layout(source, report)
        total = sum(len(v) for v in classes.values())
        c, (h, w) = prep.channels, prep.size
        need = total * c * h * w
        if need > budget:
            over = (f"the limit of {format_bytes(limits.max_set_bytes)}" if budget >= limits.max_set_bytes else
                    f"the {format_bytes(budget)} left of the limit of {format_bytes(limits.max_set_bytes)} for all "
                    f"the sets together")
            raise ValueError(f"{src_path.name}: {total:,} images decoded at {c}x{h}x{w} would take "
                             f"{format_bytes(need)}, over {over} (raise it with --max-set-bytes if the set truly "
                             f"is that large)")
        check_memory(int(need * max(copies, 1.0)),
                     f"{total:,} images at {h}x{w} ({format_bytes(need)} decoded"
                     + (f", about {copies:g} copies for the class split and rotations)" if copies > 1 else ")"))
        pixels = np.empty((total, c, h, w), dtype=np.uint8)  # only the rows decoded below are ever touched
        step = max(1, total // 200)
        done = n = 0
        names: list[str] = []
        groups: list[str] = []
        counts: list[int] = []
        for key in sorted(classes):
            first = n
            for parts in classes[key]:
                if _cancel_requested(cancel):
                    raise LoadCancelled(f"loading {src_path} was cancelled")
                try:
                    pixels[n] = decode_image(source.read(parts), prep, limits.max_image_pixels)
                    n += 1
                except FileSkipped as e:
                    report.skipped.append(("/".join(parts), str(e)))
                except MemoryError:
                    report.skipped.append(("/".join(parts), "not enough memory to decode it"))
                except Exception as e:  # noqa: BLE001 - any decoder failure means "skip this file"
                    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                    report.skipped.append(("/".join(parts), f"cannot decode: {msg[:200]}"))
                done += 1
                if progress is not None and (done % step == 0 or done == total):
                    if progress(done, total) is False:
                        raise LoadCancelled(f"loading {src_path} was cancelled")
            label = "/".join(key)
            if n == first:
                report.dropped_classes.append(label)
                continue
            names.append(label)
            groups.append("/".join(key[:-1]))
            counts.append(n - first)
        report.skipped.sort()
        if not names:
            n_img = sum(1 for f in source.files if f[0][-1].lower().endswith(IMAGE_EXTENSIONS))
            first_skip = f" (first: {report.skipped[0][0]}: {report.skipped[0][1]})" if report.skipped else ""
            raise ValueError(f"no usable classes in {src_path}: expected class folders of images "
                             f"({', '.join(IMAGE_EXTENSIONS)}); found {n_img} image files, "
                             f"{len(report.skipped)} skipped{first_skip}")
        pixels = pixels[:n]
        inverted = bool(prep.invert) if prep.invert is not None else (
            prep.mode == "grayscale" and float(pixels.mean()) > 127.5)
        if inverted:
            np.subtract(255, pixels, out=pixels)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        report.layout = "alphabet/character" if all(g for g in groups) else "class folders"
        report.num_classes, report.num_images, report.inverted = len(names), int(len(pixels)), inverted
        image_set = ImageSet(set_name, names, groups, pixels, offsets, replace(prep, invert=inverted),
                             str(src_path), report, {"stripped_prefix": "/".join(prefix)})
        if cache_file is not None:
            report.cache_file = str(cache_file) if save_cache(cache_file, image_set) else None
            if report.cache_file is None:
                report.notes.append(f"could not write the cache file {cache_file}")
        report.seconds = time.perf_counter() - t0
        return image_set
    finally:
        source.close()


def _load_array_file(path: Path, prep: Preprocessing, limits: LoadLimits, budget: int, progress, cancel,
                     name: str, copies: float) -> ImageSet:
    """A learn2learn mini-ImageNet pickle or a torchmeta HDF5 file (miniimagenet.py) as an ImageSet: every class's
    images converted as files would be; the decoded size checked against `budget` before it is allocated."""
    t0 = time.perf_counter()
    report = LoadReport(source=str(path), limits=limits.to_dict())
    c, (h, w) = prep.channels, prep.size
    with ArrayFile(path, limits, budget) as source:
        report.layout = source.layout
        report.notes.extend(source.notes)
        total = sum(n for _, n in source.classes)
        need = total * c * h * w
        if need > budget:
            raise ValueError(f"{path.name}: {total:,} images at {c}x{h}x{w} would take {format_bytes(need)}, over "
                             f"{format_bytes(budget)}, the limit (raise it with --max-set-bytes if the set truly is "
                             f"that large)")
        check_memory(int(need * max(copies, 1.0)), f"{total:,} images at {h}x{w} ({format_bytes(need)})")
        pixels = np.empty((total, c, h, w), dtype=np.uint8)
        names, counts, n = [], [], 0
        for i, (cname, count) in enumerate(source.classes):
            if _cancel_requested(cancel):
                raise LoadCancelled(f"loading {path} was cancelled")
            if count == 0:
                report.dropped_classes.append(cname)
                continue
            pixels[n:n + count] = decode_array_images(source.images(i), prep)
            n += count
            names.append(cname)
            counts.append(count)
            if progress is not None and progress(i + 1, len(source.classes)) is False:
                raise LoadCancelled(f"loading {path} was cancelled")
    if not names:
        raise ValueError(f"no usable classes in {path}: every class is empty")
    inverted = bool(prep.invert) if prep.invert is not None else (prep.mode == "grayscale"
                                                                  and float(pixels.mean()) > 127.5)
    if inverted:
        np.subtract(255, pixels, out=pixels)
    report.num_classes, report.num_images, report.inverted = len(names), n, inverted
    report.seconds = time.perf_counter() - t0
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return ImageSet(name, names, None, pixels, offsets, replace(prep, invert=inverted), str(path), report,
                    {"format": report.layout})


# --------------------------------------------------------------------------------------------------------------
# Pictures of a set


def image_grid(image_set: ImageSet, classes: Sequence[int] | None = None, per_class: int = 10, pad: int = 2,
               background: int = 0) -> np.ndarray:
    """uint8 picture: one row per class, `per_class` images of it side by side. [H, W] or [H, W, 3]."""
    classes = list(range(min(10, image_set.num_classes))) if classes is None else list(classes)
    c, h, w = image_set.image_shape
    rows, cols = len(classes), per_class
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), background, dtype=np.uint8)
    for r, k in enumerate(classes):
        lo, hi = image_set.class_range(k)
        for j in range(min(cols, hi - lo)):
            y, x = pad + r * (h + pad), pad + j * (w + pad)
            out[y:y + h, x:x + w] = image_set.pixels[lo + j].transpose(1, 2, 0)
    return out[..., 0] if c == 1 else out

