"""Small painted widgets for image tasks: rows of thumbnails (clickable), the prediction table of a task's queries,
and a 28x28 drawing cell. They hold no model; the Tasks view feeds them pictures and predictions."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PySide6.QtCore import QPointF, QRect, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QFont, QFontMetrics, QImage, QPainter, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

from .colors import OKABE_ITO
from .theme import ACCENT, BORDER, MUTED, TEXT

RIGHT = OKABE_ITO["bluish_green"]
WRONG = OKABE_ITO["vermillion"]
RIGHT_BG = "#DDF3EC"
WRONG_BG = "#FBE3D6"
DRAW_SIZE = 28  # drawn images are 28x28, strokes 1 on 0 like the preprocessed sets
DRAW_SCALE = 4  # strokes are drawn at 4x and area-averaged down, so they are anti-aliased like the data


def qimage_from_array(image) -> QImage:
    """A QImage of an image array: [H, W] or [C, H, W] (C = 1 or 3), uint8 or float in [0, 1]."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        a = (np.clip(a.astype(np.float32), 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    if a.ndim == 3:
        a = a[0] if a.shape[0] == 1 else np.transpose(a, (1, 2, 0))
    a = np.ascontiguousarray(a)
    h, w = a.shape[:2]
    if a.ndim == 2:
        return QImage(a.data, w, h, w, QImage.Format.Format_Grayscale8).copy()
    return QImage(a.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()


def _font(base: QFont, delta: float = 0.0, bold: bool = False) -> QFont:
    f = QFont(base)
    if delta:
        f.setPointSizeF(max(f.pointSizeF() + delta, 6.0))
    f.setBold(bold)
    return f


@dataclass
class ThumbRow:
    """One row of a ThumbGrid: a label (and a muted second line) and its images, each optionally framed in a
    colour, with a short badge and a tooltip."""

    label: str
    images: list[QImage]
    sublabel: str = ""
    frames: list[str | None] = field(default_factory=list)
    badges: list[str] = field(default_factory=list)
    tooltips: list[str] = field(default_factory=list)
    faded: list[bool] = field(default_factory=list)


class ThumbGrid(QWidget):
    """Rows of thumbnails with a label per row, painted; a click on a thumbnail emits clicked(row, column).

    Rows are `row_height` apart (so two grids side by side line up); with `fit` the thumbnails shrink (down to
    `min_cell`) to fit the widget's width instead of needing a scroll bar.
    """

    clicked = Signal(int, int)

    def __init__(self, cell: int = 40, gap: int = 4, label_width: int = 96, clickable: bool = True,
                 empty_text: str = "", row_height: int | None = None, fit: bool = False, min_cell: int = 22,
                 parent=None):
        super().__init__(parent)
        self.cell = cell
        self.gap = gap
        self.row_height = row_height or cell + gap
        self.fit = fit
        self.min_cell = min_cell
        self.label_width = label_width
        self.clickable = clickable
        self.empty_text = empty_text
        self.rows: list[ThumbRow] = []
        self.hover: tuple[int, int] | None = None
        self.setMouseTracking(clickable)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)

    def set_rows(self, rows: list[ThumbRow]) -> None:
        self.rows = list(rows)
        self.hover = None
        self.updateGeometry()
        self.update()

    def columns(self) -> int:
        return max((len(r.images) for r in self.rows), default=0)

    def sizeHint(self) -> QSize:
        cols = max(self.columns(), 1)
        rows = max(len(self.rows), 1)
        return QSize(self.label_width + cols * (self.cell + self.gap) + 4, rows * self.row_height + 4)

    def minimumSizeHint(self) -> QSize:
        if not self.fit:
            return self.sizeHint()
        cols = max(self.columns(), 1)
        return QSize(self.label_width + cols * (self.min_cell + self.gap) + 4, self.sizeHint().height())

    def cell_size(self) -> int:
        if not self.fit:
            return self.cell
        cols = max(self.columns(), 1)
        room = (self.width() - self.label_width - 4) / cols - self.gap
        return int(max(self.min_cell, min(self.cell, room)))

    def image_rect(self, row: int, col: int) -> QRect:
        cell = self.cell_size()
        x = self.label_width + col * (cell + self.gap) + 2
        y = row * self.row_height + 2 + max(0, (self.row_height - self.gap - cell) // 2)
        return QRect(x, y, cell, cell)

    def hit(self, pos) -> tuple[int, int] | None:
        for r, row in enumerate(self.rows):
            for c in range(len(row.images)):
                if self.image_rect(r, c).contains(pos.toPoint() if hasattr(pos, "toPoint") else pos):
                    return r, c
        return None

    def mousePressEvent(self, ev):
        if self.clickable and ev.button() == Qt.MouseButton.LeftButton:
            where = self.hit(ev.position())
            if where is not None:
                self.clicked.emit(*where)
                return
        super().mousePressEvent(ev)

    def mouseMoveEvent(self, ev):
        if self.clickable:
            where = self.hit(ev.position())
            if where != self.hover:
                self.hover = where
                self.setCursor(Qt.CursorShape.PointingHandCursor if where else Qt.CursorShape.ArrowCursor)
                tip = ""
                if where is not None:
                    row = self.rows[where[0]]
                    tip = row.tooltips[where[1]] if where[1] < len(row.tooltips) else ""
                self.setToolTip(tip)
                self.update()
        super().mouseMoveEvent(ev)

    def leaveEvent(self, ev):
        if self.hover is not None:
            self.hover = None
            self.update()
        super().leaveEvent(ev)

    def paintEvent(self, ev):
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        base = self.font()
        if not self.rows and self.empty_text:
            p.setPen(QColor(MUTED))
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, self.empty_text)
        for r, row in enumerate(self.rows):
            top = r * self.row_height + 2
            if self.label_width > 8:
                box = QRect(2, top, self.label_width - 10, self.row_height - self.gap)
                p.setPen(QColor(TEXT))
                p.setFont(_font(base, 0, True))
                if row.sublabel:
                    fm = QFontMetrics(p.font())
                    half = box.height() // 2
                    p.drawText(box.adjusted(0, 0, 0, -half + 2),
                               Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignBottom,
                               fm.elidedText(row.label, Qt.TextElideMode.ElideRight, box.width()))
                    p.setFont(_font(base, -1.5))
                    p.setPen(QColor(MUTED))
                    fm = QFontMetrics(p.font())
                    p.drawText(box.adjusted(0, half + 1, 0, 0),
                               Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop,
                               fm.elidedText(row.sublabel, Qt.TextElideMode.ElideMiddle, box.width()))
                else:
                    p.drawText(box, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, row.label)
            for c, image in enumerate(row.images):
                rect = self.image_rect(r, c)
                faded = c < len(row.faded) and row.faded[c]
                p.setOpacity(0.35 if faded else 1.0)
                p.drawImage(QRectF(rect), image)
                p.setOpacity(1.0)
                frame = row.frames[c] if c < len(row.frames) else None
                hovered = self.hover == (r, c)
                if frame or hovered:
                    pen = QPen(QColor(frame or ACCENT), 3 if frame else 2)
                    if hovered and not frame:
                        pen.setStyle(Qt.PenStyle.DotLine)
                    p.setPen(pen)
                    p.setBrush(Qt.BrushStyle.NoBrush)
                    p.drawRoundedRect(QRectF(rect).adjusted(-1.5, -1.5, 1.5, 1.5), 3, 3)
                badge = row.badges[c] if c < len(row.badges) else ""
                if badge and rect.width() < 28:  # too small for text: a dot in the corner
                    p.setPen(QPen(QColor("white"), 1))
                    p.setBrush(QColor(frame or "#4A4F55"))
                    p.drawEllipse(QRectF(rect.right() - 6, rect.top() + 1, 6, 6))
                elif badge:
                    p.setFont(_font(base, -2, True))
                    fm = QFontMetrics(p.font())
                    w = max(fm.horizontalAdvance(badge) + 6, 14)
                    brect = QRectF(rect.right() - w + 1, rect.top(), w, 13)
                    p.setPen(Qt.PenStyle.NoPen)
                    p.setBrush(QColor(frame or "#4A4F55"))
                    p.drawRoundedRect(brect, 3, 3)
                    p.setPen(QColor("white"))
                    p.drawText(brect, Qt.AlignmentFlag.AlignCenter, badge)
        p.end()


