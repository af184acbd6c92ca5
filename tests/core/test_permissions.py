"""Atomic writes (a temporary file renamed into place) give their files the mode any new file gets, 0o666 less the
umask, not mkstemp's private 0600 (issue 21: exports, PNGs and config.toml came out 0600)."""

import os
import stat

import pytest
import torch

from maml_lab.core.export import atomic_write_bytes, export_initialization
from maml_lab.core.models.mlp import MLP
from maml_lab.core.permissions import current_umask, follow_umask
from maml_lab.core.training.config import ExperimentConfig


@pytest.fixture
def umask():
    """Set the process umask for a test, and put the old one back."""
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mask):
    umask(mask)
    assert current_umask() == mask
    expected = 0o666 & ~mask
    atomic_write_bytes(tmp_path / "data.csv", b"a,b\n")
    assert mode(tmp_path / "data.csv") == expected
    ExperimentConfig().save_toml(tmp_path / "config.toml")
    assert mode(tmp_path / "config.toml") == expected
    model = MLP([1, 4, 1])
    export_initialization(tmp_path / "x.safetensors", model.init_params(torch.Generator().manual_seed(0)),
                          {"algorithm": "maml", "model": model.spec(), "task": {"name": "sinusoid"}})
    assert mode(tmp_path / "x.safetensors") == expected
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def test_follow_umask_sets_the_mode_of_a_new_file(tmp_path, umask):
    umask(0o027)
    path = tmp_path / "f"
    path.write_bytes(b"")
    os.chmod(path, 0o600)
    follow_umask(path)
    assert mode(path) == 0o640
