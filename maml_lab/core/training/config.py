"""An experiment's configuration: what to train, on which tasks, for how long. Reads and writes TOML."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import tomli_w
import tomllib

from ..algorithms.config import AlgorithmConfig
from ..algorithms.registry import algorithm_names
from ..tasks.registry import task_family
from .device import DTYPES

IMAGE_MODES = ("grayscale", "rgb")
DEFAULT_HIDDEN = [40, 40]  # the MAML paper's sinusoid MLP; a family may declare its own (2-D navigation: 100, 100)


@dataclass
class ExperimentConfig:
    """Fields left as None take the task family's defaults (its registry entry's `experiment_defaults`, and
    AlgorithmConfig.defaults for the algorithms), so `ExperimentConfig(task="images")` is the MAML paper's Omniglot
    setting. The image fields (data, ways, image_size, image_mode, rotations) are read by image task families."""

    task: str = "sinusoid"
    algorithms: list[AlgorithmConfig] | None = None  # None: MAML with the task's defaults
    hidden: list[int] | None = None  # hidden widths of the MLP (or policy): the family's default, else DEFAULT_HIDDEN
    activation: str = "relu"
    meta_batch_size: int | None = None
    shots: int | None = None  # K support points (per class for images)
    queries: int | None = None  # query points per task (per class for images)
    iterations: int | None = None
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    val_every: int = 500  # validation loss every N iterations (0: never)
    val_tasks: int = 100
    # image tasks
    data: str | list[str] | None = None  # image set path (zip, folder, mini-ImageNet file) or several trained as one;
    # None: the built-in glyph set
    eval_data: str | None = None  # a separate held-out image set: validation and eval use its classes only
    ways: int = 5
    image_size: int = 28
    image_mode: str = "grayscale"  # or "rgb"
    rotations: bool = True  # training classes also appear rotated by 90, 180 and 270 degrees, as new classes
    # settings a task family declares in its `option_defaults` (plug-in families); TOML table [task_options]
    task_options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key, value in self.task_defaults(self.task).items():
            if getattr(self, key) is None:
                setattr(self, key, list(value) if isinstance(value, list) else value)
        if self.hidden is None:
            self.hidden = list(DEFAULT_HIDDEN)
        if self.algorithms is None:
            self.algorithms = [AlgorithmConfig.defaults("maml", task=self.task)]
        self.algorithms = [a if isinstance(a, AlgorithmConfig) else AlgorithmConfig.from_dict(a)
                           for a in self.algorithms]
        self.validate()

    @staticmethod
    def task_defaults(task: str) -> dict:
        """The values unset fields take for `task` (algorithms: see AlgorithmConfig.defaults(name, task))."""
        return dict(task_family(task).experiment_defaults)  # unknown: "unknown task family 'x' (one of ...)"

    def validate(self) -> None:
        kind = task_family(self.task)
        if not self.algorithms:
            raise ValueError("choose at least one algorithm")
        names = [a.name for a in self.algorithms]
        if len(set(names)) != len(names):
            raise ValueError(f"each algorithm can appear once, got {names}")
        for a in self.algorithms:
            a.validate()
        for key in ("meta_batch_size", "shots", "iterations", "ways", "image_size"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"{key.replace('_', '-')} must be >= 1, got {getattr(self, key)}")
        for key in ("queries", "val_every", "val_tasks", "seed"):
            if int(getattr(self, key)) < 0:
                raise ValueError(f"{key.replace('_', '-')} must be >= 0, got {getattr(self, key)}")
        if self.queries < 1:
            raise ValueError(f"queries must be >= 1, got {self.queries}")
        if not self.hidden or any(int(h) < 1 for h in self.hidden):
            raise ValueError(f"hidden widths must be positive integers, got {self.hidden}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r} (one of {', '.join(DTYPES)})")
        paths = isinstance(self.data, (list, tuple)) and self.data and all(isinstance(d, str) and d for d in self.data)
        if self.data is not None and not isinstance(self.data, str) and not paths:
            raise ValueError(f"data must be a path or a list of paths, got {self.data!r}")
        if isinstance(self.data, tuple):
            self.data = list(self.data)
        if self.eval_data is not None and not (isinstance(self.eval_data, str) and self.eval_data):
            raise ValueError(f"eval_data must be a path, got {self.eval_data!r}")
        if self.image_mode not in IMAGE_MODES:
            raise ValueError(f"unknown image mode {self.image_mode!r} (one of {', '.join(IMAGE_MODES)})")
        unknown = sorted(set(self.task_options) - set(kind.option_defaults))
        if unknown:
            raise ValueError(f"task family {self.task} has no option(s) {', '.join(unknown)}"
                             + (f" (it takes {', '.join(kind.option_defaults)})" if kind.option_defaults else ""))
        kind.validate(self)

    def task_option(self, key: str):
        """A task-family setting: the config's value, else the family's declared default."""
        return self.task_options.get(key, task_family(self.task).option_defaults[key])

    def algorithm(self, name: str) -> AlgorithmConfig:
        for a in self.algorithms:
            if a.name == name:
                return a
        raise KeyError(name)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["algorithms"] = {a["name"]: {k: v for k, v in a.items() if k != "name"} for a in data["algorithms"]}
        for key in ("data", "eval_data"):
            if data[key] is None:
                del data[key]
        options = {**task_family(self.task).option_defaults, **data.pop("task_options")}
        if options:  # the built-in families take none: their TOML stays as it was
            data["task_options"] = options
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ExperimentConfig":
        data = dict(data)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config key(s): {', '.join(unknown)}")
        algos = data.pop("algorithms", None)
        task = data.get("task", "sinusoid")
        task_family(task)  # unknown: refused with the registered names
        if isinstance(algos, dict):
            bad = sorted(set(algos) - set(algorithm_names()))
            if bad:
                raise ValueError(f"unknown algorithm(s) in config: {', '.join(bad)} "
                                 f"(one of {', '.join(algorithm_names())})")
            data["algorithms"] = [AlgorithmConfig.defaults(name, task=task, **(opts or {}))
                                  for name, opts in algos.items()]
        elif isinstance(algos, list):
            data["algorithms"] = [AlgorithmConfig.defaults(a, task=task) if isinstance(a, str)
                                  else AlgorithmConfig.from_dict(a) for a in algos]
        try:
            return cls(**data)
        except TypeError as exc:
            raise ValueError(f"invalid config: {exc}") from None

    def save_toml(self, path: str | Path) -> None:
        from ..export import atomic_write_bytes

        atomic_write_bytes(Path(path), tomli_w.dumps(self.to_dict()).encode())

    @classmethod
    def load_toml(cls, path: str | Path) -> "ExperimentConfig":
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file not found: {path}")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path} is not valid TOML: {exc}") from None
        return cls.from_dict(data)


def apply_preset(data: dict, task: str, preset: str) -> dict:
    """`data` (ExperimentConfig fields with `algorithms` as name -> settings, as the CLI builds it before
    ExperimentConfig.from_dict) with a task family's preset filled in under every value already there: a preset is
    a set of defaults one flag away (the MAML paper's own settings, say), not an override of what the user set."""
    presets = task_family(task).presets
    if preset not in presets:
        offered = ", ".join(sorted(presets)) or "none"
        raise ValueError(f"unknown preset {preset!r} for task family {task!r} (its presets: {offered})")
    chosen = presets[preset]
    out = dict(data)
    for key, value in chosen.get("experiment", {}).items():
        out.setdefault(key, value)
    algorithms = {name: dict(settings or {}) for name, settings in (out.get("algorithms") or {}).items()}
    for settings in algorithms.values():
        for key, value in chosen.get("algorithm", {}).items():
            settings.setdefault(key, value)
    out["algorithms"] = algorithms
    return out
