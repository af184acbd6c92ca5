"""The playground (the sinusoid's, its default): clicks in data coordinates, drag, removal, undo, draw mode,
random task, predictions; a family's own playground and a family without one."""

import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
from PySide6.QtCore import Qt

from maml_lab.core.models.mlp import MLP
from maml_lab.lab.initializations import Initialization
from maml_lab.lab.playground import SupportTask, predict
from maml_lab.ui.playground import PlaygroundView, curve_from_stroke

from .helpers import RIGHT, click, drag


@pytest.fixture
def view(qtbot):
    v = PlaygroundView(rng=np.random.default_rng(3))
    qtbot.addWidget(v)
    v.resize(1000, 650)
    v.show()
    qtbot.waitExposed(v)
    yield v
    v.shutdown()


def mlp_init(key="maml", algorithm="maml", seed=0, lr=0.01):
    model = MLP([1, 16, 16, 1])
    params = model.init_params(torch.Generator().manual_seed(seed))
    return Initialization(key, algorithm, algorithm.upper(), model, params, lr)


def test_click_adds_point_at_data_coordinates(view):
    for x, y in [(-3.2, 1.5), (0.0, 0.0), (4.1, -2.7)]:
        click(view.canvas, x, y)
    assert len(view.state.points) == 3
    for (px, py), (x, y) in zip(view.state.points, [(-3.2, 1.5), (0.0, 0.0), (4.1, -2.7)], strict=True):
        assert px == pytest.approx(x, abs=0.05)
        assert py == pytest.approx(y, abs=0.05)
    assert view.selected == 2


def test_click_on_a_point_selects_it_instead_of_adding(view):
    click(view.canvas, 1.0, 1.0)
    click(view.canvas, 2.0, -1.0)
    click(view.canvas, 1.0, 1.0)
    assert len(view.state.points) == 2
    assert view.selected == 0


def test_drag_moves_a_point(view):
    click(view.canvas, -1.0, 1.0)
    click(view.canvas, 3.0, 3.0)
    drag(view.canvas, [(-1.0, 1.0), (-0.5, 0.0), (0.5, -2.0), (1.5, -3.0)])
    assert len(view.state.points) == 2
    x, y = view.state.points[0]
    assert (x, y) == (pytest.approx(1.5, abs=0.05), pytest.approx(-3.0, abs=0.05))
    assert view.state.points[1] == (pytest.approx(3.0, abs=0.05), pytest.approx(3.0, abs=0.05))
    view.undo()  # one drag is one undo step
    assert view.state.points[0] == (pytest.approx(-1.0, abs=0.05), pytest.approx(1.0, abs=0.05))


def test_drag_is_clamped_to_the_x_range(view):
    click(view.canvas, 4.0, 0.0)
    drag(view.canvas, [(4.0, 0.0), (4.9, 0.0), (5.08, 0.0)])
    assert -5.0 <= view.state.points[0][0] <= 5.0


def test_right_click_removes_and_undo_restores(view):
    for x in (-2.0, 0.0, 2.0):
        click(view.canvas, x, 1.0)
    click(view.canvas, 0.0, 1.0, RIGHT)
    assert [round(p[0]) for p in view.state.points] == [-2, 2]
    assert view.undo()
    assert [round(p[0]) for p in view.state.points] == [-2, 0, 2]
    click(view.canvas, 3.0, -3.0, RIGHT)  # right click on empty space does nothing
    assert len(view.state.points) == 3


def test_delete_removes_selected_point_and_undo_chain(view):
    click(view.canvas, -1.0, 2.0)
    click(view.canvas, 1.0, 2.0)
    click(view.canvas, -1.0, 2.0)  # select the first
    assert view.remove_selected()
    assert [round(p[0]) for p in view.state.points] == [1]
    assert not view.remove_selected()  # nothing selected any more
    view.undo()
    view.undo()
    view.undo()
    assert view.state.points == []
    assert not view.undo()


def test_draw_mode_yields_k_points_on_the_drawn_curve(view):
    view.k.setValue(7)
    view.set_mode("draw")
    xs = np.linspace(-4, 3, 40)
    ys = 2 * np.cos(xs)
    drag(view.canvas, list(zip(xs, ys, strict=True)))
    assert len(view.state.points) == 7
    truth = view.state.truth
    assert truth["kind"] == "drawn"
    for x, y in view.state.points:
        assert truth["x"][0] <= x <= truth["x"][-1]
        assert y == pytest.approx(float(np.interp(x, truth["x"], truth["y"])), abs=1e-9)  # on the drawn curve
        assert y == pytest.approx(2 * math.cos(x), abs=0.25)  # which follows the stroke
    assert view.state.truth_range(view.curve.x_range) == (pytest.approx(-4, abs=0.05), pytest.approx(3, abs=0.05))
    view.undo()
    assert view.state.truth is None and view.state.points == []


