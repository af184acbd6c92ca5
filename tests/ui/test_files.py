"""The File menu through its actions, with the dialogs patched: export -> import round trip, bad and mismatched
files, write errors that keep the previous file, plots, metrics, experiment configs, settings."""

import errno
import json

import pytest
import torch
from PySide6.QtWidgets import QFileDialog, QInputDialog, QMessageBox

from maml_lab.core import export as core_export
from maml_lab.core.export import build_metadata, export_initialization, load_initialization
from maml_lab.core.models.mlp import MLP
from maml_lab.core.training.metrics import CSV_HEADER


class Dialogs:
    """Stands in for the modal dialogs: answers queued per dialog, warnings recorded."""

    def __init__(self, monkeypatch):
        self.save, self.open, self.items, self.warnings = [], [], [], []
        monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(self.save.pop(0)), ""))
        monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(self.open.pop(0)), ""))
        monkeypatch.setattr(QInputDialog, "getItem", lambda *a, **k: (self.items.pop(0), True))
        monkeypatch.setattr(QMessageBox, "warning", lambda parent, title, text, *a: self.warnings.append(
            (title, text)))


@pytest.fixture
def dialogs(monkeypatch):
    return Dialogs(monkeypatch)


@pytest.fixture
def trained(window, qtbot, small_config):
    window.panel.set_config(small_config(iterations=20))
    with qtbot.waitSignal(window.controller.finished, timeout=20000):
        window.start()
    qtbot.waitUntil(lambda: window.latest_snapshot is not None and window.latest_snapshot.iteration == 20,
                    timeout=3000)
    return window


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_export_import_round_trip_through_the_menu(trained, dialogs, tmp_path, qtbot, suffix):
    window = trained
    path = tmp_path / f"maml{suffix}"
    dialogs.items.append("MAML")
    dialogs.save.append(path)
    window.act_export.trigger()
    assert path.is_file() and not dialogs.warnings
    params, meta, model = load_initialization(path)
    assert meta["algorithm"] == "maml" and meta["iterations"] == 20
    assert model.spec() == {"kind": "mlp", "sizes": [1, 16, 16, 1], "activation": "relu"}
    dialogs.open.append(path)
    window.act_import.trigger()
    key = f"file:{path.resolve()}"
    assert key in window.views["playground"].inits
    imported = window.views["playground"].inits[key]
    assert imported.source == "imported" and imported.algorithm == "maml" and imported.inner_lr == 0.01
    for name, value in window.latest_snapshot.params["maml"].items():
        assert torch.equal(imported.params[name], value)
    assert str(path.resolve()) in window.recent_files()
    window.views["playground"].flush()
    assert key in window.views["playground"].predictions


def test_export_all_writes_one_file_per_algorithm(trained, dialogs, tmp_path):
    dialogs.items.append("All (one file each)")
    dialogs.save.append(tmp_path / "run.safetensors")
    trained.act_export.trigger()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run-maml.safetensors", "run-pretrained.safetensors"]


def test_export_before_training_says_why(window, dialogs):
    assert not window.act_export.isEnabled()
    assert window.export_initialization() == []
    assert dialogs.warnings and "press Start" in dialogs.warnings[0][1]


def test_bad_and_mismatched_files_are_refused_and_nothing_changes(window, dialogs, tmp_path):
    before = dict(window.views["playground"].inits)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"definitely not a safetensors file")
    dialogs.open.append(bad)
    window.act_import.trigger()
    assert "not a readable safetensors" in dialogs.warnings[-1][1]
    # an MLP for another input size cannot go on the sinusoid playground
    model = MLP([2, 8, 1])
    other = tmp_path / "two-inputs.safetensors"
    export_initialization(other, model.init_params(torch.Generator().manual_seed(0)),
                          build_metadata("maml", model.spec(), {"name": "custom"}, {}, 5))
    dialogs.open.append(other)
    window.act_import.trigger()
    assert "one input and one output" in dialogs.warnings[-1][1]
    wrong = tmp_path / "wrong-version.safetensors"
    meta = build_metadata("maml", MLP().spec(), {"name": "sinusoid"}, {}, 5)
    meta["format_version"] = 99
    export_initialization(wrong, MLP().init_params(torch.Generator().manual_seed(0)), meta)
    dialogs.open.append(wrong)
    window.act_import.trigger()
    assert "format version 99" in dialogs.warnings[-1][1]
    assert window.views["playground"].inits == before
    assert len(dialogs.warnings) == 3


