"""Meta-learning algorithms behind one interface (base.MetaAlgorithm), one per file, found through the registry;
their hyperparameters are a config.AlgorithmConfig."""

from .base import MetaAlgorithm
from .config import AlgorithmConfig, adaptation_text, make_algorithm, test_adapt, test_trajectory
from .registry import ALGORITHMS, algorithm_class, algorithm_color, algorithm_label, algorithm_names

__all__ = ["ALGORITHMS", "AlgorithmConfig", "MetaAlgorithm", "adaptation_text", "algorithm_class", "algorithm_color",
           "algorithm_label", "algorithm_names", "make_algorithm", "test_adapt", "test_trajectory"]
