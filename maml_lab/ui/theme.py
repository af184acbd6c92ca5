"""The look: Fusion style with a light palette, one stylesheet, readable fonts, pyqtgraph defaults."""

from __future__ import annotations

import sys

from PySide6.QtGui import QColor, QFont, QFontDatabase, QPalette
from PySide6.QtWidgets import QApplication

ACCENT = "#3D5AFE"
ACCENT_HOVER = "#2F49E0"
TEXT = "#1F2328"
MUTED = "#5E6770"
BORDER = "#D5DAE0"
SURFACE = "#FFFFFF"
BACKGROUND = "#F3F5F8"
ERROR = "#C62828"
ERROR_BG = "#FDECEA"
WARNING_BG = "#FFF4E5"
INFO_BG = "#E8F0FE"
GRID_ALPHA = 0.18

# state -> (label, colour of the dot in the status bar)
STATE_STYLE = {
    "idle": ("Idle", "#8A939C"),
    "starting": ("Starting", "#E69F00"),
    "running": ("Running", "#009E73"),
    "paused": ("Paused", "#E69F00"),
    "stopping": ("Stopping", "#E69F00"),
    "stopped": ("Stopped", "#8A939C"),
    "finished": ("Finished", "#0072B2"),
    "diverged": ("Diverged", "#D55E00"),
    "failed": ("Failed", "#D55E00"),
}

_UI_FONTS = ("Inter", "Cantarell", "Noto Sans", "Ubuntu", "Segoe UI", "Helvetica Neue", "DejaVu Sans")