def test_a_short_stroke_is_refused(view):
    view.set_mode("draw")
    drag(view.canvas, [(0.0, 0.0), (0.05, 1.0)])
    assert view.state.points == [] and view.state.truth is None


def test_curve_from_stroke_handles_back_and_forth():
    gx, gy = curve_from_stroke([0, 1, 2, 1.5, 3], [0, 1, 2, 5, 3])
    assert np.all(np.diff(gx) >= 0) and gx[0] == 0 and gx[-1] == 3
    assert curve_from_stroke([1.0], [1.0]) is None


def test_random_task_amplitude_and_phase_are_editable(view):
    view.k.setValue(5)
    view.random_task(amplitude=2.0, phase=1.0)
    assert len(view.state.points) == 5
    for x, y in view.state.points:
        assert y == pytest.approx(2.0 * math.sin(x - 1.0))
    view.field("amplitude").setValue(3.0)
    view.field("phase").setValue(0.5)
    for x, y in view.state.points:
        assert y == pytest.approx(3.0 * math.sin(x - 0.5), abs=1e-9)
    assert view.canvas.truth_item.xData is not None and len(view.canvas.truth_item.xData) > 0
    view.undo()  # both spin-box edits... the phase edit
    view.undo()  # ... and the amplitude edit come back one by one
    assert view.state.truth["amplitude"] == pytest.approx(2.0)
    view.clear()
    assert not view.field("amplitude").isEnabled()


def test_predictions_follow_points_and_slider(view, qtbot):
    view.set_initialization(mlp_init())
    view.set_initialization(mlp_init("pretrained", "pretrained", seed=1))
    view.random_task(amplitude=3.0, phase=0.5)
    qtbot.waitUntil(view.up_to_date, timeout=5000)
    first = view.predictions["maml"]
    assert first.curves.shape[0] == 21 and first.mse_kind == "query"
    assert first.mse[20] < first.mse[0]  # adapting to the task lowers the query error
    click(view.canvas, 0.3, 4.0)  # the predictions update when the points change
    qtbot.waitUntil(lambda: view.up_to_date() and view.predictions["maml"] is not first, timeout=5000)
    view.steps.setValue(3)
    post = view._items["maml"][1]
    assert np.allclose(post.yData, view.predictions["maml"].curves[3])
    model = view.table.model()
    assert model.rowCount() == 2
    assert model.index(0, 2).data() not in ("", "…")
    # hiding an initialization hides its curves
    assert model.setData(model.index(1, 0), Qt.CheckState.Unchecked, Qt.ItemDataRole.CheckStateRole)
    assert len(view._items["pretrained"][1].xData or []) == 0


def test_play_animates_the_steps(view, qtbot):
    view.set_initialization(mlp_init())
    view.steps.setValue(20)
    view.play_button.setChecked(True)
    assert view.steps.value() == 0
    qtbot.waitUntil(lambda: not view.play_button.isChecked(), timeout=8000)
    assert view.steps.value() == 20


def test_predict_without_truth_scores_the_fit_and_zero_points_work():
    init = mlp_init()
    p = predict(init, SupportTask(np.array([0.0, 1.0]), np.array([1.0, -1.0])), steps=5)
    assert p.mse_kind == "support" and p.mse.shape == (6,)
    p = predict(init, SupportTask(np.empty(0), np.empty(0)), steps=5)
    assert p.mse is None and np.allclose(p.curves[0], p.curves[5])


def test_diverging_lr_shows_diverged_not_a_crash(view, qtbot):
    model = MLP([1, 16, 16, 1])
    params = OrderedDict((k, v * 50) for k, v in model.init_params(torch.Generator().manual_seed(0)).items())
    view.set_initialization(Initialization("x", "maml", "X", model, params, 1e6))
    view.random_task()
    qtbot.waitUntil(view.up_to_date, timeout=5000)
    text = view.table.model().index(0, 2).data()
    assert text in ("diverged", "—") or float(text) >= 0


