"""Plot pieces shared by the Paths and Landscape views: bold paths with a white halo, task arrows whose heads
point the right way on screen whatever the axes' scales, and the small widgets of their control bars."""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPoint, QRect, QSize, Qt
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QLayout, QSizePolicy, QWidget

from .colors import qcolor
from .theme import MUTED

ARROW_COLOR = "#4A4F55"  # task adaptation steps: dark grey (the MAML paper's grey arrows)
OPTIMUM_COLOR = "#6B737B"
HALO = "#FFFFFF"


def halo_curve(plot, color: str, width: float = 3.0, z: float = 10, halo: float = 2.5, style=None):
    """A bold line with a white outline underneath, readable on any background; returns (line, halo)."""
    under = pg.PlotDataItem(pen=pg.mkPen(qcolor(HALO, 230), width=width + halo), connect="finite")
    pen = pg.mkPen(color, width=width)
    pen.setCapStyle(Qt.PenCapStyle.RoundCap)
    pen.setJoinStyle(Qt.PenJoinStyle.RoundJoin)
    if style is not None:
        pen.setStyle(style)
    line = pg.PlotDataItem(pen=pen, connect="finite")
    under.setZValue(z - 0.5)
    line.setZValue(z)
    plot.addItem(under)
    plot.addItem(line)
    return line, under


def set_halo(pair, x, y) -> None:
    line, under = pair
    line.setData(x, y)
    under.setData(x, y)


class ArrowLayer:
    """Polylines (one per task) drawn as arrows: a shaft through every step, a dot at each intermediate step
    and a head at the end. Heads are pixel-sized items whose angle is recomputed from the on-screen direction
    whenever the view's range or size changes, so they point along the shaft however the axes are scaled."""

    def __init__(self, plot, color: str = ARROW_COLOR, width: float = 1.8, z: float = 20, head: int = 11):
        self.plot = plot
        self.vb = plot.getViewBox()
        self.color = color
        self.head = head
        self.z = z
        self.shafts = pg.PlotDataItem(pen=pg.mkPen(qcolor(color, 235), width=width), connect="finite")
        self.shafts_halo = pg.PlotDataItem(pen=pg.mkPen(qcolor(HALO, 170), width=width + 2.2), connect="finite")
        self.dots = pg.ScatterPlotItem(size=5, brush=pg.mkBrush(color), pen=pg.mkPen(HALO, width=0.8))
        self.shafts_halo.setZValue(z - 0.5)
        self.shafts.setZValue(z)
        self.dots.setZValue(z + 0.5)
        for item in (self.shafts_halo, self.shafts, self.dots):
            plot.addItem(item)
        self.heads: list[pg.ArrowItem] = []
        self.paths: list[np.ndarray] = []
        self.vb.sigTransformChanged.connect(self._orient)
        self.vb.sigResized.connect(self._orient)

    def set_paths(self, paths: list[np.ndarray]) -> None:
        self.paths = [np.asarray(p, np.float64) for p in paths if p is not None and len(p) >= 2]
        xs, ys, dx, dy = [], [], [], []
        for p in self.paths:
            xs += [p[:, 0], [np.nan]]
            ys += [p[:, 1], [np.nan]]
            dx.append(p[1:-1, 0])
            dy.append(p[1:-1, 1])
        if xs:
            x, y = np.concatenate(xs), np.concatenate(ys)
            self.shafts.setData(x, y)
            self.shafts_halo.setData(x, y)
            self.dots.setData(np.concatenate(dx), np.concatenate(dy))
        else:
            self.shafts.setData([], [])
            self.shafts_halo.setData([], [])
            self.dots.setData([], [])
        while len(self.heads) < len(self.paths):
            head = pg.ArrowItem(headLen=self.head, tipAngle=32, tailLen=0, brush=pg.mkBrush(self.color),
                                pen=pg.mkPen(HALO, width=1.0))
            head.setZValue(self.z + 1)
            self.plot.addItem(head, ignoreBounds=True)
            self.heads.append(head)
        for i, head in enumerate(self.heads):
            head.setVisible(i < len(self.paths))
        self._orient()

    def _orient(self, *_args) -> None:
        for head, p in zip(self.heads, self.paths, strict=False):
            tip = p[-1]
            # the last step long enough to give a direction (a converged path can end with zero-length steps)
            tail = next((q for q in p[-2::-1] if np.hypot(*(q - tip)) > 0), p[0])
            a = self.vb.mapViewToScene(pg.Point(float(tail[0]), float(tail[1])))
            b = self.vb.mapViewToScene(pg.Point(float(tip[0]), float(tip[1])))
            dx, dy = b.x() - a.x(), b.y() - a.y()
            head.setPos(float(tip[0]), float(tip[1]))
            if dx == 0 and dy == 0:
                head.setVisible(False)
                continue
            # an ArrowItem at angle 0 points left (-x on screen); it turns clockwise on screen with the angle
            head.setStyle(angle=math.degrees(math.atan2(-dy, -dx)))

    def clear(self) -> None:
        self.set_paths([])


