"""StaleRecompute: the one lifecycle of the views that recompute in the background (landscape, adaptation)."""

from PySide6.QtWidgets import QWidget

from maml_lab.ui.background import StaleRecompute


def test_recomputes_once_visible_and_idle_never_while_training(qtbot):
    view = QWidget()
    qtbot.addWidget(view)
    calls = []

    def compute() -> bool:  # as the views do: starting a job clears the stale flag
        recompute.stale = False
        calls.append(1)
        return True

    recompute = StaleRecompute(view, compute, delay_ms=10)
    recompute.mark_stale()
    qtbot.wait(60)
    assert calls == []  # hidden: nothing to show it on
    recompute.set_training(True)
    view.show()
    qtbot.wait(60)
    assert calls == []  # training has the CPU
    recompute.set_training(False)
    qtbot.waitUntil(lambda: calls == [1], timeout=2000)
    recompute.mark_stale()
    recompute.mark_stale()  # changes in a burst: one computation
    qtbot.waitUntil(lambda: len(calls) == 2, timeout=2000)
    qtbot.wait(60)
    assert len(calls) == 2
    recompute.mark_stale()
    recompute.clear()  # e.g. the run was reset before the timer fired
    qtbot.wait(60)
    assert len(calls) == 2 and not recompute.stale
    view.hide()
    recompute.stale = True
    view.show()  # showing a stale view catches up at once
    qtbot.waitUntil(lambda: len(calls) == 3, timeout=2000)
