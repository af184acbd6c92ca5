"""The lab's resources (icons, the default experiment) live in the repository's top-level resources/ folder; the
wheel ships them as the package `maml_lab.resources` (pyproject.toml maps it there)."""

from __future__ import annotations

from importlib import resources as _importlib_resources
from pathlib import Path

SOURCE_TREE = Path(__file__).resolve().parents[2] / "resources"  # a checkout: <repo>/resources


def resource(name: str):
    """A readable resource (`.read_text()`, `.read_bytes()`, `str()` for Qt) by file name, e.g. 'icon-start.svg'."""
    if (SOURCE_TREE / name).is_file():
        return SOURCE_TREE / name
    return _importlib_resources.files("maml_lab.resources").joinpath(name)
