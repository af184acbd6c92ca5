"""Training off the GUI thread: start -> progress -> stop, pause / resume, closing while training, NaN and
exceptions in the worker, the experiment form refusing invalid values."""

import time

from maml_lab.core.training.trainer import Trainer
from maml_lab.ui.worker import TrainingController


def test_controller_start_progress_finished(qtbot, small_config):
    controller = TrainingController(progress_hz=1000, snapshot_interval=0.0)
    progress, snapshots = [], []
    controller.progress.connect(progress.append)
    controller.snapshot.connect(snapshots.append)
    try:
        with qtbot.waitSignal(controller.finished, timeout=20000) as blocker:
            controller.start(small_config(iterations=30))
        assert blocker.args[0].state == "finished"
        assert blocker.args[0].iteration == 30
        qtbot.waitUntil(lambda: bool(progress) and progress[-1].state == "finished", timeout=2000)
        iterations = [i for p in progress for i in p.chunk["train"].get("maml", {}).get("iteration", [])]
        assert iterations == list(range(1, 31))  # every iteration's metrics arrive, batched, in order
        assert snapshots and set(snapshots[-1].params) == {"maml", "pretrained"}
        assert snapshots[-1].iteration == 30
        assert snapshots[-1].metadata["maml"]["algorithm"] == "maml"
    finally:
        assert controller.shutdown(2000)


def test_start_progress_stop(window, qtbot, small_config):
    window.panel.set_config(small_config(iterations=1_000_000))
    assert window.act_start.isEnabled()
    window.act_start.trigger()
    assert window.state == "starting"
    qtbot.waitUntil(lambda: window.last_progress is not None and window.last_progress.iteration > 5,
                    timeout=20000)
    assert window.state == "running"
    assert window.progress.value() > 0
    qtbot.waitUntil(lambda: "tasks/s" in window.progress_label.text() and "ETA" in window.progress_label.text(),
                    timeout=5000)
    assert not window.act_start.isEnabled() and window.act_stop.isEnabled()
    assert not window.panel.form.isEnabled()  # the form is locked while its run trains
    with qtbot.waitSignal(window.controller.finished, timeout=5000):
        window.act_stop.trigger()
    assert window.state == "stopped"
    assert window.latest_snapshot is not None and window.act_export.isEnabled()
    assert window.act_start.isEnabled() and window.panel.form.isEnabled()
    assert set(window.history.algorithms) == {"maml", "pretrained"}
    assert "Stopped" in window.state_label.text()


def test_space_toggles_start_pause_resume(window, qtbot, small_config):
    window.panel.set_config(small_config(iterations=1_000_000))
    window.act_toggle.trigger()
    qtbot.waitUntil(lambda: window.state == "running", timeout=20000)
    window.act_toggle.trigger()
    assert window.state == "paused" and window.act_pause.text() == "Resume"
    qtbot.waitUntil(lambda: window.last_progress is not None and window.last_progress.state == "paused",
                    timeout=5000)
    paused_at = window.last_progress.iteration
    qtbot.wait(300)
    assert window.last_progress.iteration == paused_at  # paused within one meta-iteration: no progress
    window.act_toggle.trigger()
    assert window.state == "running"
    qtbot.waitUntil(lambda: window.last_progress.iteration > paused_at, timeout=5000)
    with qtbot.waitSignal(window.controller.finished, timeout=5000):
        window.stop()


def test_stop_while_paused(window, qtbot, small_config):
    window.panel.set_config(small_config(iterations=1_000_000))
    window.start()
    qtbot.waitUntil(lambda: window.state == "running", timeout=20000)
    window.pause_or_resume()
    with qtbot.waitSignal(window.controller.finished, timeout=5000):
        window.stop()
    assert window.state == "stopped"


def test_run_to_the_end_then_reset(window, qtbot, small_config):
    window.panel.set_config(small_config(iterations=25))
    with qtbot.waitSignal(window.controller.finished, timeout=20000):
        window.start()
    assert window.state == "finished" and window.progress.value() == 25
    qtbot.waitUntil(lambda: "maml" in window.views["playground"].inits, timeout=2000)
    window.act_reset.trigger()
    assert window.state == "idle" and window.latest_snapshot is None
    assert "maml" not in window.views["playground"].inits and not window.history.algorithms


def test_closing_while_training_stops_the_worker(qtbot, settings, small_config):
    from maml_lab.ui.main_window import MainWindow

    w = MainWindow(settings=settings, persist=False)
    qtbot.addWidget(w)
    w.show()
    w.panel.set_config(small_config(iterations=1_000_000))
    w.start()
    qtbot.waitUntil(lambda: w.last_progress is not None and w.last_progress.iteration > 3, timeout=20000)
    thread = w.controller.thread
    t0 = time.monotonic()
    w.close()
    assert time.monotonic() - t0 < 2.0
    assert not thread.isRunning()


def test_nan_inner_lr_ends_in_a_message_not_a_crash(window, qtbot, small_config):
    window.panel.set_config(small_config(iterations=1000, algorithms=("maml",), inner_lr=1e8))
    with qtbot.waitSignal(window.controller.finished, timeout=20000):
        window.start()
    assert window.state == "diverged"
    assert window.message_bar.isVisible() and window.message_bar.kind == "error"
    assert "non-finite" in window.message_bar.text and "parameters were kept" in window.message_bar.text
    assert "Export them" in window.message_bar.text
    # the last good parameters stay usable
    params = window.latest_snapshot.params["maml"]
    assert all(bool(v.isfinite().all()) for v in params.values())
    assert window.act_export.isEnabled() and window.act_start.isEnabled()


