"""Algorithms whose test-time rule is not gradient steps (ProtoNets' prototypes; `adaptation_kind`), in the views
and the panel: views of inner-loop steps say they do not apply when no algorithm takes steps and leave such
algorithms out beside MAML; the Adaptation view draws one flat line, 'prototypes: no steps'; the Tasks view
classifies by prototypes; a classifier-only algorithm is disabled, with the reason, on a regression family."""

from __future__ import annotations

import numpy as np
import pytest

STEP_VIEWS = {"landscape": "The Landscape", "paths": "Paths", "per_layer": "Per layer"}


def test_the_shared_rule():
    from maml_lab.ui.views import adapts_by_steps, no_steps_text, steps_reason

    assert adapts_by_steps("maml") and adapts_by_steps("not-registered") and not adapts_by_steps("protonet")
    assert no_steps_text("protonet") == "prototypes: no steps" and no_steps_text("maml") == ""
    assert no_steps_text("baseline") == "steps: epochs of a head fit"  # its curve has steps
    assert steps_reason("Paths", ("maml", "protonet")) is None and steps_reason("Paths", ()) is None
    assert steps_reason("Paths", ("protonet",)) == ("Paths shows inner-loop gradient steps; ProtoNet adapts by "
                                                     "prototypes, not by steps")


def _window(tmp_path_factory):
    from PySide6.QtCore import QSettings

    from maml_lab.ui.main_window import MainWindow

    folder = tmp_path_factory.mktemp("nongradient")
    w = MainWindow(settings=QSettings(str(folder / "s.ini"), QSettings.Format.IniFormat), persist=False,
                   rng=np.random.default_rng(0))
    w.resize(1280, 820)
    w.show()
    return w


def _glyph_config(algorithms):
    from maml_lab.core.algorithms.config import AlgorithmConfig
    from maml_lab.core.training.config import ExperimentConfig

    return ExperimentConfig(task="images", algorithms=[AlgorithmConfig.defaults(a, task="images") for a in algorithms],
                            iterations=2, meta_batch_size=2, val_every=0, ways=3, shots=1, queries=2, image_size=14)


@pytest.fixture(scope="module")
def window(qapp, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MAML_LAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.setenv("MAML_LAB_RUNS", str(tmp_path_factory.mktemp("runs")))
        w = _window(tmp_path_factory)
        yield w
        w.close()


def test_the_panel_disables_protonet_on_sinusoids_with_the_reason(window):
    p = window.panel
    p.task.setCurrentIndex(p.task.findData("sinusoid"))
    box = p.columns["protonet"].enabled
    assert not box.isEnabled() and not box.isChecked()
    assert box.toolTip().startswith("ProtoNet classifies only; Sinusoid regression tasks are not classification")
    p.task.setCurrentIndex(p.task.findData("images"))
    assert box.isEnabled() and box.toolTip().startswith("Train ProtoNet")


def test_the_panel_greys_out_the_settings_protonet_does_not_read(window):
    """ProtoNet has no inner loop and no test-time steps: its inner lr and step fields are greyed out and say why,
    its learning rate and settings stay editable; MAML's column is untouched."""
    p = window.panel
    p.task.setCurrentIndex(p.task.findData("images"))
    col, maml = p.columns["protonet"], p.columns["maml"]
    col.enabled.setChecked(True)
    assert not any(w.isEnabled() for w in (col.inner_lr, col.inner_steps, col.test_steps))
    assert col.meta_lr.isEnabled() and col.settings.isEnabled()
    assert "ProtoNet does not read this setting" in col.inner_lr.toolTip()
    maml.enabled.setChecked(True)
    assert all(w.isEnabled() for w in (maml.inner_lr, maml.inner_steps, maml.test_steps))
    assert p.config().algorithm("protonet").inner_steps == 0  # its config still reads as before


def test_protonet_alone_and_beside_maml(window, qapp):
    w = window
    w.panel.set_config(_glyph_config(["protonet"]))
    assert w.start(), w.panel.message
    assert w.wait_for_training(300) == "finished"
    qapp.processEvents()
    for name, title in STEP_VIEWS.items():  # alone: the views of steps say why not, in their tab and in place
        reason = w.applicability()[name]
        assert reason == f"{title} shows inner-loop gradient steps; ProtoNet adapts by prototypes, not by steps"
        assert not w.tabs.isTabEnabled(w.tabs.indexOf(w.views[name])) and w.views[name].not_applicable == reason
    assert w.applicability()["adaptation"] is None and w.applicability()["tasks"] is None

    w.panel.set_config(_glyph_config(["maml", "protonet"]))
    assert w.start(), w.panel.message
    assert w.wait_for_training(300) == "finished"
    qapp.processEvents()
    assert all(w.applicability()[name] is None for name in STEP_VIEWS)
    landscape, paths = w.views["landscape"], w.views["paths"]
    assert [landscape.center.itemData(i) for i in range(landscape.center.count())] == ["maml"]
    w.show_view("paths")
    assert paths.wait_until_idle(120)
    assert [paths.algorithm.itemData(i) for i in range(paths.algorithm.count())] == ["maml"]
    assert set(paths.projected.coords) == {"maml", "protonet"}  # its meta path is drawn; no adaptation steps

    adaptation = w.views["adaptation"]
    adaptation.tasks.setValue(adaptation.tasks.minimum())
    adaptation.steps.setValue(2)
    w.show_view("adaptation")
    if adaptation.result is None:
        assert adaptation.compute()
    assert adaptation.wait_until_idle(180)
    curves = adaptation.result.curves
    assert set(curves) == {"maml", "protonet"} and not adaptation.result.errors
    flat = curves["protonet"].loss_mean
    assert len(flat) == 3 and np.allclose(flat, flat[0])
    labels = [label.text for _sample, label in adaptation.legend.items]
    assert "ProtoNet (prototypes: no steps)" in labels
    assert "ProtoNet (prototypes: no steps)" in adaptation.summary.text()

    per_layer = w.views["per_layer"]
    per_layer.tasks.setValue(per_layer.tasks.minimum())
    per_layer.steps.setValue(1)
    w.show_view("per_layer")
    if per_layer.result is None:
        assert per_layer.compute()
    assert per_layer.wait_until_idle(180)
    assert set(per_layer.result.stats) == {"maml"}

    tasks = w.views["tasks"]
    w.show_view("tasks")
    assert tasks.wait_until_idle(120)
    before, after = tasks.predictions["protonet"]
    assert np.array_equal(before, after) and np.allclose(after.sum(1), 1.0)  # prototypes: no before and after
