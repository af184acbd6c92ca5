"""MAML Lab: a visual laboratory for gradient-based meta-learning."""

__version__ = "0.1.0"
