"""Plot export: a pyqtgraph item (a plot, or a layout of plots) as PNG or SVG bytes.

Its own module because exporting fights pyqtgraph's on-screen optimisations (pixmap caches, cosmetic pens,
the SVG exporter Qt 6.12 breaks): that knowledge belongs in one place, not in the window that asks for it.
"""

from __future__ import annotations

from PySide6.QtCore import QBuffer, QIODevice, QSize
from PySide6.QtWidgets import QApplication

PLOT_FILTERS = [("PNG image", ".png"), ("SVG vector image", ".svg")]


def hide_in_exports(item):
    """Mark a graphics item that follows the mouse (a crosshair) so that exports leave it out; returns it."""
    item.hidden_in_exports = True
    return item


def render_plot(item, suffix: str) -> bytes:
    """PNG (at twice the screen resolution) or SVG bytes of a pyqtgraph item (a plot, or a layout of plots).

    Items cached as pixmaps on screen (the axes) are drawn uncached, so an export is vector (SVG) or sharp
    (PNG); items marked by `hide_in_exports` (a crosshair) are left out. SVG is drawn with Qt's own SVG
    generator: pyqtgraph 0.14's SVG exporter cannot parse the path data Qt 6.12 writes (closed paths end in a
    bare 'Z').
    """
    from PySide6.QtWidgets import QGraphicsItem

    scene = item.scene()
    cached = [i for i in scene.items() if i.cacheMode() != QGraphicsItem.CacheMode.NoCache]
    modes = [i.cacheMode() for i in cached]
    for i in cached:
        i.setCacheMode(QGraphicsItem.CacheMode.NoCache)
    hidden = [i for i in scene.items() if getattr(i, "hidden_in_exports", False) and i.isVisible()]
    for i in hidden:  # the crosshair where the mouse happened to be
        i.setVisible(False)
    try:
        return _render_svg(item) if suffix == ".svg" else _render_png(item)
    finally:
        for i, mode in zip(cached, modes, strict=True):
            i.setCacheMode(mode)
        for i in hidden:
            i.setVisible(True)


def _render_svg(item) -> bytes:
    import re

    from PySide6.QtCore import QRectF
    from PySide6.QtGui import QPainter
    from PySide6.QtSvg import QSvgGenerator

    source = item.sceneBoundingRect()
    width, height = int(source.width()), int(source.height())
    buffer = QBuffer()
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    generator = QSvgGenerator()
    generator.setOutputDevice(buffer)
    generator.setSize(QSize(width, height))
    generator.setViewBox(QRectF(0, 0, width, height))
    generator.setTitle("MAML Lab")
    # the resolution the items were drawn for: pyqtgraph replays cached QPictures scaled by the DPI ratio
    generator.setResolution(round(QApplication.primaryScreen().logicalDotsPerInch()))
    painter = QPainter(generator)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    item.scene().render(painter, QRectF(0, 0, width, height), source)
    painter.end()
    text = bytes(buffer.data()).decode("utf-8")
    text = re.sub(r"<path[^>]*\sd=\"\"[^>]*/>\s*", "", text)  # empty curves: invalid path data for readers
    return text.encode("utf-8")


def _render_png(item, scale: float = 2.0) -> bytes:
    """The item as on a high-DPI screen (device pixel ratio `scale`): lines, text and symbols all sharp."""
    import pyqtgraph as pg
    from PySide6.QtGui import QPen

    # curve pens are cosmetic (a width in device pixels): widen them with the scale, so lines keep their weight
    curves = [i for i in item.scene().items() if isinstance(i, pg.PlotCurveItem)]
    pens = [QPen(c.opts["pen"]) for c in curves]
    for curve, pen in zip(curves, pens, strict=True):
        wide = QPen(pen)
        wide.setWidthF(max(pen.widthF(), 1.0) * scale)
        curve.setPen(wide)
    try:
        return _paint_png(item, scale)
    finally:
        for curve, pen in zip(curves, pens, strict=True):
            curve.setPen(pen)


def _paint_png(item, scale: float) -> bytes:
    from PySide6.QtCore import QRectF
    from PySide6.QtGui import QColor, QImage, QPainter

    source = item.sceneBoundingRect()
    width, height = source.width(), source.height()
    image = QImage(int(width * scale), int(height * scale), QImage.Format.Format_ARGB32)
    image.setDevicePixelRatio(scale)
    image.fill(QColor("white"))
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setRenderHint(QPainter.RenderHint.TextAntialiasing)
    item.scene().render(painter, QRectF(0, 0, width, height), source)
    painter.end()
    buffer = QBuffer()
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    if not image.save(buffer, "PNG"):
        raise OSError("could not encode the PNG image")
    return bytes(buffer.data())
