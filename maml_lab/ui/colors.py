"""One mapping from algorithm to colour, used by every plot: the colour-blind-safe Okabe-Ito palette.

Okabe & Ito (2008), "Color Universal Design". MAML and the pretrained baseline get the two most
distinct hues (blue / vermillion) because they are the comparison the app is about.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor

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

ALGORITHM_COLORS = {
    "maml": OKABE_ITO["blue"],
    "fomaml": OKABE_ITO["sky_blue"],
    "reptile": OKABE_ITO["bluish_green"],
    "pretrained": OKABE_ITO["vermillion"],
}

ALGORITHM_LABELS = {"maml": "MAML", "fomaml": "FOMAML", "reptile": "Reptile", "pretrained": "Pretrained"}

# colours for initializations that are not one of the trained algorithms (imported files of unknown origin)
EXTRA_COLORS = (OKABE_ITO["reddish_purple"], OKABE_ITO["orange"], OKABE_ITO["black"])

# the data, not the models
TRUTH_COLOR = "#4A4F55"  # true / drawn function: dark grey, dashed
POINT_COLOR = "#1B1F23"  # support points
SELECTED_COLOR = OKABE_ITO["orange"]  # the selected support point's ring
STROKE_COLOR = OKABE_ITO["orange"]  # freehand stroke while drawing


def algorithm_color(name: str) -> str:
    """Hex colour of an algorithm (`maml`, `fomaml`, ...); unknown names get a stable extra colour."""
    if name in ALGORITHM_COLORS:
        return ALGORITHM_COLORS[name]
    return EXTRA_COLORS[sum(map(ord, name)) % len(EXTRA_COLORS)]


def algorithm_label(name: str) -> str:
    return ALGORITHM_LABELS.get(name, name)


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