def test_write_error_is_reported_and_the_previous_file_kept(trained, dialogs, tmp_path, monkeypatch):
    path = tmp_path / "maml.safetensors"
    dialogs.items.append("MAML")
    dialogs.save.append(path)
    trained.act_export.trigger()
    original = path.read_bytes()

    def disk_full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(core_export.os, "replace", disk_full)
    dialogs.items.append("Pretrained")
    dialogs.save.append(path)
    trained.act_export.trigger()
    assert dialogs.warnings and "No space left on device" in dialogs.warnings[-1][1]
    assert "previous file" in dialogs.warnings[-1][1]
    assert path.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["maml.safetensors"]  # no temporary file left behind
    # a folder that does not exist
    dialogs.save.append(tmp_path / "missing" / "m.csv")
    trained.act_export_metrics.trigger()
    assert "folder does not exist" in dialogs.warnings[-1][1]


def test_export_plot_png_and_svg_and_metrics_csv(trained, dialogs, tmp_path):
    window = trained
    for index, name in ((0, "playground.png"), (1, "curves.svg"), (1, "curves.png")):
        window.tabs.setCurrentIndex(index)
        dialogs.save.append(tmp_path / name)
        window.act_export_plot.trigger()
    assert (tmp_path / "playground.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (tmp_path / "curves.svg").read_bytes()
    dialogs.save.append(tmp_path / "metrics")
    window.act_export_metrics.trigger()
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0] == ",".join(CSV_HEADER)  # the run folder's metrics.csv format
    assert lines[0].startswith("iteration,algorithm,pre_loss,post_loss,") and "val_pre_loss,val_post_loss" in lines[0]
    assert len(lines) == 1 + 2 * 20
    rows = [line.split(",") for line in lines[1:]]
    at_10 = [row for row in rows if row[0] == "10"]
    assert len(at_10) == 2 and all(row[CSV_HEADER.index("val_pre_loss")] != "" for row in at_10)  # val every 10
    assert not dialogs.warnings


def test_an_exported_plot_leaves_the_crosshair_out(trained, dialogs, tmp_path, monkeypatch):
    from maml_lab.ui import plot_export

    plots = trained.views["training"]
    trained.tabs.setCurrentWidget(plots)
    plot = plots.train_plot
    plots._on_mouse_moved(plot.getViewBox().sceneBoundingRect().center())  # the mouse over the curves
    line = plots.crosshair[plot]
    assert line.isVisible()
    seen = []
    real = plot_export._render_png
    monkeypatch.setattr(plot_export, "_render_png", lambda item: (seen.append(line.isVisible()), real(item))[1])
    dialogs.save.append(tmp_path / "curves.png")
    trained.act_export_plot.trigger()
    assert seen == [False] and (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert line.isVisible()  # back on screen after the export


def test_save_and_open_experiment_config(window, dialogs, tmp_path):
    path = tmp_path / "exp"
    window.panel.seed.setValue(42)
    window.panel.columns["reptile"].enabled.setChecked(True)
    dialogs.save.append(path)
    window.act_save_config.trigger()
    saved = tmp_path / "exp.toml"
    assert saved.is_file()
    window.panel.seed.setValue(1)
    window.panel.columns["reptile"].enabled.setChecked(False)
    dialogs.open.append(saved)
    window.act_open_config.trigger()
    config = window.panel.config()
    assert config.seed == 42 and [a.name for a in config.algorithms] == ["maml", "reptile", "pretrained"]
    broken = tmp_path / "broken.toml"
    broken.write_text("iterations = 'many'\n")
    dialogs.open.append(broken)
    window.act_open_config.trigger()
    assert dialogs.warnings and "broken.toml" in dialogs.warnings[-1][1]
    assert window.panel.config().seed == 42  # nothing changed
    window.panel.columns["maml"].inner_lr.setText("")
    assert window.save_config(str(tmp_path / "x.toml")) is None
    assert "invalid value" in dialogs.warnings[-1][1]


def test_layout_config_and_recent_files_persist(qtbot, settings, tmp_path):
    from maml_lab.ui.main_window import MainWindow

    first = MainWindow(settings=settings)
    qtbot.addWidget(first)
    first.resize(790, 700)  # inside the offscreen screen (800 x 800), so restoring needs no clamping
    first.show()
    first.panel.iterations.setValue(1234)
    first.panel.hidden.setText("24, 24")
    first.tabs.setCurrentIndex(1)
    first.views["training"].set_log(False)
    first.splitter.setSizes([first.panel.minimumWidth() + 10, 300])
    sizes = first.splitter.sizes()
    first.files.add_recent(tmp_path / "a.toml")
    first.close()

    second = MainWindow(settings=settings)
    qtbot.addWidget(second)
    second.show()
    assert second.panel.iterations.value() == 1234 and second.panel.config().hidden == [24, 24]
    assert second.tabs.currentIndex() == 1
    assert not second.views["training"].log_scale.isChecked()
    assert second.size() == first.size()
    assert second.splitter.sizes() == sizes
    assert second.recent_files() == [str((tmp_path / "a.toml").resolve())]
    second.close()
    assert json.dumps(second.recent_files())


@pytest.mark.parametrize("selected, expected", [("SVG vector image (*.svg)", "plot.svg"),
                                                ("PNG image (*.png)", "plot.png"), ("", "plot.png")])
def test_save_dialog_adds_the_suffix_of_the_chosen_filter(window, monkeypatch, tmp_path, selected, expected):
    from maml_lab.ui.plot_export import PLOT_FILTERS

    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(tmp_path / "plot"), selected))
    assert window.files.ask_save_path("Export plot", "x.png", PLOT_FILTERS) == tmp_path / expected
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: ("", ""))
    assert window.files.ask_save_path("Export plot", "x.png", PLOT_FILTERS) is None


