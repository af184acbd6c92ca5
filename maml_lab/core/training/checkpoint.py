"""Checkpoints: everything a Trainer needs to continue a run exactly where it stopped.

One safetensors file per checkpoint holds the tensors (parameters, each algorithm's `state_dict()`: the outer
optimizer state and any learned tensors, the task generator's state, the bounded metrics logs of
metrics.MetricsLog, the recorded parameter paths with what each algorithm learned besides theta at each of their
snapshots) and a JSON header for the rest (iteration, config, model, task family, versions, the non-tensor parts
of those states). Its size does not grow with the run's length:
every row of the metrics lives in the run folder's metrics.csv, not here. No pickled code anywhere. Writes are atomic,
so a kill at any moment leaves the previous checkpoint intact. A sha256 of the header and every tensor's bytes is
stored beside the header and checked on load, so a file damaged on disk is refused instead of resumed. On CPU a
resumed run ends bit-identical to an uninterrupted one: the same tasks are drawn (generator state) and the same
updates applied (Adam state).
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from ..validation import check_checkpoint_header

FORMAT = "maml-lab-checkpoint"
FORMAT_VERSION = 2  # 2: algorithm state through MetaAlgorithm.state_dict, bounded metrics logs
METADATA_KEY = "maml_lab_checkpoint"
CHECKSUM_KEY = "maml_lab_checksum"  # "sha256:<hex>" of the header and the tensors (checksum() below)
# config fields a resumed run may change: where it runs, and how long (a longer run also stretches the
# schedules that depend on the total, cosine meta-lr and Reptile's epsilon, from the checkpoint on)
RESUMABLE_CHANGES = ("device", "iterations")
# parameter paths larger than this (big models) are left out of checkpoints; when only their learned tensors
# (runs/<name>/path/learned) push them over, the paths are kept without those
MAX_PATHS_BYTES = 64 * 2**20


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, from another format, or from another experiment."""


