"""The metrics the app has received from the worker, per algorithm, in bounded memory (no Qt).

Each algorithm's training and validation rows go into a core.training.metrics.MetricsLog: the last rows raw and
bin means over all of them, merged pairwise as the run grows, so a long app session holds a fixed amount
however many iterations arrive. The plots draw those bin means (merged further to their point budget). The
full per-iteration record is the run folder's metrics.csv; the CSV export writes that file's rows when there is
one (see `to_csv`).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..core.training.metrics import TRAIN_FIELDS, VAL_FIELDS, MetricsLog, held_rows, write_csv

CAPACITY = 4096  # bins per series: runs up to this many iterations are held exactly, row by row
TAIL = 1024  # raw rows kept per series besides the bins


class MetricsHistory:
    def __init__(self, capacity: int = CAPACITY, tail: int = TAIL):
        self.capacity, self.tail = capacity, tail
        self.train: dict[str, MetricsLog] = {}
        self.val: dict[str, MetricsLog] = {}

    def clear(self) -> None:
        self.train.clear()
        self.val.clear()

    @property
    def algorithms(self) -> list[str]:
        return list(dict.fromkeys([*self.train, *self.val]))

    def _log(self, logs: dict, name: str, fields) -> MetricsLog:
        if name not in logs:
            logs[name] = MetricsLog(fields, capacity=self.capacity, tail=self.tail)
        return logs[name]

    def add_chunk(self, chunk: dict) -> None:
        """chunk: {'train': {algo: {'iteration': [...], 'pre_loss': [...], ...}}, 'val': {algo: same}}."""
        for part, logs, fields in (("train", self.train, TRAIN_FIELDS), ("val", self.val, VAL_FIELDS)):
            for name, cols in (chunk.get(part) or {}).items():
                if len(cols["iteration"]):
                    self._log(logs, name, fields).extend(cols["iteration"], **{k: cols[k] for k in fields if k in cols})

    def has_accuracy(self) -> bool:
        """True when some algorithm reported an accuracy (classification)."""
        return any(log.reported(k) for log in self.train.values() for k in TRAIN_FIELDS if "accuracy" in k)

    def series(self, name: str, key: str, max_points: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(iterations, values) of one metric: every row while the run is short, bin means (x: each bin's last
        iteration) once it is longer than the history's capacity; max_points merges neighbouring bins further."""
        log = (self.val if key.startswith("val_") else self.train).get(name)
        if log is None:
            return np.empty(0), np.empty(0)
        return log.series(key, max_points)

    def count(self, name: str, key: str) -> int:
        """How many rows a series has received (changes exactly when the series does)."""
        log = (self.val if key.startswith("val_") else self.train).get(name)
        return len(log) if log is not None else 0

    def last_iteration(self) -> int:
        return max((int(log.last["iteration"]) for log in self.train.values() if log.last), default=0)

    def nbytes(self) -> int:
        return sum(log.nbytes() for logs in (self.train, self.val) for log in logs.values())

    def write_csv(self, fh, metrics_path: str | Path | None = None) -> None:
        """Write the metrics in the run folder's metrics.csv format (core.training.metrics.CSV_HEADER: iteration,
        algorithm, then every METRIC_FIELDS column) to the text file `fh` (opened with newline="").

        With `metrics_path` (the run folder's metrics.csv) readable, its complete rows are copied, streaming: the
        run's full per-iteration record. Otherwise the rows this history holds are written: every row of a run
        up to `capacity` iterations; beyond that, one row per bin (at the bin's last iteration, the bin's means)
        up to the last `tail` rows, which are raw."""
        from ..core.training.runs import copy_metrics_rows

        if metrics_path is not None and copy_metrics_rows(Path(metrics_path), fh):
            return
        write_csv(fh, held_rows({n: (self.train.get(n), self.val.get(n)) for n in self.algorithms}))

    def to_csv(self, metrics_path: str | Path | None = None) -> str:
        """`write_csv` as a string (File > Export metrics)."""
        buf = io.StringIO()
        self.write_csv(buf, metrics_path)
        return buf.getvalue()
