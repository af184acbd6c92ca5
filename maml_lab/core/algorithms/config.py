"""An algorithm's hyperparameters (AlgorithmConfig), and what is done with one: build the algorithm, fine-tune
an initialization the way that algorithm does at test time."""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields

import torch

from ..validation import check_field, check_fields, check_like, check_table, fail, rule
from .adaptation import sgd_trajectory
from .base import LearnedAdaptation, MetaAlgorithm
from .registry import ALGORITHMS, algorithm_class


@dataclass
class AlgorithmConfig:
    """Hyperparameters of one algorithm. Names follow cbfinn/maml and supervised-reptile."""

    name: str = "maml"
    inner_lr: float = rule(0.01, above=0)  # alpha: inner SGD step size, also used to fine-tune at test time
    inner_steps: int = rule(1, min=0)  # inner steps during meta-training (Reptile's k)
    test_inner_steps: int = rule(10, min=0)  # steps used when evaluating
    meta_lr: float = rule(1e-3, above=0)  # outer Adam learning rate (every algorithm but Reptile: epsilon)
    inner_optimizer: str = rule("sgd", choices=("sgd", "adam"))  # Reptile only: sgd or adam
    outer_lr_start: float = rule(1.0, min=0)  # Reptile only: epsilon at the first iteration ...
    outer_lr_end: float = rule(0.0, min=0)  # ... annealed linearly to this at the last
    # or "cosine": meta-lr annealed to 0 over the run (MAML++)
    meta_lr_schedule: str = rule("constant", choices=("constant", "cosine"))
    # the outer step on sampled (RL) tasks: "adam" (Adam at meta_lr on the surrogate) or "trpo" (cbfinn/maml_rl's
    # TRPO, max KL 0.01: rl/trpo.py); supervised families take adam
    outer_optimizer: str = rule("adam", choices=("adam", "trpo"))
    # MAML/FOMAML: meta-loss = sum_s w_s * query loss after inner step s, one weight per inner step (MAML++'s
    # multi-step loss); empty: the query loss after the last step only (the MAML paper)
    step_loss_weights: list[float] = rule(default_factory=list, min=0)

    def __post_init__(self) -> None:
        self.validate()

    # algorithm-specific settings a registered algorithm declares in `option_defaults` (plug-ins); TOML keys
    options: dict = field(default_factory=dict)

    def validate(self, where: str = "config") -> None:
        """Types and ranges (core.validation's schema: the field hints and rules above), then what the algorithm
        itself requires; `where` starts each message ("config", "metadata")."""
        check_field(AlgorithmConfig, where, "name", self.name, "algorithm name")
        cls = algorithm_class(self.name)  # unknown names: "unknown algorithm 'x' (one of ...)"
        prefix = f"algorithms.{self.name}."
        check_fields(self, where, prefix)
        if self.inner_steps < cls.min_inner_steps:
            raise fail(where, prefix + "inner_steps", self.inner_steps, f"an integer >= {cls.min_inner_steps}")
        unknown = sorted(set(self.options) - set(cls.option_defaults))
        if unknown:
            raise ValueError(f"{self.name} has no option(s) {', '.join(unknown)}"
                             + (f" (it takes {', '.join(cls.option_defaults)})" if cls.option_defaults else ""))
        if self.step_loss_weights:
            weights = self.step_loss_weights
            if not cls.multi_step_loss:
                raise ValueError(f"step-loss-weights apply to {', '.join(multi_step_names())} only, not {self.name}")
            if len(weights) != self.inner_steps:
                raise ValueError(f"step-loss-weights needs one weight per inner step ({self.inner_steps}), "
                                 f"got {len(weights)}")
            if not sum(weights) > 0:
                raise fail(where, prefix + "step_loss_weights", weights, "weights >= 0 with a positive sum")
        cls.check_config(self)  # the algorithm's own words for its options first, then their declared types
        for key, value in self.options.items():
            self.options[key] = check_like(where, prefix + key, value, cls.option_defaults[key])

    def option(self, key: str):
        """An algorithm-specific setting: the config's value, else the algorithm's declared default."""
        return self.options.get(key, algorithm_class(self.name).option_defaults[key])

    @classmethod
    def defaults(cls, name: str, task: str = "sinusoid", **overrides) -> "AlgorithmConfig":
        """An algorithm's settings on a task family, then `overrides` (None means unset): the dataclass defaults
        (the MAML paper's sinusoid regression), then what the task family sets for every algorithm (images: the
        Omniglot 5-way alpha 0.4, one inner step in training, three at test), then the algorithm's own defaults
        for any family ("*") and for this one. Keys an algorithm declares as options go to `options`."""
        from ..tasks.registry import task_family

        algo = algorithm_class(name)
        base: dict = {"name": name}
        base.update(task_family(task).algorithm_defaults)
        base.update(algo.task_defaults.get("*", {}))
        base.update(algo.task_defaults.get(task, {}))
        # an override's nested `options` (TOML written from asdict) count as overrides too, above the defaults
        nested = check_table("config", f"algorithms.{name}.options", overrides.pop("options", None) or {})
        base.update({k: v for k, v in {**overrides, **nested}.items() if v is not None})
        return cls.from_dict(base, strict=True)

    def to_dict(self) -> dict:
        """Flat settings, the algorithm's options with their defaults filled in (exports and TOML record what was
        used); algorithms without options keep the format they always had."""
        data = asdict(self)
        options = data.pop("options")
        data.update({**algorithm_class(self.name).option_defaults, **options})
        return data

    @classmethod
    def from_dict(cls, data: dict, strict: bool = False) -> "AlgorithmConfig":
        """Known fields as such, an algorithm's declared options into `options`; other keys are dropped (or
        refused, when `strict`: a typo in a TOML file should not pass silently)."""
        check_table("config", "algorithms[]", data)
        known = {f.name for f in fields(cls)}
        name = check_field(cls, "config", "name", data.get("name", "maml"), "algorithm name")
        declared = algorithm_class(name).option_defaults
        values = {k: v for k, v in data.items() if k in known}
        options = dict(check_table("config", f"algorithms.{name}.options", values.pop("options", None) or {}))
        options.update({k: v for k, v in data.items() if k in declared})
        extra = sorted(set(data) - known - set(declared))
        if strict and extra:
            takes = f" (its own options: {', '.join(declared)})" if declared else ""
            raise ValueError(f"unknown setting(s) for {name}: {', '.join(extra)}{takes}")
        return cls(**values, options=options)


