"""The form's fields change only when meant to: the wheel steps a field only when it has focus (scrolling the
panel scrolls it), and a whole-number field refuses text it cannot read, saying why, instead of keeping its
digits (issue 21: "Test steps" 10 became 6 under the wheel, "abc-12.5e9" in Iterations became 1,259)."""

import pytest
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtWidgets import QApplication

from maml_lab.ui.experiment_panel import ExperimentPanel
from maml_lab.ui.fields import IntField, guard_fields


@pytest.fixture
def panel(qtbot, qapp):
    guard_fields(qapp)  # as make_application does
    p = ExperimentPanel()
    qtbot.addWidget(p)
    p.resize(p.minimumWidth(), 360)  # short: the form scrolls
    p.show()
    qtbot.waitExposed(p)
    return p


def wheel(widget, steps: int = -1) -> None:
    """Turn the wheel over the middle of `widget` by `steps` notches (negative: towards the user)."""
    centre = QPointF(widget.width() / 2, widget.height() / 2)
    event = QWheelEvent(centre, QPointF(widget.mapToGlobal(centre.toPoint())), QPoint(0, 0), QPoint(0, 120 * steps),
                        Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(widget, event)


def test_the_wheel_scrolls_the_form_over_an_unfocused_field_and_steps_a_focused_one(panel, qtbot):
    field = panel.columns["maml"].test_steps
    field.setValue(10)
    panel.columns["maml"].enabled.setChecked(True)
    bar = panel.scroll.verticalScrollBar()
    assert bar.maximum() > 0
    bar.setValue(bar.maximum() // 2)
    before = bar.value()
    assert not field.hasFocus()
    for _ in range(4):
        wheel(field, -1)
    assert field.value() == 10  # the field kept its value...
    assert bar.value() > before  # ...and the form scrolled instead
    assert field.focusPolicy() == Qt.FocusPolicy.StrongFocus  # the wheel does not give it focus either
    field.setFocus()
    qtbot.waitUntil(field.hasFocus, timeout=2000)
    wheel(field, -1)
    assert field.value() == 9  # with focus, the wheel steps it
    combo = panel.activation
    panel.setFocus()
    chosen = combo.currentIndex()
    wheel(combo, -1)
    assert combo.currentIndex() == chosen  # choices too


def type_into(qtbot, field: IntField, text: str) -> None:
    field.setFocus()
    field.lineEdit().selectAll()
    qtbot.keyClicks(field.lineEdit(), text)


def test_unreadable_text_is_refused_with_the_reason_not_read_as_its_digits(panel, qtbot):
    field = panel.iterations
    field.setValue(1000)
    assert panel.valid
    type_into(qtbot, field, "abc-12.5e9")
    assert field.lineEdit().text() == "abc-12.5e9"  # every character typed is there...
    assert field.value() == 1000  # ...and none of it became the value
    assert not panel.valid and "Iterations must be a whole number" in panel.message and "abc-12.5e9" in panel.message
    assert panel.error.isVisible() and panel.error.text().endswith(panel.message)
    assert field.property("invalid")
    assert panel.try_config()[0] is None
    panel.seed.setFocus()  # leaving the field, or Enter, does not put an old number back over what was typed
    qtbot.waitUntil(lambda: not field.hasFocus(), timeout=2000)
    assert field.lineEdit().text() == "abc-12.5e9" and not panel.valid
    type_into(qtbot, field, "0")
    assert "Iterations must be from 1 to 100,000,000, got 0" in panel.message
    type_into(qtbot, field, "2,500")
    assert panel.valid and field.value() == 2500 and panel.config().iterations == 2500
    qtbot.keyClick(field.lineEdit(), Qt.Key.Key_Return)
    assert field.value() == 2500 and panel.valid


def test_a_step_replaces_unreadable_text_with_a_number():
    field = IntField("Seed")
    field.setRange(0, 10)
    field.setValue(4)
    field.lineEdit().setText("x")
    assert field.problem().startswith("Seed must be a whole number") and field.value() == 4
    field.stepBy(1)
    assert field.value() == 5 and field.problem() == ""
    field.lineEdit().setText("")
    assert field.problem() == "Seed is empty: enter a whole number from 0 to 10"
