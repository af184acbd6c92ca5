"""Text that fits where it is put: a label and a status bar that elide what does not fit ("…") and show the
whole text as a tooltip, instead of cutting it off or drawing it over their neighbours."""

from __future__ import annotations

from PySide6.QtCore import QEvent, QRect, QSize, Qt
from PySide6.QtGui import QPainter
from PySide6.QtWidgets import QLabel, QSizeGrip, QStatusBar, QStyle, QStyleOption, QToolTip, QWidget


class ElidedLabel(QLabel):
    """A one-line plain-text label that may be narrower than its text: it draws the text elided (`mode`) and its
    tooltip adds the whole text. `text()` stays the whole text. `compact_text`, when set, is drawn (and sized)
    instead of the text, elided in turn where it does not fit, the whole text in the tooltip: a shorter form that
    keeps every item (the toolbar's cost meter with three or more algorithms: each one's time)."""

    compact_text = ""

    def __init__(self, text: str = "", mode: Qt.TextElideMode = Qt.TextElideMode.ElideRight, min_chars: int = 8,
                 parent=None):
        super().__init__(text, parent)
        self.mode = mode
        self.min_chars = min_chars
        self.setTextFormat(Qt.TextFormat.PlainText)

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        hint = super().minimumSizeHint()
        width = self.fontMetrics().horizontalAdvance("x" * self.min_chars + "…")
        margins = self.contentsMargins()
        return QSize(min(hint.width(), width + margins.left() + margins.right()), hint.height())

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        hint = super().sizeHint()
        if not self.compact_text:
            return hint
        margins = self.contentsMargins()
        width = self.fontMetrics().horizontalAdvance(self.compact_text) + margins.left() + margins.right()
        return QSize(width, hint.height())

    def shown_text(self) -> str:
        """The text as drawn: the compact text if set, else the text, elided to the label's width."""
        return self.fontMetrics().elidedText(self.compact_text or self.text(), self.mode, self.contentsRect().width())

    def elided(self) -> bool:
        return self.shown_text() != self.text()

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt's name
        painter = QPainter(self)
        self.style().drawItemText(painter, self.contentsRect(), int(self.alignment() | Qt.AlignmentFlag.AlignVCenter),
                                  self.palette(), self.isEnabled(), self.shown_text(), self.foregroundRole())

    def event(self, event) -> bool:
        if event.type() == QEvent.Type.ToolTip and self.elided():
            tip = self.text() + (f"\n\n{self.toolTip()}" if self.toolTip() else "")
            QToolTip.showText(event.globalPos(), tip, self)
            return True
        return super().event(event)


class ElidingStatusBar(QStatusBar):
    """A status bar whose temporary message is elided before the first permanent widget (QStatusBar draws a long
    message over them: over the "Run folder:" link); the whole message is its tooltip while shown."""

    def message_rect(self) -> QRect:
        """Where the message goes: from the left edge to just before the first visible permanent widget."""
        right = self.width() - 12
        permanent = [w for w in self.findChildren(QWidget)
                     if w.parent() is self and w.isVisible() and not isinstance(w, QSizeGrip)]
        if permanent:
            right = min(right, min(w.x() for w in permanent) - 8)
        rect = self.rect().adjusted(6, 0, 0, 0)
        rect.setRight(max(rect.left(), right))
        return rect

    def shown_message(self) -> str:
        """The message as drawn: elided to `message_rect`."""
        return self.fontMetrics().elidedText(self.currentMessage(), Qt.TextElideMode.ElideRight,
                                             self.message_rect().width())

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt's name
        painter = QPainter(self)
        option = QStyleOption()
        option.initFrom(self)
        self.style().drawPrimitive(QStyle.PrimitiveElement.PE_PanelStatusBar, option, painter, self)
        if self.currentMessage():
            painter.setPen(self.palette().windowText().color())
            painter.drawText(self.message_rect(), int(Qt.AlignmentFlag.AlignLeading | Qt.AlignmentFlag.AlignVCenter),
                             self.shown_message())

    def event(self, event) -> bool:
        if event.type() == QEvent.Type.ToolTip and self.currentMessage():
            QToolTip.showText(event.globalPos(), self.currentMessage(), self)
            return True
        return super().event(event)
