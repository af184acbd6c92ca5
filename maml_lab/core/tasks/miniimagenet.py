"""mini-ImageNet from the files other libraries leave on disk, read as untrusted data (imagelimits.py).

learn2learn's `mini-imagenet-cache-{train,validation,test}.pkl`: a pickled dict {"image_data": uint8 [N, 84, 84, 3],
"class_dict": {wnid: [row indices]}}. A pickle can run any code it names, so it is read by `SafeUnpickler`: only
numpy's array and dtype reconstruction and plain containers are admitted, every other name is refused in one line
before anything runs, and no read or array may be larger than the file or than the decoded-set limit.

torchmeta's `{split}_data.hdf5` (group "datasets", one uint8 [n, 84, 84, 3] dataset per class) with
`{split}_labels.json` (the class names) beside it: read with h5py (`pip install h5py`, the extra `maml-lab[hdf5]`),
following no links to other files; every dataset's declared shape and type are checked before anything is read.

imagesets.load_image_set makes either an ImageSet under the same `Preprocessing` as image files (resized,
converted to grayscale when asked), without the .npz cache: the arrays are read about as fast as the cache would be.
"""

from __future__ import annotations

import json
import os
import pickle
import stat
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .imagelimits import MIB, LoadLimits, format_bytes

PICKLE_SUFFIXES = (".pkl", ".pickle")
HDF5_SUFFIXES = (".hdf5", ".h5")
FILE_SLACK = 64 * MIB  # a file may exceed the decoded-set limit by this much (its indices, names, headers)
LINE_LIMIT = 64 * 1024  # longest text line a pickle may hold (protocol 0 opcodes)
NUMERIC_KINDS = "biuf"  # booleans, integers, floats: arrays of anything else (objects, strings) are refused


class UnsafeFile(ValueError):
    """A file refused as it is read: a name it would import, a size it declares, a layout not expected."""


# ---------------------------------------------------------------------------------------------------------------
# A pickle that may hold numpy arrays and plain containers, nothing else


class _BoundedReader:
    """The file, read so that no single read asks for more than is left in it, or than the largest array may take
    (a pickle's declared lengths can lie: the reader would otherwise allocate what they say before finding the file
    shorter)."""

    def __init__(self, f, size: int, max_read: int):
        self._f = f
        self.remaining = size
        self.max_read = max_read

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or n > self.remaining:
            raise UnsafeFile(f"it is cut short: it declares {format_bytes(n) if n and n > 0 else 'unbounded'} data "
                             f"where only {format_bytes(self.remaining)} remain in the file (truncated, or not a "
                             f"pickle)")
        if n > self.max_read:
            raise UnsafeFile(f"declares a block of {format_bytes(n)}, over the limit of {format_bytes(self.max_read)} "
                             f"(--max-set-bytes)")
        data = self._f.read(n)
        self.remaining -= len(data)
        return data

    def readline(self) -> bytes:
        line = self._f.readline(LINE_LIMIT + 1)
        if len(line) > LINE_LIMIT:
            raise UnsafeFile(f"a text line longer than {LINE_LIMIT // 1024} KB")
        self.remaining -= len(line)
        return line


def _reconstruct_function():
    """numpy's ndarray reconstructor (numpy.core.multiarray._reconstruct before numpy 2, numpy._core after),
    taken from an array's own reduce so the deprecated module is never imported."""
    return np.ndarray.__reduce__(np.zeros(1))[0]


def _safe_dtype(dtype) -> np.dtype:
    if not isinstance(dtype, np.dtype) or dtype.hasobject or dtype.kind not in NUMERIC_KINDS or dtype.fields:
        raise UnsafeFile(f"an array of {dtype!r}; only plain numbers are read")
    return dtype