def auto_arrow_scale(lengths: np.ndarray, span: float, reach: float = 0.0, target: float = 0.05,
                     limit: float = 0.35) -> float:
    """1, or the smallest 2, 5 or 10 times a power of ten that makes the median task step at least `target` of the
    plot's span, so steps far smaller than the meta path stay visible (the legend then says they are
    magnified); but never so much that what is drawn from the checkpoint (`reach`: how far it goes, e.g. a
    fine-tuned optimum) passes `limit` of the span."""
    lengths = lengths[np.isfinite(lengths) & (lengths > 0)]
    if not len(lengths) or not span > 0:
        return 1.0
    median = float(np.median(lengths))
    if median >= target * span:
        return 1.0
    needed = target * span / median
    exponent = 10.0 ** math.floor(math.log10(needed))
    scales = [m * exponent for m in (1, 2, 5, 10) if m * exponent >= needed]
    scale = scales[0]
    while scale > 1 and reach * scale > limit * span:
        exponent = 10.0 ** math.floor(math.log10(scale) - 1e-9)
        smaller = [m * exponent for m in (5, 2, 1) if m * exponent < scale]
        scale = smaller[0] if smaller else 1.0
    return max(scale, 1.0)


def place_legend(legend, vb, points: np.ndarray, margin: int = 8) -> None:
    """Anchor `legend` in the corner of the view box that covers the fewest of `points` [N, 2] (data
    coordinates): top left, then top right, bottom left, bottom right on ties."""
    (x0, x1), (y0, y1) = vb.viewRange()
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    pts = pts[np.isfinite(pts).all(1)]
    u = (pts[:, 0] - x0) / max(x1 - x0, 1e-300)
    v = (pts[:, 1] - y0) / max(y1 - y0, 1e-300)  # 0 at the bottom
    best, best_count = (0, 0), None
    for cx, cy in ((0, 0), (1, 0), (0, 1), (1, 1)):  # (0, 0): top left in item coordinates
        in_x = u < 0.42 if cx == 0 else u > 0.58
        in_y = v > 0.62 if cy == 0 else v < 0.38
        count = int(np.count_nonzero(in_x & in_y))
        if best_count is None or count < best_count:
            best, best_count = (cx, cy), count
    cx, cy = best
    legend.anchor((cx, cy), (cx, cy), offset=(margin if cx == 0 else -margin, margin if cy == 0 else -margin))


def log_ticks(lo: float, hi: float, count: int = 6) -> list[tuple[float, str]]:
    """Ticks for an axis showing log10(value) from lo to hi, labelled with the values: powers of ten over
    several decades, 1-2-5 or 1..9 mantissas over fewer, evenly spaced values over less than a factor of 3."""
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
        return []
    for mantissas in ((1,), (1, 2, 5), (1, 2, 3, 4, 5, 6, 7, 8, 9)):
        values = [m * 10.0 ** e for e in range(int(np.floor(lo)) - 1, int(np.ceil(hi)) + 1) for m in mantissas]
        inside = [v for v in values if lo <= np.log10(v) <= hi]
        if len(inside) >= 3:
            if len(inside) > 2 * count:
                inside = inside[:: int(np.ceil(len(inside) / count))]
            return [(float(np.log10(v)), f"{v:g}") for v in inside]
    a, b = 10.0 ** lo, 10.0 ** hi
    step = float(10 ** np.floor(np.log10((b - a) / count)))
    for m in (1, 2, 5, 10):
        if (b - a) / (m * step) <= count:
            step *= m
            break
    values = np.arange(np.ceil(a / step) * step, b + 1e-12 * b, step)
    return [(float(np.log10(v)), f"{v:.4g}") for v in values if v > 0]


