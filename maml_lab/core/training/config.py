"""An experiment's configuration: what to train, on which tasks, for how long. Reads and writes TOML."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import tomli_w

from ..algorithms.config import AlgorithmConfig
from ..algorithms.registry import ALGORITHMS, algorithm_names, family_refusal
from ..models.mlp import ACTIVATIONS
from ..tasks.registry import task_family
from ..validation import INT64_MAX, check_field, check_fields, check_like, check_table, fail, parse_toml, rule
from .device import DTYPES

IMAGE_MODES = ("grayscale", "rgb")
DEFAULT_HIDDEN = [40, 40]  # the MAML paper's sinusoid MLP; a family may declare its own (2-D navigation: 100, 100)
DEFAULT_VAL_EVERY = 500  # a family may declare its own (2-D navigation: 10, so its export can be its best)


@dataclass
class ExperimentConfig:
    """Fields left as None take the task family's defaults (its registry entry's `experiment_defaults`, and
    AlgorithmConfig.defaults for the algorithms), so `ExperimentConfig(task="images")` is the MAML paper's Omniglot
    setting. The image fields (data, ways, image_size, image_mode, rotations) are read by image task families."""

    task: str = "sinusoid"
    algorithms: list[AlgorithmConfig] | None = None  # None: MAML with the task's defaults
    # hidden widths of the MLP (or policy): the family's default, else DEFAULT_HIDDEN
    hidden: list[int] | None = rule(None, min=1, min_items=1)
    activation: str = rule("relu", choices=tuple(ACTIVATIONS))
    meta_batch_size: int | None = rule(None, min=1)
    shots: int | None = rule(None, min=1)  # K support points (per class for images)
    queries: int | None = rule(None, min=1)  # query points per task (per class for images)
    iterations: int | None = rule(None, min=1, max=INT64_MAX)
    seed: int = rule(0, min=0, max=INT64_MAX)
    device: str = "auto"
    dtype: str = rule("float32", choices=tuple(DTYPES))
    # validation on held-out tasks every N iterations (0: never); None: the family's default, else DEFAULT_VAL_EVERY
    val_every: int | None = rule(None, min=0)
    val_tasks: int = rule(100, min=0)
    # image tasks
    data: str | list[str] | None = rule(None, min_items=1)  # image set path (zip, folder, mini-ImageNet file) or
    # several trained as one; None: the built-in glyph set
    eval_data: str | None = None  # a separate held-out image set: validation and eval use its classes only
    ways: int = rule(5, min=1)
    image_size: int = rule(28, min=1)
    image_mode: str = rule("grayscale", choices=IMAGE_MODES)  # or "rgb"
    rotations: bool = True  # training classes also appear rotated by 90, 180 and 270 degrees, as new classes
    # settings a task family declares in its `option_defaults` (plug-in families); TOML table [task_options]
    task_options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_field(ExperimentConfig, "config", "task", self.task)
        check_fields(self, "config", skip=("algorithms",))  # before the family's defaults fill what is unset
        for key, value in self.task_defaults(self.task).items():
            if getattr(self, key) is None:
                setattr(self, key, list(value) if isinstance(value, list) else value)
        if self.hidden is None:
            self.hidden = list(DEFAULT_HIDDEN)
        if self.val_every is None:
            self.val_every = DEFAULT_VAL_EVERY
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
        """Types and ranges of every field (core.validation's schema: the hints and rules above), the algorithms'
        own, the task family's options against their declared defaults, then what the family requires (its
        `validate`, where it also estimates the memory a run needs)."""
        kind = task_family(check_field(ExperimentConfig, "config", "task", self.task))
        check_fields(self, "config", skip=("algorithms",))
        for key in ("meta_batch_size", "shots", "queries", "iterations", "hidden"):
            if getattr(self, key) is None:
                raise ValueError(f"config: {key} is not set, and task family {self.task} gives no default")
        if not isinstance(self.algorithms, list) or not self.algorithms:
            raise ValueError("choose at least one algorithm")
        names = [a.name for a in self.algorithms]
        if len(set(names)) != len(names):
            raise ValueError(f"each algorithm can appear once, got {names}")
        for a in self.algorithms:
            a.validate()
            refusal = family_refusal(a.name, kind)
            if refusal:
                raise ValueError(refusal)
        for key, value in (("data", self.data), ("eval_data", self.eval_data)):
            if value == "" or (isinstance(value, list) and "" in value):
                raise fail("config", key, value, "a path or a list of paths")
        unknown = sorted(set(self.task_options) - set(kind.option_defaults))
        if unknown:
            raise ValueError(f"task family {self.task} has no option(s) {', '.join(unknown)}"
                             + (f" (it takes {', '.join(kind.option_defaults)})" if kind.option_defaults else ""))
        for key, value in self.task_options.items():
            self.task_options[key] = check_like("config", f"task_options.{key}", value, kind.option_defaults[key])
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
        data = dict(check_table("config", "(the whole config)", data))
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config key(s): {', '.join(unknown)}")
        algos = data.pop("algorithms", None)
        task = check_field(cls, "config", "task", data.get("task", "sinusoid"))
        task_family(task)  # unknown: refused with the registered names
        if isinstance(algos, dict):
            bad = sorted(set(algos) - set(algorithm_names()))
            if bad:
                raise ValueError(f"unknown algorithm(s) in config: {', '.join(bad)} "
                                 f"(one of {', '.join(algorithm_names())})")
            data["algorithms"] = [AlgorithmConfig.defaults(name, task=task, **check_table(
                "config", f"algorithms.{name}", opts if opts is not None else {})) for name, opts in algos.items()]
        elif isinstance(algos, list):
            for i, a in enumerate(algos):
                if not isinstance(a, (str, dict, AlgorithmConfig)):
                    raise fail("config", f"algorithms[{i}]", a, f"an algorithm name ({', '.join(algorithm_names())})")
            data["algorithms"] = [AlgorithmConfig.defaults(a, task=task) if isinstance(a, str)
                                  else a if isinstance(a, AlgorithmConfig) else AlgorithmConfig.from_dict(a)
                                  for a in algos]
        elif isinstance(algos, str):
            raise fail("config", "algorithms", algos, f'a list of names, e.g. algorithms = ["{algos}"], or a '
                                                       f"table per algorithm, e.g. [algorithms.{algos}]")
        elif algos is not None:
            raise fail("config", "algorithms", algos, "a list of algorithm names or a table per algorithm")
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
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{path} is not valid TOML: not UTF-8 text") from None
        data = parse_toml(text, str(path))
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
    for name, settings in algorithms.items():
        if name in ALGORITHMS and ALGORITHMS.get(name).adaptation_kind != "gradient":
            continue  # inner steps and step sizes of gradient adaptation (a paper's MAML settings) are not its own
        for key, value in chosen.get("algorithm", {}).items():
            settings.setdefault(key, value)
    out["algorithms"] = algorithms
    return out
