"""The image commands of the CLI, as documented: train on Omniglot or the built-in glyphs, eval held-out accuracy."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from maml_lab.cli import main

SMALL1 = Path(__file__).resolve().parents[2] / "shared" / "omniglot" / "images_background_small1.zip"
needs_small1 = pytest.mark.skipif(not SMALL1.is_file(), reason=f"Omniglot test data not found at {SMALL1}")
ACCURACY = re.compile(r"5-way (\d+)-shot: \d{1,3}\.\d% \+- \d{1,3}\.\d%")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _env(cache, monkeypatch):
    monkeypatch.setenv("MAML_LAB_CACHE", str(cache))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _env_for_subprocess(cache) -> dict:
    return dict(os.environ, MAML_LAB_CACHE=str(cache), OMP_NUM_THREADS="1")


@needs_small1
def test_train_and_eval_exactly_as_documented(tmp_path, cache):
    # the documented command, stopped with Ctrl+C after its first iteration (it would run the default 800)
    train = subprocess.Popen([sys.executable, "-m", "maml_lab", "train", "--task", "images", "--data", str(SMALL1),
                              "--ways", "5", "--shots", "1", "--algorithm", "maml", "--out", "init.safetensors"],
                             cwd=tmp_path, env=_env_for_subprocess(cache), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = train.stderr.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("[1/800]"):
            train.send_signal(signal.SIGINT)
            break
    out, err = train.communicate(timeout=120)
    err = "".join(lines) + err
    assert train.returncode == 130, err  # stopped by Ctrl+C: 128 + SIGINT, after its exports
    assert "loading images_background_small1.zip" in err and "95 training classes" in err
    assert "training maml on 5-way 1-shot images for 800 iterations" in err
    assert re.search(r"\[1/800\].*maml acc \d+\.\d%->\d+\.\d%", err), err
    assert "exported maml to init.safetensors" in out
    init = tmp_path / "init.safetensors"
    assert set(load_file(init)) >= {"0.weight", "13.weight", "13.bias"}

    r = subprocess.run([sys.executable, "-m", "maml_lab", "eval", "init.safetensors", "--data", str(SMALL1),
                        "--ways", "5", "--shots", "1", "5", "--steps", "3", "--tasks", "20"], cwd=tmp_path,
                       env=_env_for_subprocess(cache), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if ACCURACY.fullmatch(line)]
    assert [ACCURACY.fullmatch(line).group(1) for line in rows] == ["1", "5"], r.stdout
    assert "after 3 fine-tuning steps (SGD, inner lr 0.4):" in r.stdout
    assert "41 classes" in r.stdout and "never seen in training" in r.stdout


def test_builtin_glyphs_without_rotations_and_default_test_steps(tmp_path, capsys):
    out = tmp_path / "glyphs.pt"
    assert main(["train", "--task", "images", "--no-rotations", "--iterations", "2", "--meta-batch-size", "2",
                 "--image-size", "14", "--algorithm", "maml", "fomaml", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "840 training classes, 360 held out" in captured.err  # no "x4 with rotations"
    assert (tmp_path / "glyphs-maml.pt").is_file() and (tmp_path / "glyphs-fomaml.pt.json").is_file()
    assert main(["eval", str(tmp_path / "glyphs-fomaml.pt"), "--tasks", "4", "--queries", "2"]) == 0
    stdout = capsys.readouterr().out
    assert "after 3 fine-tuning steps (SGD, inner lr 0.4):" in stdout and "the built-in glyph set" in stdout
    assert [line for line in stdout.splitlines() if ACCURACY.fullmatch(line)][0].startswith("5-way 1-shot: ")


def test_eval_batch_norm_modes_side_by_side_with_their_cards(tmp_path, capsys):
    out = tmp_path / "glyphs.pt"
    assert main(["train", "--task", "images", "--iterations", "1", "--meta-batch-size", "2", "--image-size", "14",
                 "--algorithm", "maml", "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    json_path = tmp_path / "eval.json"
    assert main(["eval", str(out), "--tasks", "3", "--queries", "2", "--steps", "1", "--bn", "transductive", "support",
                 "running", "--json", str(json_path)]) == 0
    stdout = capsys.readouterr().out
    assert "  batch norm: transductive" in stdout and "  batch norm: support-set statistics" in stdout
    assert "  batch norm: running statistics" in stdout
    rows = [line for line in stdout.splitlines() if line.startswith("5-way 1-shot: ")]
    assert [r.rsplit("(", 1)[1] for r in rows] == ["batch norm transductive)", "batch norm support)",
                                                    "batch norm running)"]
    import json

    ev = json.loads(json_path.read_text())["evaluations"][0]
    assert set(ev["cards"]) == {"transductive", "support", "running"}
    assert [r["batch_norm"] for r in ev["results"]] == ["transductive", "support", "running"]
    assert "training classes" in ev["cards"]["running"]["notes"]["running_statistics"]


def test_eval_refuses_a_batch_norm_mode_for_a_model_without_batch_norm(tmp_path, capsys):
    out = tmp_path / "sine.pt"
    assert main(["train", "--task", "sinusoid", "--iterations", "1", "--meta-batch-size", "2", "--hidden", "4",
                 "--algorithm", "maml", "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--tasks", "2", "--bn", "support"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--bn: sine.pt is a mlp model without batch norm" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["train", "--task", "images", "--data", "missing.zip"], "image set not found"),
    (["train", "--task", "images", "--image-mode", "rgb"], "glyph set is grayscale"),
    (["train", "--task", "images", "--shots", "15", "--queries", "10", "--image-size", "14"],
     "15 shots + 10 queries need 25 images per class"),
    (["eval", "x.safetensors", "--data", "missing.zip"], "image set not found: missing.zip"),
    (["download"], "required"),
])
def test_bad_image_input_gets_one_line_and_exit_code_2(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len([line for line in err.strip().splitlines() if line.startswith("maml-lab: error")]) == 1


@needs_small1
def test_too_many_ways_for_the_set(capsys):
    assert main(["train", "--task", "images", "--data", str(SMALL1), "--ways", "70", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("maml-lab: error: 70-way tasks need 70 training and 70 held-out classes, but the set "
                           "has only 136 classes")
