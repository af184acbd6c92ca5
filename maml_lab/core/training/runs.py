"""Run folders: every training run leaves one, readable without MAML Lab and resumable with it.

    <run>/run.json          status, iteration, algorithms, last metrics, where the exports went
    <run>/config.toml       the experiment config (`train --config <run>/config.toml` repeats the run)
    <run>/metrics.csv       one row per iteration and algorithm (training and validation metrics)
    <run>/checkpoints/      iteration-<N>.safetensors, the latest few (see checkpoint.py)
    <run>/exports/          <algorithm>.safetensors, the final initializations
    <run>/tensorboard/      event files, when the `tensorboard` package is installed
    <run>/run.lock          held (flock) by the one process writing the folder: its pid and host (run_lock.py)

A RunLogger is a Trainer observer that keeps the folder up to date while training runs. Whoever writes a folder
holds its lock (`RunFolder.create` takes it, a resume takes it first); temporary files that interrupted atomic
writes left behind are removed by the next writer (`clean_temporary`).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import re
import sys
import threading
import time
from pathlib import Path

import numpy as np

from ..export import atomic_write_bytes
from .checkpoint import CheckpointWriter, read_checkpoint, save_checkpoint
from .config import ExperimentConfig
from .metrics import CSV_HEADER, METRIC_FIELDS, TRAIN_FIELDS, VAL_FIELDS, MetricsLog, csv_row, held_rows, write_csv
from .run_lock import RunLock, RunLockedError  # noqa: F401 - RunLockedError: what a second writer gets

RUNS_ENV = "MAML_LAB_RUNS"  # where runs go when no folder is named (default ./runs, as TensorBoard's)
_CHECKPOINT_NAME = re.compile(r"^iteration-(\d+)\.safetensors$")
_TEMPORARY = ".*.tmp"  # what export._atomic_write names its temporary files: .<name>.<random>.tmp


def failure_text(exc: BaseException) -> str:
    """A write failure in one line: "No space left on device: runs/x/metrics.csv" rather than a repr."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {os.fsdecode(exc.filename)}" if exc.filename else exc.strerror
    text = str(exc).splitlines()[0] if str(exc) else ""
    found = re.search(r'message: "([^"]+)"', text)  # safetensors wraps the OS error: IoError(Os { .. message: ".." })
    if found:
        return found.group(1)
    return f"{type(exc).__name__}: {text}".rstrip(": ")


class RunFolderError(ValueError):
    """A folder that is not a usable run folder; the message says why."""


def default_runs_root() -> Path:
    return Path(os.environ.get(RUNS_ENV) or "runs")


def new_run_name(config: ExperimentConfig) -> str:
    algos = "+".join(a.name for a in config.algorithms)
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{config.task}-{algos}"


def unique_path(root: Path, name: str) -> Path:
    path, n = root / name, 1
    while path.exists():
        n += 1
        path = root / f"{name}-{n}"
    return path


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


class RunFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.lock: RunLock | None = None  # held while this process writes the folder

    # -- the writer's lock ---------------------------------------------------------------------------
    def acquire(self) -> str:
        """Become the folder's one writer (RunLockedError names the live holder); returns "taking over a stale
        lock from pid N on HOST" when a killed process left its lock, else ""."""
        if self.lock is None or not self.lock.held:
            self.lock = RunLock(self.path).acquire()
        return self.lock.stale_text()

    def release(self, restore: bool = False) -> None:
        """Stop writing; restore=True leaves run.lock exactly as it was before `acquire` (a refused resume)."""
        if self.lock is not None:
            self.lock.release(restore=restore)

    def clean_temporary(self) -> list[Path]:
        """Remove the temporary files interrupted atomic writes left (a kill mid-checkpoint); the writer calls this
        once it holds the lock, so no live write's file is touched. Returns what was removed."""
        removed = []
        for folder in (self.path, self.checkpoints_dir, self.exports_dir):
            if folder.is_dir():
                for p in folder.glob(_TEMPORARY):
                    if p.is_file():
                        p.unlink(missing_ok=True)
                        removed.append(p)
        return removed

    # -- layout --------------------------------------------------------------------------------------
    @property
    def status_path(self) -> Path:
        return self.path / "run.json"

    @property
    def config_path(self) -> Path:
        return self.path / "config.toml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def exports_dir(self) -> Path:
        return self.path / "exports"

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / "tensorboard"

    @property
    def name(self) -> str:
        return self.path.name

    # -- creating and opening ------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, config: ExperimentConfig, **status) -> "RunFolder":
        """A new run folder for `config`, locked by this process; refuses a folder that already holds files."""
        path = Path(path).expanduser()

        def refuse_used() -> None:
            if path.exists() and (not path.is_dir() or any(p.name != RunLock.NAME for p in path.iterdir())):
                if (path / "run.json").is_file():
                    raise RunFolderError(f"{path} already holds a run (resume it with --resume {path})")
                raise RunFolderError(f"run folder {path} exists and is not empty")

        refuse_used()
        folder = cls(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
            folder.acquire()
            refuse_used()  # another process may have made it in between
            folder.checkpoints_dir.mkdir(exist_ok=True)
            folder.exports_dir.mkdir(exist_ok=True)
            config.save_toml(folder.config_path)
        except OSError as exc:
            folder.release()
            raise RunFolderError(f"cannot create run folder {path}: {exc.strerror or exc}") from None
        except ValueError:
            folder.release(restore=True)
            raise
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        folder.write_status(created=now, status="created", iteration=0, total=config.iterations, task=config.task,
                            algorithms=[a.name for a in config.algorithms], **status)
        return folder

    @classmethod
    def open(cls, path: str | Path) -> "RunFolder":
        path = Path(path).expanduser()
        if not path.is_dir():
            raise RunFolderError(f"run folder not found: {path}")
        folder = cls(path)
        if not folder.config_path.is_file():
            raise RunFolderError(f"{path} is not a MAML Lab run folder (no config.toml)")
        return folder

    def config(self) -> ExperimentConfig:
        try:
            return ExperimentConfig.load_toml(self.config_path)
        except ValueError as exc:
            raise RunFolderError(f"{self.name}: {exc}") from None

    # -- status --------------------------------------------------------------------------------------
    def status(self) -> dict:
        try:
            data = json.loads(self.status_path.read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def write_status(self, **updates) -> dict:
        """Update run.json atomically. A failed run's last word still gets there when only the folder was made
        read-only and run.json itself can be written (in place: the one write that may not be atomic)."""
        data = self.status()
        data.update(updates, updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        text = json.dumps(data, indent=2, sort_keys=True).encode()
        try:
            atomic_write_bytes(self.status_path, text)
        except OSError:
            if data.get("status") != "failed" or not self.status_path.is_file():
                raise
            with open(self.status_path, "r+b") as fh:
                fh.write(text)
                fh.truncate()
        return data

    # -- checkpoints and exports ---------------------------------------------------------------------
    def checkpoints(self) -> list[tuple[int, Path]]:
        """(iteration, path) of every checkpoint file, oldest first."""
        if not self.checkpoints_dir.is_dir():
            return []
        found = []
        for p in self.checkpoints_dir.iterdir():
            m = _CHECKPOINT_NAME.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
        return sorted(found)

    def checkpoint_path(self, iteration: int) -> Path:
        return self.checkpoints_dir / f"iteration-{iteration:010d}.safetensors"

    def latest_checkpoint(self) -> Path | None:
        """The newest checkpoint that reads back; damaged ones (copied in by hand, say) are passed over."""
        for _, path in reversed(self.checkpoints()):
            try:
                read_checkpoint(path, tensors=False)  # a truncated file fails here already
            except Exception:  # noqa: BLE001 - damaged or crafted (a header of another shape)
                continue
            return path
        return None

    def exports(self) -> list[Path]:
        if not self.exports_dir.is_dir():
            return []
        return sorted(p for p in self.exports_dir.iterdir() if p.suffix in (".safetensors", ".pt"))

    def export_path(self, algorithm: str) -> Path:
        return self.exports_dir / f"{algorithm}.safetensors"

    # -- metrics -------------------------------------------------------------------------------------
    def read_metrics_logs(self, capacity: int = 4096, tail: int = 1024,
                          block: int = 20_000) -> dict[str, tuple[MetricsLog, MetricsLog]]:
        """metrics.csv in bounded memory, streaming: {algorithm: (training log, validation log)}
        (metrics.MetricsLog: the last `tail` rows raw, bin means of all of them). A row goes to the training log
        when it has a training loss, to the validation log when it has a validation loss; lines cut short by a
        kill are skipped. `chunk_from_logs` turns the result into the app's metrics chunk."""
        if not self.metrics_path.is_file():
            return {}
        logs: dict[str, tuple[MetricsLog, MetricsLog]] = {}
        pending: dict[str, list] = {}

        def fold(name: str) -> None:
            data = np.asarray(pending.pop(name), dtype=np.float64)
            for log in logs[name]:
                cols = [1 + METRIC_FIELDS.index(k) for k in log.fields]
                values = data[:, cols]
                losses = [j for j, k in enumerate(log.fields) if "loss" in k]
                rows = np.isfinite(values[:, losses]).any(axis=1)
                if rows.any():
                    log.extend(data[rows, 0], **{k: values[rows, j] for j, k in enumerate(log.fields)})

        with open(self.metrics_path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if not header or tuple(header) != CSV_HEADER:
                raise RunFolderError(f"{self.metrics_path} is not a MAML Lab metrics file")
            for row in reader:
                if len(row) != len(header):
                    continue  # a line cut short by a kill
                try:
                    values = [float(v) if v else math.nan for v in (row[0], *row[2:])]
                except ValueError:
                    continue
                name = row[1]
                if name not in logs:
                    logs[name] = (MetricsLog(TRAIN_FIELDS, capacity, tail), MetricsLog(VAL_FIELDS, capacity, tail))
                rows = pending.setdefault(name, [])
                rows.append(values)
                if len(rows) >= block:
                    fold(name)
        for name in list(pending):
            fold(name)
        return logs

    def read_metrics(self) -> dict[str, dict[str, np.ndarray]]:
        """metrics.csv as {algorithm: {column: float array}} (iteration included; missing values NaN)."""
        out: dict[str, dict[str, list]] = {}
        if not self.metrics_path.is_file():
            return {}
        with open(self.metrics_path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if not header or header[:2] != ["iteration", "algorithm"]:
                raise RunFolderError(f"{self.metrics_path} is not a MAML Lab metrics file")
            for row in reader:
                if len(row) != len(header):
                    continue  # a line cut short by a kill
                cols = out.setdefault(row[1], {k: [] for k in header if k != "algorithm"})
                try:
                    values = [float(v) if v else math.nan for v in (row[0], *row[2:])]
                except ValueError:
                    continue
                for k, v in zip((header[0], *header[2:]), values):
                    cols[k].append(v)
        return {name: {k: np.asarray(v, dtype=np.float64) for k, v in cols.items()} for name, cols in out.items()}


def list_runs(root: str | Path) -> list[RunFolder]:
    """Run folders directly under `root`, newest first."""
    root = Path(root).expanduser()
    if not root.is_dir():
        return []
    runs = [RunFolder(p) for p in root.iterdir() if p.is_dir() and (p / "config.toml").is_file()]
    return sorted(runs, key=lambda r: (r.status().get("created", ""), r.name), reverse=True)


def copy_metrics_rows(source: Path, fh, up_to: int | None = None) -> bool:
    """Copy a metrics.csv's complete rows (iteration <= up_to, when given) to the text file `fh`, streaming;
    a line cut short by a kill is left out. False (nothing written) when `source` is not a metrics file."""
    expected = ",".join(CSV_HEADER) + "\n"
    try:
        src = open(source, newline="", encoding="utf-8")
    except OSError:
        return False
    with src:
        if src.readline() != expected:
            return False
        fh.write(expected)
        columns = len(CSV_HEADER)
        for line in src:
            if not line.endswith("\n") or line.count(",") != columns - 1:
                continue
            head = line.split(",", 1)[0]
            if not head.isdigit() or (up_to is not None and int(head) > up_to):
                continue
            fh.write(line)
    return True


class RunLogger:
    """Keeps a run folder current: metrics rows, TensorBoard scalars, a checkpoint every `checkpoint_every`
    iterations and at the end, the final exports and the status. Attach with `trainer.observers.append`."""

    def __init__(self, folder: RunFolder, checkpoint_every: int = 1000, keep: int = 2, tensorboard: bool = True,
                 tensorboard_every: int = 10, flush_interval: float = 5.0, background: bool = True):
        if checkpoint_every < 0 or keep < 1:
            raise ValueError(f"need checkpoint_every >= 0 and keep >= 1, got {checkpoint_every}, {keep}")
        self.folder = folder
        self.checkpoint_every = checkpoint_every
        self.keep = keep
        self.tensorboard = tensorboard and tensorboard_available()
        self.tensorboard_every = max(1, tensorboard_every)
        self.flush_interval = flush_interval
        self._rows: list[list[str]] = []
        self._last_flush = time.monotonic()
        self._writer = None
        self._window: dict[str, dict[str, list[float]]] = {}
        self.last_checkpoint: Path | None = None
        self._checkpointed_at: int | None = None  # the iteration of last_checkpoint
        # background: checkpoint files are written off the training thread (state copied first, see CheckpointWriter)
        self._checkpoints = CheckpointWriter() if background else None

    def start(self, trainer, resumed: bool = False) -> None:
        """Write the metrics so far and open TensorBoard. A resumed run keeps its metrics.csv rows up to the
        checkpoint's iteration (rows a killed process wrote after it are dropped, streaming, in bounded memory),
        so the file ends up exactly as an uninterrupted run's; without that file (or for a trainer that trained
        before a logger was attached) the rows the trainer's bounded logs hold are written."""
        from ..export import _atomic_write

        path = self.folder.metrics_path

        def write(tmp) -> None:
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                if resumed and copy_metrics_rows(path, fh, up_to=trainer.iteration):
                    return
                write_csv(fh, held_rows({n: (r.log, r.val_log) for n, r in trainer.runs.items()}))

        _atomic_write(path, write)
        if self.tensorboard:
            # purge_step: events a killed run wrote after its last checkpoint are dropped from the curves
            self._writer = TensorBoardLog.open(self.folder.tensorboard_dir,
                                               purge_step=trainer.iteration + 1 if resumed else None)
        self.folder.write_status(status="running", iteration=trainer.iteration, device=str(trainer.device),
                                 checkpoint_every=self.checkpoint_every, tensorboard=self.tensorboard,
                                 **({"resumed_at": trainer.iteration} if resumed else {}))

    def on_step(self, trainer, metrics: dict[str, dict], val: dict[str, dict]) -> None:
        self._hold()
        if self._checkpoints is not None and self._checkpoints.failed:
            self._checkpoints.wait()  # a checkpoint write failed (disk full): the run ends now, not a checkpoint later
        it = trainer.iteration
        for name, m in metrics.items():
            self._rows.append(csv_row(it, name, {**m, **val.get(name, {})}))
            if self._writer is not None:
                window = self._window.setdefault(name, {})
                for k in METRIC_FIELDS[:4]:
                    if k in m:
                        window.setdefault(k, []).append(m[k])
        if self._writer is not None:
            for name, v in val.items():
                for k in METRIC_FIELDS[4:]:
                    if k in v:
                        self._writer.add_scalar(f"{name}/{k}", v[k], it)
            if it % self.tensorboard_every == 0:
                self._write_window(it)
        if self.checkpoint_every and it % self.checkpoint_every == 0:
            self.checkpoint(trainer)
        elif time.monotonic() - self._last_flush > self.flush_interval:
            self.flush()

    def _hold(self) -> None:
        """Take the folder's lock again when a session runs again after its last run ended (and let go of it);
        RunLockedError when another process writes the folder now."""
        if self.folder.lock is not None and not self.folder.lock.held:
            self.folder.acquire()

    def _write_window(self, iteration: int) -> None:
        for name, window in self._window.items():
            for k, values in window.items():
                if values:
                    self._writer.add_scalar(f"{name}/{k}", float(np.mean(values)), iteration)
                    values.clear()

    def flush(self) -> None:
        if self._rows:
            with open(self.folder.metrics_path, "a", newline="", encoding="utf-8") as fh:
                write_csv(fh, self._rows, header=False)
            self._rows.clear()
        if self._writer is not None:
            self._writer.flush()
        self._last_flush = time.monotonic()

    def checkpoint(self, trainer) -> Path:
        """Metrics first, then the checkpoint, then the status: whatever the status names exists."""
        self.flush()
        iteration, path = trainer.iteration, self.folder.checkpoint_path(trainer.iteration)
        last_metrics = {n: dict(r.last_metrics) for n, r in trainer.runs.items()}

        def written(path: Path) -> None:
            for _, old in self.folder.checkpoints()[:-self.keep]:
                old.unlink(missing_ok=True)
            self.folder.write_status(iteration=iteration, checkpoint=path.name, last_metrics=last_metrics)

        if self._checkpoints is None:
            written(save_checkpoint(trainer, path))
        else:
            self._checkpoints.save(trainer, path, then=written)
        self.last_checkpoint, self._checkpointed_at = path, iteration
        return path

    def wait_for_checkpoint(self) -> None:
        """Return when no checkpoint is being written (re-raising a failed write's error)."""
        if self._checkpoints is not None:
            self._checkpoints.wait()

    def on_end(self, trainer) -> None:
        """The last checkpoint, then the exports, then the status. A write that fails here (disk full, folder made
        read-only) turns the run "failed" with the reason and is raised again; the previous checkpoint and exports
        survive (atomic writes). A run that failed already only says so, as far as the folder can still be written."""
        self._hold()
        exports, error = {}, None
        if trainer.state != "failed":  # a failure mid-step may leave half-updated state: keep the last checkpoint
            try:
                if trainer.iteration != self._checkpointed_at:
                    self.checkpoint(trainer)
                self.wait_for_checkpoint()  # exports only once their checkpoint is on disk
                for name in trainer.runs:
                    path = self.folder.export_path(name)
                    trainer.export(name, path)
                    exports[name] = str(path.relative_to(self.folder.path))
            except Exception as exc:  # noqa: BLE001 - reported as the run's failure, raised again below
                error = exc
                trainer.state, trainer.stop_reason = "failed", failure_text(exc)
        if trainer.state == "failed":
            for finish in (self.flush, self.wait_for_checkpoint):
                try:
                    finish()
                except Exception:  # noqa: BLE001 - the run's own failure is what gets reported
                    pass
        if self._writer is not None:
            if trainer.state != "failed":
                self._write_window(trainer.iteration)
            self._writer.close()
            self._writer = None
        try:
            self.folder.write_status(status=trainer.state, reason=trainer.stop_reason, iteration=trainer.iteration,
                                     exports=exports,
                                     last_metrics={n: r.last_metrics for n, r in trainer.runs.items()})
        except OSError as exc:
            if trainer.state != "failed":
                trainer.state, trainer.stop_reason = "failed", failure_text(exc)
                error = error or exc
        finally:
            self.folder.release()  # the run has ended: another process may continue it (this one re-takes it)
        if error is not None:
            raise error


_hook_lock = threading.Lock()
_hook_installed = False


def _quiet_tensorboard_threads() -> None:
    """TensorBoard's writer thread re-raises its write errors, so Python prints their traceback; the same error
    reaches the training thread at the next write, where TensorBoardLog reports it in one line. Silence only
    that thread's tracebacks (every other thread's go to the previous hook)."""
    global _hook_installed
    with _hook_lock:
        if _hook_installed:
            return
        previous = threading.excepthook

        def hook(args) -> None:
            kind = type(args.thread)
            if kind.__name__ == "_AsyncWriterThread" and kind.__module__.startswith("tensorboard"):
                return
            previous(args)

        threading.excepthook = hook
        _hook_installed = True


class TensorBoardLog:
    """A SummaryWriter that cannot end a run: its first failure (disk full, a folder made read-only) stops
    TensorBoard logging with one line on stderr (metrics.csv stays the record) instead of a thread's traceback."""

    def __init__(self, writer):
        self._writer = writer
        self.error = ""

    @classmethod
    def open(cls, logdir: Path, purge_step: int | None = None) -> "TensorBoardLog | None":
        _quiet_tensorboard_threads()
        try:
            from torch.utils.tensorboard import SummaryWriter

            return cls(SummaryWriter(str(logdir), purge_step=purge_step))
        except Exception as exc:  # noqa: BLE001 - TensorBoard is optional: the run goes on without it
            print(f"maml-lab: no TensorBoard events for this run: {failure_text(exc)}", file=sys.stderr)
            return None

    def _call(self, method: str, *args) -> None:
        if self._writer is None:
            return
        try:
            getattr(self._writer, method)(*args)
        except Exception as exc:  # noqa: BLE001
            self.error = failure_text(exc)
            print(f"maml-lab: TensorBoard logging stopped: {self.error}", file=sys.stderr)
            writer, self._writer = self._writer, None
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - the same failure again
                pass

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self._call("add_scalar", tag, value, step)

    def flush(self) -> None:
        self._call("flush")

    def close(self) -> None:
        self._call("close")
        self._writer = None