class SafeUnpickler(pickle._Unpickler):
    """Unpickles numpy arrays and plain containers (dict, list, tuple, str, bytes, numbers) and refuses everything
    else, before it runs. Pure-Python unpickler, so every read goes through the bounded reader and BUILD is ours:
    an array's declared shape x itemsize is checked against the data it comes with and the limit."""

    def __init__(self, file, size: int, max_array_bytes: int):
        self._reader = _BoundedReader(file, size, max_array_bytes + 4096)
        super().__init__(self._reader, encoding="latin1")  # latin1: numpy arrays pickled by Python 2
        self.max_array_bytes = int(max_array_bytes)
        self._reconstruct = _reconstruct_function()
        self._allowed = {
            **{(m, "_reconstruct"): self._safe_reconstruct
               for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
            **{(m, "scalar"): self._safe_scalar for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
            **{(m, "_frombuffer"): self._safe_frombuffer for m in ("numpy.core.numeric", "numpy._core.numeric")},
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): self._safe_dtype_new,
            ("_codecs", "encode"): self._latin1_bytes,  # how protocol 2 writes bytes from Python 3
            ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
            ("collections", "OrderedDict"): OrderedDict, ("__builtin__", "set"): set,
        }

    def find_class(self, module: str, name: str):
        found = self._allowed.get((module, name))
        if found is None:
            raise UnsafeFile(f"names {module}.{name}, which is not a numpy array or a plain container; refused "
                             f"without running it")
        return found

    def persistent_load(self, pid):
        raise UnsafeFile("refers to persistent objects outside the file")

    # --- what the admitted names do, checked
    def _safe_reconstruct(self, subtype, shape, dtype_code):
        if subtype is not np.ndarray or not isinstance(shape, tuple) or len(shape) > 1 or int(np.prod(shape)) > 1:
            raise UnsafeFile("an array reconstruction that is not numpy's own")
        return self._reconstruct(np.ndarray, (0,), b"b")

    def _safe_dtype_new(self, spec, align=False, copy=False):
        if not isinstance(spec, str) or len(spec) > 8:
            raise UnsafeFile(f"a dtype {spec!r} that is not a plain number type")
        return _safe_dtype(np.dtype(spec, align=bool(align), copy=True))  # a copy: BUILD below may change it

    def _safe_scalar(self, dtype, data=b""):
        dtype = _safe_dtype(dtype)
        if not isinstance(data, (bytes, bytearray)) or len(data) != dtype.itemsize:
            raise UnsafeFile("a numpy scalar whose data does not match its type")
        return np.frombuffer(bytes(data), dtype=dtype)[0]

    def _safe_frombuffer(self, buffer, dtype, shape, order="C"):
        dtype = _safe_dtype(dtype)
        n = self._checked_size(shape, dtype)
        raw = buffer.raw() if isinstance(buffer, pickle.PickleBuffer) else buffer
        if not isinstance(raw, (bytes, bytearray, memoryview)) or len(memoryview(raw).cast("B")) != n:
            raise UnsafeFile("an array whose data does not match its declared shape")
        return np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if order == "F" else "C")

    @staticmethod
    def _latin1_bytes(text, encoding="latin1"):
        if not isinstance(text, str) or encoding != "latin1":
            raise UnsafeFile("a text encoding other than how pickles store bytes")
        return text.encode("latin1")

    def _checked_size(self, shape, dtype: np.dtype) -> int:
        if not isinstance(shape, tuple) or len(shape) > 8 or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
            raise UnsafeFile(f"an array of shape {shape!r}")
        n = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if n > self.max_array_bytes:
            raise UnsafeFile(f"an array of {format_bytes(n)} ({'x'.join(map(str, shape))} {dtype}), over the "
                             f"limit of {format_bytes(self.max_array_bytes)} (--max-set-bytes)")
        return n

    # --- opcodes that would allocate or call what the stream says, replaced by checked ones
    dispatch = dict(pickle._Unpickler.dispatch)

    def _load_bytearray8(self):
        (n,) = pickle.unpack("<Q", self.read(8))
        self.append(bytearray(self.read(n)))  # read first (bounded), not bytearray(n) as the stock opcode does
    dispatch[pickle.BYTEARRAY8[0]] = _load_bytearray8

    def _load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, np.ndarray):
            if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1):
                raise UnsafeFile("an array state that is not numpy's")
            _, shape, dtype, fortran, raw = state
            n = self._checked_size(shape, _safe_dtype(dtype))
            if isinstance(raw, str):  # Python 2's str, decoded as latin1 (numpy itself reads it back so)
                raw = raw.encode("latin1")
                state = (1, shape, dtype, fortran, raw)
            if not isinstance(fortran, (bool, int)) or not isinstance(raw, (bytes, bytearray)) or len(raw) != n:
                raise UnsafeFile(f"an array whose data ({len(raw) if isinstance(raw, (bytes, bytearray)) else '?'}"
                                 f" bytes) does not match its declared shape {shape} of {dtype}")
            inst.__setstate__(state)
        elif isinstance(inst, np.dtype):
            # a plain number type's state: (version, byte order, None, None, None, -1, -1, 0[, metadata])
            if not (isinstance(state, tuple) and len(state) in (8, 9) and state[1] in ("|", "<", ">", "=")
                    and state[2:5] == (None, None, None) and state[7] == 0):
                raise UnsafeFile("a dtype state that is not a plain number type's")
            inst.__setstate__(state[:8])
            _safe_dtype(inst)
        else:
            raise UnsafeFile(f"sets the state of a {type(inst).__name__}; only numpy arrays are built")
    dispatch[pickle.BUILD[0]] = _load_build


