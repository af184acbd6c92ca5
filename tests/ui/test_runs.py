"""Run folders in the app: every run leaves one; File ▸ Past runs lists and opens them (curves, parameter path,
exports); File ▸ Resume run continues one from its checkpoint; damaged folders, refused checkpoints, an
unwritable runs root and a run training meanwhile are all handled without a crash."""

import shutil

import numpy as np
import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import QFileDialog, QMessageBox

from maml_lab.core.training.runs import RunFolder, list_runs
from maml_lab.core.training.trainer import Trainer


class Dialogs:
    """Stands in for the modal dialogs: folders to pick queued, warnings recorded."""

    def __init__(self, monkeypatch):
        self.folders, self.warnings, self.opened_urls = [], [], []
        monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(self.folders.pop(0)))
        monkeypatch.setattr(QMessageBox, "warning", lambda parent, title, text, *a: self.warnings.append(
            (title, text)))
        monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: self.opened_urls.append(url) or True)


@pytest.fixture
def dialogs(monkeypatch):
    return Dialogs(monkeypatch)


@pytest.fixture
def root(tmp_path, monkeypatch):
    path = tmp_path / "runs"
    monkeypatch.setenv("MAML_LAB_RUNS", str(path))
    return path


def train(window, qtbot, config):
    window.panel.set_config(config)
    with qtbot.waitSignal(window.controller.finished, timeout=30000):
        assert window.start()
    return window.state


def stop_at(monkeypatch, iteration):
    """Trainer.step asks the trainer to stop once it reaches `iteration` (a deterministic 'Stop')."""
    original = Trainer.step

    def step(self):
        out = original(self)
        if self.iteration == iteration:
            self.stop()
        return out

    monkeypatch.setattr(Trainer, "step", step)
    return original


def maml_iterations(window):
    x, _ = window.history.series("maml", "post_loss")
    return x.astype(int).tolist()


def test_an_app_run_leaves_a_complete_run_folder(window, qtbot, small_config, root):
    assert window.runs_root() == root
    assert train(window, qtbot, small_config(iterations=20)) == "finished"
    runs = list_runs(root)
    assert len(runs) == 1
    folder = runs[0]
    assert window.run_folder == folder.path
    assert window.folder_label.isVisible() and folder.name in window.folder_label.text()
    config = folder.config()
    assert config.iterations == 20 and [a.name for a in config.algorithms] == ["maml", "pretrained"]
    status = folder.status()
    assert status["status"] == "finished" and status["iteration"] == 20 and status["source"] == "app"
    metrics = folder.read_metrics()
    assert metrics["maml"]["iteration"].tolist() == list(range(1, 21))
    assert np.isfinite(metrics["pretrained"]["post_loss"]).all()
    assert [it for it, _ in folder.checkpoints()] == [20]
    assert {p.name for p in folder.exports()} == {"maml.safetensors", "pretrained.safetensors"}


def test_past_runs_lists_a_run_and_open_shows_its_curves_path_and_exports(window, qtbot, small_config, root,
                                                                           dialogs):
    train(window, qtbot, small_config(iterations=20))
    folder = list_runs(root)[0]
    window.reset()
    assert not window.history.algorithms and window.views["paths"].run is None
    window.act_past_runs.trigger()
    dialog = window.past_runs_dialog
    assert dialog.isVisible() and dialog.model.rowCount() == 1
    cells = [dialog.model.text(0, c) for c in range(dialog.model.columnCount())]
    assert cells[0] == folder.name and cells[1] == "Sinusoid" and cells[2] == "MAML, Pretrained"
    assert cells[3] == "finished" and cells[4] == "20 / 20"
    assert "MAML" in cells[5] and "Pretrained" in cells[5]
    assert dialog.open_button.isEnabled() and not dialog.resume_button.isEnabled()  # finished: nothing to resume
    assert dialog.show_selected() and dialogs.opened_urls[0].toLocalFile() == str(folder.path)

    window.tabs.setCurrentWidget(window.views["paths"])
    dialog.open_button.click()
    assert window.opened_run == folder.path and not dialog.isVisible()
    assert maml_iterations(window) == list(range(1, 21))
    assert len(window.history.series("pretrained", "val_post_loss")[0]) == 2  # every 10 iterations
    assert window.tabs.currentWidget() is window.views["training"]
    window.views["training"].redraw()
    assert window.views["training"].curves[("maml", "post_loss", "smooth")].xData[-1] == 20
    assert window.state == "finished" and "20 / 20" in window.progress_label.text()
    run = window.views["paths"].run
    assert run is not None and run.names == ["maml", "pretrained"]
    assert run.paths["maml"].iterations[-1] == 20 and len(run.paths["maml"]) > 2
    window.tabs.setCurrentWidget(window.views["paths"])
    assert window.views["paths"].wait_until_idle(60)
    projected = window.views["paths"].projected
    assert projected is not None and set(projected.coords) == {"maml", "pretrained"}
    imported = [i for i in window.views["playground"].inits.values() if i.source == "imported"]
    assert sorted(i.algorithm for i in imported) == ["maml", "pretrained"]
    assert all(i.key.startswith(f"file:{folder.path.resolve()}") and i.label.endswith("· run") for i in imported)
    assert not window.message_bar.isVisible()
    window.reset()  # the opened run's exports go with it
    assert not [i for i in window.views["playground"].inits.values() if i.source == "imported"]
    assert not window.folder_label.isVisible()