def test_an_exception_in_the_worker_ends_in_a_message(window, qtbot, small_config, monkeypatch):
    original = Trainer.step

    def flaky(self):
        if self.iteration >= 3:
            raise RuntimeError("simulated failure in the engine")
        return original(self)

    monkeypatch.setattr(Trainer, "step", flaky)
    window.panel.set_config(small_config(iterations=100))
    with qtbot.waitSignal(window.controller.finished, timeout=20000):
        window.start()
    assert window.state == "failed"
    assert "simulated failure" in window.message_bar.text
    assert window.latest_snapshot is not None and window.latest_snapshot.iteration == 3
    # and the app can train again afterwards
    monkeypatch.setattr(Trainer, "step", original)
    with qtbot.waitSignal(window.controller.finished, timeout=20000):
        window.start()
    assert window.state == "finished" and not window.message_bar.isVisible()


def test_training_plots_receive_curves(window, qtbot, small_config, monkeypatch):
    from maml_lab.ui import worker

    # the app skips validations that would take more than its time budget: on a loaded machine that depends on the
    # clock, so this test, which counts the validation points, runs without the budget
    monkeypatch.setattr(worker, "VAL_BUDGET", None)
    window.tabs.setCurrentWidget(window.views["training"])
    window.panel.set_config(small_config(iterations=40))
    with qtbot.waitSignal(window.controller.finished, timeout=20000):
        window.start()
    window.views["training"].redraw()
    plots = window.views["training"]
    qtbot.waitUntil(lambda: plots.curves[("maml", "post_loss", "smooth")].xData is not None, timeout=3000)
    item = window.views["training"].curves[("maml", "post_loss", "smooth")]
    assert len(item.xData) > 0 and item.xData[-1] == 40
    assert len(plots.curves[("pretrained", "val_post_loss", "raw")].xData) == 4  # every 10 iterations
    window.views["training"].set_log(False)
    assert not window.act_log.isChecked()
    assert "MAML" in plots.readout_text(20) and "iteration 20" in plots.readout_text(20)


def test_form_refuses_invalid_values_with_a_reason(window):
    panel = window.panel
    column = panel.columns["maml"]
    column.inner_lr.setText("abc")
    assert not panel.valid and "must be a number" in panel.message and "MAML inner lr" in panel.message
    assert panel.error.isVisible() and column.inner_lr.property("invalid")
    assert not window.act_start.isEnabled()
    assert not window.start()
    column.inner_lr.setText("-0.5")
    assert "positive" in panel.message
    column.inner_lr.setText("0.02")
    assert panel.valid and not panel.error.isVisible() and window.act_start.isEnabled()
    panel.hidden.setText("40, x")
    assert "Hidden widths" in panel.message
    panel.hidden.setText("32 32")
    assert panel.valid and panel.config().hidden == [32, 32]
    for col in panel.columns.values():
        col.enabled.setChecked(False)
    assert "at least one algorithm" in panel.message
    panel.columns["reptile"].enabled.setChecked(True)
    panel.columns["reptile"].meta_lr.setText("0.5")
    config = panel.config()
    assert [a.name for a in config.algorithms] == ["reptile"]
    assert config.algorithms[0].outer_lr_start == 0.5 and config.algorithms[0].inner_steps == 5


def test_keyboard_space_delete_and_undo(window, qtbot, small_config):
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest

    from .helpers import click

    window.activateWindow()
    qtbot.waitUntil(lambda: window.isActiveWindow(), timeout=3000)
    canvas = window.views["playground"].canvas
    click(canvas, 1.0, 1.0)
    click(canvas, -2.0, 2.0)
    assert canvas.hasFocus()
    QTest.keyClick(canvas, Qt.Key.Key_Delete)
    assert len(window.views["playground"].state.points) == 1
    QTest.keyClick(canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert len(window.views["playground"].state.points) == 2
    window.panel.set_config(small_config(iterations=1_000_000))
    QTest.keyClick(canvas, Qt.Key.Key_Space)
    qtbot.waitUntil(lambda: window.state == "running", timeout=20000)
    QTest.keyClick(canvas, Qt.Key.Key_Space)
    assert window.state == "paused"
    with qtbot.waitSignal(window.controller.finished, timeout=5000):
        window.stop()


def test_each_run_sets_the_training_threads_of_its_task_family(qtbot, small_config, monkeypatch, tmp_path):
    """Image tasks train on every core (up to 4), small-op families on one per two (lab/threads.py); the worker
    thread goes back to the app's default after the run."""
    import threading

    import torch

    from maml_lab.core.algorithms.config import AlgorithmConfig
    from maml_lab.core.training.config import ExperimentConfig
    from maml_lab.lab import threads

    monkeypatch.setenv("MAML_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 4)
    seen = {}
    original = Trainer.step

    def step(self, *args, **kwargs):
        seen.setdefault(self.config.task, (torch.get_num_threads(), threading.current_thread()))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "step", step)
    images = ExperimentConfig(task="images", image_size=14, iterations=2, meta_batch_size=2, val_every=0,
                              algorithms=[AlgorithmConfig.defaults("maml", task="images")])
    controller = TrainingController(progress_hz=1000, snapshot_interval=0.0)
    try:
        for config in (small_config(iterations=2), images):
            with qtbot.waitSignal(controller.finished, timeout=60000) as blocker:
                controller.start(config)
            assert blocker.args[0].state == "finished", blocker.args[0].reason
        assert seen["images"][0] == 4 and seen["sinusoid"][0] == 2
        assert seen["images"][1] is not threading.current_thread()  # measured in the worker thread
        qtbot.waitUntil(lambda: not controller.worker.busy, timeout=5000)
        fresh = []  # a thread started after the image run takes the app's default, not that run's 4
        t = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
        t.start()
        t.join(10)
        assert fresh == [2]
    finally:
        assert controller.shutdown(2000)
