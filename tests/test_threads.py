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