def _columns(rows: list[dict]) -> dict[str, torch.Tensor]:
    """A list of metric dicts as float64 columns (NaN where a row lacks a key); exact for Python floats."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return {k: torch.tensor([float(row.get(k, math.nan)) for row in rows], dtype=torch.float64) for k in keys}


def _rows(columns: dict[str, torch.Tensor]) -> list[dict]:
    if not columns:
        return []
    keys = list(columns)
    values = [columns[k].tolist() for k in keys]
    rows = []
    for i in range(len(values[0])):
        row = {}
        for k, col in zip(keys, values):
            v = col[i]
            if not math.isnan(v):
                row[k] = int(v) if k == "iteration" else v
        rows.append(row)
    return rows


def _flatten(obj, key: str, tensors: dict[str, torch.Tensor]):
    """A nested state (dicts, lists, tensors, numpy arrays, JSON scalars) as a JSON-able tree whose tensors
    are stored under `key`/... in `tensors` (copied to the CPU)."""
    if isinstance(obj, np.ndarray):
        obj = torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach().to("cpu").contiguous().clone()
        return {"tensor": key}
    if isinstance(obj, dict):
        return {"dict": {str(k): _flatten(v, f"{key}/{k}", tensors) for k, v in obj.items()}}
    if isinstance(obj, (list, tuple)):
        return {"list": [_flatten(v, f"{key}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, np.generic):
        obj = obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return {"value": obj}
    raise TypeError(f"cannot checkpoint a {type(obj).__name__} ({key})")


def _unflatten(tree, tensors: dict[str, torch.Tensor]):
    if not isinstance(tree, dict) or len(tree) != 1:
        raise CheckpointError("the checkpoint's state description is damaged")
    (kind, value), = tree.items()
    if kind == "tensor":
        if value not in tensors:
            raise CheckpointError(f"the checkpoint lacks the tensor {value}")
        return tensors[value]
    if kind == "dict":
        return {k: _unflatten(v, tensors) for k, v in value.items()}
    if kind == "list":
        return [_unflatten(v, tensors) for v in value]
    if kind == "value":
        return value
    raise CheckpointError("the checkpoint's state description is damaged")


def config_difference(saved: dict, current: dict, ignore=RESUMABLE_CHANGES) -> list[str]:
    """Human-readable differences between two config dicts ("hidden: [40, 40] in the checkpoint, [64] here")."""
    out = []
    for key in sorted(set(saved) | set(current)):
        if key in ignore:
            continue
        a, b = saved.get(key), current.get(key)
        if key == "algorithms" and isinstance(a, dict) and isinstance(b, dict):
            for name in sorted(set(a) | set(b)):
                if name not in b:
                    out.append(f"algorithm {name} is in the checkpoint but not here")
                elif name not in a:
                    out.append(f"algorithm {name} is here but not in the checkpoint")
                else:
                    out += [f"{name} {k}: {a[name].get(k)!r} in the checkpoint, {b[name].get(k)!r} here"
                            for k in sorted(set(a[name]) | set(b[name])) if a[name].get(k) != b[name].get(k)]
        elif a != b:
            out.append(f"{key}: {a!r} in the checkpoint, {b!r} here")
    return out


def trainer_state(trainer) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and the JSON-able header describing `trainer` now."""
    from ... import __version__

    tensors: dict[str, torch.Tensor] = {"generator": trainer.generator.get_state().clone()}
    runs = {}
    paths_bytes = sum(r.nbytes() for r in trainer.recorders.values())
    with_learned = paths_bytes <= MAX_PATHS_BYTES
    if not with_learned:
        paths_bytes = sum(r.nbytes(learned=False) for r in trainer.recorders.values())
    for name, run in trainer.runs.items():
        prefix = f"runs/{name}/"
        for k, v in run.params.items():
            tensors[prefix + "params/" + k] = v.detach().to("cpu").contiguous().clone()
        entry = {"param_keys": list(run.params),
                 "algorithm": _flatten(run.algorithm.state_dict(), prefix + "algorithm", tensors),
                 "log": _flatten(run.log.state_dict(), prefix + "log", tensors),
                 "val_log": _flatten(run.val_log.state_dict(), prefix + "val_log", tensors)}
        learned = getattr(run.algorithm.adaptation(), "tensors", None) or {}
        if learned:  # what test-time adaptation uses besides theta, by name, for looking at the run without resuming
            for k, v in learned.items():
                tensors[prefix + "learned/" + k] = v.detach().to("cpu").contiguous()
            entry["learned_keys"] = list(learned)
        if run.best is not None:  # the best validated policy so far (families that export their best)
            for k, v in run.best.params.items():
                tensors[prefix + "best/params/" + k] = v.contiguous()
            for k, v in (run.best.extras or {}).items():
                tensors[prefix + "best/extras/" + k] = v.contiguous()
            entry["best"] = {"iteration": run.best.iteration, "val": run.best.val, "metrics": run.best.metrics,
                             "extra_keys": list(run.best.extras or {})}
        recorder = trainer.recorders.get(name)
        if recorder is not None and recorder.snapshots and paths_bytes <= MAX_PATHS_BYTES:
            tensors[prefix + "path/snapshots"] = torch.from_numpy(recorder.array())
            tensors[prefix + "path/iterations"] = torch.tensor(recorder.iterations, dtype=torch.int64)
            for k, col in _columns(recorder.metrics).items():
                tensors[f"{prefix}path/metrics/{k}"] = col
            entry["path"] = {"every": recorder.every, "capacity": recorder.capacity, "count": len(recorder)}
            rows, learned_array = recorder.learned_rows()
            if with_learned and len(rows):  # what the algorithm learned besides theta at each snapshot
                tensors[prefix + "path/learned"] = torch.from_numpy(learned_array)
                tensors[prefix + "path/learned_rows"] = torch.from_numpy(rows)
                entry["path"]["learned"] = recorder.learned_layout.to_dict()
        runs[name] = entry
    header = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "iteration": trainer.iteration,
        "config": trainer.config.to_dict(), "model": trainer.model.spec(), "task": trainer.family.describe(),
        "runs": runs, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {"maml_lab": __version__, "torch": torch.__version__},
    }
    return tensors, header