def _open_checked(path: Path, max_bytes: int, flag: str) -> tuple[object, int]:
    """The file opened for reading if it is a regular file of at most `max_bytes`: (file, size)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path.name}: not a regular file")
    if st.st_size > max_bytes:
        raise ValueError(f"{path.name}: {format_bytes(st.st_size)}, over the limit of {format_bytes(max_bytes)} "
                         f"({flag}, if the set truly is that large)")
    return open(path, "rb"), st.st_size


def read_pickle(path: Path, budget: int):
    """The object a pickle holds, if it is made of numpy arrays and plain containers only (UnsafeFile else)."""
    f, size = _open_checked(path, budget + FILE_SLACK, "raise it with --max-set-bytes")
    with f:
        try:
            return SafeUnpickler(f, size, budget).load()
        except UnsafeFile:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
                OverflowError, UnicodeDecodeError, RecursionError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UnsafeFile(f"not a readable pickle ({msg[:200]})") from None


def _classes_from_pickle(obj, path: Path) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    """learn2learn's dict: the image array [N, H, W, C] and (class name, row indices) by name."""
    if not isinstance(obj, dict) or "image_data" not in obj or "class_dict" not in obj:
        raise ValueError(f"{path.name}: not a mini-ImageNet cache (expected a dict with 'image_data' and "
                         f"'class_dict', as learn2learn's mini-imagenet-cache-*.pkl)")
    images, classes = obj["image_data"], obj["class_dict"]
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim not in (3, 4) or (
            images.ndim == 4 and images.shape[-1] not in (1, 3)):
        raise ValueError(f"{path.name}: 'image_data' must be uint8 images [N, H, W, 3], got "
                         f"{getattr(images, 'dtype', type(images).__name__)} {getattr(images, 'shape', '')}")
    if not isinstance(classes, dict) or not classes:
        raise ValueError(f"{path.name}: 'class_dict' must map class names to lists of image indices")
    out = []
    for name, rows in classes.items():
        try:
            idx = np.asarray(rows, dtype=np.int64).reshape(-1)
        except (TypeError, ValueError):
            raise ValueError(f"{path.name}: class {str(name)[:60]!r}: image indices must be integers") from None
        if len(idx) and (idx.min() < 0 or idx.max() >= len(images)):
            raise ValueError(f"{path.name}: class {str(name)[:60]!r} names images outside 0..{len(images) - 1}")
        out.append((str(name), idx))
    return images, sorted(out)


# ---------------------------------------------------------------------------------------------------------------
# torchmeta's HDF5


def _h5py():
    try:
        import h5py
    except ImportError:
        raise ValueError("reading HDF5 image sets needs h5py: pip install h5py (or maml-lab[hdf5])") from None
    return h5py


def _hdf5_labels(path: Path, limits: LoadLimits) -> list[str] | None:
    """torchmeta's `{split}_labels.json` beside `{split}_data.hdf5`: the class names in order (None if absent)."""
    stem = path.name[: -len(path.suffix)]
    if not stem.endswith("_data"):
        return None
    labels = path.with_name(stem[: -len("_data")] + "_labels.json")
    if not labels.exists():
        return None
    f, _ = _open_checked(labels, limits.max_file_bytes, "raise it with --max-file-bytes")
    with f:
        text = f.read(limits.max_file_bytes + 1)
    try:
        names = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"{labels.name}: not JSON") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{labels.name}: expected a list of class names")
    return names


