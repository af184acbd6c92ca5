"""iMAML from the command line, as a user runs it: the sinusoid with its defaults and small1 Omniglot characters,
short runs that train, export and evaluate with the proximal rule."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from maml_lab.cli import main

SMALL1 = Path(__file__).resolve().parents[2] / "shared" / "omniglot" / "images_background_small1.zip"
needs_small1 = pytest.mark.skipif(not SMALL1.is_file(), reason=f"Omniglot test data not found at {SMALL1}")
PROXIMAL = "SGD on the support loss + lam/2 ||phi - theta||^2 (lam 2)"


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MAML_LAB_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_sinusoid_defaults_train_export_and_eval(tmp_path, capsys):
    args = ["train", "--algorithm", "imaml", "--iterations", "40", "--out", "s.safetensors", "--threads", "1"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "training imaml on sinusoid for 40 iterations" in err
    assert re.search(r"imaml cost: .* per meta-step at 10 inner steps", err), err
    assert "exported imaml to s.safetensors" in out
    assert main(["eval", "s.safetensors", "--tasks", "50", "--steps", "0", "10"]) == 0
    out = capsys.readouterr().out
    assert f"{PROXIMAL}, inner lr 0.01" in out
    mse = {int(m.group(1)): float(m.group(2)) for m in re.finditer(r"^\s+(\d+)\s+([\d.]+)\s+\+-", out, re.M)}
    assert set(mse) == {0, 10} and mse[10] < mse[0], out


@needs_small1
def test_small1_images_train_export_and_eval_with_the_reference_settings(tmp_path, capsys):
    args = ["train", "--task", "images", "--data", str(SMALL1), "--algorithm", "imaml", "--iterations", "3",
            "--meta-batch-size", "2", "--val-every", "0", "--out", "i.safetensors", "--threads", "1"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "training imaml on 5-way 1-shot images for 3 iterations" in err
    assert re.search(r"imaml cost: .* per meta-step at 16 inner steps", err), err
    assert set(load_file(tmp_path / "i.safetensors")) >= {"0.weight", "13.weight", "13.bias"}
    assert main(["eval", "i.safetensors", "--data", str(SMALL1), "--tasks", "10", "--steps", "16"]) == 0
    out = capsys.readouterr().out
    assert f"after 16 fine-tuning steps ({PROXIMAL}, inner lr 0.1, halved per task where the objective would " \
           "rise):" in out, out
    accuracy = float(re.search(r"5-way 1-shot: (\d+\.\d)% \+-", out).group(1))
    assert accuracy > 30.0, out  # chance: 20%
