"""Meta-learning algorithms behind one interface (base.MetaAlgorithm), one per file, found through the registry."""

from .base import AlgorithmConfig, MetaAlgorithm, algorithm_class, make_algorithm
from .registry import ALGORITHMS, algorithm_color, algorithm_label, algorithm_names

__all__ = ["ALGORITHMS", "AlgorithmConfig", "MetaAlgorithm", "algorithm_class", "algorithm_color", "algorithm_label",
           "algorithm_names", "make_algorithm"]
