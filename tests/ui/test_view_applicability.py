"""Every registered task family (the example plug-in's line family included) through every registered view, in a
1366x768 window: each view shows content of that family's run, or says up front why it does not apply (its tab
disabled with the reason as tooltip, no enabled Compute) and never fails after Compute. Switching family leaves
nothing of the earlier run on screen: no curves, evaluation cards, headers, cost text (issue "The first hour")."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_SRC = ROOT / "examples" / "plugin" / "src"
ALGORITHMS = ("maml", "pretrained")


@pytest.fixture(scope="module")
def families():
    """The registered task families, the example plug-in's line family registered as its entry point would."""
    from maml_lab.core.tasks.registry import TASKS

    sys.path.insert(0, str(PLUGIN_SRC))
    added = "line" not in TASKS
    if added:
        from maml_lab_example.line import LineTasks

        TASKS.register(LineTasks, source="maml-lab-example-plugin", reference="maml_lab_example.line:LineTasks")
    yield TASKS.names()
    if added:
        TASKS._entries.pop("line", None)
    sys.path.remove(str(PLUGIN_SRC))


def tiny_config(task: str):
    """A run of a few iterations of MAML and the pretrained baseline on `task` (seconds on one thread)."""
    from maml_lab.core.algorithms.config import AlgorithmConfig
    from maml_lab.core.training.config import ExperimentConfig

    extra = {}
    if task == "navigation":
        extra = {"shots": 3, "queries": 3, "task_options": {"horizon": 10}}
    elif task == "images":
        extra = {"ways": 2, "shots": 1, "queries": 2, "image_size": 14}
    return ExperimentConfig(task=task, algorithms=[AlgorithmConfig.defaults(a, task=task) for a in ALGORITHMS],
                            iterations=4, meta_batch_size=2, val_every=0, hidden=[8, 8], **extra)


@pytest.fixture(scope="module")
def window(qapp, families, tmp_path_factory):
    from PySide6.QtCore import QSettings

    from maml_lab.ui.main_window import MainWindow

    folder = tmp_path_factory.mktemp("applicability")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MAML_LAB_CACHE", str(folder / "cache"))
        mp.setenv("MAML_LAB_RUNS", str(folder / "runs"))
        w = MainWindow(settings=QSettings(str(folder / "s.ini"), QSettings.Format.IniFormat), persist=False,
                       rng=np.random.default_rng(0))
        w.resize(1366, 768)
        w.show()
        yield w
        w.close()


def _small_inputs(w) -> None:
    """The cheapest settings of the views that compute (their content is what is checked, not its quality)."""
    landscape, paths = w.views["landscape"], w.views["paths"]
    landscape.resolution.setValue(landscape.resolution.minimum())
    landscape.tasks.setValue(landscape.tasks.minimum())
    paths.tasks.setValue(0)
    for name in ("adaptation", "per_layer"):
        view = w.views[name]
        view.tasks.setValue(view.tasks.minimum())
        view.steps.setValue(1)


def _train(w, qapp, task: str) -> None:
    p = w.panel
    p.set_config(tiny_config(task))
    assert p.task.currentData() == task
    assert w.start(), p.message
    assert w.wait_for_training(300) == "finished"
    qapp.processEvents()
    _small_inputs(w)


def _content(w, name: str, task: str) -> None:
    """What a view that applies shows after a run of `task`: that run's."""
    from maml_lab.ui.computed_view import ComputedView

    view = w.views[name]
    w.show_view(name)
    if hasattr(view, "wait_until_idle"):
        assert view.wait_until_idle(180), name
    if isinstance(view, ComputedView):  # (Landscape, Adaptation, Per layer) Compute gives a result, never a failure
        if view.result is None:
            assert view.compute_button.isEnabled(), name
            assert view.compute(), name
            assert view.wait_until_idle(180), name
        assert view.result is not None and not view.status.text().startswith("Failed"), (name, view.status.text())
    if name == "training":
        assert view.algorithms == list(ALGORITHMS) and w.history.last_iteration() == 4
    elif name == "landscape":
        assert view.result.request.run.task == task
    elif name == "paths":
        assert view.projected is not None and set(view.projected.coords) <= set(ALGORITHMS)
        assert view.run.task == task
    elif name == "adaptation":
        assert set(view.result.curves) == set(ALGORITHMS) and not view.result.errors
        assert {card.task_family for card in view.cards.values()} == {task}
        assert view.export_data_button.isEnabled()
    elif name == "per_layer":
        assert set(view.result.stats) == set(ALGORITHMS) and not view.result.errors
    elif name == "tasks":
        assert set(view.predictions) == set(ALGORITHMS)
    elif name == "arena":
        view.compute(force=True)
        assert set(view.results) == set(ALGORITHMS)
    elif name == "playground":
        assert set(ALGORITHMS) <= set(view.inits)


def _reason_shown(w, name: str, reason: str) -> None:
    """A view that does not apply: tab disabled, the reason as its tooltip and in the view, nothing to compute."""
    view = w.views[name]
    index = w.tabs.indexOf(view)
    assert not w.tabs.isTabEnabled(index) and w.tabs.tabToolTip(index) == reason, name
    if hasattr(view, "not_applicable"):
        assert view.not_applicable == reason, name
    # the view says why, in words on screen (the built-in views; the Playground in the family's own words)
    from PySide6.QtWidgets import QLabel

    assert any(reason in label.text() for label in view.findChildren(QLabel)), name
    button = getattr(view, "compute_button", None)
    if button is not None:
        assert not button.isEnabled(), name
        assert not view.compute(), name
        assert view.result is None and not view.runner.busy, name