def checksum(raw_header: str, tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the header text and each tensor's name, dtype, shape and bytes, in name order: any flipped byte
    in the file's data or header changes it (damage on disk; a deliberate forger can recompute it)."""
    digest = hashlib.sha256(raw_header.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        if t.numel():
            digest.update(t.reshape(-1).contiguous().view(torch.uint8).numpy())  # the buffer itself, no copy
    return "sha256:" + digest.hexdigest()


def write_state(tensors: dict[str, torch.Tensor], header: dict, path: str | Path) -> Path:
    """Write a state taken by `trainer_state` to `path` atomically (the previous file survives any interruption)."""
    from safetensors.torch import save_file

    from ..export import _atomic_write

    path = Path(path)
    raw = json.dumps(header, sort_keys=True)
    meta = {METADATA_KEY: raw, CHECKSUM_KEY: checksum(raw, tensors)}
    _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    return path


def save_checkpoint(trainer, path: str | Path) -> Path:
    """Write the trainer's state to `path` atomically (the previous file survives any interruption)."""
    tensors, header = trainer_state(trainer)
    return write_state(tensors, header, path)


class CheckpointWriter:
    """Checkpoints off the training thread's critical path: `save` copies the trainer's state (every tensor to the
    CPU, the header as plain data) on the caller's thread, so training can change the trainer at once, and writes
    the file on a background thread, then calls `then(path)` there (e.g. pruning old checkpoints, updating the
    run's status, which so never names a file not yet written). One write at a time: a new `save` first waits for
    the previous one. `wait()` returns when nothing is being written and re-raises a failed write's error."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def failed(self) -> bool:
        """The last write ended with an error that `wait()` has not raised yet."""
        return self._error is not None

    def save(self, trainer, path: str | Path, then=None) -> Path:
        tensors, header = trainer_state(trainer)  # copies: the trainer may move on while the file is written
        path = Path(path)
        self.wait()

        def write() -> None:
            try:
                write_state(tensors, header, path)
                if then is not None:
                    then(path)
            except BaseException as exc:  # noqa: BLE001 - handed to the training thread by wait()
                self._error = exc

        self._thread = threading.Thread(target=write, name="maml-lab-checkpoint", daemon=False)
        self._thread.start()
        return path

    def wait(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        error, self._error = self._error, None
        if error is not None:
            raise error


def read_checkpoint(path: str | Path, tensors: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and header of a checkpoint file, validated; CheckpointError says what is wrong.
    tensors=False checks the file and reads the header only (finding the latest good checkpoint); with the tensors
    the checksum is verified too (files written before checksums were kept have none and are taken as they are)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
            raw = metadata.get(METADATA_KEY)
            values = {k: fh.get_tensor(k) for k in fh.keys()} if tensors else {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path.name} is not a readable checkpoint (corrupt or truncated?): {exc}") from None
    if raw is None:
        raise CheckpointError(f"{path.name} is not a MAML Lab checkpoint (no checkpoint header)")
    try:
        header = json.loads(raw)
    except json.JSONDecodeError:
        raise CheckpointError(f"{path.name} has a corrupt checkpoint header (not JSON)") from None
    try:
        check_checkpoint_header(header)  # core.validation: its keys' types, before anything reads them
    except ValueError as exc:
        raise CheckpointError(f"{path.name}: {exc}") from None
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path.name} is not a MAML Lab checkpoint (format {header.get('format')!r})")
    version = header.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise CheckpointError(f"{path.name} has checkpoint format version {version!r}; this MAML Lab reads "
                              f"versions 1 to {FORMAT_VERSION}")
    if tensors:
        _verify(path, metadata.get(CHECKSUM_KEY), raw, values)
    return values, header


def _verify(path: Path, stored, raw: str, values: dict[str, torch.Tensor]) -> None:
    if stored is None:
        return  # written before checksums were kept
    if stored != checksum(raw, values):
        raise CheckpointError(f"{path.name} is damaged: its checksum does not match its contents")


def check_compatible(trainer, header: dict, where: str = "the checkpoint") -> None:
    """Refuse a checkpoint from another experiment, naming the differences."""
    diffs = config_difference(header.get("config", {}), trainer.config.to_dict())
    if not diffs and header.get("model") != trainer.model.spec():
        diffs.append(f"model: {header.get('model')} in the checkpoint, {trainer.model.spec()} here")
    if diffs:
        shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
        raise CheckpointError(f"{where} is from a different experiment: {shown}")


def path_learned(tensors: dict[str, torch.Tensor], entry: dict, name: str, count: int):
    """The learned tensors a checkpoint keeps beside `name`'s path of `count` snapshots: (layout, one float32 vector
    or None per snapshot), or (None, [None] * count) when it has none (checkpoints written before they were kept,
    or paths whose learned tensors were too big); a damaged part is passed over the same way."""
    from ..analysis.trajectory import TensorLayout

    none = (None, [None] * count)
    prefix = f"runs/{name}/path/"
    spec = (entry.get("path") or {}).get("learned")
    array, rows = tensors.get(prefix + "learned"), tensors.get(prefix + "learned_rows")
    if spec is None or array is None or rows is None:
        return none
    try:
        layout = TensorLayout.from_dict(spec)
    except ValueError:
        return none
    rows = rows.tolist()
    if array.ndim != 2 or array.shape[0] != len(rows) or array.shape[1] != layout.size or not all(
            isinstance(i, int) and 0 <= i < count for i in rows):
        return none
    vectors = [None] * count
    for i, row in zip(rows, array.numpy()):
        vectors[i] = np.array(row, dtype=np.float32)
    return layout, vectors


def restore_checkpoint(trainer, tensors: dict[str, torch.Tensor], header: dict, where: str = "the checkpoint") -> None:
    """Put a checkpoint's state into a Trainer built from the same config (checked first)."""
    from ..analysis.trajectory import TrajectoryRecorder

    if int(header.get("format_version", 1)) < 2:
        raise CheckpointError(f"{where} was written by an older MAML Lab (checkpoint format "
                              f"{header.get('format_version')}) and cannot be resumed; its parameters still load")
    check_compatible(trainer, header, where)
    runs = header.get("runs", {})
    for name, run in trainer.runs.items():
        entry = runs.get(name)
        prefix = f"runs/{name}/"
        if entry is None or entry.get("param_keys") != list(run.params):
            raise CheckpointError(f"the checkpoint has no matching parameters for {name}")
        with torch.no_grad():
            for k, p in run.params.items():
                saved = tensors.get(prefix + "params/" + k)
                if saved is None or tuple(saved.shape) != tuple(p.shape):
                    raise CheckpointError(f"the checkpoint's {name} tensor {k} is missing or has another shape")
                p.copy_(saved)
            for b, p in zip(run.backup, run.params.values()):
                b.copy_(p)
        try:
            run.algorithm.load_state_dict(_unflatten(entry.get("algorithm", {}), tensors))
            for which in ("log", "val_log"):
                getattr(run, which).load_state_dict(_unflatten(entry.get(which, {}), tensors))
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise CheckpointError(f"the checkpoint's state for {name} does not fit: {exc}") from None
        run.best = _best_snapshot(tensors, entry.get("best"), prefix, list(run.params), name)
        recorder = trainer.recorders.get(name)
        if recorder is not None:
            fresh = TrajectoryRecorder(recorder.capacity, recorder.every)
            if "path" in entry and prefix + "path/snapshots" in tensors:
                fresh.every = int(entry["path"]["every"])
                snaps = tensors[prefix + "path/snapshots"].numpy()
                fresh.snapshots = [np.array(s, dtype=np.float32) for s in snaps]
                fresh.iterations = [int(i) for i in tensors[prefix + "path/iterations"].tolist()]
                cols = {k[len(prefix) + 13:]: v for k, v in tensors.items() if k.startswith(prefix + "path/metrics/")}
                fresh.metrics = _rows(cols) or [{} for _ in fresh.snapshots]
                fresh.learned_layout, fresh.learned = path_learned(tensors, entry, name, len(fresh.snapshots))
            else:  # the path was too big to checkpoint: it restarts here
                from .trainer import learned_tensors

                fresh.record(int(header["iteration"]), run.params, force=True,
                             learned=learned_tensors(run.algorithm))
            trainer.recorders[name] = fresh
    trainer.generator.set_state(tensors["generator"])
    trainer.iteration = int(header["iteration"])


def _best_snapshot(tensors: dict[str, torch.Tensor], entry: dict | None, prefix: str, keys: list[str], name: str):
    """The best validated policy a checkpoint kept (Trainer.export_choice), or None."""
    from .trainer import BestSnapshot

    if not entry:
        return None
    try:
        params = OrderedDict((k, tensors[prefix + "best/params/" + k].clone()) for k in keys)
        extras = OrderedDict((k, tensors[prefix + "best/extras/" + k].clone()) for k in entry.get("extra_keys", []))
        return BestSnapshot(int(entry["iteration"]), dict(entry["val"]), dict(entry.get("metrics", {})), params,
                            extras or None)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"the checkpoint's best {name} policy is damaged ({exc})") from None


def load_checkpoint(trainer, path: str | Path) -> dict:
    """Read, check and restore in one go; returns the header."""
    tensors, header = read_checkpoint(path)
    restore_checkpoint(trainer, tensors, header, where=Path(path).name)
    return header


def params_from_checkpoint(path: str | Path) -> dict[str, "OrderedDict[str, torch.Tensor]"]:
    """Every algorithm's parameters in a checkpoint (for looking at a run without resuming it)."""
    tensors, header = read_checkpoint(path)
    out = {}
    for name, entry in header.get("runs", {}).items():
        out[name] = OrderedDict((k, tensors[f"runs/{name}/params/{k}"]) for k in entry.get("param_keys", []))
    return out