def test_initializations_table_model(view, qtbot):
    """The table is a QTableView of a model: name with colour and checkbox, errors at k = 0 and k = the slider."""
    from PySide6.QtGui import QColor
    from PySide6.QtWidgets import QTableView

    from maml_lab.ui.colors import algorithm_color

    assert isinstance(view.table, QTableView)
    model = view.table.model()
    view.set_initialization(mlp_init())
    imported = mlp_init("file:a.safetensors", "pretrained", seed=1)
    imported.source = "imported"
    imported.metadata = {"iterations": 300}
    view.set_initialization(imported)
    assert model.rowCount() == 2 and model.columnCount() == 3
    name = model.index(1, 0)
    assert name.data() == "■  PRETRAINED"
    assert name.data(Qt.ItemDataRole.ForegroundRole).color() == QColor(algorithm_color("pretrained"))
    assert name.data(Qt.ItemDataRole.CheckStateRole) == Qt.CheckState.Checked
    assert name.data(Qt.ItemDataRole.ToolTipRole) == "PRETRAINED: pretrained, inner lr 0.01, 300 iterations"
    assert model.flags(name) & Qt.ItemFlag.ItemIsUserCheckable
    assert not model.flags(model.index(1, 2)) & Qt.ItemFlag.ItemIsUserCheckable
    assert model.index(0, 1).data(Qt.ItemDataRole.TextAlignmentRole) == int(
        Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
    assert model.index(0, 1).data() == model.index(0, 2).data() == "—"  # no prediction yet
    # the header and the last column follow the slider; dataChanged tells the view
    changed = []
    model.dataChanged.connect(lambda tl, br, roles=(): changed.append((tl.column(), br.column())))
    view.steps.setValue(4)
    assert model.headerData(2, Qt.Orientation.Horizontal) == "k = 4"
    assert model.headerData(1, Qt.Orientation.Horizontal) == "k = 0"
    assert (2, 2) in changed
    view.random_task(amplitude=2.0, phase=0.3)
    qtbot.waitUntil(view.up_to_date, timeout=5000)
    assert (1, 2) in changed
    pred = view.predictions["maml"]
    assert model.index(0, 1).data() == f"{pred.mse[0]:.3g}"
    assert model.index(0, 2).data() == f"{pred.mse[4]:.3g}"
    # the checkbox hides and shows the curves
    assert model.setData(name, Qt.CheckState.Unchecked.value, Qt.ItemDataRole.CheckStateRole)
    assert "file:a.safetensors" in view.hidden_keys and not len(view._items["file:a.safetensors"][1].xData or [])
    assert name.data(Qt.ItemDataRole.CheckStateRole) == Qt.CheckState.Unchecked
    assert model.setData(name, Qt.CheckState.Checked, Qt.ItemDataRole.CheckStateRole)
    assert not view.hidden_keys and len(view._items["file:a.safetensors"][1].xData) > 0
    # selecting an imported row enables Remove; a trained row does not
    assert view.remove_button.isVisibleTo(view) and not view.remove_button.isEnabled()
    view.table.selectRow(0)
    assert not view.remove_button.isEnabled()
    view.table.selectRow(1)
    assert view.remove_button.isEnabled()
    view.remove_button.click()
    assert model.rowCount() == 1 and "file:a.safetensors" not in view.inits
    assert not view.remove_button.isVisibleTo(view) and not view.remove_button.isEnabled()
    assert model.index(0, 0).data() == "■  MAML"


def test_a_family_without_a_playground_says_why_and_a_new_family_starts_afresh(view, qtbot):
    from maml_lab.core.tasks.base import CurvePlayground, NoPlayground, TaskField
    from maml_lab.core.tasks.registry import task_family

    view.random_task(amplitude=2.0, phase=1.0)
    view.set_playground(task_family("navigation").playground)
    assert "Arena" in view.reason and view.pages.currentWidget() is view.unavailable
    assert view.unavailable.text() == view.reason
    with qtbot.waitSignal(view.message) as said:
        view.random_task()
    assert said.args == [view.reason]
    view.set_playground(task_family("images").playground)
    assert "Tasks view" in view.reason
    view.set_playground(task_family("sinusoid").playground)  # the same curve as before: the task is kept
    assert not view.reason and view.pages.currentWidget() is view.splitter and view.state.truth["amplitude"] == 2.0

    cubic = CurvePlayground("cubic", "y = c x^3", lambda x, c: c * x ** 3,
                            (TaskField("c", "c", -1.0, 1.0, 0.5),), (-2.0, 2.0), (-9.0, 9.0))
    view.set_playground(cubic)
    assert view.state.points == [] and view.state.truth is None and not view.undo_stack  # another family: afresh
    assert list(view.field_boxes) == ["c"] and view.field("c").value() == 0.5
    assert view.canvas.getPlotItem().getViewBox().viewRange()[1] == pytest.approx([-9.0, 9.0])
    view.random_task(c=0.5)
    assert all(-2.0 <= x <= 2.0 and y == pytest.approx(0.5 * x ** 3) for x, y in view.state.points)
    with pytest.raises(ValueError, match="no field amplitude"):
        view.random_task(amplitude=1.0)
    with pytest.raises(ValueError, match="outside"):
        TaskField("c", "c", 0.0, 1.0, 2.0)
    assert NoPlayground("why").kind == "none"
