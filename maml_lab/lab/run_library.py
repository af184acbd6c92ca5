"""Past runs for the app: where run folders go, a tolerant one-line summary of each, and what opening one
gives the views (its curves as a metrics chunk, its parameter paths as a RunPaths). No widgets here.

Every reader copes with damaged folders (run.json missing or corrupt, metrics.csv cut short, no checkpoint,
a config.toml that no longer parses): it returns what it could read and says what it could not.
"""

from __future__ import annotations

import math
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.algorithms.registry import algorithm_label
from ..core.training.checkpoint import read_checkpoint
from ..core.training.config import ExperimentConfig
from ..core.training.metrics import chunk_from_logs
from ..core.training.runs import RUNS_ENV, RunFolder, RunFolderError

SETTINGS_KEY = "runs/root"
STALE_S = 120.0  # a "running" run that wrote nothing for this long was most likely killed
TERMINAL = ("finished", "stopped", "diverged", "failed")


# -- where runs go -----------------------------------------------------------------------------------------
def runs_root(chosen: str | Path | None, default: Path) -> Path:
    """$MAML_LAB_RUNS when set (as for the command line), else the folder the user chose, else `default` (the
    app passes its application-data folder)."""
    env = os.environ.get(RUNS_ENV)
    if env:
        return Path(env).expanduser()
    return Path(chosen).expanduser() if chosen else Path(default)


def root_from_env() -> bool:
    return bool(os.environ.get(RUNS_ENV))


# -- one line per run --------------------------------------------------------------------------------------
@dataclass
class RunSummary:
    path: Path
    name: str
    task: str = ""
    algorithms: list[str] = field(default_factory=list)
    status: str = "unknown"
    iteration: int = 0
    total: int = 0
    post_loss: dict[str, float] = field(default_factory=dict)
    post_accuracy: dict[str, float] = field(default_factory=dict)
    created: str = ""
    problems: list[str] = field(default_factory=list)  # what could not be read
    damaged_checkpoint: bool = False  # the newest checkpoint fails its checksum: resume falls back to an older one
    has_checkpoint: bool = False
    exports: int = 0

    @property
    def finished(self) -> bool:
        return self.status == "finished" and self.iteration >= self.total > 0

    def status_text(self) -> str:
        if self.damaged_checkpoint or (self.problems and self.status == "unknown"):
            return "damaged"
        return self.status

    def progress_text(self) -> str:
        return f"{self.iteration:,} / {self.total:,}" if self.total else f"{self.iteration:,}"

    def metric(self) -> tuple[str, float, bool]:
        """What `result_text` reports, as (name, sign applied to the loss, higher is better): the family's
        plot_metric where it has one (2-D navigation: the average return, -cost), else its loss."""
        from ..core.tasks.registry import TASKS

        kind = TASKS.get(self.task) if self.task in TASKS else None
        if kind is not None and kind.plot_metric is not None:
            label, sign = kind.plot_metric
            return label, float(sign), sign < 0
        return (kind.loss_label if kind is not None else "loss"), 1.0, False

    def loss_text(self) -> str:
        _, sign, _ = self.metric()
        return _per_algorithm(self._ordered(self.post_loss), lambda v: f"{sign * v:.3g}")

    def result_text(self) -> str:
        """Each algorithm's last post-adaptation result in the family's metric, named (2-D navigation: 'average
        return MAML -15.7 · Pretrained -40.1'), with its accuracy on image tasks."""
        name, sign, _ = self.metric()
        losses = self._ordered(self.post_loss)
        if not any(isinstance(v, (int, float)) and math.isfinite(v) for v in losses.values()):
            return ""
        if not self.post_accuracy:
            return f"{name} {self.loss_text()}"
        parts = {n: f"{sign * v:.3g}" + (f" ({100 * self.post_accuracy[n]:.1f}%)" if n in self.post_accuracy else "")
                 for n, v in losses.items() if math.isfinite(v)}
        if len(parts) == 1:
            return f"{name} {next(iter(parts.values()))}"
        return f"{name} " + " · ".join(f"{algorithm_label(n)} {t}" for n, t in parts.items())

    def result_tip(self) -> str:
        """How to read `result_text`: which way is better."""
        name, _, higher = self.metric()
        return (f"{name} after adaptation, on the query sets of the last meta-iteration: "
                f"{'higher' if higher else 'lower'} is better")

    def _ordered(self, values: dict) -> dict:
        """The run's algorithm order (run.json stores its metrics sorted by name)."""
        order = [n for n in self.algorithms if n in values] + [n for n in values if n not in self.algorithms]
        return {n: values[n] for n in order}

    def task_text(self) -> str:
        from ..core.tasks.registry import TASKS

        if self.task in TASKS:
            kind = TASKS.get(self.task)
            return kind.short_label or kind.label or self.task
        return self.task or "?"

    def algorithms_text(self) -> str:
        return ", ".join(algorithm_label(a) for a in self.algorithms) or "?"


