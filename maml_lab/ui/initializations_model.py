"""The playground's "Initializations" table as a Qt model: one row per initialization, in the playground's order.

Columns: the name (a colour swatch in the algorithm's colour, a checkbox for visible / hidden), the query MSE
before adaptation (k = 0) and after k inner steps (k = the slider's steps, named in the header). The model reads
the playground's own containers (initializations, predictions, hidden keys) and is told when they change:
`insert` / `remove` / `replace` when initializations come and go, `prediction_changed` when a prediction
arrives, `set_steps` when k changes. Toggling a checkbox updates the hidden keys and emits `visibility_changed`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableSet

from PySide6.QtCore import QAbstractTableModel, QModelIndex, Qt, Signal
from PySide6.QtGui import QBrush, QColor

from ..lab.initializations import Initialization
from ..lab.playground import Prediction
from .colors import algorithm_color

SWATCH = "■"
NO_PREDICTION = "—"
DIVERGED = "diverged"

_ROLE = Qt.ItemDataRole
_RIGHT = int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)


def mse_text(prediction: Prediction | None, step: int) -> str:
    """One error cell: "—" without a prediction (or without an error), "diverged" when not finite, else 3 digits."""
    if prediction is None or prediction.mse is None:
        return NO_PREDICTION
    value = float(prediction.mse[step])
    return f"{value:.3g}" if math.isfinite(value) else DIVERGED


def init_tooltip(init: Initialization) -> str:
    tip = init.metadata.get("algorithm", init.algorithm)
    iterations = init.metadata.get("iterations")
    return (f"{init.label}: {tip}, inner lr {init.inner_lr:g}"
            + (f", {iterations} iterations" if iterations is not None else ""))


class InitializationsModel(QAbstractTableModel):
    """Rows: the keys of `inits` in order; cells read `inits`, `predictions` and `hidden` when asked."""

    visibility_changed = Signal(str)  # the key whose checkbox was toggled (hidden_keys already updated)

    NAME, BEFORE, AFTER = range(3)

    def __init__(self, inits: Mapping[str, Initialization], predictions: Mapping[str, Prediction],
                 hidden: MutableSet[str], steps: int = 0, parent=None):
        super().__init__(parent)
        self._inits = inits
        self._predictions = predictions
        self._hidden = hidden
        self._keys: list[str] = list(inits)
        self.steps = int(steps)

    # -- the rows -------------------------------------------------------------------------------------
    @property
    def keys(self) -> list[str]:
        return list(self._keys)

    def key_at(self, row: int) -> str | None:
        return self._keys[row] if 0 <= row < len(self._keys) else None

    def row_of(self, key: str) -> int:
        """The row of a key, -1 when it has none."""
        try:
            return self._keys.index(key)
        except ValueError:
            return -1

    def insert(self, key: str) -> None:
        """A new initialization at the end (it must be in `inits` already)."""
        if key in self._keys:
            return self.replace(key)
        row = len(self._keys)
        self.beginInsertRows(QModelIndex(), row, row)
        self._keys.append(key)
        self.endInsertRows()
        return None

    def remove(self, key: str) -> None:
        """An initialization goes away: call before or after taking it out of `inits`, the model keeps its keys."""
        row = self.row_of(key)
        if row < 0:
            return
        self.beginRemoveRows(QModelIndex(), row, row)
        del self._keys[row]
        self.endRemoveRows()

    def replace(self, key: str) -> None:
        """An initialization under a known key changed (label, metadata): its whole row is read again."""
        row = self.row_of(key)
        if row >= 0:
            self.dataChanged.emit(self.index(row, 0), self.index(row, self.columnCount() - 1))

    def reset(self) -> None:
        """Read the rows again from `inits` (any change at all)."""
        self.beginResetModel()
        self._keys = list(self._inits)
        self.endResetModel()

    def prediction_changed(self, key: str) -> None:
        row = self.row_of(key)
        if row >= 0:
            self.dataChanged.emit(self.index(row, self.BEFORE), self.index(row, self.AFTER), [_ROLE.DisplayRole])

    def set_steps(self, steps: int) -> None:
        """k changed: the header of the last column and its cells follow it."""
        self.steps = int(steps)
        self.headerDataChanged.emit(Qt.Orientation.Horizontal, self.AFTER, self.AFTER)
        if self._keys:
            self.dataChanged.emit(self.index(0, self.AFTER), self.index(len(self._keys) - 1, self.AFTER),
                                  [_ROLE.DisplayRole])

    # -- QAbstractTableModel -----------------------------------------------------------------------------
    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: B008, N802 - Qt's signature
        return 0 if parent.isValid() else len(self._keys)

    def columnCount(self, parent=QModelIndex()) -> int:  # noqa: B008, N802 - Qt's signature
        return 0 if parent.isValid() else 3

    def flags(self, index):
        if not index.isValid():
            return Qt.ItemFlag.NoItemFlags
        base = Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable
        return base | Qt.ItemFlag.ItemIsUserCheckable if index.column() == self.NAME else base

    def data(self, index, role=_ROLE.DisplayRole):
        if not index.isValid():
            return None
        key = self.key_at(index.row())
        init = self._inits.get(key) if key is not None else None
        if init is None:
            return None
        col = index.column()
        if col == self.NAME:
            if role == _ROLE.DisplayRole:
                return f"{SWATCH}  {init.label}"
            if role == _ROLE.ForegroundRole:
                return QBrush(QColor(algorithm_color(init.algorithm)))
            if role == _ROLE.CheckStateRole:
                return Qt.CheckState.Unchecked if key in self._hidden else Qt.CheckState.Checked
            if role == _ROLE.ToolTipRole:
                return init_tooltip(init)
            if role == _ROLE.UserRole:
                return key
            return None
        if role == _ROLE.DisplayRole:
            return mse_text(self._predictions.get(key), 0 if col == self.BEFORE else self.steps)
        if role == _ROLE.TextAlignmentRole:
            return _RIGHT
        return None

    def setData(self, index, value, role=_ROLE.EditRole) -> bool:  # noqa: N802 - Qt's name
        if not index.isValid() or index.column() != self.NAME or role != _ROLE.CheckStateRole:
            return False
        key = self.key_at(index.row())
        if key is None:
            return False
        checked = value if isinstance(value, Qt.CheckState) else Qt.CheckState(int(value))
        if checked == Qt.CheckState.Checked:
            self._hidden.discard(key)
        else:
            self._hidden.add(key)
        self.dataChanged.emit(index, index, [_ROLE.CheckStateRole])
        self.visibility_changed.emit(key)
        return True

    def headerData(self, section, orientation, role=_ROLE.DisplayRole):  # noqa: N802 - Qt's name
        if role == _ROLE.DisplayRole and orientation == Qt.Orientation.Horizontal and 0 <= section < 3:
            return ("Initialization", "k = 0", f"k = {self.steps}")[section]
        return None

