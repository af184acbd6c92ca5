"""Hostile and damaged run folders through the CLI, in subprocesses (issue 22, classes 4, 5, 6 and 8): damaged
checkpoints, two writers, stale locks, leftover temporary files, a full disk, a folder made read-only, plug-ins that
exit or fail, and the exit status a scheduler reads. Every case: no traceback, one clear line, the documented code,
nothing lost."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from maml_lab.core.training.checkpoint import read_checkpoint
from maml_lab.core.training.runs import RunFolder

ROOT = Path(__file__).resolve().parents[1]
BASE = ["--task", "sinusoid", "--algorithm", "maml", "--meta-batch-size", "2", "--seed", "3", "--threads", "1"]
posix_only = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="signals and flock are POSIX only")


def _env(*paths: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([*(str(p) for p in paths), str(ROOT)])
    return env


def cli(*args, paths=(), timeout=180, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "maml_lab", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=_env(*paths), cwd=ROOT, **kwargs)


def popen(*args, prefix=(), **kwargs) -> subprocess.Popen:
    return subprocess.Popen([*prefix, sys.executable, "-m", "maml_lab", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT, **kwargs)


def train(run: Path, iterations: int, *extra, **kwargs) -> subprocess.CompletedProcess:
    out = cli("train", *BASE, "--iterations", iterations, "--checkpoint-every", "10", "--quiet", "--run-dir", run,
              *extra, **kwargs)
    assert out.returncode == 0, out.stderr
    return out


def no_traceback(*streams: str) -> None:
    for text in streams:
        assert "Traceback" not in text, text


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("maml-lab: error:")]


def folder_hashes(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def flip_parameter_byte(path: Path, name: str = "runs/maml/params/") -> None:
    """Overwrite one byte inside a parameter tensor's data, as a bad disk sector would: the file still parses."""
    data = bytearray(path.read_bytes())
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + size])
    key = next(k for k in header if k.startswith(name))
    start, end = header[key]["data_offsets"]
    data[8 + size + (start + end) // 2] ^= 0x5A
    path.write_bytes(bytes(data))


def wait_for(condition, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the process ended early: {proc.stderr.read()}")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def stop(proc: subprocess.Popen) -> tuple[str, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.communicate(timeout=60)


# -- class 4: runs overwritten or written twice ------------------------------------------------------------------
def test_a_run_whose_checkpoints_are_all_damaged_is_refused_and_left_byte_identical(tmp_path):
    run = tmp_path / "run"
    train(run, 30)
    folder = RunFolder(run)
    (newest, newest_path), (_, older_path) = reversed(folder.checkpoints())
    flip_parameter_byte(newest_path)
    older_path.write_bytes(older_path.read_bytes()[:5000])  # truncated, as by a full disk long ago
    before = folder_hashes(run)

    out = cli("train", "--resume", run, "--iterations", "60")  # a new length would rewrite config.toml
    assert out.returncode == 2, out.stderr
    no_traceback(out.stderr)
    (line,) = error_lines(out.stderr)
    assert "no usable checkpoint" in line and "nothing was changed" in line and "--restart" in line
    assert f"skipping damaged checkpoint {newest_path.name}" in out.stderr and "checksum" in out.stderr
    assert f"skipping damaged checkpoint {older_path.name}" in out.stderr
    assert folder_hashes(run) == before  # config.toml, metrics.csv, exports, run.json, run.lock: all as they were

    # another experiment's checkpoint: refused, and config.toml is not rewritten with the new length either
    other = tmp_path / "other"
    train(other, 10)
    before = folder_hashes(other)
    out = cli("train", "--resume", other, "--iterations", "60", "--hidden", "8")
    assert out.returncode == 2 and "different experiment" in out.stderr, out.stderr
    no_traceback(out.stderr)
    assert folder_hashes(other) == before

    # a crafted checkpoint whose header is not an object: passed over like a damaged one
    crafted = folder.checkpoint_path(40)
    save_file({"generator": torch.zeros(3)}, str(crafted), metadata={"maml_lab_checkpoint": "[1, 2]"})
    before = folder_hashes(run)
    out = cli("train", "--resume", run)
    assert out.returncode == 2 and f"skipping damaged checkpoint {crafted.name}" in out.stderr, out.stderr
    no_traceback(out.stderr)
    assert folder_hashes(run) == before

    # starting over is explicit
    out = cli("train", "--resume", run, "--restart", "--checkpoint-every", "10", "--threads", "1")
    assert out.returncode == 0, out.stderr
    assert "starting the run over" in out.stderr
    assert folder.status()["status"] == "finished" and folder.status()["iteration"] == 30
    assert folder.read_metrics()["maml"]["iteration"].tolist() == list(range(1, 31))
    assert [it for it, _ in folder.checkpoints()] == [20, 30]
    assert not list(folder.checkpoints_dir.glob("*.damaged"))  # the discarded run's files are gone
    read_checkpoint(folder.checkpoint_path(30))  # the new one verifies
    assert cli("train", "--restart", "--iterations", "3").returncode == 2  # only with --resume


def test_flipped_parameter_bytes_are_detected_and_the_newest_good_checkpoint_resumes(tmp_path):
    run = tmp_path / "run"
    train(run, 30)
    folder = RunFolder(run)
    damaged = folder.checkpoint_path(30)
    flip_parameter_byte(damaged)
    with pytest.raises(ValueError, match="checksum"):
        read_checkpoint(damaged)

    out = cli("train", "--resume", run, "--iterations", "40")
    assert out.returncode == 0, out.stderr
    no_traceback(out.stderr)
    assert f"skipping damaged checkpoint {damaged.name}" in out.stderr
    assert "at iteration 20 of 40" in out.stderr
    assert folder.status()["status"] == "finished" and folder.status()["iteration"] == 40
    assert folder.read_metrics()["maml"]["iteration"].tolist() == list(range(1, 41))  # rows 21-30 written once
    assert damaged.with_name(damaged.name + ".damaged").is_file()  # set aside, not pruned over the good ones


@posix_only
def test_a_second_writer_is_refused_naming_the_first(tmp_path):
    run = tmp_path / "run"
    train(run, 10)
    folder = RunFolder(run)
    first = popen("train", "--resume", run, "--iterations", "1000000", "--checkpoint-every", "0", "--quiet")
    try:
        wait_for(lambda: folder.status().get("resumed_at") == 10 and folder.status().get("status") == "running",
                 first)
        second = cli("train", "--resume", run, "--iterations", "1000000", "--quiet")
        assert second.returncode == 2, second.stderr
        no_traceback(second.stderr)
        (line,) = error_lines(second.stderr)
        assert f"pid {first.pid}" in line and socket.gethostname() in line and "in use" in line
        created = cli("train", *BASE, "--iterations", "5", "--run-dir", run, "--quiet")  # nor a new run into it
        assert created.returncode == 2 and "already holds a run" in created.stderr
    finally:
        _, err = stop(first)
    assert first.returncode == 128 + signal.SIGTERM, err
    rows = [tuple(line.split(",")[:2]) for line in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert len(rows) == len(set(rows)) and len(rows) == folder.status()["iteration"]  # every row once
    assert json.loads((run / "run.lock").read_text() or "{}") == {}  # released on the way out


@posix_only
def test_a_killed_writers_lock_is_taken_over_and_its_temporary_files_cleaned(tmp_path):
    run = tmp_path / "run"
    folder = RunFolder(run)
    proc = popen("train", *BASE, "--iterations", "1000000", "--checkpoint-every", "10", "--quiet", "--run-dir", run)
    wait_for(lambda: any(it >= 20 for it, _ in folder.checkpoints()), proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert json.loads((run / "run.lock").read_text())["pid"] == proc.pid  # the dead holder is still named
    # what a kill in the middle of atomic writes leaves (export._atomic_write's names)
    leftovers = [folder.checkpoints_dir / ".iteration-0000099990.safetensors.x1y2z3.tmp",
                 run / ".run.json.a1b2c3.tmp", folder.exports_dir / ".maml.safetensors.q9w8e7.tmp"]
    for p in leftovers:
        p.write_bytes(b"\0" * 1000)
    last = folder.checkpoints()[-1][0]

    out = cli("train", "--resume", run, "--iterations", last + 5, "--threads", "1")
    assert out.returncode == 0, out.stderr
    no_traceback(out.stderr)
    assert f"taking over a stale lock from pid {proc.pid}" in out.stderr
    assert not list(run.rglob("*.tmp"))
    assert folder.status()["status"] == "finished"


# -- class 8: exit status ----------------------------------------------------------------------------------------
@posix_only
def test_ctrl_c_exits_130_after_its_checkpoint_and_exports(tmp_path):
    run, out = tmp_path / "run", tmp_path / "init.safetensors"
    folder = RunFolder(run)
    proc = popen("train", *BASE, "--iterations", "1000000", "--checkpoint-every", "10", "--quiet", "--run-dir", run,
                 "--out", out)
    wait_for(lambda: bool(folder.checkpoints()), proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT, stderr
    no_traceback(stderr)
    status = folder.status()
    assert status["status"] == "stopped" and folder.checkpoints()[-1][0] == status["iteration"]
    assert out.is_file() and folder.export_path("maml").is_file()
    assert "SIGTERM 143" in cli("train", "--help").stdout  # the codes are documented where scripts look


# -- class 5: full disks and read-only folders -------------------------------------------------------------------
def _file_size_limit(limit: int):
    def apply() -> None:  # in the child: files may not grow past `limit` bytes (EFBIG instead of a signal)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="needs RLIMIT_FSIZE")
def test_a_full_disk_while_checkpointing_fails_in_one_line_and_keeps_the_last_checkpoint(tmp_path):
    # the checkpoint at 40 is a little larger than the one at 20 (more metrics rows): a limit between the two sizes
    # lets the first be written and makes the second fail as a full disk would
    probe = tmp_path / "probe"
    train(probe, 40, "--checkpoint-every", "20")
    sizes = {it: p.stat().st_size for it, p in RunFolder(probe).checkpoints()}
    assert sizes[40] > sizes[20]
    run = tmp_path / "run"
    train(run, 20, "--checkpoint-every", "20")
    folder = RunFolder(run)
    exports = {p.name: p.read_bytes() for p in folder.exports()}

    out = cli("train", "--resume", run, "--iterations", "40", "--checkpoint-every", "20",
              preexec_fn=_file_size_limit((sizes[20] + sizes[40]) // 2))
    assert out.returncode == 1, out.stderr
    no_traceback(out.stderr)
    (line,) = error_lines(out.stderr)
    assert "training failed" in line and "File too large" in line, line
    status = folder.status()
    assert status["status"] == "failed" and "File too large" in status["reason"]
    assert [it for it, _ in folder.checkpoints()] == [20]
    read_checkpoint(folder.checkpoint_path(20))  # the last good checkpoint loads, checksum and all
    assert {p.name: p.read_bytes() for p in folder.exports()} == exports
    assert not list(run.rglob("*.tmp"))


def _without_root_override() -> list[str]:
    """As root, permission bits bind only without the capabilities that override them."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permission bits cannot be enforced")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--"]


@posix_only
def test_a_run_folder_made_read_only_mid_run_fails_in_one_line(tmp_path):
    run = tmp_path / "run"
    folder = RunFolder(run)
    proc = popen("train", *BASE, "--iterations", "1000000", "--checkpoint-every", "20", "--run-dir", run,
                 prefix=_without_root_override())
    try:
        wait_for(lambda: any(it >= 20 for it, _ in folder.checkpoints()), proc)
        # every folder read-only, and TensorBoard's files too; run.json itself stays writable, so the failure
        # can still be recorded
        for p in sorted(run.rglob("*"), reverse=True):
            if p.is_dir() or p.parent.name == "tensorboard":
                p.chmod(0o555 if p.is_dir() else 0o444)
        run.chmod(0o555)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for p in [run, *run.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    assert proc.returncode == 1, stderr
    no_traceback(stderr)
    (line,) = error_lines(stderr)
    assert "Permission denied" in line
    status = folder.status()
    assert status["status"] == "failed" and "Permission denied" in status["reason"]
    read_checkpoint(folder.checkpoints()[-1][1])


# -- class 6: plug-ins -------------------------------------------------------------------------------------------
def _plugin(tmp_path: Path, module: str, source: str, entry_points: dict[str, str],
            group: str = "maml_lab.algorithms") -> Path:
    site = tmp_path / "site"
    (site / f"{module}.py").parent.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(source, encoding="utf-8")
    info = site / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(f"[{group}]\n" + "".join(
        f"{k} = {v}\n" for k, v in entry_points.items()), encoding="utf-8")
    return site


def test_a_plugin_that_exits_while_loading_is_skipped(tmp_path):
    site = _plugin(tmp_path, "exits_plugin", "import sys\nsys.exit(3)\n", {"quitter": "exits_plugin:Algo"})
    listed = cli("list", paths=[site])
    assert listed.returncode == 0, listed.stderr
    no_traceback(listed.stderr)
    assert any("'quitter'" in line and "SystemExit" in line for line in listed.stdout.splitlines()
               if line.startswith("skipped: "))
    out = cli("train", *BASE, "--iterations", "3", "--quiet", "--run-dir", tmp_path / "run", paths=[site])
    assert out.returncode == 0, out.stderr
    no_traceback(out.stderr)
    assert out.stderr.count("skipped algorithm plug-in 'quitter'") == 1


FAILING = '''
import sys

from maml_lab.core.algorithms.maml import FOMAML


class Boom(FOMAML):
    name = "boom"
    description = "fails at its first step"

    def meta_step(self, params, batch, iteration=0):
        raise RuntimeError("the plug-in's step blew up")


class Quits(FOMAML):
    name = "quits"
    description = "calls sys.exit in its step"

    def meta_step(self, params, batch, iteration=0):
        sys.exit(4)
'''


def test_a_plugin_whose_step_fails_ends_the_run_in_one_line_naming_it(tmp_path):
    site = _plugin(tmp_path, "failing_plugin", FAILING,
                   {"boom": "failing_plugin:Boom", "quits": "failing_plugin:Quits"})
    for name, cause in (("boom", "the plug-in's step blew up"), ("quits", "SystemExit")):
        run = tmp_path / name
        out = cli("train", "--task", "sinusoid", "--algorithm", name, "--iterations", "5", "--meta-batch-size", "2",
                  "--threads", "1", "--quiet", "--run-dir", run, paths=[site])
        assert out.returncode == 1, out.stderr
        no_traceback(out.stderr)
        (line,) = error_lines(out.stderr)
        assert f"plug-in algorithm '{name}' (from failing_plugin)" in line and cause in line, line
        assert out.stderr.strip().count("\n") == 0, out.stderr
        status = RunFolder(run).status()
        assert status["status"] == "failed" and f"'{name}'" in status["reason"]


HOOKS = '''
import sys

from maml_lab_example.line import LineTasks


class RaisingFamily(LineTasks):
    name = "raising_line"

    @classmethod
    def loading_label(cls, config):
        raise RuntimeError("its loading label is broken")


class ExitingFamily(LineTasks):
    name = "exiting_line"

    @classmethod
    def loading_label(cls, config):
        sys.exit(5)
'''


def test_a_plugin_hook_that_fails_outside_training_is_one_line_naming_it(tmp_path):
    site = _plugin(tmp_path, "hooks_plugin", HOOKS, {"raising_line": "hooks_plugin:RaisingFamily",
                                                     "exiting_line": "hooks_plugin:ExitingFamily"},
                   group="maml_lab.tasks")
    example = ROOT / "examples" / "plugin" / "src"
    for name, cause in (("raising_line", "its loading label is broken"), ("exiting_line", "SystemExit")):
        out = cli("train", "--task", name, "--iterations", "2", "--threads", "1", "--quiet",
                  "--run-dir", tmp_path / name, paths=[site, example])
        assert out.returncode == 1, out.stderr
        no_traceback(out.stderr)
        (line,) = error_lines(out.stderr)
        assert f"plug-in task family '{name}' (from hooks_plugin) failed" in line and cause in line, line


# -- the lock in one process (a notebook) ------------------------------------------------------------------------
def test_a_session_holds_its_folder_while_it_trains_and_lets_go_when_its_run_ends(tmp_path):
    from maml_lab.core.training.config import ExperimentConfig
    from maml_lab.core.training.run_lock import RunLockedError
    from maml_lab.lab.session import TrainingSession

    run = tmp_path / "run"
    first = TrainingSession.create(ExperimentConfig(iterations=6, meta_batch_size=2), run_dir=run, checkpoint_every=3)
    assert json.loads((run / "run.lock").read_text())["pid"] == os.getpid()
    with pytest.raises(RunLockedError, match="another training session of this process"):
        TrainingSession.resume(run)
    assert first.run() == "finished"
    assert (run / "run.lock").read_text() == ""  # a clean end leaves no holder
    config = RunFolder(run).config()
    config.iterations = 9
    second = TrainingSession.resume(run, config)
    assert second.resumed_at == 6
    with pytest.raises(RunLockedError):
        first.run()  # the first session may not write the folder while the second does
    assert second.run() == "finished" and RunFolder(run).status()["iteration"] == 9
