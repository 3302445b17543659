"""The class list (like Slicer's segment list): one row per class of the active labels layer with
its colour, name, a visibility toggle and its volume (mL) or area (mm², µm²); clicking a row picks
that class as the brush label."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QColor
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QLabel, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget

from medloop.app.io.classes import CLASSES_KEY, class_color

if TYPE_CHECKING:
    import napari

COLUMNS = ["", "class", "shown", "size"]


def class_sizes(data: np.ndarray, values: list[int], scale: Any, unit: str) -> dict[int, tuple[float, str]]:
    """``{value: (size, unit text)}``: volume in mL for a millimetre volume, else area/volume in
    the layer's unit squared/cubed (voxel count x voxel size)."""
    counts = np.bincount(np.asarray(data).ravel().astype(np.int64, copy=False), minlength=max(values, default=0) + 1)
    voxel = float(np.prod(np.abs(np.asarray(scale, dtype=float))))
    ndim = len(scale)
    out = {}
    for v in values:
        size = float(counts[v]) * voxel if v < len(counts) else 0.0
        if unit == "mm" and ndim == 3:
            out[v] = (size / 1000.0, "mL")
        else:
            out[v] = (size, f"{unit}{'²' if ndim == 2 else '³'}")
    return out


def _unit(layer) -> str:
    units = getattr(layer, "units", None)
    if not units:
        return "px"
    unit = f"{units[-1]:~}" if hasattr(units[-1], "dimensionality") else str(units[-1])
    return {"um": "µm", "pixel": "px", "": "px"}.get(unit, unit)


class ClassList(QWidget):
    """Follows the viewer's active labels layer that carries a class table."""

    def __init__(self, viewer: "napari.Viewer") -> None:
        super().__init__()
        self.viewer = viewer
        self.layer = None
        self.values: list[int] = []
        self.hidden: set[int] = set()
        self.title = QLabel("Classes")
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        for column in (0, 2, 3):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        self.table.cellClicked.connect(self._clicked)
        self.table.itemChanged.connect(self._item_changed)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.title)
        layout.addWidget(self.table)
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(250)
        self.timer.timeout.connect(self.update_sizes)
        viewer.layers.selection.events.active.connect(self._active_changed)
        self._active_changed()

    # -- which layer --------------------------------------------------------------------------
    def _active_changed(self, *_: Any) -> None:
        from napari.layers import Labels

        layer = self.viewer.layers.selection.active
        if isinstance(layer, Labels) and layer.metadata.get(CLASSES_KEY):
            self.set_layer(layer)

    def set_layer(self, layer) -> None:
        """Show ``layer``'s classes (its metadata class table) and follow its edits."""
        if self.layer is not None:
            for event in (self.layer.events.paint, self.layer.events.data):
                event.disconnect(self._schedule)
        self.layer = layer
        self.hidden = set()
        stored = {int(v): str(n) for v, n in (layer.metadata.get(CLASSES_KEY) or {}).items()}
        self.offset = int(layer.metadata.get("class_offset", 0))
        self.values = sorted(stored)
        self.title.setText(f"Classes of {layer.name}")
        self.table.blockSignals(True)
        self.table.setRowCount(len(self.values))
        for row, value in enumerate(self.values):
            drawn = value - self.offset != 0 or self.offset != 0  # a class map leaves background undrawn
            swatch = QTableWidgetItem("" if drawn else "–")
            if drawn:
                swatch.setBackground(QColor(class_color(value - self.offset)))
            swatch.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable)
            self.table.setItem(row, 0, swatch)
            self.table.setItem(row, 1, QTableWidgetItem(stored[value]))
            shown = QTableWidgetItem("")
            shown.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsUserCheckable | Qt.ItemFlag.ItemIsSelectable)
            shown.setCheckState(Qt.CheckState.Checked)
            self.table.setItem(row, 2, shown)
            self.table.setItem(row, 3, QTableWidgetItem(""))
        self.table.blockSignals(False)
        rows = sum(self.table.rowHeight(r) for r in range(len(self.values)))
        self.table.setFixedHeight(self.table.horizontalHeader().height() + rows + 2 * self.table.frameWidth() + 2)
        layer.events.paint.connect(self._schedule)
        layer.events.data.connect(self._schedule)
        self.update_sizes()

    def _schedule(self, *_: Any) -> None:
        self.timer.start()

    # -- contents -----------------------------------------------------------------------------
    def sizes(self) -> dict[int, tuple[float, str]]:
        """``{stored value: (size, unit)}`` of the shown layer."""
        if self.layer is None:
            return {}
        return class_sizes(self.layer.data, self.values, self.layer.scale, _unit(self.layer))

    def update_sizes(self) -> None:
        sizes = self.sizes()
        self.table.blockSignals(True)
        for row, value in enumerate(self.values):
            size, unit = sizes[value]
            self.table.item(row, 3).setText(f"{size:.4g} {unit}")
        self.table.blockSignals(False)

    # -- actions ------------------------------------------------------------------------------
    def pick(self, row: int) -> None:
        """Make the row's class the brush label of the layer (and select the row)."""
        if self.layer is None or not 0 <= row < len(self.values):
            return
        self.layer.selected_label = self.values[row]
        self.table.selectRow(row)

    def _clicked(self, row: int, column: int) -> None:
        if column != 2:
            self.pick(row)

    def set_shown(self, row: int, shown: bool) -> None:
        self.table.item(row, 2).setCheckState(Qt.CheckState.Checked if shown else Qt.CheckState.Unchecked)

    def _item_changed(self, item) -> None:
        if item.column() != 2 or self.layer is None:
            return
        from medloop.app.gui.layers import style_labels

        value = self.values[item.row()]
        k = value - self.offset
        if item.checkState() == Qt.CheckState.Checked:
            self.hidden.discard(k)
        else:
            self.hidden.add(k)
        classes = self.layer.metadata.get("classes") or {v - self.offset: n for v, n in zip(self.values, self._names())}
        style_labels(self.layer, classes, self.offset, hidden=set(self.hidden))

    def _names(self) -> list[str]:
        return [self.table.item(row, 1).text() for row in range(len(self.values))]