@dataclass
class PredictionRow:
    """One initialization before or after adaptation: its predicted label for every query."""

    label: str
    color: str
    predicted: list[int]
    accuracy: float
    dashed: bool = False  # before adaptation


class PredictionGrid(QWidget):
    """The task's query images (grouped by true label) and, row by row, what each initialization predicts for
    them before and after adaptation: the predicted label on green (right, ✓) or vermillion (wrong, ✗), with
    the row's accuracy at the end. Query images grow (from `cell` up to `max_cell`) to use the width there is."""

    def __init__(self, cell: int = 36, label_width: int = 200, max_cell: int = 60, parent=None):
        super().__init__(parent)
        self.min_cell = cell
        self.max_cell = max_cell
        self.cell = cell
        self.label_width = label_width
        self.chip_height = 24
        self.group_gap = 10
        self.images: list[QImage] = []
        self.truth: list[int] = []
        self.rows: list[PredictionRow] = []
        self.empty_text = ""
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)

    def set_data(self, images: list[QImage], truth: list[int], rows: list[PredictionRow],
                 empty_text: str = "") -> None:
        self.images, self.truth, self.rows, self.empty_text = list(images), list(truth), list(rows), empty_text
        self._fit()
        self.updateGeometry()
        self.update()

    def _fit(self) -> bool:
        """Choose the cell size for the current width; True when it changed."""
        n = max(len(self.truth), 1)
        groups = len(set(self.truth))
        room = (self.width() - self.label_width - 70 - self.group_gap * max(groups - 1, 0)) / n - 3
        cell = int(max(self.min_cell, min(self.max_cell, room)))
        changed = cell != self.cell
        self.cell = cell
        self.chip_height = max(22, min(30, cell // 2 + 4))
        return changed

    def resizeEvent(self, ev):
        super().resizeEvent(ev)
        if self._fit():
            self.updateGeometry()
            self.update()

    def _xs(self) -> list[int]:
        xs, x = [], self.label_width
        for i, t in enumerate(self.truth):
            if i and t != self.truth[i - 1]:
                x += self.group_gap
            xs.append(x)
            x += self.cell + 3
        return xs

    def _header_height(self) -> int:
        return 16 + self.cell + 6

    def sizeHint(self) -> QSize:
        n = len(self.truth)
        width = self.label_width + n * (self.min_cell + 3) + self.group_gap * max(len(set(self.truth)) - 1, 0) + 70
        extra = 26 if self.empty_text else 0
        return QSize(width, self._header_height() + len(self.rows) * (self.chip_height + 5) + 6 + extra)

    def minimumSizeHint(self) -> QSize:
        return self.sizeHint()

    def paintEvent(self, ev):
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        base = self.font()
        xs = self._xs()
        # header: "label j" above each group of queries, then the images
        p.setFont(_font(base, -1, True))
        p.setPen(QColor(MUTED))
        p.drawText(QRect(0, 16, self.label_width - 12, self.cell), Qt.AlignmentFlag.AlignRight
                   | Qt.AlignmentFlag.AlignVCenter, "query (true label)")
        start = 0
        for i in range(1, len(self.truth) + 1):
            if i == len(self.truth) or self.truth[i] != self.truth[start]:
                left, right = xs[start], xs[i - 1] + self.cell
                p.setPen(QColor(MUTED))
                p.drawText(QRect(left - 4, 0, right - left + 8, 14), Qt.AlignmentFlag.AlignCenter,
                           f"label {self.truth[start]}")
                p.setPen(QPen(QColor(BORDER), 1))
                p.drawLine(QPointF(left, 14.5), QPointF(right, 14.5))
                start = i
        for x, image in zip(xs, self.images, strict=False):
            p.drawImage(QRectF(x, 16, self.cell, self.cell), image)
        y = self._header_height()
        for row in self.rows:
            # label: a colour swatch (dashed outline before adaptation, filled after) and the text
            sw = QRectF(4, y + (self.chip_height - 10) / 2, 18, 10)
            if row.dashed:
                pen = QPen(QColor(row.color), 1.6)
                pen.setStyle(Qt.PenStyle.DashLine)
                p.setPen(pen)
                p.setBrush(Qt.BrushStyle.NoBrush)
            else:
                p.setPen(Qt.PenStyle.NoPen)
                p.setBrush(QColor(row.color))
            p.drawRoundedRect(sw, 2, 2)
            p.setFont(_font(base, -0.5, not row.dashed))
            p.setPen(QColor(TEXT if not row.dashed else MUTED))
            fm = QFontMetrics(p.font())
            p.drawText(QRect(28, y, self.label_width - 34, self.chip_height),
                       Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
                       fm.elidedText(row.label, Qt.TextElideMode.ElideRight, self.label_width - 34))
            p.setFont(_font(base, -1, True))
            for x, pred, truth in zip(xs, row.predicted, self.truth, strict=False):
                right = pred == truth
                chip = QRectF(x, y, self.cell, self.chip_height)
                p.setPen(QPen(QColor(RIGHT if right else WRONG), 1))
                p.setBrush(QColor(RIGHT_BG if right else WRONG_BG))
                p.drawRoundedRect(chip.adjusted(0.5, 0.5, -0.5, -0.5), 4, 4)
                p.setPen(QColor(RIGHT if right else WRONG).darker(125))
                p.drawText(chip, Qt.AlignmentFlag.AlignCenter, f"{'✓' if right else '✗'}{pred}")
            if xs:
                p.setFont(_font(base, 0, True))
                p.setPen(QColor(TEXT if not row.dashed else MUTED))
                p.drawText(QRect(xs[-1] + self.cell + 10, y, 60, self.chip_height),
                           Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, f"{row.accuracy:.0%}")
            y += self.chip_height + 5
        if self.empty_text:
            p.setFont(base)
            p.setPen(QColor(MUTED))
            p.drawText(QRect(4, y, max(self.width() - 8, 100), 24),
                       Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, self.empty_text)
        p.end()


class DrawCell(QWidget):
    """A 28x28 image drawn with the mouse, white strokes on black (strokes 1 on 0, as the data are
    preprocessed), shown enlarged. Emits `changed` when a stroke ends or the cell is cleared."""

    changed = Signal()

    def __init__(self, display: int = 112, pen_width: float = 2.3, parent=None):
        super().__init__(parent)
        self.canvas = QImage(DRAW_SIZE * DRAW_SCALE, DRAW_SIZE * DRAW_SCALE, QImage.Format.Format_Grayscale8)
        self.canvas.fill(0)
        self.pen_width = pen_width  # in pixels of the 28x28 image
        self._last: QPointF | None = None
        self._ink = False
        self._size = display
        self.set_size(display)
        self.setCursor(Qt.CursorShape.CrossCursor)
        self.setToolTip("Draw with the mouse (white on black, like the preprocessed images)")

    def set_size(self, size: int) -> None:
        """Square, `size` pixels (a layout short of room may narrow it down to 72)."""
        self._size = int(size)
        self.setMinimumWidth(min(72, self._size))
        self.setMaximumWidth(self._size)
        self.setFixedHeight(self._size)
        self.updateGeometry()

    def sizeHint(self) -> QSize:
        return QSize(self._size, self._size)

    def _to_canvas(self, pos: QPointF) -> QPointF:
        return QPointF(pos.x() * self.canvas.width() / max(self.width(), 1),
                       pos.y() * self.canvas.height() / max(self.height(), 1))

    def _stroke(self, a: QPointF, b: QPointF) -> None:
        p = QPainter(self.canvas)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        pen = QPen(QColor("white"), self.pen_width * DRAW_SCALE)
        pen.setCapStyle(Qt.PenCapStyle.RoundCap)
        pen.setJoinStyle(Qt.PenJoinStyle.RoundJoin)
        p.setPen(pen)
        if a == b:
            p.drawPoint(a)
        else:
            p.drawLine(a, b)
        p.end()
        self._ink = True
        self.update()

    def mousePressEvent(self, ev):
        if ev.button() == Qt.MouseButton.LeftButton:
            self._last = self._to_canvas(ev.position())
            self._stroke(self._last, self._last)
        elif ev.button() == Qt.MouseButton.RightButton:
            self.clear()

    def mouseMoveEvent(self, ev):
        if self._last is not None and ev.buttons() & Qt.MouseButton.LeftButton:
            point = self._to_canvas(ev.position())
            self._stroke(self._last, point)
            self._last = point

    def mouseReleaseEvent(self, ev):
        if self._last is not None and ev.button() == Qt.MouseButton.LeftButton:
            self._last = None
            self.changed.emit()

    def clear(self) -> None:
        self.canvas.fill(0)
        self._ink = False
        self._last = None
        self.update()
        self.changed.emit()

    def set_image(self, image) -> None:
        """Show an image ([H, W] or [1, H, W] in [0, 1] or uint8), e.g. a task's support image, as the drawing."""
        src = qimage_from_array(image).scaled(self.canvas.size(), Qt.AspectRatioMode.IgnoreAspectRatio,
                                              Qt.TransformationMode.SmoothTransformation)
        self.canvas = src.convertToFormat(QImage.Format.Format_Grayscale8)
        self._ink = bool(self.image().max() > 0.05)
        self.update()
        self.changed.emit()

    @property
    def empty(self) -> bool:
        return not self._ink

    def image(self) -> np.ndarray:
        """The drawing as float32 [28, 28] in [0, 1] (the 4x canvas averaged over 4x4 blocks)."""
        w, h = self.canvas.width(), self.canvas.height()
        bits = self.canvas.constBits()
        stride = self.canvas.bytesPerLine()
        a = np.frombuffer(bits, dtype=np.uint8, count=stride * h).reshape(h, stride)[:, :w].astype(np.float32)
        a = a.reshape(DRAW_SIZE, h // DRAW_SIZE, DRAW_SIZE, w // DRAW_SIZE).mean(axis=(1, 3))
        return a / 255.0

    def paintEvent(self, ev):
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        p.drawImage(QRectF(self.rect()), self.canvas)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.setPen(QPen(QColor("#3A3F45"), 1))
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawRect(QRectF(self.rect()).adjusted(0.5, 0.5, -0.5, -0.5))
        if not self._ink:
            p.setPen(QColor("#8A939C"))
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "draw here")
        p.end()
