"""Packaging beyond what pyproject.toml can say: the top-level resources/ folder (icons, the default experiment)
ships inside the wheel as the package `maml_lab.resources`, next to every package under maml_lab/."""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["maml_lab", "maml_lab.*"]), "maml_lab.resources"],
      package_dir={"maml_lab.resources": "resources"})