def readable_log_ticks(axis, pixels_per_tick: int = 40):
    """Label a pyqtgraph axis in log mode with `log_ticks` (decades, 1-2-5 or 1..9 mantissas, as many as its length
    holds) instead of pyqtgraph's every 1..9 of a decade, whose labels collide near the decade's top; returns it."""
    def values(lo, hi, size, _standard):
        lo, hi = min(lo, hi), max(lo, hi)
        return [(None, [v for v, _ in log_ticks(lo, hi, max(2, int(size // pixels_per_tick)))])]

    axis.logTickValues = values
    axis.logTickStrings = lambda vals, scale, spacing: [f"{10.0 ** v * scale:.3g}" for v in vals]
    return axis


def nearest_point(vb, x: float, y: float, candidates: dict) -> tuple[str, int, float] | None:
    """The candidate point nearest (x, y) on screen: (key, index, distance in pixels); candidates: key -> [N, 2]."""
    pw, ph = vb.viewPixelSize()
    if not (pw > 0 and ph > 0):
        return None
    best = None
    for key, pts in candidates.items():
        if pts is None or len(pts) == 0:
            continue
        d = np.hypot((pts[:, 0] - x) / pw, (pts[:, 1] - y) / ph)
        i = int(np.nanargmin(d))
        if best is None or d[i] < best[2]:
            best = (key, i, float(d[i]))
    return best


def labelled(text: str, widget: QWidget, tip: str = "") -> QWidget:
    """A small caption + control pair for a control bar."""
    box = QWidget()
    row = QHBoxLayout(box)
    row.setContentsMargins(0, 0, 0, 0)
    row.setSpacing(6)
    label = QLabel(text)
    label.setProperty("hint", True)
    row.addWidget(label)
    row.addWidget(widget)
    if tip:
        label.setToolTip(tip)
        widget.setToolTip(tip)
    return box


def separator() -> QFrame:
    line = QFrame()
    line.setFrameShape(QFrame.Shape.VLine)
    line.setStyleSheet("color: #D5DAE0;")
    return line


def hint_text(plot, text: str = "") -> pg.TextItem:
    item = pg.TextItem(text, anchor=(0.5, 0.5), color=MUTED)
    item.setZValue(100)
    plot.addItem(item, ignoreBounds=True)
    return item


def place_center(plot, item) -> None:
    (x0, x1), (y0, y1) = plot.getViewBox().viewRange()
    item.setPos(0.5 * (x0 + x1), 0.5 * (y0 + y1))


class FlowLayout(QLayout):
    """Widgets left to right, wrapping onto more lines when the view is narrow (Qt's flow layout example), so
    a control bar never forces the window wider. Items of one line are centred vertically."""

    def __init__(self, parent=None, margins=(10, 8, 10, 0), spacing: int = 12, line_spacing: int = 6):
        super().__init__(parent)
        self._items = []
        self.setContentsMargins(*margins)
        self._h = spacing
        self._v = line_spacing

    def addItem(self, item) -> None:  # noqa: N802 - Qt API
        self._items.append(item)

    def count(self) -> int:
        return len(self._items)

    def itemAt(self, i: int):  # noqa: N802
        return self._items[i] if 0 <= i < len(self._items) else None

    def takeAt(self, i: int):  # noqa: N802
        return self._items.pop(i) if 0 <= i < len(self._items) else None

    def expandingDirections(self):  # noqa: N802
        return Qt.Orientation(0)

    def hasHeightForWidth(self) -> bool:  # noqa: N802
        return True

    def heightForWidth(self, width: int) -> int:  # noqa: N802
        return self._arrange(QRect(0, 0, width, 0), apply=False)

    def setGeometry(self, rect: QRect) -> None:  # noqa: N802
        super().setGeometry(rect)
        self._arrange(rect, apply=True)

    def sizeHint(self) -> QSize:  # noqa: N802
        return self.minimumSize()

    def minimumSize(self) -> QSize:  # noqa: N802
        size = QSize()
        for item in self._items:
            size = size.expandedTo(item.minimumSize())
        m = self.contentsMargins()
        return size + QSize(m.left() + m.right(), m.top() + m.bottom())

    def _arrange(self, rect: QRect, apply: bool) -> int:
        m = self.contentsMargins()
        area = rect.adjusted(m.left(), m.top(), -m.right(), -m.bottom())
        lines, line, x = [], [], area.x()
        for item in self._items:
            if item.widget() is not None and item.widget().isHidden():
                continue
            w = item.sizeHint().width()
            if line and x + w > area.right() + 1:
                lines.append(line)
                line, x = [], area.x()
            line.append(item)
            x += w + self._h
        if line:
            lines.append(line)
        y = area.y()
        for line in lines:
            height = max(i.sizeHint().height() for i in line)
            x = area.x()
            for item in line:
                hint = item.sizeHint()
                if apply:
                    item.setGeometry(QRect(QPoint(x, y + (height - hint.height()) // 2), hint))
                x += hint.width() + self._h
            y += height + self._v
        return y - self._v - rect.y() + m.bottom() if lines else m.top() + m.bottom()


def flow_bar(widgets) -> QWidget:
    """A control bar that wraps: a widget holding `widgets` in a FlowLayout."""
    bar = QWidget()
    flow = FlowLayout(bar)
    for w in widgets:
        flow.addWidget(w)
    policy = QSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)
    policy.setHeightForWidth(True)
    bar.setSizePolicy(policy)
    return bar


def compact(combo, chars: int = 14):
    """A combo box that does not ask for the width of its longest entry."""
    from PySide6.QtWidgets import QComboBox

    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(chars)
    return combo


def readout_label(one_line: bool = True) -> QLabel:
    """The muted rich-text line under a plot that says what the mouse is over (styled as QLabel#Readout).
    one_line: a fixed-height line that never widens its view; otherwise it wraps."""
    label = QLabel(" ")
    label.setObjectName("Readout")
    label.setTextFormat(Qt.TextFormat.RichText)
    if one_line:
        label.setMinimumHeight(22)
        label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    else:
        label.setWordWrap(True)
    return label


def contour_lines(values: np.ndarray, alphas: np.ndarray, betas: np.ndarray, levels) -> tuple[np.ndarray, ...]:
    """Iso-lines of values [len(betas), len(alphas)] at `levels`, in plane coordinates, as one polyline with
    NaN gaps (x, y): one PlotDataItem(connect="finite") draws all of them."""
    data = np.asarray(values, np.float64).T  # [alpha, beta]: index 0 is x
    da = (alphas[-1] - alphas[0]) / max(len(alphas) - 1, 1)
    db = (betas[-1] - betas[0]) / max(len(betas) - 1, 1)
    xs, ys = [], []
    for level in levels:
        for line in pg.functions.isocurve(data, level, connected=True, extendToEdge=True):
            pts = np.asarray(line, np.float64)
            if len(pts) < 2:
                continue
            # isocurve works on pixel corners: index i is the centre of grid point i - 0.5 ... shift back
            xs.append(alphas[0] + (pts[:, 0] - 0.5) * da)
            ys.append(betas[0] + (pts[:, 1] - 0.5) * db)
            xs.append([np.nan])
            ys.append([np.nan])
    if not xs:
        return np.empty(0), np.empty(0)
    return np.concatenate(xs), np.concatenate(ys)


def reason_label() -> QLabel:
    """Where a view does not apply: the label that says why, in place of its plots (hidden until `show_reason`)."""
    label = QLabel("")
    label.setObjectName("NotApplicable")
    label.setWordWrap(True)
    label.setAlignment(Qt.AlignmentFlag.AlignCenter)
    label.setProperty("hint", True)
    label.setContentsMargins(60, 40, 60, 40)
    label.setVisible(False)
    return label


def show_reason(label: QLabel, reason: str | None) -> None:
    """Say `reason` on a `reason_label()` (None: hide it)."""
    label.setText(f"<p style='font-size:12pt'>{reason}</p>" if reason else "")
    label.setVisible(bool(reason))