def test_a_run_that_stopped_writing_is_listed_as_interrupted(window, qtbot, small_config, root):
    import time

    from maml_lab.lab.run_library import summarize

    train(window, qtbot, small_config(iterations=10, algorithms=("maml",)))
    folder = list_runs(root)[0]
    folder.write_status(status="running", iteration=5)  # as a killed process leaves it
    assert summarize(folder).status == "running"  # it wrote a moment ago: maybe another process trains it
    assert summarize(folder, now=time.time() + 3600).status == "interrupted"
    assert summarize(folder, active=folder.path, now=time.time() + 3600).status == "running"  # the app's own run


def test_resume_continues_a_stopped_run_to_the_end(window, qtbot, small_config, root, dialogs, monkeypatch):
    original = stop_at(monkeypatch, 15)
    assert train(window, qtbot, small_config(iterations=40)) == "stopped"
    monkeypatch.setattr(Trainer, "step", original)
    folder = list_runs(root)[0]
    assert folder.status()["status"] == "stopped" and folder.status()["iteration"] == 15
    assert [it for it, _ in folder.checkpoints()] == [15]

    window.reset()
    window.panel.set_config(small_config(iterations=999, algorithms=("reptile",)))  # another experiment in the form
    dialogs.folders.append(folder.path)
    seen = []
    window.controller.started.connect(lambda info: seen.append(maml_iterations(window)))
    with qtbot.waitSignal(window.controller.finished, timeout=30000):
        window.act_resume_run.trigger()
    assert not dialogs.warnings
    assert seen == [list(range(1, 16))]  # the plots start from the restored history
    assert window.state == "finished" and window.progress.value() == 40
    status = folder.status()
    assert status["status"] == "finished" and status["iteration"] == 40 and status["resumed_at"] == 15
    assert len(list_runs(root)) == 1  # the same folder, continued
    assert folder.read_metrics()["maml"]["iteration"].tolist() == list(range(1, 41))
    assert maml_iterations(window) == list(range(1, 41))  # the restored 15, then the live 25: no gap, no repeat
    assert window.run_folder == folder.path
    config = window.panel.config()  # the form shows the run's own experiment
    assert config.iterations == 40 and [a.name for a in config.algorithms] == ["maml", "pretrained"]
    qtbot.waitUntil(lambda: window.views["paths"].run is not None and window.views["paths"].run.iteration == 40,
                    timeout=5000)
    assert window.views["paths"].run.paths["maml"].iterations[0] == 0  # from the start, not from the checkpoint


def test_resuming_a_finished_run_opens_it(window, qtbot, small_config, root, dialogs):
    train(window, qtbot, small_config(iterations=10, algorithms=("maml",)))
    folder = list_runs(root)[0]
    window.reset()
    assert window.resume_run(str(folder.path))
    assert not window.controller.running and window.opened_run == folder.path
    assert maml_iterations(window) == list(range(1, 11))
    assert "finished" in window.statusBar().currentMessage()


def test_open_and_resume_are_refused_while_a_run_trains(window, qtbot, small_config, root, dialogs):
    train(window, qtbot, small_config(iterations=10, algorithms=("maml",)))
    done = list_runs(root)[0]
    dialog = window.show_past_runs()
    window.panel.set_config(small_config(iterations=1_000_000, algorithms=("maml",)))
    window.start()
    qtbot.waitUntil(lambda: window.state == "running", timeout=20000)
    assert not window.act_resume_run.isEnabled()
    assert dialog.busy and dialog.busy_label.isVisible()
    dialog.refresh()
    assert dialog.model.rowCount() == 2
    statuses = {dialog.model.text(r, 0): dialog.model.text(r, 3) for r in range(2)}
    assert statuses[window.run_folder.name] == "running" and statuses[done.name] == "finished"
    dialog.select(done.path)
    assert not dialog.open_button.isEnabled() and not dialog.resume_button.isEnabled()
    assert not window.open_run(str(done.path)) and not window.resume_run(str(done.path))
    assert [t for t, _ in dialogs.warnings] == ["Cannot open run", "Cannot resume run"]
    assert "one run at a time" in dialogs.warnings[0][1]
    with qtbot.waitSignal(window.controller.finished, timeout=5000):
        window.stop()
    assert dialog.open_button.isEnabled() and not dialog.busy_label.isVisible()
    running = RunFolder(window.run_folder)
    assert running.status()["status"] == "stopped" and running.checkpoints()


