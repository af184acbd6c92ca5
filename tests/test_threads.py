"""The app's torch threads per task family (maml_lab/lab/threads.py)."""

from __future__ import annotations

import threading

import pytest
import torch

from maml_lab.lab import threads


@pytest.fixture(autouse=True)
def _unfixed():
    threads.fix(None)
    yield
    threads.fix(None)


@pytest.mark.parametrize("cores, images, sinusoid", [(1, 1, 1), (2, 2, 1), (4, 4, 2), (8, 4, 4), (16, 4, 4)])
def test_image_tasks_take_every_core_small_op_families_one_per_two(cores, images, sinusoid):
    assert threads.training_threads("images", cores) == images
    assert threads.training_threads("sinusoid", cores) == sinusoid
    assert threads.training_threads("navigation", cores) == sinusoid
    assert threads.gui_threads(cores) == sinusoid


def test_unknown_family_gets_the_gui_default():
    assert threads.training_threads("no-such-family", 8) == threads.gui_threads(8)


def test_fixed_number_overrides_the_policy():
    threads.fix(3)
    assert threads.training_threads("images", 2) == 3
    assert threads.training_threads("sinusoid", 16) == 3
    assert threads.gui_threads(16) == 3
    with pytest.raises(ValueError, match="at least 1"):
        threads.fix(0)


def test_use_gui_threads_sets_the_calling_thread_only():
    """A view's job thread sets its own number; a thread already computing with another keeps it."""
    before = torch.get_num_threads()
    seen = {}
    ready, done = threading.Event(), threading.Event()

    def training():
        threads.set_for_this_thread(2)
        ready.set()
        done.wait(10)
        seen["training"] = torch.get_num_threads()

    def job():
        threads.use_gui_threads()
        seen["job"] = torch.get_num_threads()

    try:
        threads.fix(1)
        t = threading.Thread(target=training)
        t.start()
        assert ready.wait(10)
        j = threading.Thread(target=job)
        j.start()
        j.join(10)
        done.set()
        t.join(10)
        assert seen == {"job": 1, "training": 2}
    finally:
        torch.set_num_threads(before)


# -- the CLI follows the same policy ----------------------------------------------------------------------
@pytest.mark.parametrize("cores, images, small", [(1, 1, 1), (2, 2, 1), (4, 4, 2), (8, 4, 4)])
def test_cli_sets_each_family_s_threads_by_the_app_s_policy(monkeypatch, cores, images, small):
    from maml_lab.cli import build_parser, use_threads

    monkeypatch.setattr("os.cpu_count", lambda: cores)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    args = build_parser().parse_args(["train"])
    before = torch.get_num_threads()
    try:
        for task, expect in [("images", images), ("sinusoid", small), ("navigation", small)]:
            torch.set_num_threads(7)  # neither torch's default nor the policy's number
            assert use_threads(args, task) == expect and torch.get_num_threads() == expect, task
        torch.set_num_threads(7)
        assert use_threads(args, "images", processes=2) == max(1, min(4, cores // 2))  # torchrun ranks share
        monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's explicit number
        assert use_threads(args, "images") == 3 and torch.get_num_threads() == 3
        args = build_parser().parse_args(["train", "--threads", "5"])  # --threads overrides both
        assert use_threads(args, "sinusoid") == 5 and torch.get_num_threads() == 5
    finally:
        torch.set_num_threads(before)


def test_cli_trains_and_evaluates_navigation_on_the_policy_s_threads(monkeypatch, tmp_path, capsys):
    """End to end, without --threads: a navigation run on 2 cores trains on one thread (torch's default would take
    both), says so in its start line, and main() leaves the caller's number as it was."""
    from maml_lab.cli import main
    from maml_lab.core.training.trainer import Trainer

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    seen = []
    step = Trainer.step

    def counting_step(self, *a, **k):
        seen.append(torch.get_num_threads())
        return step(self, *a, **k)

    monkeypatch.setattr(Trainer, "step", counting_step)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        out = tmp_path / "nav.safetensors"
        assert main(["train", "--task", "navigation", "--iterations", "2", "--meta-batch-size", "2", "--shots", "2",
                     "--queries", "2", "--task-option", "horizon=5", "--val-every", "0", "--out", str(out),
                     "--run-dir", str(tmp_path / "run")]) == 0
        assert seen and set(seen) == {1}
        assert "(1 thread); run folder" in capsys.readouterr().err
        assert torch.get_num_threads() == 3
        assert main(["eval", str(out), "--tasks", "2", "--steps", "1"]) == 0
        assert "(1 thread)" in capsys.readouterr().out and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
