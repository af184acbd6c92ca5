"""The engine: pure torch/numpy, never Qt (a test enforces it)."""
