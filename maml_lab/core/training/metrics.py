"""The metrics a meta-training run reports, named once: the Trainer, run folders, the app and exports read these.

Also where they are kept in bounded memory (`MetricsLog`: the last rows raw, every row in a bounded number of
bin means) and how they are written as CSV (`CSV_HEADER`, `csv_row`, `held_rows`): the run folder's
metrics.csv and the app's File > Export metrics share this one format.
"""

from __future__ import annotations

import csv
import io
import math

import numpy as np

TRAIN_FIELDS = ("pre_loss", "post_loss", "pre_accuracy", "post_accuracy")  # per iteration, per algorithm
VAL_FIELDS = ("val_pre_loss", "val_post_loss", "val_pre_accuracy", "val_post_accuracy")  # every val_every
METRIC_FIELDS = (*TRAIN_FIELDS, *VAL_FIELDS)
CSV_HEADER = ("iteration", "algorithm", *METRIC_FIELDS)  # metrics.csv: one row per iteration and algorithm
# the cost meter's numbers per algorithm (training/cost.py): seconds and bytes per meta-step, the marginal seconds and
# bytes of one more inner step; in progress messages and CostMeter.logs, not in metrics.csv (timings vary by run)
COST_FIELDS = ("step_s", "step_bytes", "inner_step_s", "inner_step_bytes")


