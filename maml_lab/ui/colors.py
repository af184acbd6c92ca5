"""Colours of every plot: each algorithm's own (its registry entry, the colour-blind-safe Okabe-Ito palette for the
built-in ones; Okabe & Ito 2008, "Color Universal Design"), the data's, and Qt pens made from them."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor

from ..core.algorithms.registry import algorithm_color, algorithm_label  # noqa: F401  (the views' one import)

OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "bluish_green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
}

# the data, not the models
TRUTH_COLOR = "#4A4F55"  # true / drawn function: dark grey, dashed
POINT_COLOR = "#1B1F23"  # support points
SELECTED_COLOR = OKABE_ITO["orange"]  # the selected support point's ring
STROKE_COLOR = OKABE_ITO["orange"]  # freehand stroke while drawing


def qcolor(hex_color: str, alpha: int = 255) -> QColor:
    c = QColor(hex_color)
    c.setAlpha(alpha)
    return c


def curve_pen(name: str, width: float = 2.2, dashed: bool = False, alpha: int = 255):
    """The pen every plot uses for an algorithm: solid after adaptation / during training, dashed before."""
    import pyqtgraph as pg

    pen = pg.mkPen(qcolor(algorithm_color(name), alpha), width=width)
    if dashed:
        pen.setStyle(Qt.PenStyle.DashLine)
    pen.setCapStyle(Qt.PenCapStyle.RoundCap)
    pen.setJoinStyle(Qt.PenJoinStyle.RoundJoin)
    return pen