STYLESHEET = f"""
QMainWindow, QDialog {{ background: {BACKGROUND}; }}
QWidget {{ color: {TEXT}; }}
QToolTip {{ background: #24292F; color: white; border: none; padding: 5px 7px; border-radius: 4px; }}

QGroupBox {{
    background: {SURFACE}; border: 1px solid {BORDER}; border-radius: 8px;
    margin-top: 12px; padding: 10px 8px 8px 8px; font-weight: 600;
}}
QGroupBox::title {{
    subcontrol-origin: margin; subcontrol-position: top left; left: 10px; padding: 0 4px;
    color: {MUTED}; background: transparent;
}}
QGroupBox QLabel {{ font-weight: normal; }}
QGroupBox QCheckBox {{ font-weight: normal; }}

QLineEdit, QSpinBox, QDoubleSpinBox, QComboBox {{
    background: {SURFACE}; border: 1px solid {BORDER}; border-radius: 5px; padding: 3px 6px;
    min-height: 20px; selection-background-color: {ACCENT};
}}
QLineEdit:focus, QSpinBox:focus, QDoubleSpinBox:focus, QComboBox:focus {{ border: 1px solid {ACCENT}; }}
QLineEdit:disabled, QSpinBox:disabled, QDoubleSpinBox:disabled, QComboBox:disabled {{
    background: #F0F2F4; color: #A0A7AE; border-color: #E2E6EA;
}}
QLineEdit[invalid="true"], QSpinBox[invalid="true"] {{ border: 1.5px solid {ERROR}; background: {ERROR_BG}; }}
QComboBox::drop-down {{ border: none; width: 18px; }}
QSpinBox::up-button, QSpinBox::down-button, QDoubleSpinBox::up-button, QDoubleSpinBox::down-button {{
    width: 16px; border: none;
}}

QPushButton {{
    background: {SURFACE}; border: 1px solid {BORDER}; border-radius: 6px; padding: 5px 12px; min-height: 20px;
}}
QPushButton:hover {{ background: #F6F8FA; border-color: #B9C0C8; }}
QPushButton:pressed {{ background: #EAEEF2; }}
QPushButton:disabled {{ color: #A0A7AE; background: #F6F7F9; border-color: #E4E7EB; }}
QPushButton:checked {{ background: #E7ECFF; border-color: {ACCENT}; color: {ACCENT_HOVER}; }}
QPushButton[primary="true"] {{ background: {ACCENT}; color: white; border: 1px solid {ACCENT}; font-weight: 600; }}
QPushButton[primary="true"]:hover {{ background: {ACCENT_HOVER}; }}
QPushButton[primary="true"]:disabled {{ background: #AEBBFB; border-color: #AEBBFB; color: #F4F6FF; }}

QToolBar {{ background: {SURFACE}; border: none; border-bottom: 1px solid {BORDER}; spacing: 4px; padding: 5px 8px; }}
QToolBar QToolButton {{ border: 1px solid transparent; border-radius: 6px; padding: 4px 8px; }}
QToolBar QToolButton:hover {{ background: #F0F3F6; border-color: {BORDER}; }}
QToolBar QToolButton:pressed {{ background: #E6EAEF; }}
QToolBar QToolButton:disabled {{ color: #A0A7AE; }}
QToolBar::separator {{ background: {BORDER}; width: 1px; margin: 4px 6px; }}
QToolButton#StartButton {{ background: {ACCENT}; color: white; font-weight: 600; border: 1px solid {ACCENT}; }}
QToolButton#StartButton:hover {{ background: {ACCENT_HOVER}; }}
QToolButton#StartButton:disabled {{ background: #E4E8F7; color: #9AA3C0; border-color: #E4E8F7; }}

QTabWidget::pane {{ border: 1px solid {BORDER}; border-radius: 8px; background: {SURFACE}; top: -1px; }}
QTabBar::tab {{
    background: transparent; border: none; padding: 7px 16px; margin-right: 2px; color: {MUTED};
    border-bottom: 2px solid transparent;
}}
QTabBar::tab:selected {{ color: {TEXT}; border-bottom: 2px solid {ACCENT}; font-weight: 600; }}
QTabBar::tab:hover:!selected {{ color: {TEXT}; }}
QTabBar::tab:disabled {{ color: #B8BEC5; }}

QProgressBar {{
    background: #E9ECF0; border: none; border-radius: 5px; text-align: center; color: {TEXT};
    min-height: 18px; max-height: 18px; font-size: 9pt;
}}
QProgressBar::chunk {{ background: {ACCENT}; border-radius: 5px; }}

QStatusBar {{ background: {SURFACE}; border-top: 1px solid {BORDER}; color: {MUTED}; }}
QStatusBar::item {{ border: none; }}
QSplitter::handle {{ background: transparent; }}
QSplitter::handle:horizontal {{ width: 8px; }}
QSplitter::handle:vertical {{ height: 8px; }}
QScrollArea {{ background: transparent; border: none; }}
QScrollArea > QWidget > QWidget {{ background: transparent; }}

QTableView {{
    background: {SURFACE}; border: 1px solid {BORDER}; border-radius: 6px; gridline-color: transparent;
    selection-background-color: #E7ECFF; selection-color: {TEXT};
}}
QHeaderView::section {{
    background: {SURFACE}; border: none; border-bottom: 1px solid {BORDER}; padding: 4px 6px;
    color: {MUTED}; font-weight: 600;
}}

QSlider::groove:horizontal {{ height: 4px; background: #DDE2E7; border-radius: 2px; }}
QSlider::sub-page:horizontal {{ background: {ACCENT}; border-radius: 2px; }}
QSlider::handle:horizontal {{
    background: {SURFACE}; border: 2px solid {ACCENT}; width: 12px; height: 12px; margin: -6px 0;
    border-radius: 8px;
}}

QFrame#MessageBar[kind="error"] {{ background: {ERROR_BG}; border: 1px solid #F1B7B1; border-radius: 8px; }}
QFrame#MessageBar[kind="warning"] {{ background: {WARNING_BG}; border: 1px solid #F4D19B; border-radius: 8px; }}
QFrame#MessageBar[kind="info"] {{ background: {INFO_BG}; border: 1px solid #BFD3F8; border-radius: 8px; }}
QLabel#FormError {{
    color: {ERROR}; background: {ERROR_BG}; border: 1px solid #F1B7B1; border-radius: 6px; padding: 6px 8px;
    margin: 4px 10px 8px 10px;
}}
QLabel#Badge {{ color: white; border-radius: 9px; font-weight: 700; min-width: 18px; max-width: 18px;
    min-height: 18px; max-height: 18px; qproperty-alignment: AlignCenter; }}
QLabel#Badge[kind="error"] {{ background: {ERROR}; }}
QLabel#Badge[kind="warning"] {{ background: #B26B00; }}
QLabel#Badge[kind="info"] {{ background: {ACCENT}; }}
QLabel#Hint, QLabel[hint="true"] {{ color: {MUTED}; }}
QLabel#SectionTitle {{ color: {MUTED}; font-weight: 600; }}
QLabel#Readout {{ color: {MUTED}; padding: 2px 4px; }}
"""


def pick_ui_font(point_size: float = 10.0) -> QFont:
    """The platform font on Windows and macOS; elsewhere the first well-hinted sans-serif installed."""
    font = QApplication.font()
    if sys.platform.startswith(("win", "darwin")):
        return font
    families = set(QFontDatabase.families())
    for name in _UI_FONTS:
        if name in families:
            font = QFont(name)
            break
    font.setPointSizeF(point_size)
    return font