class MetricsLog:
    """One algorithm's metrics (training or validation rows) in memory that does not grow with the run.

    - the last `tail` rows, raw (`tail_columns`, `tail_rows`, `last`);
    - every row ever appended, as per-field sums and counts over fixed-width iteration bins: bin k holds the
      iterations k*width+1 .. (k+1)*width (iteration 0 joins bin 0). When an iteration falls beyond the last
      of `capacity` bins, neighbouring bins merge pairwise and the width doubles, so the log holds at most
      `capacity` bins however long the run (`bins`, `series`: exact means of their bins).

    Rows are folded into the bins `block` at a time (appending a row is a Python list append); what has not
    been folded yet is part of every query and of `state_dict`, so a log restored from a checkpoint continues
    bit-identically. Missing or non-finite values are left out of the means (a sinusoid run has no accuracy).
    """

    def __init__(self, fields=TRAIN_FIELDS, capacity: int = 2048, tail: int = 1024, block: int = 256):
        if capacity < 2 or capacity % 2 or tail < 1 or block < 1:
            raise ValueError(f"need an even capacity >= 2, tail >= 1 and block >= 1, got {capacity}, {tail}, {block}")
        self.fields = tuple(fields)
        self.capacity, self.tail_size, self.block = int(capacity), int(tail), int(block)
        n = len(self.fields)
        self.width = 1
        self.count = 0  # rows ever appended
        self.last: dict = {}  # the last row as appended (with "iteration")
        self._sums = np.zeros((self.capacity, n))
        self._counts = np.zeros((self.capacity, n), np.int64)
        self._rows = np.zeros(self.capacity, np.int64)
        self._last_it = np.full(self.capacity, -1, np.int64)
        self._tail_it = np.zeros(self.tail_size, np.int64)
        self._tail = np.full((self.tail_size, n), np.nan)
        self._tail_n = 0  # rows ever written to the tail ring
        self._pending: list[tuple] = []

    # -- adding rows -------------------------------------------------------------------------------------
    def append(self, row: dict) -> None:
        """One row: {"iteration": int, field: float, ...}; fields it lacks count as missing."""
        get = row.get
        self._pending.append((float(row["iteration"]),
                              *(math.nan if get(k) is None else float(get(k)) for k in self.fields)))
        self.count += 1
        self.last = row
        if len(self._pending) >= self.block:
            self._fold()

    def extend(self, iterations, **columns) -> None:
        """Many rows at once (columns by field name; missing fields are missing values)."""
        its = np.asarray(iterations, dtype=np.int64).ravel()
        if not len(its):
            return
        values = np.full((len(its), len(self.fields)), np.nan)
        for j, k in enumerate(self.fields):
            if k in columns and columns[k] is not None:
                values[:, j] = np.asarray(columns[k], dtype=np.float64).ravel()
        if self._pending:
            self._fold()
        self._fold_arrays(its, values)
        self.count += len(its)
        self.last = _row(int(its[-1]), self.fields, values[-1])

    def _fold(self) -> None:
        data = np.asarray(self._pending, dtype=np.float64)
        self._pending = []
        self._fold_arrays(data[:, 0].astype(np.int64), data[:, 1:])

    def _fold_arrays(self, its: np.ndarray, values: np.ndarray) -> None:
        t = self.tail_size
        keep = slice(max(len(its) - t, 0), None)
        pos = (self._tail_n + np.arange(len(its))[keep]) % t
        self._tail_it[pos], self._tail[pos] = its[keep], values[keep]
        self._tail_n += len(its)
        state = (self._sums, self._counts, self._rows, self._last_it)
        self._sums, self._counts, self._rows, self._last_it, self.width = _accumulate(state, self.width, its, values)

    # -- reading -----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.count

    def tail_columns(self) -> dict[str, np.ndarray]:
        """The last `tail` rows (or fewer), oldest first: {"iteration": int64 array, field: float array}."""
        n = min(self._tail_n, self.tail_size)
        order = (self._tail_n - n + np.arange(n)) % self.tail_size
        its, values = self._tail_it[order], self._tail[order]
        if self._pending:
            data = np.asarray(self._pending, dtype=np.float64)
            its = np.concatenate([its, data[:, 0].astype(np.int64)])[-self.tail_size:]
            values = np.concatenate([values, data[:, 1:]])[-self.tail_size:]
        return {"iteration": its, **{k: values[:, j] for j, k in enumerate(self.fields)}}

    def tail_rows(self) -> list[dict]:
        """The last rows as dicts (missing values left out, iteration an int)."""
        cols = self.tail_columns()
        values = np.stack([cols[k] for k in self.fields], axis=1) if len(cols["iteration"]) else []
        return [_row(int(it), self.fields, v) for it, v in zip(cols["iteration"].tolist(), values)]

    def bins(self) -> dict[str, np.ndarray]:
        """The non-empty bins, in order: {"iteration": each bin's last iteration, "rows": rows per bin,
        field: the mean of that field over the bin's rows (NaN where it had none)}."""
        sums, counts, rows, last_it, _ = self._with_pending()
        used = rows > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            means = sums[used] / counts[used]
        return {"iteration": last_it[used], "rows": rows[used],
                **{k: means[:, j] for j, k in enumerate(self.fields)}}

    def series(self, key: str, max_points: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(x: last iteration of each bin, y: the mean of `key` over it) for bins where `key` was reported;
        max_points: neighbouring bins are merged (weighted by their rows) until at most that many remain."""
        sums, counts, rows, last_it, _ = self._with_pending()
        j = self.fields.index(key)
        used = np.flatnonzero(counts[:, j] > 0)
        s, c, x = sums[used, j], counts[used, j], last_it[used]
        if max_points is not None and len(used) > max_points:
            size = int(np.ceil(len(used) / max_points))
            starts = np.arange(0, len(used), size)
            s, c = np.add.reduceat(s, starts), np.add.reduceat(c, starts)
            x = x[np.minimum(starts + size, len(used)) - 1]
        return x.astype(np.float64), s / c

    def reported(self, key: str) -> bool:
        """True when some row had a finite `key` (accuracy: classification runs only)."""
        j = self.fields.index(key)
        return bool(self._counts[:, j].any()) or any(math.isfinite(r[1 + j]) for r in self._pending)

    def held_columns(self) -> dict[str, np.ndarray]:
        """What the log holds as rows: the means of the bins that end before the raw tail starts, then the raw
        tail (a bin the tail starts inside is left out). Short runs (up to `capacity` iterations) give every
        row exactly."""
        b = self.bins()
        if self.width == 1:  # one iteration per bin: the bins are the rows themselves
            return {k: b[k] for k in ("iteration", *self.fields)}
        tail = self.tail_columns()
        first = tail["iteration"][0] if len(tail["iteration"]) else np.iinfo(np.int64).max
        before = b["iteration"] < first
        return {k: np.concatenate([b[k][before], tail[k]]) for k in ("iteration", *self.fields)}

    def nbytes(self) -> int:
        arrays = (self._sums, self._counts, self._rows, self._last_it, self._tail_it, self._tail)
        return sum(a.nbytes for a in arrays) + 8 * (1 + len(self.fields)) * len(self._pending)

    def _with_pending(self):
        state = (self._sums, self._counts, self._rows, self._last_it)
        if not self._pending:
            return (*state, self.width)
        data = np.asarray(self._pending, dtype=np.float64)
        return _accumulate(tuple(a.copy() for a in state), self.width, data[:, 0].astype(np.int64), data[:, 1:])

    # -- checkpoints ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Arrays (numpy) and ints that restore this log exactly (see load_state_dict)."""
        pending = np.asarray(self._pending, dtype=np.float64).reshape(-1, 1 + len(self.fields))
        last = np.array([self.last.get("iteration", -1), *(self.last.get(k, math.nan) for k in self.fields)],
                        dtype=np.float64) if self.last else np.zeros(0)
        return {"fields": list(self.fields), "capacity": self.capacity, "tail": self.tail_size, "block": self.block,
                "width": self.width, "count": self.count, "tail_n": self._tail_n,
                "sums": self._sums.copy(), "counts": self._counts.copy(), "rows": self._rows.copy(),
                "last_iteration": self._last_it.copy(), "tail_iteration": self._tail_it.copy(),
                "tail_values": self._tail.copy(), "pending": pending, "last": last}

    def load_state_dict(self, state: dict) -> None:
        if list(state["fields"]) != list(self.fields):
            raise ValueError(f"metrics log fields {state['fields']} do not match {list(self.fields)}")
        self.capacity, self.tail_size, self.block = int(state["capacity"]), int(state["tail"]), int(state["block"])
        self.width, self.count, self._tail_n = int(state["width"]), int(state["count"]), int(state["tail_n"])
        self._sums = _array(state["sums"], np.float64)
        self._counts = _array(state["counts"], np.int64)
        self._rows = _array(state["rows"], np.int64)
        self._last_it = _array(state["last_iteration"], np.int64)
        self._tail_it = _array(state["tail_iteration"], np.int64)
        self._tail = _array(state["tail_values"], np.float64)
        self._pending = [tuple(r) for r in _array(state["pending"], np.float64).tolist()]
        last = _array(state["last"], np.float64)
        self.last = _row(int(last[0]), self.fields, last[1:]) if len(last) else {}

    def __eq__(self, other) -> bool:
        if not isinstance(other, MetricsLog):
            return NotImplemented
        a, b = self.state_dict(), other.state_dict()
        return self.last == other.last and all(
            np.array_equal(a[k], b[k], equal_nan=True) if isinstance(a[k], np.ndarray) else a[k] == b[k] for k in a)

    __hash__ = None


def _accumulate(state, width: int, its: np.ndarray, values: np.ndarray):
    """Add rows to (sums, counts, rows, last_it) bins of `width`, merging pairwise while a row falls beyond
    the last bin; returns the new arrays and width (the arrays passed in may be updated in place)."""
    sums, counts, rows, last_it = state
    cap = len(rows)
    its_clipped = np.maximum(its, 1) - 1
    while len(its) and int(its_clipped.max()) // width >= cap:
        sums, counts, rows, last_it = (_merge(sums), _merge(counts), _merge(rows), _merge(last_it, np.maximum))
        width *= 2
    if len(its):
        idx = its_clipped // width
        finite = np.isfinite(values)
        for j in range(values.shape[1]):
            sums[:, j] += np.bincount(idx, weights=np.where(finite[:, j], values[:, j], 0.0), minlength=cap)
            counts[:, j] += np.bincount(idx, weights=finite[:, j], minlength=cap).astype(np.int64)
        rows += np.bincount(idx, minlength=cap)
        np.maximum.at(last_it, idx, its)
    return sums, counts, rows, last_it, width


def _merge(a: np.ndarray, combine=np.add) -> np.ndarray:
    """Pairs of neighbouring bins as one, the upper half emptied (-1 for last iterations, else 0)."""
    out = np.full_like(a, -1 if combine is np.maximum else 0)
    half = len(a) // 2
    out[:half] = combine(a[0::2], a[1::2])
    return out


def _array(value, dtype) -> np.ndarray:
    """A copy as a numpy array of `dtype` (also from a CPU torch tensor, without importing torch here)."""
    if hasattr(value, "numpy"):
        value = value.numpy()
    return np.array(value, dtype=dtype)


def _row(iteration: int, fields, values) -> dict:
    row = {"iteration": iteration}
    for k, v in zip(fields, values):
        v = float(v)
        if math.isfinite(v):
            row[k] = v
    return row


def chunk_from_logs(logs: dict[str, tuple[MetricsLog | None, MetricsLog | None]]) -> dict:
    """What {algorithm: (training log, validation log)} hold (MetricsLog.held_columns) as a metrics chunk, the
    app worker's progress format: {"train": {name: {"iteration": [...], field: [...]}}, "val": {...}};
    accuracy only where some row reported it."""
    chunk: dict = {"train": {}, "val": {}}
    for name, (train, val) in logs.items():
        for target, log in ((chunk["train"], train), (chunk["val"], val)):
            if log is None or not len(log):
                continue
            cols = log.held_columns()
            if not len(cols["iteration"]):
                continue
            out = {"iteration": cols["iteration"].astype(np.int64).tolist()}
            for k in log.fields:
                if "accuracy" not in k or np.isfinite(cols[k]).any():
                    out[k] = cols[k].tolist()
            target[name] = out
    return chunk


# -- CSV ----------------------------------------------------------------------------------------------------
def format_value(value) -> str:
    """One metrics.csv cell: 7 significant digits, empty when missing or not finite."""
    if value is None or isinstance(value, str):
        return ""
    value = float(value)
    return f"{value:.7g}" if math.isfinite(value) else ""


def csv_row(iteration: int, name: str, values: dict) -> list[str]:
    """One metrics.csv row: iteration, algorithm, then every METRIC_FIELDS value (training and validation)."""
    return [str(int(iteration)), name, *(format_value(values.get(k)) for k in METRIC_FIELDS)]


def held_rows(logs: dict[str, tuple[MetricsLog | None, MetricsLog | None]]) -> list[list[str]]:
    """metrics.csv rows of what {algorithm: (training log, validation log)} hold (MetricsLog.held_columns), a
    validation row merged into the training row of its iteration; sorted by iteration, algorithms in order
    within one (as RunLogger writes them live)."""
    rows = []
    for order, (name, (train, val)) in enumerate(logs.items()):
        merged: dict[int, dict] = {}
        for log in (train, val):
            if log is None:
                continue
            cols = log.held_columns()
            for i, it in enumerate(cols["iteration"].tolist()):
                merged.setdefault(int(it), {}).update({k: cols[k][i] for k in log.fields})
        rows += [(it, order, csv_row(it, name, values)) for it, values in merged.items()]
    return [row for _, _, row in sorted(rows, key=lambda r: (r[0], r[1]))]


def write_csv(fh, rows, header: bool = True) -> None:
    """Write metrics.csv rows (and the header) to a text file opened with newline=""."""
    writer = csv.writer(fh, lineterminator="\n")
    if header:
        writer.writerow(CSV_HEADER)
    writer.writerows(rows)


def csv_text(rows) -> str:
    buf = io.StringIO()
    write_csv(buf, rows)
    return buf.getvalue()