def test_closing_mid_run_leaves_a_stopped_folder_with_its_checkpoint(qtbot, settings, small_config, root):
    from maml_lab.ui.main_window import MainWindow

    w = MainWindow(settings=settings, persist=False)
    qtbot.addWidget(w)
    w.show()
    w.panel.set_config(small_config(iterations=1_000_000, algorithms=("maml",)))
    w.start()
    qtbot.waitUntil(lambda: w.last_progress is not None and w.last_progress.iteration > 3, timeout=20000)
    w.close()
    assert not w.controller.thread.isRunning()
    folder = list_runs(root)[0]
    status = folder.status()
    assert status["status"] == "stopped" and status["iteration"] > 3
    assert [it for it, _ in folder.checkpoints()] == [status["iteration"]]
    assert [p.name for p in folder.exports()] == ["maml.safetensors"]


def test_an_unwritable_runs_root_trains_without_a_folder_and_says_so(window, qtbot, small_config, tmp_path,
                                                                      monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("MAML_LAB_RUNS", str(blocker / "runs"))
    assert train(window, qtbot, small_config(iterations=10, algorithms=("maml",))) == "finished"
    assert window.run_folder is None and not window.folder_label.isVisible()
    assert window.message_bar.kind == "warning" and "No run folder" in window.message_bar.text
    assert str(blocker) in window.message_bar.text and "cannot be resumed" in window.message_bar.text
    assert window.latest_snapshot.iteration == 10  # trained all the same


def test_damaged_folders_are_listed_opened_as_far_as_possible_and_refused_cleanly(
        window, qtbot, small_config, root, dialogs):
    train(window, qtbot, small_config(iterations=20, algorithms=("maml",)))
    good = list_runs(root)[0]
    window.reset()

    def copy(name):
        path = root / name
        shutil.copytree(good.path, path)
        return RunFolder(path)

    no_json = copy("b-no-run-json")
    no_json.status_path.unlink()
    truncated = copy("c-truncated")
    text = truncated.metrics_path.read_text()
    truncated.metrics_path.write_text(text[: len(text) // 2 + 7])  # cut mid-line, as a kill would
    for _, p in truncated.checkpoints():
        p.unlink()
    bad_json = copy("d-corrupt-run-json")
    bad_json.status_path.write_text("{not json")
    bad_config = copy("e-broken-config")
    bad_config.config_path.write_text("task = [broken")
    other = copy("f-another-experiments-checkpoint")
    other_config = small_config(iterations=20, algorithms=("maml",))
    other_config.hidden = [8]
    other_config.save_toml(other.config_path)
    other.write_status(status="stopped", iteration=20)
    (root / "not-a-run").mkdir()

    dialog = window.show_past_runs()
    assert dialog.model.rowCount() == 6  # every run folder, damaged or not; the plain folder is no run
    statuses = {dialog.model.text(r, 0): dialog.model.text(r, 3) for r in range(6)}
    assert statuses[no_json.name] == "damaged" and statuses[bad_json.name] == "damaged"
    assert statuses[truncated.name] == "finished"
    rows = {dialog.model.text(r, 0): r for r in range(6)}
    assert "run.json" in dialog.model.tooltip(rows[no_json.name])
    assert dialog.model.text(rows[no_json.name], 4) == "20 / 20"  # the iteration read from metrics.csv
    dialog.select(bad_config.path)
    assert "config.toml" in dialog.detail.text()

    # Open shows what it can, and says what it could not
    assert window.open_run(str(truncated.path))
    its = maml_iterations(window)
    assert 0 < len(its) < 20 and its == list(range(1, len(its) + 1))
    assert window.views["paths"].run is None
    assert window.message_bar.kind == "warning" and "no readable checkpoint" in window.message_bar.text
    assert window.open_run(str(no_json.path))
    assert maml_iterations(window) == list(range(1, 21)) and window.views["paths"].run is not None
    assert window.open_run(str(bad_config.path))  # the checkpoint knows the experiment
    assert maml_iterations(window) == list(range(1, 21)) and "config.toml" in window.message_bar.text
    assert not dialogs.warnings
    assert not window.open_run(str(root / "not-a-run"))
    assert dialogs.warnings[-1][0] == "Cannot open run" and "no config.toml" in dialogs.warnings[-1][1]

    # Resume refuses a broken folder (at once) and another experiment's checkpoint (from the worker)
    assert not window.resume_run(str(bad_config.path))
    assert dialogs.warnings[-1][0] == "Cannot resume run" and "Nothing was changed" in dialogs.warnings[-1][1]
    before = {p.name: p.read_bytes() for p in other.path.rglob("*") if p.is_file()}
    state = window.state
    with qtbot.waitSignal(window.controller.finished, timeout=30000):
        assert window.resume_run(str(other.path))
    assert dialogs.warnings[-1][0] == "Cannot resume run"
    assert "different experiment" in dialogs.warnings[-1][1] and "hidden" in dialogs.warnings[-1][1]
    assert "Traceback" not in dialogs.warnings[-1][1]
    assert window.state == state and not window.running
    assert {p.name: p.read_bytes() for p in other.path.rglob("*") if p.is_file()} == before  # nothing lost
    assert maml_iterations(window) == list(range(1, 21))  # the opened run is still shown

    # a folder with no checkpoint at all starts over with its config
    truncated.write_status(status="stopped", iteration=10)
    with qtbot.waitSignal(window.controller.finished, timeout=30000):
        assert window.resume_run(str(truncated.path))
    assert window.state == "finished"
    assert truncated.status()["status"] == "finished"
    assert truncated.read_metrics()["maml"]["iteration"].tolist() == list(range(1, 21))


def test_past_runs_double_click_opens_and_change_sets_the_root(window, qtbot, small_config, tmp_path, dialogs,
                                                               monkeypatch):
    monkeypatch.delenv("MAML_LAB_RUNS")
    chosen = tmp_path / "chosen-runs"
    chosen.mkdir()
    dialog = window.show_past_runs()
    assert dialog.change_button.isEnabled()
    dialogs.folders.append(chosen)
    dialog.change_button.click()
    assert window.runs_root() == chosen and dialog.model.rowCount() == 0
    assert "No runs yet" in dialog.detail.text()
    dialog.close()
    train(window, qtbot, small_config(iterations=10, algorithms=("maml",)))
    assert window.run_folder.parent == chosen
    dialog = window.show_past_runs()
    qtbot.waitExposed(dialog)
    assert dialog.model.rowCount() == 1
    rect = dialog.table.visualRect(dialog.model.index(0, 0))
    from PySide6.QtTest import QTest

    for event in (QTest.mouseClick, QTest.mouseDClick):  # Qt's item views want the press before the double click
        event(dialog.table.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, rect.center())
    assert window.opened_run == window.run_folder
    assert maml_iterations(window) == list(range(1, 11))


def test_past_runs_keeps_the_created_column_in_view_beside_a_long_result(qtbot, tmp_path):
    """Several algorithms' results make a long "After adaptation" text: it is capped (full text in its tooltip), so
    the Created column stays in the dialog at its default size."""
    from maml_lab.core.algorithms.config import AlgorithmConfig
    from maml_lab.core.training.config import ExperimentConfig
    from maml_lab.core.training.runs import RunLogger
    from maml_lab.ui.past_runs import RESULT_COLUMN, PastRunsDialog

    names = ("maml", "fomaml", "reptile", "pretrained", "metasgd", "mamlpp")
    cfg = ExperimentConfig(iterations=2, meta_batch_size=2, val_every=0, hidden=[8, 8],
                           algorithms=[AlgorithmConfig.defaults(n, inner_steps=2) for n in names])
    folder = RunFolder.create(tmp_path / "runs" / "a-run-with-six-algorithms", cfg)
    trainer = Trainer(cfg, record_every=1)
    logger = RunLogger(folder, checkpoint_every=2)
    logger.start(trainer)
    trainer.observers.append(logger)
    trainer.run()

    dialog = PastRunsDialog(None, tmp_path / "runs")
    qtbot.addWidget(dialog)
    dialog.show()
    qtbot.waitExposed(dialog)
    table, last = dialog.table, 6  # Created
    assert dialog.model.text(0, RESULT_COLUMN).count("·") == len(names) - 1  # every algorithm's result
    needed = table.fontMetrics().horizontalAdvance(dialog.model.text(0, last)) + 12  # the cell's margins
    assert table.columnViewportPosition(last) + table.columnWidth(last) <= table.viewport().width()
    assert table.columnWidth(last) >= needed, (table.columnWidth(last), needed)  # not elided
    assert dialog.model.text(0, RESULT_COLUMN) in dialog.model.tooltip(0, RESULT_COLUMN)
