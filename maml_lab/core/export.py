"""Export and import of trained initializations: safetensors + JSON metadata, or a plain `.pt` state dict.

Tensor names are those of the equivalent `torch.nn.Sequential`, so plain PyTorch loads them:
`model.load_state_dict(safetensors.torch.load_file(path))`. Writes are atomic (temp file + rename in
the same folder), so an interrupted export never leaves a half-written file nor destroys the old one.
User files are never unpickled: `.pt` is read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .permissions import follow_umask
from .validation import INT64_MAX, Rule, check_field, check_memory, check_table, check_value, rule, shapes_numel

FORMAT = "maml-lab-initialization"
FORMAT_VERSION = 1
METADATA_KEY = "maml_lab"
SUFFIXES = (".safetensors", ".pt")


class InitializationError(ValueError):
    """A file that cannot be imported as an initialization; the message says why."""


@dataclass
class MetadataSchema:
    """The keys of an export's metadata the lab reads, and their types (core.validation); other keys pass as they
    are. A file is untrusted input: each is checked before anything is built from it."""

    format: str
    format_version: int
    model: dict
    algorithm: str = "unknown"
    task: dict = field(default_factory=lambda: {"name": "sinusoid"})
    hyperparameters: dict = field(default_factory=dict)
    iterations: int = rule(0, min=0, max=INT64_MAX)
    metrics: dict = field(default_factory=dict)
    extra_tensors: list[str] = field(default_factory=list)


@dataclass
class RecordedExperiment:
    """The experiment settings an export records beside its algorithm's (Trainer.metadata's hyperparameters), with
    ExperimentConfig's rules."""

    meta_batch_size: int = rule(1, min=1)
    shots: int = rule(1, min=1)
    queries: int = rule(1, min=1)
    seed: int = rule(0, min=0, max=INT64_MAX)
    dtype: str = rule("float32", choices=("float32", "float64"))


# what each model kind's spec holds: key -> (type, rule, required); checked before the model is built
_SIZES = (list[int], Rule(min=1, min_items=2), True)
MODEL_SPEC_FIELDS = {
    "mlp": {"sizes": _SIZES, "activation": (str, Rule(), False)},
    "gaussian_mlp_policy": {"sizes": _SIZES, "activation": (str, Rule(), False),
                            "init_log_std": (float, Rule(), False)},
    "conv4": {"in_channels": (int, Rule(min=1), False), "ways": (int, Rule(min=1), False),
              "filters": (int | None, Rule(min=1), False), "downsample": (str | None, Rule(), False),
              "convention": (str, Rule(), False)},
}


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic_write(Path(path), lambda tmp: Path(tmp).write_bytes(data))


def _atomic_write(path: Path, write) -> None:
    """Call write(tmp_path) on a temp file beside `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OSError(f"folder does not exist: {folder}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        follow_umask(tmp)  # mkstemp made it 0600: the file gets the mode any new file would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_metadata(algorithm: str, model_spec: dict, task: dict, hyperparameters: dict, iterations: int,
                   metrics: dict | None = None, extra: dict | None = None) -> dict:
    from .. import __version__

    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "algorithm": algorithm,
        "model": model_spec,
        "task": task,
        "hyperparameters": hyperparameters,
        "iterations": int(iterations),
        "metrics": metrics or {},
        "versions": {"maml_lab": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    meta.update(extra or {})
    return meta


def _plain_tensors(params) -> "OrderedDict[str, torch.Tensor]":
    return OrderedDict((k, v.detach().to("cpu").contiguous().clone()) for k, v in params.items())


def sidecar_path(path: Path) -> Path:
    """Where a `.pt` export keeps its metadata."""
    return path.with_name(path.name + ".json")


def export_initialization(path: str | Path, params, metadata: dict, extra_tensors=None) -> Path:
    """Write `params` with `metadata` to `.safetensors` (metadata inside) or `.pt` (metadata beside it).

    `extra_tensors`: what the algorithm learned besides theta (Meta-SGD's learning rates...), stored beside it and
    listed in the metadata's "extra_tensors", so a plain `load_state_dict` takes theta with
    `{k: v for k, v in sd.items() if k not in meta["extra_tensors"]}`."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = _plain_tensors(params)
    extra = _plain_tensors(extra_tensors or {})
    clash = sorted(set(extra) & set(tensors))
    if clash:
        raise ValueError(f"extra tensors may not reuse parameter names: {', '.join(clash)}")
    if extra:
        metadata = {**metadata, "extra_tensors": list(extra)}
        tensors.update(extra)
    meta_json = json.dumps(metadata, sort_keys=True)
    if path.suffix == ".safetensors":
        _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={METADATA_KEY: meta_json}))
    elif path.suffix == ".pt":
        _atomic_write(path, lambda tmp: torch.save(dict(tensors), tmp))
        atomic_write_bytes(sidecar_path(path), meta_json.encode())
    else:
        raise InitializationError(f"unsupported export format {path.suffix or '(none)'!r}: use .safetensors or .pt")
    return path