def _per_algorithm(values: dict[str, float], fmt) -> str:
    parts = [(n, v) for n, v in values.items() if isinstance(v, (int, float)) and math.isfinite(v)]
    if len(parts) == 1:
        return fmt(parts[0][1])
    return " · ".join(f"{algorithm_label(n)} {fmt(v)}" for n, v in parts)


def _created(status: dict, path: Path) -> str:
    text = str(status.get("created") or "")
    try:
        return time.strftime("%Y-%m-%d %H:%M", time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        try:
            return time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime))
        except OSError:
            return ""


def _last_write(folder: RunFolder) -> float:
    times = []
    for p in (folder.status_path, folder.metrics_path):
        try:
            times.append(p.stat().st_mtime)
        except OSError:
            pass
    return max(times, default=0.0)


def summarize(folder: RunFolder, active: Path | None = None, now: float | None = None) -> RunSummary:
    """What the Past runs list shows of a folder; never raises. `active`: the folder the app trains in now
    (its "running" is true; another run's "running" with nothing written for STALE_S is "interrupted")."""
    out = RunSummary(folder.path, folder.name)
    status = folder.status()
    if not status:
        out.problems.append("run.json is missing or unreadable")
    config = None
    try:
        config = folder.config()
    except (RunFolderError, OSError) as exc:
        out.problems.append(f"config.toml: {exc}")
    out.task = str(status.get("task") or (config.task if config else ""))
    algos = status.get("algorithms")
    out.algorithms = [str(a) for a in algos] if isinstance(algos, list) else (
        [a.name for a in config.algorithms] if config else [])
    out.status = str(status.get("status") or "unknown")
    try:
        out.iteration = int(status.get("iteration") or 0)
        out.total = int(config.iterations if config else status.get("total") or 0)
    except (TypeError, ValueError):
        out.problems.append("run.json has an unreadable iteration")
    last = status.get("last_metrics")
    if not isinstance(last, dict) or not last:
        last = {}
        try:  # run.json lost or written before the first checkpoint: the last rows of metrics.csv
            for name, (train, _val) in folder.read_metrics_logs(capacity=2, tail=1).items():
                rows = train.tail_rows()
                if rows:
                    last[name] = rows[-1]
                    out.iteration = max(out.iteration, int(rows[-1]["iteration"]))
        except (RunFolderError, OSError, ValueError) as exc:
            out.problems.append(f"metrics.csv: {exc}")
    for name, m in last.items():
        if isinstance(m, dict):
            if isinstance(m.get("post_loss"), (int, float)):
                out.post_loss[name] = float(m["post_loss"])
            if isinstance(m.get("post_accuracy"), (int, float)) and math.isfinite(m["post_accuracy"]):
                out.post_accuracy[name] = float(m["post_accuracy"])
    out.created = _created(status, folder.path)
    out.has_checkpoint = bool(folder.checkpoints())
    problem = newest_checkpoint_problem(folder)
    if problem:
        out.damaged_checkpoint = True
        out.problems.append(problem)
    out.exports = len(folder.exports())
    if out.status == "running":
        if active is not None and Path(active).resolve() == folder.path.resolve():
            pass
        elif (now if now is not None else time.time()) - _last_write(folder) > STALE_S:
            out.status = "interrupted"
    return out


_VERIFIED: dict[tuple[str, int, int], str | None] = {}  # (path, mtime_ns, size) -> problem, so a list refresh
# re-reads only checkpoints that changed


def newest_checkpoint_problem(folder: RunFolder) -> str | None:
    """Why the folder's newest checkpoint does not read back (a flipped byte fails its checksum, a cut file its
    header), or None. A run whose last checkpoint is damaged is not shown as "finished": resuming or opening it falls
    back to an older checkpoint, and the list says so."""
    found = folder.checkpoints()
    if not found:
        return None
    iteration, path = found[-1]
    try:
        st = path.stat()
    except OSError as exc:
        return f"the newest checkpoint (iteration {iteration:,}) cannot be read: {exc}"
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _VERIFIED:
        if len(_VERIFIED) > 4096:
            _VERIFIED.clear()
        try:
            read_checkpoint(path)
            _VERIFIED[key] = None
        except Exception as exc:  # noqa: BLE001 - damaged or crafted files of any kind
            _VERIFIED[key] = (f"the newest checkpoint (iteration {iteration:,}) is damaged ({exc}): resuming and "
                              "opening fall back to the newest one that reads")
    return _VERIFIED[key]


def list_summaries(root: Path, active: Path | None = None) -> list[RunSummary]:
    from ..core.training.runs import list_runs

    try:
        folders = list_runs(root)
    except OSError:
        return []
    return [summarize(f, active) for f in folders]