def _hdf5_classes(path: Path, limits: LoadLimits, budget: int, notes: list[str]):
    """(h5py file, [(name, dataset)]) after every dataset's links, storage, type and shape are checked."""
    h5py = _h5py()
    f, _ = _open_checked(path, budget + FILE_SLACK, "raise it with --max-set-bytes")
    f.close()
    labels = _hdf5_labels(path, limits)
    try:
        h5 = h5py.File(path, "r")
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot open {path.name} as HDF5 ({str(e).splitlines()[0][:200]})") from None
    try:
        group = h5["datasets"] if isinstance(h5.get("datasets", getlink=True), h5py.HardLink) else h5
        if not isinstance(group, h5py.Group):
            raise ValueError(f"{path.name}: 'datasets' is not a group")
        names = list(labels) if labels is not None else sorted(group.keys())
        if labels is None:
            notes.append("no labels file beside it: every dataset of the file is a class")
        out, total = [], 0
        for name in names:
            link = group.get(name, getlink=True)
            if link is None:
                raise ValueError(f"{path.name}: class {name[:60]!r} of the labels file has no dataset")
            if not isinstance(link, h5py.HardLink):
                raise ValueError(f"{path.name}: class {name[:60]!r} is a link ({type(link).__name__}); links to other "
                                 f"objects or files are not followed")
            ds = group[name]
            if not isinstance(ds, h5py.Dataset):
                raise ValueError(f"{path.name}: {name[:60]!r} is not a dataset")
            if ds.is_virtual or ds.external:
                raise ValueError(f"{path.name}: class {name[:60]!r} keeps its data in other files; refused")
            shape = tuple(int(s) for s in ds.shape)
            if ds.dtype != np.uint8 or len(shape) not in (3, 4) or (len(shape) == 4 and shape[-1] not in (1, 3)):
                raise ValueError(f"{path.name}: class {name[:60]!r} must be uint8 images [n, H, W, 3], got "
                                 f"{ds.dtype} {list(shape)}")
            if shape[1] * shape[2] > limits.max_image_pixels:
                raise ValueError(f"{path.name}: class {name[:60]!r} declares {shape[2]}x{shape[1]} images, over the "
                                 f"limit of {limits.max_image_pixels / 1e6:g} M pixels (--max-image-pixels)")
            total += int(np.prod(shape, dtype=object))
            if total > budget:
                raise ValueError(f"{path.name}: its images declare more than {format_bytes(budget)}, over the limit "
                                 f"(raise it with --max-set-bytes if the set truly is that large)")
            out.append((name, ds))
        if not out:
            raise ValueError(f"{path.name}: no classes (expected a dataset per class under 'datasets')")
        return h5, out
    except BaseException:
        h5.close()
        raise


# ---------------------------------------------------------------------------------------------------------------
# Either file, as classes of images


def is_array_file(path: Path) -> bool:
    """Whether `path` is a file this module reads (by its suffix)."""
    return path.suffix.lower() in PICKLE_SUFFIXES + HDF5_SUFFIXES


class ArrayFile:
    """An opened learn2learn pickle or torchmeta HDF5 file, its declared sizes checked: `classes` lists (name, image
    count), classes sorted by name (pickle) or in the labels file's order (HDF5); `images(i)` reads class i as uint8
    [n, H, W] or [n, H, W, C]. imagesets.load_image_set makes it an ImageSet. Use as a context manager."""

    def __init__(self, path: Path, limits: LoadLimits, budget: int):
        self.path = path
        self.notes: list[str] = []
        self._h5 = None
        if path.suffix.lower() in PICKLE_SUFFIXES:
            self.layout = "learn2learn mini-ImageNet pickle"
            try:
                obj = read_pickle(path, budget)
            except UnsafeFile as e:
                raise ValueError(f"{path.name}: refused: {e}") from None
            array, classes = _classes_from_pickle(obj, path)
            self._fetch = [lambda rows=rows: array[rows] for _, rows in classes]
            self.classes = [(name, len(rows)) for name, rows in classes]
        else:
            self.layout = "torchmeta HDF5"
            self._h5, datasets = _hdf5_classes(path, limits, budget, self.notes)
            self._fetch = [lambda ds=ds: ds[()] for _, ds in datasets]
            self.classes = [(name, int(ds.shape[0])) for name, ds in datasets]

    def images(self, i: int) -> np.ndarray:
        return self._fetch[i]()

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    def __enter__(self) -> "ArrayFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