def apply_theme(app: QApplication) -> None:
    import pyqtgraph as pg

    app.setStyle("Fusion")
    pal = QPalette()
    for role, color in (
        (QPalette.ColorRole.Window, BACKGROUND), (QPalette.ColorRole.WindowText, TEXT),
        (QPalette.ColorRole.Base, SURFACE), (QPalette.ColorRole.AlternateBase, "#F6F8FA"),
        (QPalette.ColorRole.Text, TEXT), (QPalette.ColorRole.Button, SURFACE),
        (QPalette.ColorRole.ButtonText, TEXT), (QPalette.ColorRole.Highlight, ACCENT),
        (QPalette.ColorRole.HighlightedText, "#FFFFFF"), (QPalette.ColorRole.ToolTipBase, "#24292F"),
        (QPalette.ColorRole.ToolTipText, "#FFFFFF"), (QPalette.ColorRole.PlaceholderText, "#8A939C"),
        (QPalette.ColorRole.Link, ACCENT),
    ):
        pal.setColor(role, QColor(color))
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.WindowText, QPalette.ColorRole.ButtonText):
        pal.setColor(QPalette.ColorGroup.Disabled, role, QColor("#A0A7AE"))
    app.setPalette(pal)
    app.setFont(pick_ui_font())
    app.setStyleSheet(STYLESHEET)
    pg.setConfigOptions(antialias=True, background=SURFACE, foreground=MUTED)


def style_plot(plot, title: str | None = None, x_label: str | None = None, y_label: str | None = None) -> None:
    """Axes, grid and title of a pyqtgraph PlotItem in the app's style."""
    import pyqtgraph as pg
    from PySide6.QtWidgets import QGraphicsItem

    axis_pen = pg.mkPen("#B8BFC7", width=1)
    font = QApplication.font()
    tick_font = QFont(font)
    tick_font.setPointSizeF(max(font.pointSizeF() - 1, 7))
    for name in ("left", "bottom", "top", "right"):
        axis = plot.getAxis(name)
        axis.setPen(axis_pen)
        axis.setTextPen(pg.mkPen(MUTED))
        axis.setTickFont(tick_font)
        # axes and their grid lines are re-rendered only when the range changes, not with every curve update
        axis.setCacheMode(QGraphicsItem.CacheMode.DeviceCoordinateCache)
    plot.showGrid(x=True, y=True, alpha=GRID_ALPHA)
    wrap_title(plot)
    if title:
        plot.setTitle(f"<span style='color:{TEXT}; font-weight:600'>{title}</span>", size=f"{font.pointSizeF():.0f}pt")
    if x_label:
        plot.setLabel("bottom", f"<span style='color:{MUTED}'>{x_label}</span>")
    if y_label:
        plot.setLabel("left", f"<span style='color:{MUTED}'>{y_label}</span>")


def wrap_title(plot) -> None:
    """Let a plot's title wrap onto more lines when the plot is narrower than it. pyqtgraph makes a title's width
    the plot's minimum width, so a long title (Per layer's, the Landscape's) pushed the plots past the window's
    edge, where they and the colour bar's label were cut off."""
    from PySide6.QtCore import Qt as QtNS
    from PySide6.QtGui import QTextOption

    label = plot.titleLabel
    if getattr(label, "wraps", False):
        return
    label.wraps = True
    label.item.document().setDefaultTextOption(QTextOption(QtNS.AlignmentFlag.AlignHCenter))

    def update_min() -> None:
        item = label.item
        width = label.size().width()
        item.setTextWidth(-1)
        natural = item.boundingRect().width()
        if 0 < width < natural:
            item.setTextWidth(width)
        height = item.boundingRect().height()
        label.setMinimumWidth(0)
        label.setMinimumHeight(height)
        label._sizeHint = {QtNS.SizeHint.MinimumSize: (0, height), QtNS.SizeHint.PreferredSize: (natural, height),
                           QtNS.SizeHint.MaximumSize: (-1, -1), QtNS.SizeHint.MinimumDescent: (0, 0)}
        if label.isVisible() and label.maximumHeight() > 0:  # setTitle fixes the title row at 30 px: room for lines
            label.setMaximumHeight(max(30, height))
            plot.layout.setRowFixedHeight(0, max(30, height))
        label.updateGeometry()

    label.updateMin = update_min
    update_min()
