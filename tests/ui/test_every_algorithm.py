"""Every registered algorithm trains side by side from the panel and appears in every "looking inside" view: the
sinusoid family for Paths, Landscape, Adaptation and Per layer, the built-in glyphs for the Tasks view (issue
"The field's successors": each new algorithm in the app, not only in the engine)."""

from __future__ import annotations

import numpy as np
import pytest

from maml_lab.core.algorithms.registry import algorithm_names

BUILT_IN = ("maml", "fomaml", "reptile", "pretrained", "mamlpp", "metasgd", "anil", "boil", "cavia", "imaml")


def _window(tmp_path_factory):
    from PySide6.QtCore import QSettings

    from maml_lab.ui.main_window import MainWindow

    folder = tmp_path_factory.mktemp("settings")
    w = MainWindow(settings=QSettings(str(folder / "s.ini"), QSettings.Format.IniFormat), persist=False,
                   rng=np.random.default_rng(0))
    w.resize(1280, 820)
    w.show()
    return w


def _enable_all(panel) -> list[str]:
    """Every algorithm the family takes (the panel disables those it refuses: classifiers on regression tasks)."""
    for col in panel.columns.values():
        if col.enabled.isEnabled():
            col.enabled.setChecked(True)
    return [name for name, col in panel.columns.items() if col.enabled.isChecked()]


def _takes(task: str) -> set[str]:
    from maml_lab.core.algorithms.registry import family_refusal
    from maml_lab.core.tasks.registry import task_family

    return {n for n in algorithm_names() if family_refusal(n, task_family(task)) is None}


@pytest.fixture(scope="module")
def sinusoid_window(qapp, tmp_path_factory):
    w = _window(tmp_path_factory)
    p = w.panel
    p.task.setCurrentIndex(p.task.findData("sinusoid"))
    p.iterations.setValue(60)
    p.meta_batch.setValue(4)
    p.hidden.setText("16, 16")
    names = _enable_all(p)
    assert set(BUILT_IN) <= set(names)
    assert w.start()
    assert w.wait_for_training(240) == "finished"
    qapp.processEvents()
    yield w, names
    w.close()


def test_the_panel_offers_every_registered_algorithm(sinusoid_window):
    w, names = sinusoid_window
    assert set(names) == _takes("sinusoid") and set(BUILT_IN) <= set(names)
    for name in set(algorithm_names()) - set(names):  # refused by the family: disabled, the reason as tooltip
        box = w.panel.columns[name].enabled
        assert not box.isEnabled() and not box.isChecked() and "classifies only" in box.toolTip(), name


def test_every_algorithm_trained_side_by_side_and_is_in_paths_landscape_adaptation_per_layer(sinusoid_window):
    w, names = sinusoid_window
    assert set(w.history.algorithms) == set(names) and w.history.last_iteration() == 60
    for name in names:
        _, post = w.history.series(name, "post_loss")
        assert len(post) > 0 and np.isfinite(post).all(), name

    w.tabs.setCurrentWidget(w.views["paths"])
    assert w.views["paths"].wait_until_idle(120)
    assert set(w.views["paths"].projected.coords) == set(names)

    landscape = w.views["landscape"]
    landscape.resolution.setValue(11)
    landscape.tasks.setValue(5)
    w.tabs.setCurrentWidget(landscape)
    assert landscape.wait_until_idle(120)
    assert landscape.result is not None
    assert all(np.isfinite(s.values).all() for s in landscape.result.surfaces.values())

    adaptation = w.views["adaptation"]
    adaptation.tasks.setValue(20)
    w.tabs.setCurrentWidget(adaptation)
    assert adaptation.wait_until_idle(120)
    assert set(adaptation.result.curves) == set(names)
    for name in names:
        assert np.isfinite(adaptation.result.curves[name].loss_mean).all(), name

    per_layer = w.views["per_layer"]
    w.tabs.setCurrentWidget(per_layer)
    assert per_layer.wait_until_idle(120)
    assert set(per_layer.result.stats) == set(names) and not per_layer.result.errors


@pytest.fixture(scope="module")
def glyph_window(qapp, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MAML_LAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        w = _window(tmp_path_factory)
        p = w.panel
        p.task.setCurrentIndex(p.task.findData("images"))
        p.iterations.setValue(2)
        p.meta_batch.setValue(2)
        names = _enable_all(p)
        assert set(names) == _takes("images") == set(algorithm_names())
        w.tabs.setCurrentWidget(w.views["tasks"])
        assert w.start()
        assert w.wait_for_training(300) == "finished"
        assert w.views["tasks"].wait_until_idle(120)
        yield w, names
        w.close()


def test_every_algorithm_predicts_in_the_tasks_view(glyph_window):
    w, names = glyph_window
    view = w.views["tasks"]
    assert set(view.predictions) == set(names)
    n_queries = sum(len(q) for q in view.task.queries)
    for name, (before, after) in view.predictions.items():
        assert before.shape == after.shape == (n_queries, 5), name
        assert np.allclose(after.sum(1), 1.0, atol=1e-5), name
