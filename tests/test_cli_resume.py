"""`train --run-dir/--resume`: a real training process killed with SIGKILL resumes to the same parameters."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from maml_lab.cli import main
from maml_lab.core.training.runs import RunFolder

ARGS = ["train", "--task", "sinusoid", "--algorithm", "maml", "reptile", "--iterations", "1500",
        "--meta-batch-size", "10", "--checkpoint-every", "100", "--seed", "11", "--threads", "1", "--quiet"]


def cli(*args):
    return [sys.executable, "-m", "maml_lab", *args]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="SIGKILL is POSIX only")
def test_a_run_killed_mid_way_resumes_to_exactly_the_uninterrupted_result(tmp_path):
    whole = subprocess.run(cli(*ARGS, "--run-dir", str(tmp_path / "whole"), "--out", str(tmp_path / "whole.pt")),
                           capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr

    killed = tmp_path / "killed"
    proc = subprocess.Popen(cli(*ARGS, "--run-dir", str(killed), "--out", str(tmp_path / "killed.safetensors")),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    folder = RunFolder(killed)
    deadline = time.monotonic() + 120
    while not any(it >= 300 for it, _ in folder.checkpoints()):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()
    status = folder.status()
    assert status["status"] == "running" and status["iteration"] < 1500  # it really died mid-run
    assert not (tmp_path / "killed-maml.safetensors").exists()

    resumed = subprocess.run(cli("train", "--resume", str(killed), "--threads", "1"), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr and "at iteration" in resumed.stderr
    for name in ("maml", "reptile"):
        a = torch.load(tmp_path / f"whole-{name}.pt", weights_only=True)
        b = load_file(tmp_path / f"killed-{name}.safetensors")  # the --out of the first command, reused
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
        c = load_file(killed / "exports" / f"{name}.safetensors")
        assert all(torch.equal(a[k], c[k]) for k in a)
    assert (tmp_path / "whole" / "metrics.csv").read_text() == (killed / "metrics.csv").read_text()
    assert folder.status()["status"] == "finished"


def test_resume_refusals_are_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--iterations", "4", "--meta-batch-size", "2", "--run-dir", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--hidden", "8", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "different experiment" in err and "hidden: [40, 40] in the checkpoint" in err
    assert main(["train", "--resume", str(tmp_path / "nowhere"), "--quiet"]) == 2
    assert "run folder not found" in capsys.readouterr().err
    assert main(["train", "--iterations", "4", "--run-dir", str(run), "--quiet"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--run-dir", str(tmp_path / "x"), "--quiet"]) == 2
    assert "drop --config, --preset and --run-dir" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--preset", "paper", "--quiet"]) == 2  # a preset is a new experiment
    assert "drop --config, --preset and --run-dir" in capsys.readouterr().err
    # a longer run continues from the end of the first
    assert main(["train", "--resume", str(run), "--iterations", "6", "--quiet"]) == 0
    assert RunFolder(run).status()["iteration"] == 6


def test_every_cli_run_leaves_a_run_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("MAML_LAB_RUNS", str(tmp_path / "runs"))
    assert main(["train", "--iterations", "3", "--meta-batch-size", "2", "--quiet"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.endswith("-sinusoid-maml")
    assert {p.name for p in run.iterdir()} >= {"run.json", "config.toml", "metrics.csv", "checkpoints", "exports"}


@pytest.mark.skipif(not hasattr(signal, "SIGTERM"), reason="SIGTERM is POSIX only")
def test_sigterm_stops_like_ctrl_c_checkpoints_exports_and_resumes(tmp_path):
    """A scheduler's preemption (SIGTERM) loses nothing: the iteration finishes, a checkpoint and the exports are
    written, run.json says "stopped", the exit status is 143 (128 + SIGTERM), and --resume finishes the run."""
    run, out = tmp_path / "run", tmp_path / "init.safetensors"
    args = [*ARGS[:ARGS.index("--iterations") + 1], "100000", *ARGS[ARGS.index("--iterations") + 2:]]
    proc = subprocess.Popen(cli(*args, "--run-dir", str(run), "--out", str(out)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    folder = RunFolder(run)
    deadline = time.monotonic() + 120
    while not any(it >= 200 for it, _ in folder.checkpoints()):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM  # a scheduler tells a stop from a finished run
    status = folder.status()
    assert status["status"] == "stopped" and 200 <= status["iteration"] < 100000
    last, _ = folder.checkpoints()[-1]
    assert last == status["iteration"]  # the stop itself was checkpointed
    assert "exported maml" in stdout and (tmp_path / "init-maml.safetensors").exists()
    resumed = subprocess.run(cli("train", "--resume", str(run), "--iterations", str(status["iteration"] + 50),
                                 "--threads", "1", "--quiet"), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert folder.status()["status"] == "finished" and folder.status()["iteration"] == status["iteration"] + 50
