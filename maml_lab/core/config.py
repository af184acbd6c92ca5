"""An experiment's configuration: what to train, on which tasks, for how long. Reads and writes TOML."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import tomli_w
import tomllib

from .algorithms import ALGORITHMS, AlgorithmConfig
from .device import DTYPES

TASKS = ("sinusoid", "images")


@dataclass
class ExperimentConfig:
    task: str = "sinusoid"
    algorithms: list[AlgorithmConfig] = field(default_factory=lambda: [AlgorithmConfig.defaults("maml")])
    hidden: list[int] = field(default_factory=lambda: [40, 40])  # MLP hidden widths
    activation: str = "relu"
    meta_batch_size: int = 25
    shots: int = 10  # K support points (per class for images)
    queries: int = 10  # query points per task (per class for images)
    iterations: int = 70000
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    val_every: int = 500  # validation loss every N iterations (0: never)
    val_tasks: int = 100
    # image tasks
    data: str | None = None  # image set path (zip or folder); None: the built-in glyph set
    ways: int = 5
    image_size: int = 28
    rotations: bool = True

    def __post_init__(self) -> None:
        self.algorithms = [a if isinstance(a, AlgorithmConfig) else AlgorithmConfig.from_dict(a)
                           for a in self.algorithms]
        self.validate()

    def validate(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r} (one of {', '.join(TASKS)})")
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
        if self.task == "images" and self.ways < 2:
            raise ValueError(f"ways must be >= 2 for classification, got {self.ways}")

    def algorithm(self, name: str) -> AlgorithmConfig:
        for a in self.algorithms:
            if a.name == name:
                return a
        raise KeyError(name)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["algorithms"] = {a["name"]: {k: v for k, v in a.items() if k != "name"} for a in data["algorithms"]}
        if data["data"] is None:
            del data["data"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ExperimentConfig":
        data = dict(data)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config key(s): {', '.join(unknown)}")
        algos = data.pop("algorithms", None)
        if isinstance(algos, dict):
            bad = sorted(set(algos) - set(ALGORITHMS))
            if bad:
                raise ValueError(f"unknown algorithm(s) in config: {', '.join(bad)} (one of {', '.join(ALGORITHMS)})")
            data["algorithms"] = [AlgorithmConfig.defaults(name, **(opts or {})) for name, opts in algos.items()]
        elif isinstance(algos, list):
            data["algorithms"] = [AlgorithmConfig.defaults(a) if isinstance(a, str) else AlgorithmConfig.from_dict(a)
                                  for a in algos]
        try:
            return cls(**data)
        except TypeError as exc:
            raise ValueError(f"invalid config: {exc}") from None

    def save_toml(self, path: str | Path) -> None:
        from .export import atomic_write_bytes

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

