"""Numeric and choice fields that change only when the user means them to.

`WheelGuard`, installed once on the application (`guard_fields`), keeps the mouse wheel from changing a spin box
or a combo box that does not have keyboard focus: scrolling a form then scrolls the form, instead of turning
every field the pointer crosses (a click or Tab gives a field focus; then the wheel steps it). `IntField` is a
whole-number spin box that reads what is typed or says why it cannot (`problem()`), instead of keeping the
digits of unreadable text ("abc-12.5e9" is refused, not read as 1,259).
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, QPointF, Qt
from PySide6.QtGui import QValidator, QWheelEvent
from PySide6.QtWidgets import QAbstractSpinBox, QApplication, QComboBox, QSpinBox

GUARDED = (QAbstractSpinBox, QComboBox)


class WheelGuard(QObject):
    """An event filter: a wheel event over a guarded field without focus goes to the field's parents, nearest
    first, until one takes it (a scroll area scrolls), instead of changing the field."""

    def eventFilter(self, watched, event) -> bool:  # noqa: N802 - Qt's name
        if event.type() == QEvent.Type.Wheel and isinstance(watched, GUARDED) and not watched.hasFocus():
            _to_parents(watched, event)
            return True
        return False


def _to_parents(widget, event: QWheelEvent) -> None:
    """Offer `event` to `widget`'s parents until one accepts it (what Qt does for a wheel event nobody takes; done
    here so that it also holds for synthesized events, which Qt does not propagate)."""
    position = widget.mapTo(widget.window(), event.position().toPoint()) if not widget.isWindow() else None
    parent = widget.parentWidget()
    while parent is not None:
        local = QPointF(parent.mapFrom(widget.window(), position)) if position is not None else event.position()
        offered = QWheelEvent(local, event.globalPosition(), event.pixelDelta(), event.angleDelta(), event.buttons(),
                              event.modifiers(), event.phase(), event.inverted(), event.source())
        offered.setAccepted(False)
        QApplication.sendEvent(parent, offered)
        if offered.isAccepted() or parent.isWindow():
            break
        parent = parent.parentWidget()
    event.accept()


def unguarded_focus(widget) -> None:
    """A guarded field takes focus by click or Tab only, never by the wheel (Qt's WheelFocus would give it focus,
    and so the value, on the first turn of the wheel)."""
    if widget.focusPolicy() == Qt.FocusPolicy.WheelFocus:
        widget.setFocusPolicy(Qt.FocusPolicy.StrongFocus)


class _FocusPolicyGuard(QObject):
    """Applies `unguarded_focus` to every guarded field as it is first shown."""

    def eventFilter(self, watched, event) -> bool:  # noqa: N802 - Qt's name
        if event.type() == QEvent.Type.Polish and isinstance(watched, GUARDED):
            unguarded_focus(watched)
        return False


_GUARDS: dict[int, tuple[QObject, QObject]] = {}


def guard_fields(app: QApplication) -> None:
    """Install the wheel guard on the whole application, once (every spin box and combo box of every window)."""
    if id(app) in _GUARDS:
        return
    guards = (WheelGuard(app), _FocusPolicyGuard(app))
    for guard in guards:
        app.installEventFilter(guard)
    _GUARDS[id(app)] = guards


class IntField(QSpinBox):
    """A whole-number field: any text may be typed, but only a whole number in range becomes its value. Anything
    else leaves the value as it was and stays in the field with `problem()` saying why, for the form to show (a
    plain QSpinBox drops the characters it does not take and keeps the digits)."""

    def __init__(self, what: str, parent=None):
        super().__init__(parent)
        self.what = what  # the field's name in messages: "Iterations"

    def read(self, text: str) -> tuple[int | None, str]:
        """(value, "") for text that is a whole number in range, else (None, why not)."""
        raw = text.strip()
        if self.prefix() and raw.startswith(self.prefix()):
            raw = raw[len(self.prefix()):]
        if self.suffix() and raw.endswith(self.suffix()):
            raw = raw[: -len(self.suffix())]
        # the locale's thousands separator (as the field shows numbers: "1,000") and spaces go; nothing else
        digits = raw.strip().replace(self.locale().groupSeparator(), "")
        digits = digits.replace(" ", "").replace("\u00a0", "").replace("\u202f", "")
        lo, hi = self.minimum(), self.maximum()
        if not digits:
            return None, f"{self.what} is empty: enter a whole number from {lo:,} to {hi:,}"
        try:
            value = int(digits)
        except ValueError:
            return None, f"{self.what} must be a whole number from {lo:,} to {hi:,}, got '{text.strip()}'"
        if not lo <= value <= hi:
            return None, f"{self.what} must be from {lo:,} to {hi:,}, got {value:,}"
        return value, ""

    def problem(self) -> str:
        """Why the text in the field is not its value ("" when it is)."""
        return self.read(self.lineEdit().text())[1]

    # -- QSpinBox ----------------------------------------------------------------------------------------
    def validate(self, text: str, pos: int):
        return QValidator.State.Acceptable, text, pos  # typing is free; the value changes only on readable text

    def fixup(self, text: str) -> str:
        return text

    def valueFromText(self, text: str) -> int:  # noqa: N802 - Qt's name
        value, problem = self.read(text)
        return self.value() if problem else value

    def _keep_text(self, handle, event) -> None:
        """Let Qt handle `event` (focus out, Enter), then put back unreadable text it replaced by the old value:
        the field goes on showing what cannot be read until the user fixes it."""
        text, bad = self.lineEdit().text(), bool(self.problem())
        handle(event)
        if bad and self.lineEdit().text() != text:
            self.lineEdit().setText(text)

    def focusOutEvent(self, event) -> None:  # noqa: N802 - Qt's name
        self._keep_text(super().focusOutEvent, event)

    def keyPressEvent(self, event) -> None:  # noqa: N802 - Qt's name
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            self._keep_text(super().keyPressEvent, event)
        else:
            super().keyPressEvent(event)