def test_importing_a_conv4_initialization_goes_to_the_tasks_view(window, dialogs, tmp_path):
    from maml_lab.core.models.conv4 import Conv4

    model = Conv4(in_channels=1, image_size=28, ways=5)
    params = model.init_params(torch.Generator().manual_seed(0))
    path = tmp_path / "conv4.safetensors"
    meta = build_metadata("maml", model.spec(), {"name": "images"}, {"inner_lr": 0.4}, 10)
    export_initialization(path, params, meta)
    dialogs.open.append(path)
    init = window.import_initialization()
    assert init is not None and not dialogs.warnings
    assert window.tabs.currentWidget() is window.views["tasks"]
    assert init.key in window.views["tasks"].inits and init.inner_lr == 0.4
    assert init.key not in window.views["playground"].inits


def test_an_imported_conv4_shows_the_heldout_classes_it_was_not_trained_on(window, dialogs, tmp_path, monkeypatch):
    """The experiment panel is on sinusoids: the Tasks view rebuilds the file's own held-out glyph classes from
    its metadata, off the GUI thread, and adapts the imported initialization on them."""
    from maml_lab.core.training.config import ExperimentConfig
    from maml_lab.core.training.trainer import Trainer

    monkeypatch.setenv("MAML_LAB_CACHE", str(tmp_path / "cache"))
    trainer = Trainer(ExperimentConfig(task="images", image_size=14, ways=3, meta_batch_size=2, iterations=1,
                                       val_every=0), record_every=0)
    trainer.run()
    path = tmp_path / "glyphs-3way.safetensors"
    trainer.export("maml", path)
    dialogs.open.append(path)
    init = window.import_initialization()
    assert init is not None and not dialogs.warnings
    tasks = window.views["tasks"]
    assert tasks.wait_until_idle(60)
    assert tasks.family is not None and tasks.family.ways == 3 and tuple(tasks.family.input_shape) == (1, 14, 14)
    held_out = set(tasks.family.image_set.class_names)
    assert not held_out & set(trainer.family.image_set.class_names)  # never trained on
    assert tasks.task is not None and init.key in tasks.predictions
    # a file whose image set is gone says so, in the app's words
    meta_task = dict(init.metadata["task"], data=str(tmp_path / "gone.zip"), source="folder")
    moved = type(init)(init.key + "-moved", init.algorithm, init.label, init.model, init.params, init.inner_lr,
                       "imported", dict(init.metadata, task=meta_task))
    tasks.family = None
    assert tasks.show_heldout_of(moved)
    assert tasks.wait_until_idle(60)
    assert "is not at" in tasks.status.text() and "open an image set" in tasks.status.text()


def test_importing_a_navigation_policy_opens_the_arena(window, dialogs, tmp_path):
    """A 2-D navigation export (a Gaussian MLP policy) is not a playground MLP: the Arena, whose accepts_model takes
    it, shows it; a model no view takes is refused with the reason."""
    from maml_lab.core.algorithms.config import AlgorithmConfig
    from maml_lab.core.training.config import ExperimentConfig
    from maml_lab.core.training.trainer import Trainer

    trainer = Trainer(ExperimentConfig(task="navigation", meta_batch_size=2, shots=2, queries=2, iterations=1,
                                       val_every=0, algorithms=[AlgorithmConfig.defaults("maml", task="navigation")]),
                      record_every=0)
    trainer.run()
    path = tmp_path / "nav.safetensors"
    trainer.export("maml", path)
    dialogs.open.append(path)
    init = window.import_initialization()
    assert init is not None and not dialogs.warnings
    arena = window.views["arena"]
    assert window.tabs.currentWidget() is arena and init.key in arena.inits
    assert init.key not in window.views["playground"].inits

    window.views.pop("arena")  # without a view that shows policies, the import says why it cannot be used
    dialogs.open.append(path)
    assert window.import_initialization() is None
    assert any("no view of this lab shows a gaussian_mlp_policy model" in text for _, text in dialogs.warnings)
