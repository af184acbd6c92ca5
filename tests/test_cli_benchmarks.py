"""The benchmarks from the files users have, through the CLI as documented in docs/image_tasks.md ("Benchmarks from
the files you have"): learn2learn's pickles, torchmeta's HDF5, several sets trained as one with a held-out set, and
the MAML paper's Omniglot split. Each trains 2 iterations on one thread in a child process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.benchmark_files import (
    RunsCode,
    full_omniglot_pair,
    miniimagenet_dict,
    omniglot_zip,
    write_hdf5,
    write_pickle,
)

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--iterations", "2", "--threads", "1", "--meta-batch-size", "2", "--shots", "1", "--queries", "1",
         "--val-every", "1", "--quiet"]
ACCURACY = re.compile(r"(\d+)-way (\d+)-shot: \d{1,3}\.\d% \+- \d{1,3}\.\d%")


def _cli(cwd: Path, *args) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), MAML_LAB_CACHE=str(cwd / "cache"), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "maml_lab", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _one_line_failure(r: subprocess.CompletedProcess, *wanted: str) -> None:
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("maml-lab: error:")]
    assert len(errors) == 1, r.stderr
    for text in wanted:
        assert text in errors[0], r.stderr


def _task_metadata(path: Path) -> dict:
    from maml_lab.core.export import load_initialization

    return load_initialization(path)[1]["task"]


def test_learn2learn_pickles_train_evaluate_and_resume(tmp_path):
    write_pickle(tmp_path / "mini-imagenet-cache-train.pkl", miniimagenet_dict(classes=3, per_class=4, seed=1))
    write_pickle(tmp_path / "mini-imagenet-cache-test.pkl", miniimagenet_dict(classes=3, per_class=4, seed=2,
                                                                              prefix="n9"))
    r = _cli(tmp_path, "train", "--task", "images", "--data", "mini-imagenet-cache-train.pkl", "--eval-data",
             "mini-imagenet-cache-test.pkl", "--image-size", "84", "--image-mode", "rgb", "--ways", "3", *QUICK,
             "--run-dir", "run", "--out", "mini.safetensors")
    assert r.returncode == 0, r.stderr
    task = _task_metadata(tmp_path / "mini.safetensors")
    assert task["data"] == str(tmp_path / "mini-imagenet-cache-train.pkl")
    assert task["eval_data"] == str(tmp_path / "mini-imagenet-cache-test.pkl")
    assert task["input_shape"] == [3, 84, 84] and task["split"]["name"] == "held-out set"
    from maml_lab.core.export import load_initialization

    model = load_initialization(tmp_path / "mini.safetensors")[2]
    assert (model.filters, model.downsample) == (32, "maxpool")  # the papers' conv-4 for 84x84

    r = _cli(tmp_path, "eval", "mini.safetensors", "--tasks", "4", "--queries", "3", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert "3 classes of " + str(tmp_path / "mini-imagenet-cache-test.pkl") in r.stdout
    assert "(a separate held-out set)" in r.stdout
    assert [m.groups() for m in map(ACCURACY.fullmatch, r.stdout.splitlines()) if m] == [("3", "1")], r.stdout

    r = _cli(tmp_path, "train", "--resume", "run", "--iterations", "3", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stderr and "at iteration 2 of 3" in r.stderr


def test_a_pickle_that_would_run_code_fails_in_one_line_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    write_pickle(tmp_path / "evil.pkl", {"image_data": RunsCode(marker), "class_dict": {}})
    r = _cli(tmp_path, "train", "--task", "images", "--data", "evil.pkl", "--image-size", "84", "--image-mode",
             "rgb", "--ways", "2", *QUICK)
    _one_line_failure(r, "evil.pkl: refused: names posix.system, which is not a numpy array or a plain container")
    assert not marker.exists()
    r = _cli(tmp_path, "train", "--task", "images", "--data", "evil.pkl", "--split", "paper", "--eval-data",
             "evil.pkl", *QUICK)
    _one_line_failure(r, "the paper split makes its own held-out classes; --eval-data is for the lab split")
    write_pickle(tmp_path / "fine.pkl", miniimagenet_dict(classes=2, per_class=2, size=8))
    r = _cli(tmp_path, "train", "--task", "images", "--data", "fine.pkl", "--eval-data", "missing.pkl",
             "--image-size", "8", "--image-mode", "rgb", "--ways", "2", *QUICK)
    _one_line_failure(r, "image set not found: ", "missing.pkl")


def test_torchmeta_hdf5_trains_with_its_test_split_held_out(tmp_path):
    pytest.importorskip("h5py")
    write_hdf5(tmp_path, "train", classes=3, per_class=4, seed=1)
    write_hdf5(tmp_path, "test", classes=3, per_class=4, seed=2)
    r = _cli(tmp_path, "train", "--task", "images", "--data", "train_data.hdf5", "--eval-data", "test_data.hdf5",
             "--image-size", "84", "--image-mode", "rgb", "--ways", "3", *QUICK, "--out", "h5.safetensors")
    assert r.returncode == 0, r.stderr
    task = _task_metadata(tmp_path / "h5.safetensors")
    assert task["image_set"]["num_classes"] == 3 * 4 and task["split"]["heldout_classes"] == 3


def test_two_zips_trained_as_one_from_a_toml_config_with_a_held_out_set(tmp_path):
    for name, n in (("a", 4), ("b", 4), ("c", 5)):
        omniglot_zip(tmp_path / f"{name}.zip", name, {"Alpha": n, "Beta": 1}, per_class=3)
    (tmp_path / "exp.toml").write_text('task = "images"\nways = 3\ndata = ["a.zip", "b.zip"]\n'
                                       'eval_data = "c.zip"\n')
    r = _cli(tmp_path, "train", "--config", "exp.toml", *QUICK, "--run-dir", "run", "--out", "ab.safetensors")
    assert r.returncode == 0, r.stderr
    task = _task_metadata(tmp_path / "ab.safetensors")
    assert task["image_set"]["num_classes"] == 4 * 10  # a's and b's 5 characters each, x4 with rotations
    assert task["split"]["train_classes"] == 10 and task["split"]["heldout_classes"] == 6
    config = (tmp_path / "run" / "config.toml").read_text()
    assert 'data = [\n    "a.zip",\n    "b.zip",\n]' in config and 'eval_data = "c.zip"' in config

    # the same from flags, and eval on another held-out set
    r = _cli(tmp_path, "train", "--task", "images", "--data", "a.zip", "--data", "b.zip", "--eval-data", "c.zip",
             "--ways", "3", *QUICK, "--out", "flags.safetensors")
    assert r.returncode == 0, r.stderr
    flags = _task_metadata(tmp_path / "flags.safetensors")
    assert flags["data"] == [str(tmp_path / "a.zip"), str(tmp_path / "b.zip")]
    r = _cli(tmp_path, "eval", "flags.safetensors", "--data", "a.zip", "--tasks", "4", "--queries", "2",
             "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert "5 classes of a.zip never seen in training (a separate held-out set)" in r.stdout
    r = _cli(tmp_path, "eval", "flags.safetensors", "--data", "missing.zip")
    _one_line_failure(r, "image set not found: missing.zip")


def test_the_paper_split_on_a_full_omniglot_pair(tmp_path):
    background, evaluation = full_omniglot_pair(tmp_path)
    r = _cli(tmp_path, "train", "--task", "images", "--data", background.name, "--data", evaluation.name,
             "--split", "paper", "--ways", "5", *QUICK[:-1], "--out", "paper.safetensors")
    assert r.returncode == 0, r.stderr
    assert ("images_background.zip + images_evaluation.zip: 1100 training classes (x4 with rotations: 4400), 100 "
            "for validation, 423 held out for eval (the MAML paper's split)") in r.stderr
    task = _task_metadata(tmp_path / "paper.safetensors")
    assert task["split"]["name"] == "paper" and task["split"]["heldout_classes"] == 423
    r = _cli(tmp_path, "eval", "paper.safetensors", "--tasks", "4", "--queries", "1", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert "held-out: 423 classes of" in r.stdout and "(the MAML paper's split)" in r.stdout
    json.dumps(task)  # the metadata stays plain data
    r = _cli(tmp_path, "train", "--task", "images", "--data", background.name, "--split", "paper", *QUICK)
    _one_line_failure(r, "the paper split needs the full Omniglot (1,623 characters")