def multi_step_names() -> list[str]:
    return [a.name for a in ALGORITHMS if a.multi_step_loss]


def test_trajectory(adaptation, model, loss_fn, params, x_support, y_support, steps: int,
                    batched: bool = False) -> Iterator["OrderedDict[str, torch.Tensor]"]:
    """Test-time adaptation by an algorithm's own rule: `adaptation` is its AlgorithmConfig, or a LearnedAdaptation
    (config + learned tensors), or a plain SGD step size (a number: initializations of unknown origin). Yields each
    task's parameters after 0..steps steps."""
    if isinstance(adaptation, LearnedAdaptation):
        config, tensors = adaptation.config, adaptation.tensors
    elif isinstance(adaptation, AlgorithmConfig):
        config, tensors = adaptation, {}
    else:
        return sgd_trajectory(model, loss_fn, params, x_support, y_support, steps, float(adaptation), batched)
    return algorithm_class(config.name).test_trajectory(config, model, loss_fn, params, x_support, y_support, steps,
                                                        batched, tensors=tensors)


def predict(adaptation, model, params, x_support, y_support, x_query, batch_norm=None) -> torch.Tensor:
    """Query outputs [B, Q, ...] of adapted `params`, as the algorithm predicts (its `predict(config, model, params,
    x_support, y_support, x_query)` when it has one: a prototype classifier sees the support labels; else one forward
    pass of the query set), with batch norm in the mode `batch_norm` (models/batch_norm.py: "transductive",
    "support", "support+query", or running statistics; None: the algorithm's own, `batch_norm_mode`). The mode
    reaches the algorithm's hook through the model it is handed, so every algorithm and view predicts under it."""
    from ..models.batch_norm import NormalizedModel

    config = adaptation_config(adaptation)
    if batch_norm is None:
        batch_norm = default_batch_norm(adaptation)
    if not isinstance(batch_norm, str) or batch_norm != "transductive":
        model = NormalizedModel(model, batch_norm, x_support)
    rule = getattr(algorithm_class(config.name), "predict", None) if config is not None else None
    if rule is None:
        return model.forward(params, x_query)
    return rule(config, model, params, x_support, y_support, x_query)


def default_batch_norm(adaptation) -> str:
    """The batch-norm mode an algorithm predicts in unless told otherwise (`batch_norm_mode`; plain SGD step sizes
    and most algorithms: "transductive", as cbfinn/maml)."""
    config = adaptation_config(adaptation)
    if config is None:
        return "transductive"
    return algorithm_class(config.name).batch_norm_mode(config)


def adaptation_config(adaptation) -> AlgorithmConfig | None:
    """The AlgorithmConfig inside an adaptation (None for a plain SGD step size)."""
    if isinstance(adaptation, LearnedAdaptation):
        return adaptation.config
    return adaptation if isinstance(adaptation, AlgorithmConfig) else None


def adaptation_text(adaptation) -> str:
    """How test-time adaptation runs, for tables and cards: 'SGD, inner lr 0.4', 'Adam (beta1 0, ...), inner lr 0.1'."""
    config = adaptation_config(adaptation)
    if config is not None:
        return algorithm_class(config.name).test_adaptation_text(config)
    return f"SGD, inner lr {float(adaptation):g}"


def test_adapt(adaptation, model, loss_fn, params, x_support, y_support, steps: int,
               batched: bool = False) -> "OrderedDict[str, torch.Tensor]":
    """The parameters after `steps` test-time steps (see test_trajectory)."""
    return deque(test_trajectory(adaptation, model, loss_fn, params, x_support, y_support, steps, batched),
                 maxlen=1)[0]


def make_algorithm(model, loss: str, config: AlgorithmConfig, total_iterations: int = 1) -> MetaAlgorithm:
    config.validate()
    return algorithm_class(config.name)(model, loss, config, total_iterations)
