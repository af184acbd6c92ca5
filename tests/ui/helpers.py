"""Mouse input in data coordinates for the playground canvas."""

from PySide6.QtCore import QPointF, Qt
from PySide6.QtGui import QMouseEvent
from PySide6.QtWidgets import QApplication

LEFT = Qt.MouseButton.LeftButton
RIGHT = Qt.MouseButton.RightButton
NONE = Qt.MouseButton.NoButton


def _send(canvas, kind, x, y, button, buttons):
    viewport = canvas.viewport()
    pos = QPointF(canvas.data_to_widget(x, y).toPoint())
    event = QMouseEvent(kind, pos, QPointF(viewport.mapToGlobal(pos.toPoint())), button, buttons,
                        Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(viewport, event)


def press(canvas, x, y, button=LEFT):
    _send(canvas, QMouseEvent.Type.MouseButtonPress, x, y, button, button)


def move(canvas, x, y, buttons=LEFT):
    _send(canvas, QMouseEvent.Type.MouseMove, x, y, NONE, buttons)


def release(canvas, x, y, button=LEFT):
    _send(canvas, QMouseEvent.Type.MouseButtonRelease, x, y, button, NONE)


def click(canvas, x, y, button=LEFT):
    press(canvas, x, y, button)
    release(canvas, x, y, button)


def drag(canvas, path, button=LEFT):
    (x0, y0), *rest = path
    press(canvas, x0, y0, button)
    for x, y in rest:
        move(canvas, x, y, button)
    release(canvas, *path[-1], button)
