"""The metrics the app has received from the worker, per algorithm, in growable numpy arrays (no Qt).

The plots draw bin means of these (a bounded number of points however long training runs); the CSV
export writes every iteration.
"""

from __future__ import annotations

import csv
import io

import numpy as np

TRAIN_KEYS = ("pre_loss", "post_loss")
VAL_KEYS = ("val_pre_loss", "val_post_loss")
# classification (image tasks) also reports accuracy; chunks without it store NaN
TRAIN_ACC_KEYS = ("pre_accuracy", "post_accuracy")
VAL_ACC_KEYS = ("val_pre_accuracy", "val_post_accuracy")


class _Column:
    """An append-only float array with amortised O(1) appends."""

    def __init__(self, dtype=np.float64):
        self._data = np.empty(1024, dtype=dtype)
        self._size = 0

    def extend(self, values) -> None:
        values = np.asarray(values, dtype=self._data.dtype).ravel()
        need = self._size + values.size
        if need > self._data.size:
            grown = np.empty(max(need, 2 * self._data.size), dtype=self._data.dtype)
            grown[: self._size] = self._data[: self._size]
            self._data = grown
        self._data[self._size:need] = values
        self._size = need

    @property
    def values(self) -> np.ndarray:
        return self._data[: self._size]

    def __len__(self) -> int:
        return self._size


class _Table:
    def __init__(self, keys):
        self.iteration = _Column(np.int64)
        self.columns = {k: _Column() for k in keys}

    def extend(self, iterations, **values) -> None:
        self.iteration.extend(iterations)
        for k, col in self.columns.items():
            col.extend(values[k] if k in values else np.full(len(iterations), np.nan))

    def __len__(self) -> int:
        return len(self.iteration)


def bin_means(x: np.ndarray, y: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Means of consecutive bins so that at most `max_points` remain (x: the bins' last iteration)."""
    n = len(x)
    if n <= max_points:
        return x.astype(np.float64), y
    size = int(np.ceil(n / max_points))
    starts = np.arange(0, n, size)
    sums = np.add.reduceat(y, starts)
    counts = np.diff(np.append(starts, n))
    ends = np.minimum(starts + size, n) - 1
    return x[ends].astype(np.float64), sums / counts


class MetricsHistory:
    def __init__(self):
        self.train: dict[str, _Table] = {}
        self.val: dict[str, _Table] = {}

    def clear(self) -> None:
        self.train.clear()
        self.val.clear()

    @property
    def algorithms(self) -> list[str]:
        return list(dict.fromkeys([*self.train, *self.val]))

    def add_chunk(self, chunk: dict) -> None:
        """chunk: {'train': {algo: {'iteration': [...], 'pre_loss': [...], ...}}, 'val': {algo: same}}."""
        for name, cols in (chunk.get("train") or {}).items():
            if len(cols["iteration"]):
                keys = TRAIN_KEYS + TRAIN_ACC_KEYS
                self.train.setdefault(name, _Table(keys)).extend(cols["iteration"],
                                                                 **{k: cols[k] for k in keys if k in cols})
        for name, cols in (chunk.get("val") or {}).items():
            if len(cols["iteration"]):
                keys = VAL_KEYS + VAL_ACC_KEYS
                self.val.setdefault(name, _Table(keys)).extend(cols["iteration"],
                                                               **{k: cols[k] for k in keys if k in cols})

    def has_accuracy(self) -> bool:
        """True when some algorithm reported an accuracy (classification)."""
        return any(np.isfinite(t.columns[k].values).any() for t in self.train.values() for k in TRAIN_ACC_KEYS)

    def series(self, name: str, key: str, max_points: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        table = (self.val if key.startswith("val_") else self.train).get(name)
        if table is None:
            return np.empty(0), np.empty(0)
        x, y = table.iteration.values, table.columns[key].values
        if max_points is not None:
            return bin_means(x, y, max_points)
        return x.astype(np.float64), y

    def count(self, name: str, key: str) -> int:
        """How many values a series has (changes exactly when the series does)."""
        table = (self.val if key.startswith("val_") else self.train).get(name)
        return len(table) if table is not None else 0

    def last_iteration(self) -> int:
        return max((int(t.iteration.values[-1]) for t in self.train.values() if len(t)), default=0)

    def to_csv(self) -> str:
        """Every iteration of every algorithm: iteration, algorithm, pre/post loss, validation where measured;
        image runs add the accuracy columns."""
        train_keys, val_keys = TRAIN_KEYS, VAL_KEYS
        if self.has_accuracy():
            train_keys, val_keys = TRAIN_KEYS + TRAIN_ACC_KEYS, VAL_KEYS + VAL_ACC_KEYS
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["iteration", "algorithm", *train_keys, *val_keys])
        no_val, no_train = [""] * len(val_keys), [""] * len(train_keys)
        for name in self.algorithms:
            val = self.val.get(name)
            val_at = {}
            if val is not None:
                for i, it in enumerate(val.iteration.values):
                    val_at[int(it)] = [val.columns[k].values[i] for k in val_keys]
            train = self.train.get(name)
            rows = set(val_at)
            if train is not None:
                cols = [train.columns[k].values for k in train_keys]
                for i, it in enumerate(train.iteration.values):
                    it = int(it)
                    rows.discard(it)
                    writer.writerow([it, name, *(_fmt(c[i]) for c in cols), *(_fmt(x) for x in val_at.get(it, no_val))])
            for it in sorted(rows):  # validation before any training iteration (iteration 0)
                writer.writerow([it, name, *no_train, *(_fmt(x) for x in val_at[it])])
        return out.getvalue()

def _fmt(value) -> str:
    if isinstance(value, str) or not np.isfinite(value):
        return ""
    return f"{float(value):.6g}"
