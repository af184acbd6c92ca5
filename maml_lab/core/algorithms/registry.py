"""The algorithm registry: the panel, the CLI's choices, TOML configs, checkpoints, exports, imports and every
view read it. Built-in algorithms are listed here by the same `module:Class` reference a plug-in's entry point
(group `maml_lab.algorithms`) gives; adding one is one file plus one line here or in a plug-in's pyproject.toml.
"""

from __future__ import annotations

import re

from ..registry import Registry
from .base import MetaAlgorithm

BUILTIN_ALGORITHMS = (
    "maml_lab.core.algorithms.maml:MAML",
    "maml_lab.core.algorithms.maml:FOMAML",
    "maml_lab.core.algorithms.reptile:Reptile",
    "maml_lab.core.algorithms.pretrained:Pretrained",
    "maml_lab.core.algorithms.metasgd:MetaSGD",
    "maml_lab.core.algorithms.mamlpp:MAMLPlusPlus",
    "maml_lab.core.algorithms.anil:ANIL",
    "maml_lab.core.algorithms.boil:BOIL",
    "maml_lab.core.algorithms.protonet:ProtoNet",
    "maml_lab.core.algorithms.cavia:CAVIA",
    "maml_lab.core.algorithms.imaml:IMAML",
    "maml_lab.core.algorithms.baseline:Baseline",
    "maml_lab.core.algorithms.baselinepp:BaselinePlusPlus",
)
NAME = re.compile(r"^[a-z][a-z0-9_]*$")
UNKNOWN_COLORS = ("#E69F00", "#000000", "#8C8C8C")  # Okabe-Ito extras for names no algorithm claims


def _check(name: str, cls):
    if not (isinstance(cls, type) and issubclass(cls, MetaAlgorithm)):
        raise TypeError(f"{cls!r} is not a MetaAlgorithm subclass")
    if not NAME.match(name or ""):
        raise ValueError(f"algorithm name {name!r} must be lower case letters, digits and _ (e.g. 'anil')")
    if cls.meta_step is MetaAlgorithm.meta_step:
        raise TypeError(f"{cls.__name__} does not implement meta_step")
    return cls


ALGORITHMS = Registry("algorithm", "maml_lab.algorithms", BUILTIN_ALGORITHMS, _check, lambda cls: cls.name)


def algorithm_class(name: str) -> type[MetaAlgorithm]:
    return ALGORITHMS.get(name)


def algorithm_names() -> tuple[str, ...]:
    return ALGORITHMS.names()


def family_refusal(name: str, kind) -> str | None:
    """Why algorithm `name` cannot train on the task family `kind` (a TaskFamilyKind), in one line; None where it
    can. Config validation raises it and the app's panel disables the algorithm with it as the tooltip: an
    algorithm that classifies only (`classification_only`: prototypes, a class head) on a family that regresses or
    acts."""
    from ..tasks.losses import is_classification

    cls = ALGORITHMS.get(name)
    if cls.classification_only and not is_classification(kind.loss):
        family = kind.label or kind.name
        return (f"{cls.label or name} classifies only; {family} tasks are not classification (loss {kind.loss}): "
                "choose an image family")
    return None


def algorithm_label(name: str) -> str:
    """How an algorithm is named in plots and tables; names nobody registered are shown as they are."""
    return ALGORITHMS.get(name).label or name if name in ALGORITHMS else name


def algorithm_color(name: str) -> str:
    """Hex colour of an algorithm; unknown names (imported files of unknown origin) get a stable extra colour."""
    if name in ALGORITHMS:
        return ALGORITHMS.get(name).color
    return UNKNOWN_COLORS[sum(map(ord, name)) % len(UNKNOWN_COLORS)]
