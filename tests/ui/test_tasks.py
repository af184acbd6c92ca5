"""The Tasks view: held-out image tasks with every trained initialization's predictions, shots picked by clicking,
drawn shots and query with class probabilities, and the `--view tasks` screenshot. Trained for a few iterations on
the built-in glyphs (conv-4 is slow on a CPU: small settings)."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QPointF, Qt
from PySide6.QtGui import QImage, QMouseEvent
from PySide6.QtWidgets import QApplication


@pytest.fixture(scope="module")
def trained(qapp, tmp_path_factory):
    """A window that trained MAML and the pretrained baseline for 3 iterations on the glyphs (module-wide)."""
    from PySide6.QtCore import QSettings

    from maml_lab.ui.main_window import MainWindow

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MAML_LAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        folder = tmp_path_factory.mktemp("settings")
        w = MainWindow(settings=QSettings(str(folder / "s.ini"), QSettings.Format.IniFormat), persist=False)
        w.resize(1280, 820)
        p = w.panel
        p.task.setCurrentIndex(p.task.findData("images"))
        p.iterations.setValue(3)
        p.meta_batch.setValue(2)
        for name, col in p.columns.items():
            col.enabled.setChecked(name in ("maml", "pretrained"))
        w.tabs.setCurrentWidget(w.views["tasks"])
        w.show()
        assert w.start()
        assert w.wait_for_training(120) == "finished"
        assert w.views["tasks"].wait_until_idle(60)
        yield w
        w.close()


def _distinct_colors(image: QImage, step: int = 7) -> int:
    image = image.convertToFormat(QImage.Format.Format_RGB32)
    seen = set()
    for y in range(0, image.height(), step):
        for x in range(0, image.width(), step):
            seen.add(image.pixel(x, y))
    return len(seen)


def test_tasks_view_shows_support_queries_and_predictions(trained):
    view = trained.views["tasks"]
    assert trained.views["tasks"] is view and view.family is not None and view.family.ways == 5
    task = view.task
    assert task is not None and task.ways == 5 and all(len(s) == 1 for s in task.support)
    assert len(view.support_grid.rows) == 5 and view.support_grid.rows[0].label == "label 0"
    assert set(view.predictions) == {"maml", "pretrained"}
    n_queries = sum(len(q) for q in task.queries)
    for before, after in view.predictions.values():
        assert before.shape == after.shape == (n_queries, 5)
        assert np.allclose(after.sum(1), 1.0)
    rows = view.prediction_grid.rows
    assert [r.label.split(" · ")[1].split(" ")[0] for r in rows] == ["before", "after"] * 2
    assert "MAML" in view.accuracy_label.text() and "→" in view.accuracy_label.text()
    assert view.family.info["split"]["part"] == "heldout"  # classes training never saw
    # the accuracy reached the training plots
    assert trained.history.has_accuracy() and trained.views["training"].accuracy
    assert ("maml", "post_accuracy", "smooth") in trained.views["training"].curves
    picture = view.grab().toImage()
    assert picture.width() > 600 and _distinct_colors(picture) > 40  # not blank


def test_new_task_samples_other_heldout_classes(trained):
    view = trained.views["tasks"]
    first = list(view.task.classes)
    view.new_button.click()
    assert view.task.classes != first
    assert view.wait_until_idle(30) and set(view.predictions) == {"maml", "pretrained"}


def test_clicking_an_image_makes_it_a_shot(trained, qtbot):
    view = trained.views["tasks"]
    task = view.task
    rows = view._class_rows(0)
    col = next(c for c, r in enumerate(rows) if r not in task.support[0] and r in task.queries[0])
    row = rows[col]
    queries_before = len(task.queries[0])
    qtbot.mouseClick(view.browser, Qt.MouseButton.LeftButton, pos=view.browser.image_rect(0, col).center())
    assert row in task.support[0] and len(task.support[0]) == 2
    assert row not in task.queries[0] and len(task.queries[0]) == queries_before  # a replacement query
    assert view.browser.rows[0].frames[col] is not None  # marked as a shot
    assert len(view.support_grid.rows[0].images) == 2
    assert view.wait_until_idle(30)
    before, after = view.predictions["maml"]
    assert after.shape[0] == sum(len(q) for q in task.queries)
    # clicking the shot in the support grid removes it again; the last shot of a class stays
    qtbot.mouseClick(view.support_grid, Qt.MouseButton.LeftButton, pos=view.support_grid.image_rect(0, 1).center())
    assert task.support[0] == [task.support[0][0]]
    assert not view.toggle_shot(0, task.support[0][0]) and len(task.support[0]) == 1


def _stroke(widget, points) -> None:
    def send(kind, x, y, button, buttons):
        pos = QPointF(x, y)
        event = QMouseEvent(kind, pos, QPointF(widget.mapToGlobal(pos.toPoint())), button, buttons,
                            Qt.KeyboardModifier.NoModifier)
        QApplication.sendEvent(widget, event)

    left, none = Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton
    send(QMouseEvent.Type.MouseButtonPress, *points[0], left, left)
    for x, y in points[1:]:
        send(QMouseEvent.Type.MouseMove, x, y, none, left)
    send(QMouseEvent.Type.MouseButtonRelease, *points[-1], left, none)


def test_drawn_shots_and_query_give_class_probabilities(trained):
    view = trained.views["tasks"]
    view.draw_mode.click()
    assert view.stack.currentIndex() == 1 and len(view.draw_cells) == 5
    view.clear_drawings()
    size = view.query_cell.width()
    shapes = [[(0.2, 0.2), (0.8, 0.8)], [(0.5, 0.15), (0.5, 0.85)], [(0.2, 0.5), (0.8, 0.5)],
              [(0.2, 0.8), (0.8, 0.2)], [(0.3, 0.3), (0.7, 0.3), (0.7, 0.7), (0.3, 0.7), (0.3, 0.3)]]
    for cell, shape in zip(view.draw_cells, shapes, strict=True):
        _stroke(cell, [(x * size, y * size) for x, y in shape])
    assert view.drawn_support() is not None
    _stroke(view.query_cell, [(0.25 * size, 0.2 * size), (0.75 * size, 0.8 * size)])
    image = view.query_cell.image()
    assert image.shape == (28, 28) and image.dtype == np.float32
    assert image.max() > 0.9 and image.min() == 0.0 and 20 < (image > 0.5).sum() < 200  # a stroke, not a fill
    assert image[5, 7] > 0.5 and image[27, 0] == 0.0  # strokes 1 on 0 where drawn
    assert view.wait_until_idle(30)
    probs = view.drawn_probabilities()
    assert set(probs) == {"maml", "pretrained"}
    for p in probs.values():
        assert p.shape == (5,) and np.isclose(p.sum(), 1.0) and (p >= 0).all()
    assert len(view.chart.bars) == 2
    view.query_cell.clear()
    assert view.query_cell.empty and view.query_cell.image().max() == 0.0
    assert view.wait_until_idle(30) and not view.drawn_probabilities()
    view.task_mode.click()


def test_tasks_screenshot(tmp_path, monkeypatch):
    from maml_lab import app

    monkeypatch.setenv("MAML_LAB_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "tasks.png"
    assert app.main(["--screenshot", str(path), "--iterations", "2", "--view", "tasks", "--size", "1200x780"]) == 0
    image = QImage(str(path))
    assert image.width() == 1200 and _distinct_colors(image) > 60