# -- opening a run -----------------------------------------------------------------------------------------
def paths_from_checkpoint(tensors: dict, header: dict, config: ExperimentConfig, family=None):
    """The parameter paths a checkpoint recorded, as the worker hands them to the views (None if it has none), with
    what each algorithm had learned besides theta at each snapshot (checkpoints written before those were kept: none,
    and the views fall back to the newest learned tensors)."""
    from ..core.training.checkpoint import path_learned
    from .inside import PathData, RunPaths

    paths = OrderedDict()
    saved = list(header.get("runs", {}))  # the header's JSON is sorted by name: keep the run's own order
    order = [a.name for a in config.algorithms if a.name in saved] + [n for n in saved
                                                                      if n not in {a.name for a in config.algorithms}]
    for name in order:
        prefix = f"runs/{name}/path/"
        snaps, its = tensors.get(prefix + "snapshots"), tensors.get(prefix + "iterations")
        if snaps is None or its is None or snaps.ndim != 2 or len(snaps) != len(its) or not len(its):
            continue
        array = snaps.numpy().astype(np.float32, copy=False)
        rows = []
        for row in array:
            row = row.copy()
            row.flags.writeable = False
            rows.append(row)
        metric_cols = {k[len(prefix) + 8:]: v.tolist() for k, v in tensors.items() if k.startswith(prefix + "metrics/")}
        metrics = []
        for i in range(len(rows)):
            m = {k: float(col[i]) for k, col in metric_cols.items() if i < len(col) and math.isfinite(col[i])}
            if "iteration" in m:
                m["iteration"] = int(m["iteration"])
            metrics.append(m)
        layout, learned = path_learned(tensors, header.get("runs", {}).get(name) or {}, name, len(rows))
        for vector in learned:
            if vector is not None:
                vector.flags.writeable = False
        paths[name] = PathData(np.asarray(its.tolist(), dtype=np.int64), rows, metrics,
                               learned if layout is not None else [], layout)
    if not paths:
        return None
    from ..core.tasks.registry import task_family

    loss = getattr(family, "loss", None) or task_family(config.task).loss  # the run's family's own loss
    if loss == "cross_entropy" and (header.get("model") or {}).get("convention") == "cbfinn":
        loss = "cross_entropy_sum"  # a conv-4 in cbfinn/maml's conventions whose family was not rebuilt
    learned = {}  # what each algorithm adapts with besides theta (Meta-SGD's rates...), as the checkpoint has it
    for name in paths:
        keys = (header.get("runs", {}).get(name) or {}).get("learned_keys") or []
        found = {k: tensors[f"runs/{name}/learned/{k}"] for k in keys if f"runs/{name}/learned/{k}" in tensors}
        if found and len(found) == len(keys):
            learned[name] = found
    iteration = int(header.get("iteration", 0))
    return RunPaths(iteration, int(config.iterations), dict(header.get("model") or {}), loss,
                    config.task, config.shots, config.queries, paths,
                    {a.name: a.to_dict() for a in config.algorithms}, family, family, learned, iteration)


@dataclass
class OpenedRun:
    folder: RunFolder
    summary: RunSummary
    config: ExperimentConfig | None
    chunk: dict
    paths: object  # RunPaths or None
    exports: list[Path]
    problems: list[str]


def open_run(path: str | Path) -> OpenedRun:
    """Everything the app shows of a past run. Raises RunFolderError only for a folder that is no run at all."""
    from ..core.training.checkpoint import CheckpointError, read_checkpoint

    folder = RunFolder.open(path)
    summary = summarize(folder)
    problems = list(summary.problems)
    config = None
    try:
        config = folder.config()
    except (RunFolderError, OSError):
        pass
    chunk = {"train": {}, "val": {}}
    try:
        chunk = chunk_from_logs(folder.read_metrics_logs())  # bounded memory, however long the run
    except (RunFolderError, OSError, ValueError) as exc:
        if not any(p.startswith("metrics.csv") for p in problems):
            problems.append(f"metrics.csv: {exc}")
    if not chunk["train"] and not any(p.startswith("metrics.csv") for p in problems):
        problems.append("metrics.csv holds no iterations yet")
    paths = None
    checkpoint = folder.latest_checkpoint()
    if checkpoint is None:
        problems.append("no readable checkpoint: no parameter path"
                        + (" (damaged checkpoint files were passed over)" if folder.checkpoints() else ""))
    else:
        try:
            tensors, header = read_checkpoint(checkpoint)
            if config is None:  # the checkpoint knows its experiment too
                config = ExperimentConfig.from_dict(header.get("config") or {})
            family = None
            from ..core.tasks.registry import task_family

            if task_family(config.task).cheap_to_build:  # image sets are not reloaded just to open a run
                from ..core.training.trainer import make_family

                family = make_family(config)
            paths = paths_from_checkpoint(tensors, header, config, family)
            if paths is None:
                problems.append(f"{checkpoint.name} holds no parameter path (too big to record)")
        except (CheckpointError, ValueError, KeyError, TypeError) as exc:
            problems.append(f"{checkpoint.name}: {exc}")
    exports = folder.exports()
    if config is not None:  # in the run's algorithm order
        rank = {a.name: i for i, a in enumerate(config.algorithms)}
        exports.sort(key=lambda p: (rank.get(p.stem, len(rank)), p.name))
    return OpenedRun(folder, summary, config, chunk, paths, exports, problems)