def _nothing_of_a_run(w, imported: bool = False) -> None:
    """After a family switch: no curves, results, cards, headers or costs of the earlier run (`imported`: after an
    import, whose own held-out classes the Tasks header may count)."""
    assert w.history.algorithms == [] and w.views["training"].algorithms == []
    assert w.views["training"].curves == {}
    assert w.cost_label.text() == "" and w.cost_label.toolTip() == ""
    assert w.progress_label.text() == "Ready" and w.latest_snapshot is None and w.run_folder is None
    assert not [k for k in w.inits.keys() if w.inits[k].source == "trained"]
    for name in ("landscape", "adaptation", "per_layer"):
        view = w.views[name]
        assert view.result is None and view.run is None, name
        assert view.not_applicable or view.status.text() == "", (name, view.status.text())
        if view.export_data_button is not None:
            assert not view.export_data_button.isEnabled(), name
    adaptation = w.views["adaptation"]
    assert not adaptation.cards and adaptation.card_label.text().strip() == "" and not adaptation.items
    assert adaptation.summary.text().strip() == ""
    assert not w.views["per_layer"].items and w.views["per_layer"].summary.text().strip() == ""
    assert w.views["paths"].projected is None and w.views["paths"].run is None
    assert not w.views["arena"].results
    tasks = w.views["tasks"]
    assert imported or not re.search(r"\d held-out classes", tasks.status.text())
    assert not [k for k in tasks.predictions if k in ALGORITHMS]


def _open_other(w, qapp, folder, task: str) -> None:
    """Opening a past run of `task` (File ▸ Past runs ▸ Open): its curves, and nothing of the run shown before (no
    results, cards, costs or Tasks header); the views apply as for its family."""
    from maml_lab.core.tasks.registry import TASKS
    from maml_lab.ui import views as view_registry

    assert w.open_run(str(folder))
    qapp.processEvents()
    assert w.run_model.scope.opened and w.run_model.task == task and w.panel.task.currentData() == task
    assert w.views["training"].algorithms == list(ALGORITHMS) and w.history.last_iteration() == 4
    assert w.cost_label.text() == "" and w.latest_snapshot is None
    for name in ("landscape", "adaptation", "per_layer"):
        view = w.views[name]
        assert view.result is None and view.status.text() in ("", view.not_applicable or ""), name
        if view.export_data_button is not None:
            assert not view.export_data_button.isEnabled(), name
    assert not w.views["adaptation"].cards and not w.views["per_layer"].items
    tasks = w.views["tasks"]
    assert not re.search(r"\d held-out classes", tasks.status.text()) and not tasks.predictions
    assert not w.views["arena"].results
    kind = TASKS.get(task)
    assert w.applicability() == {e.name: e.obj.reason(kind, ALGORITHMS) for e in view_registry.VIEWS.entries()}


def _import_other(w, qapp, folder, task: str) -> None:
    """Importing an initialization trained on `task` while a run of another family is shown: the form takes its
    family, and nothing of that run stays; the initialization is where its family's views show it."""
    export = sorted((folder / "exports").glob("maml*.safetensors"))[0]
    init = w.import_initialization(str(export))
    qapp.processEvents()
    assert init is not None and init.source == "imported"
    assert w.panel.task.currentData() == task and w.run_model.task == task and not w.run_model.scope.opened
    assert w.applicability()["tasks" if task == "images" else "training"] is None
    if task == "images":  # the Tasks view takes it, on the held-out classes it was not trained on
        tasks = w.views["tasks"]
        assert init.key in tasks.inits and w.current_view() is tasks
        assert tasks.wait_until_idle(120) and tasks.family is not None


def test_every_family_through_every_view(window, qapp, families):
    from maml_lab.core.tasks.registry import TASKS
    from maml_lab.ui import views as view_registry

    w = window
    assert "line" in families and w.panel.task.findData("line") >= 0
    specs = {e.name: e.obj for e in view_registry.VIEWS.entries()}
    assert set(specs) == set(w.views)
    order = [t for t in families if t != "images"] + ["images"]  # (images last: its set loads the longest)
    seen, folders = {}, {}
    for task in order:
        _train(w, qapp, task)
        kind = TASKS.get(task)
        seen[task] = []
        for name in ("adaptation", "per_layer"):  # before Compute, the hint says what it will compare
            view = w.views[name]
            if specs[name].reason(kind, ALGORITHMS) is None:
                assert view.hint.toPlainText() == f"Press Compute to {view.what} (2 initializations)", name
        for name, spec in specs.items():
            reason = spec.reason(kind, ALGORITHMS)
            assert w.applicability()[name] == reason
            if reason is None:
                assert w.tabs.isTabEnabled(w.tabs.indexOf(w.views[name])), (task, name)
                _content(w, name, task)
                seen[task].append(name)
            else:
                _reason_shown(w, name, reason)
        folders[task] = w.run_folder
        if task == order[-1]:  # last: a past run of another family opened over this one, then an import of this
            _open_other(w, qapp, folders[order[0]], order[0])
            _import_other(w, qapp, folders[task], task)
        else:
            following = order[order.index(task) + 1]
            w.panel.task.setCurrentIndex(w.panel.task.findData(following))  # another family in the form
        qapp.processEvents()
        _nothing_of_a_run(w, imported=task == order[-1])
    # the views that do not apply where they cannot compute, and everywhere else they do
    assert set(seen["sinusoid"]) == set(specs) - {"tasks", "arena"}
    assert set(seen["line"]) == set(specs) - {"tasks", "arena"}
    assert "arena" in seen["navigation"] and "adaptation" in seen["navigation"]
    assert not {"landscape", "per_layer", "tasks", "playground"} & set(seen["navigation"])
    assert "tasks" in seen["images"] and "arena" not in seen["images"] and "playground" not in seen["images"]