def _read(path: Path) -> tuple["OrderedDict[str, torch.Tensor]", dict | None]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                raw = (fh.metadata() or {}).get(METADATA_KEY)
                tensors = OrderedDict((k, fh.get_tensor(k)) for k in fh.keys())
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise InitializationError(f"{path.name} is not a readable safetensors file (corrupt or truncated?): "
                                      f"{exc}") from None
        if raw is None:
            return tensors, None
        try:
            return tensors, json.loads(raw)
        except json.JSONDecodeError:
            raise InitializationError(f"{path.name} has corrupt MAML Lab metadata (not JSON)") from None
    if path.suffix == ".pt":
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure to read is reported the same way
            raise InitializationError(f"{path.name} is not a readable PyTorch state dict: "
                                      f"{str(exc).splitlines()[0]}") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise InitializationError(f"{path.name} does not hold a state dict of tensors")
        meta = None
        side = sidecar_path(path)
        if side.is_file():
            try:
                meta = json.loads(side.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise InitializationError(f"{side.name} is not valid JSON metadata") from None
        return OrderedDict(state), meta
    raise InitializationError(f"unsupported file type {path.suffix or '(none)'!r}: use .safetensors or .pt")


def infer_mlp_spec(tensors) -> dict:
    """The MLP a bare state dict describes (activation unknown: ReLU assumed)."""
    sizes = []
    i = 0
    while f"{i}.weight" in tensors:
        w = tensors[f"{i}.weight"]
        if w.dim() != 2:
            raise InitializationError(f"cannot infer a model: {i}.weight has shape {list(w.shape)}")
        if not sizes:
            sizes.append(w.shape[1])
        sizes.append(w.shape[0])
        i += 2
    if not sizes:
        raise InitializationError("cannot infer a model: no '0.weight' tensor and no metadata")
    return {"kind": "mlp", "sizes": sizes, "activation": "relu"}


def load_initialization(path: str | Path, expected_model: dict | None = None, with_extras: bool = False):
    """Read and validate an initialization: returns (params, metadata, model), with `with_extras` also the learned
    extra tensors the metadata lists (params, extras, metadata, model).

    Validates the format version, that the tensors are exactly those of the described model (plus the listed
    extras) with the right shapes, and that they are finite. `expected_model` (a spec) refuses files for another
    model.
    """

    path = Path(path)
    if not path.exists():
        raise InitializationError(f"file not found: {path}")
    if not path.is_file():
        raise InitializationError(f"not a file: {path}")
    tensors, meta = _read(path)
    if meta is None:
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "algorithm": "unknown",
                "model": infer_mlp_spec(tensors), "task": {"name": "sinusoid"}, "hyperparameters": {},
                "iterations": 0, "metrics": {}}
    try:
        model, expected = _model_of(meta, path.name)
    except InitializationError:
        raise
    except ValueError as exc:  # core.validation's one line, with the file's name in front
        raise InitializationError(f"{path.name}: {exc}") from None
    if expected_model is not None and expected_model != model.spec():
        raise InitializationError(f"{path.name} holds a {_describe(model.spec())}, but the lab expects a "
                                  f"{_describe(expected_model)}")
    listed = meta.get("extra_tensors") or []
    extras = OrderedDict((k, tensors[k]) for k in listed if k in tensors)
    missing = [k for k in [*expected, *listed] if k not in tensors]
    extra = [k for k in tensors if k not in expected and k not in extras]
    if missing or extra:
        raise InitializationError(f"{path.name} does not match its model: missing {missing or 'none'}, "
                                  f"unexpected {extra or 'none'}")
    for k, shape in expected.items():
        if tuple(tensors[k].shape) != shape:
            raise InitializationError(f"{path.name}: tensor {k} has shape {list(tensors[k].shape)}, "
                                      f"expected {list(shape)}")
        if not tensors[k].is_floating_point():
            raise InitializationError(f"{path.name}: tensor {k} is {tensors[k].dtype}, expected floating point")
        if not torch.isfinite(tensors[k]).all():
            raise InitializationError(f"{path.name}: tensor {k} contains NaN or infinite values")
    for k, v in extras.items():
        if not (v.is_floating_point() and torch.isfinite(v).all()):
            raise InitializationError(f"{path.name}: extra tensor {k} must be finite floating point")
    params = OrderedDict((k, tensors[k]) for k in expected)
    return (params, extras, meta, model) if with_extras else (params, meta, model)


