"""File ▸ Past runs: the run folders under the runs root, newest first, with Open, Resume, Show folder and Refresh.
The table is a view of RunsModel (one RunSummary a row).

The dialog only lists and asks: the main window does the opening and resuming (and refuses both while a run
trains). Damaged folders are listed with what could be read, marked "damaged" with the reason in a tooltip.
"""

from __future__ import annotations

import html
from pathlib import Path

from PySide6.QtCore import QAbstractTableModel, QModelIndex, Qt, QUrl, Signal
from PySide6.QtGui import QColor, QDesktopServices
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableView,
    QVBoxLayout,
)

from ..lab.run_library import RunSummary, list_summaries, root_from_env
from .theme import ERROR, MUTED

COLUMNS = ("Run", "Task", "Algorithms", "Status", "Iterations", "After adaptation", "Created")
STATUS_COLORS = {"running": "#009E73", "finished": "#0072B2", "stopped": MUTED, "created": MUTED,
                 "interrupted": "#B26B00", "diverged": "#D55E00", "failed": "#D55E00", "damaged": ERROR}
NAME_WIDTH = 300  # px at most for the Run column (names elide in the middle beyond)
RESULT_COLUMN = 5
# px at most for the columns whose text grows with the run (name, algorithms, results): beyond, they elide and the
# tooltip has the whole text, so Created stays in view at the dialog's default size
CAPPED_WIDTHS = {0: NAME_WIDTH, 2: 200, RESULT_COLUMN: 320}
BUSY_NOTE = "A run is training: stop it before opening or resuming another (one run at a time)."


def app_runs_folder() -> Path:
    """The app's own runs folder: <user data>/<application>/runs (Linux: ~/.local/share/MAML Lab/runs). Qt's
    AppDataLocation is <organization>/<application>, "MAML Lab" twice; a runs folder left there by earlier versions
    is still the one used while the new one does not exist, so no run is lost from Past runs."""
    from PySide6.QtCore import QCoreApplication, QStandardPaths

    data = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.GenericDataLocation)
    folder = Path(data or Path.home() / ".maml-lab") / (QCoreApplication.applicationName() or "MAML Lab") / "runs"
    old = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppDataLocation)
    old_folder = Path(old) / "runs" if old else None
    if old_folder is not None and old_folder != folder and old_folder.is_dir() and not folder.exists():
        return old_folder
    return folder


