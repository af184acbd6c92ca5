"""An example MAML Lab plug-in (see README.md): one algorithm (fomaml_momentum.py) and one task family (line.py),
each found by MAML Lab through an entry point in pyproject.toml. Nothing here is imported by MAML Lab itself."""