def _model_of(meta, name: str):
    """(model, {tensor name: shape}) that validated metadata describes, built without allocating its parameters.

    Checks, in order: the metadata's structure and types (MetadataSchema), its format and version, the model spec's
    fields, that the model fits the task family it names, that the hyperparameters the lab reads are well typed,
    and that the model's parameters fit in this machine's memory."""
    from .models.build import build_model

    where = "metadata"
    check_table(where, "(the whole metadata)", meta)
    if meta.get("format") != FORMAT:
        raise InitializationError(f"{name} is not a MAML Lab initialization (format {show_short(meta.get('format'))})")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION or version < 1:
        raise InitializationError(f"{name} has format version {show_short(version)}; this MAML Lab reads "
                                  f"versions 1 to {FORMAT_VERSION} (upgrade MAML Lab?)")
    if not isinstance(meta.get("model"), dict):
        raise InitializationError(f"{name} has no model description in its metadata")
    for key in ("algorithm", "task", "hyperparameters", "iterations", "metrics", "extra_tensors"):
        if key in meta and not (key == "extra_tensors" and meta[key] is None):
            check_field(MetadataSchema, where, key, meta[key])
    spec = meta["model"]
    kind = check_value(where, "model.kind", spec.get("kind"), str)
    for key, (hint, r, required) in MODEL_SPEC_FIELDS.get(kind, {}).items():
        if required or key in spec:
            check_value(where, f"model.{key}", spec.get(key), hint, r)
    if kind == "conv4" and "image_size" in spec:
        size = spec["image_size"]
        check_value(where, "model.image_size", size, list[int] if isinstance(size, list) else int, Rule(min=1))
    task = meta.get("task") or {"name": "sinusoid"}
    _check_hyperparameters(meta.get("hyperparameters") or {})
    try:
        model = build_model(spec)
    except (ValueError, TypeError, KeyError) as exc:
        raise InitializationError(f"{name} describes a model this lab cannot build: {exc}") from None
    _check_model_fits_task(model, task, name)
    shapes = getattr(model, "param_shapes", None)
    if shapes is None:  # a model kind without a shape description: its parameters, built once
        expected = OrderedDict((k, tuple(v.shape)) for k, v in
                               model.init_params(torch.Generator().manual_seed(0)).items())
    else:
        expected = OrderedDict((k, tuple(int(d) for d in v)) for k, v in shapes().items())
    check_memory(4 * shapes_numel(expected), f"its model, a {_describe(model.spec())} of "
                                             f"{shapes_numel(expected):,} parameters")
    return model, expected


def show_short(value) -> str:
    from .validation import show

    return show(value, 40)


def _check_hyperparameters(hyper: dict) -> None:
    """The recorded settings the lab reads back (eval's shots, the algorithm's fine-tuning rule), by the schemas
    of AlgorithmConfig and RecordedExperiment."""
    from .algorithms.config import AlgorithmConfig

    for key, value in hyper.items():
        for cls in (AlgorithmConfig, RecordedExperiment):
            if key in cls.__dataclass_fields__ and key not in ("name", "options"):
                check_field(cls, "metadata", key, value, f"hyperparameters.{key}")
                break


def _check_model_fits_task(model, task: dict, name: str) -> None:
    """Refuse a model of another kind than its task family trains (a navigation policy named as a sinusoid
    export, a conv-4 with other ways or image size than its task records)."""
    from .tasks.registry import TASKS

    family = check_value("metadata", "task.name", task.get("name", "sinusoid"), str)
    spec = model.spec()
    entry = TASKS.get(family) if family in TASKS else None  # a plug-in family not installed: not checked here
    kind = getattr(entry, "model_kind", None)
    if kind is not None and spec.get("kind") != kind:
        raise InitializationError(f"{name} holds a {_describe(spec)}, but its task family {family!r} trains "
                                  f"{kind} models: the file does not fit its own metadata")
    if spec.get("kind") == "conv4":
        ways = task.get("ways")
        if ways is not None and ways != spec.get("ways"):
            raise InitializationError(f"{name}: its task has {show_short(ways)} ways but its model a "
                                      f"{spec.get('ways')}-way output layer")
        size = spec.get("image_size")
        hw = [size, size] if isinstance(size, int) else list(size)
        shape = task.get("input_shape")
        if shape is not None and shape != [spec.get("in_channels", 1), *hw]:
            raise InitializationError(f"{name}: its task's images are {show_short(shape)} but its model takes "
                                      f"{[spec.get('in_channels', 1), *hw]}")
        for key in ("preprocessing_request", "preprocessing"):
            recorded = check_table("metadata", f"task.{key}", task.get(key) or {})
            size = recorded.get("size")
            if size is not None and size != hw:
                raise InitializationError(f"{name}: task.{key}.size = {show_short(size)} does not match the "
                                          f"model's images of {hw[0]}x{hw[1]}")


def _describe(spec: dict) -> str:
    if spec.get("kind") == "mlp":
        return f"MLP {'-'.join(str(s) for s in spec.get('sizes', []))} ({spec.get('activation')})"
    return f"{spec.get('kind')} model ({', '.join(f'{k}={v}' for k, v in spec.items() if k != 'kind')})"