class RunsModel(QAbstractTableModel):
    """The run folders as table rows: one RunSummary a row, COLUMNS its cells (text, tooltip, status colour)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.summaries: list[RunSummary] = []

    def set_summaries(self, summaries: list[RunSummary]) -> None:
        self.beginResetModel()
        self.summaries = list(summaries)
        self.endResetModel()

    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: B008, N802 - Qt's signature
        return 0 if parent.isValid() else len(self.summaries)

    def columnCount(self, parent=QModelIndex()) -> int:  # noqa: B008, N802 - Qt's signature
        return 0 if parent.isValid() else len(COLUMNS)

    def text(self, row: int, column: int) -> str:
        s = self.summaries[row]
        return (s.name, s.task_text(), s.algorithms_text(), s.status_text(), s.progress_text(), s.result_text(),
                s.created)[column]

    def tooltip(self, row: int, column: int = 0) -> str:
        s = self.summaries[row]
        if column == RESULT_COLUMN and s.result_text():
            return f"{s.result_text()}\n{s.result_tip()}"
        if column == 2:
            return s.algorithms_text()
        return str(s.path) + ("\n" + "\n".join(s.problems) if s.problems else "")

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid() or not 0 <= index.row() < len(self.summaries):
            return None
        row, col = index.row(), index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return self.text(row, col)
        if role == Qt.ItemDataRole.ToolTipRole:
            return self.tooltip(row, col)
        if role == Qt.ItemDataRole.ForegroundRole and col == 3:
            return QColor(STATUS_COLORS.get(self.summaries[row].status_text(), MUTED))
        if role == Qt.ItemDataRole.TextAlignmentRole and col == 4:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):  # noqa: N802 - Qt's name
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return COLUMNS[section]
        return None


class PastRunsDialog(QDialog):
    open_requested = Signal(str)
    resume_requested = Signal(str)
    root_changed = Signal(str)

    def __init__(self, parent, root: Path, active: Path | None = None):
        super().__init__(parent)
        self.setWindowTitle("Past runs")
        self.root = Path(root)
        self.active = active
        self.busy = False
        self.model = RunsModel(self)

        self.root_label = QLabel()
        self.root_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.root_label.setWordWrap(True)
        self.change_button = QPushButton("Change…")
        self.change_button.clicked.connect(self._choose_root)
        top = QHBoxLayout()
        top.addWidget(self.root_label, 1)
        top.addWidget(self.change_button)

        self.table = QTableView()
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        self.table.setShowGrid(False)
        self.table.setWordWrap(False)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(28)
        header = self.table.horizontalHeader()
        header.setHighlightSections(False)
        header.setDefaultAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        for capped in CAPPED_WIDTHS:  # fitted to their contents, up to a cap, so Created stays in view
            header.setSectionResizeMode(capped, QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(True)
        self.table.setTextElideMode(Qt.TextElideMode.ElideMiddle)  # long run names keep date and algorithms
        self.table.selectionModel().selectionChanged.connect(lambda *_: self._sync())
        self.table.doubleClicked.connect(lambda _index: self.open_selected())

        self.detail = QLabel(" ")
        self.detail.setProperty("hint", True)
        self.detail.setWordWrap(True)
        self.detail.setTextFormat(Qt.TextFormat.RichText)
        self.detail.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.busy_label = QLabel(BUSY_NOTE)
        self.busy_label.setProperty("hint", True)
        self.busy_label.setVisible(False)

        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.setToolTip("List the runs again (F5)")
        self.refresh_button.setShortcut("F5")
        self.refresh_button.clicked.connect(self.refresh)
        self.show_button = QPushButton("Show folder")
        self.show_button.setToolTip("Open the run folder in the file manager")
        self.show_button.clicked.connect(self.show_selected)
        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip("Continue training from the run's latest checkpoint, with its own config")
        self.resume_button.clicked.connect(self.resume_selected)
        self.open_button = QPushButton("Open")
        self.open_button.setProperty("primary", True)
        self.open_button.setDefault(True)
        self.open_button.setToolTip("Show the run's curves, parameter path and exported initializations")
        self.open_button.clicked.connect(self.open_selected)
        close = QPushButton("Close")
        close.clicked.connect(self.reject)
        buttons = QHBoxLayout()
        buttons.addWidget(self.refresh_button)
        buttons.addWidget(self.show_button)
        buttons.addStretch(1)
        buttons.addWidget(self.resume_button)
        buttons.addWidget(self.open_button)
        buttons.addWidget(close)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(14, 12, 14, 12)
        layout.setSpacing(8)
        layout.addLayout(top)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.detail)
        layout.addWidget(self.busy_label)
        layout.addLayout(buttons)
        self.resize(1240, 460)
        self.refresh()

    # -- listing -------------------------------------------------------------------------------------
    @property
    def summaries(self) -> list[RunSummary]:
        return self.model.summaries

    def refresh(self) -> None:
        selected = self.selected_path()
        self.model.set_summaries(list_summaries(self.root, self.active))
        env = " (from $MAML_LAB_RUNS)" if root_from_env() else ""
        self.root_label.setText(f"<b>{len(self.summaries)} run{'s' if len(self.summaries) != 1 else ''}</b> in "
                                f"{html.escape(str(self.root))}{env}")
        self.change_button.setEnabled(not root_from_env())
        self.change_button.setToolTip("$MAML_LAB_RUNS sets the runs folder" if root_from_env()
                                      else "Where new runs go, and which are listed here")
        for column, cap in CAPPED_WIDTHS.items():
            self.table.resizeColumnToContents(column)
            self.table.setColumnWidth(column, min(self.table.columnWidth(column), cap))
        paths = [s.path for s in self.summaries]
        row = paths.index(selected) if selected in paths else (0 if paths else -1)
        if row >= 0:
            self.table.selectRow(row)
        self._sync()

    def selected(self) -> RunSummary | None:
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            return None
        row = rows[0].row()
        return self.summaries[row] if 0 <= row < len(self.summaries) else None

    def selected_path(self) -> Path | None:
        s = self.selected() if self.model.rowCount() else None
        return s.path if s is not None else None

    def select(self, path) -> bool:
        for row, s in enumerate(self.summaries):
            if s.path == Path(path):
                self.table.selectRow(row)
                return True
        return False

    def set_busy(self, busy: bool, active: Path | None = None) -> None:
        """While a run trains, Open and Resume are off (one run at a time)."""
        self.busy = busy
        self.active = active
        self.busy_label.setVisible(busy)
        self._sync()

    def _sync(self) -> None:
        s = self.selected()
        has = s is not None
        self.open_button.setEnabled(has and not self.busy)
        self.resume_button.setEnabled(has and not self.busy and not s.finished)
        self.resume_button.setToolTip("This run is finished: Open shows it" if has and s.finished else
                                      "Continue training from the run's latest checkpoint, with its own config")
        self.show_button.setEnabled(has)
        if s is None:
            self.detail.setText("No runs yet: every training run leaves a folder here." if not self.summaries
                                else " ")
            return
        parts = [html.escape(str(s.path))]
        parts.append(f"{s.exports} exported initialization{'s' if s.exports != 1 else ''}" if s.exports
                     else "no exports yet")
        parts.append("checkpoint to resume from" if s.has_checkpoint else "no checkpoint (Resume starts it over)")
        text = " · ".join(parts)
        if s.problems:
            text += f"<br><span style='color:{ERROR}'>" + html.escape("; ".join(s.problems)) + "</span>"
        self.detail.setText(text)

    # -- actions -------------------------------------------------------------------------------------
    def open_selected(self) -> None:
        s = self.selected()
        if s is not None and not self.busy:
            self.open_requested.emit(str(s.path))

    def resume_selected(self) -> None:
        s = self.selected()
        if s is not None and not self.busy:
            self.resume_requested.emit(str(s.path))

    def show_selected(self) -> bool:
        s = self.selected()
        return bool(s is not None and QDesktopServices.openUrl(QUrl.fromLocalFile(str(s.path))))

    def _choose_root(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Runs folder", str(self.root))
        if path:
            self.set_root(path)

    def set_root(self, path) -> None:
        self.root = Path(path)
        self.root_changed.emit(str(self.root))
        self.refresh()
