"""Mask correction tools for any Labels layer: one click = one step in napari's undo history.

The tools themselves are Qt-free (:mod:`medloop.app.engine.label_edit`); this box picks the
layer, the label and the size, runs the tool off the GUI thread on a snapshot of the layer, and
writes back only the voxels that changed through ``Labels.data_setitem`` so that Ctrl+Z (or the
Undo button) reverts exactly that edit. Voxels painted while a tool ran are kept. Copying one
layer into another matches classes by name (layer metadata ``medloop_classes``), so a prediction
(class k) lands in a paint layer as k + 1; background is never copied, and voxels already
painted are kept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QPushButton,
)

from medloop.app.gui.jobs import start_job
from medloop.app.io.classes import CLASSES_KEY  # re-exported: {stored label value: class name}

if TYPE_CHECKING:
    import napari


# tool name -> (what the size means, or None when it takes no size)
TOOLS: dict[str, str | None] = {
    "Fill holes": None,
    "Remove islands smaller than": "area/volume",
    "Smooth": "radius",
    "Dilate": "radius",
    "Erode": "radius",
    "Keep largest component": None,
    "Interpolate between slices": None,
    "Copy from layer": None,
}


def run_tool(tool: str, labels: np.ndarray, label: int, size: float, spacing: Any, source: np.ndarray | None = None) -> np.ndarray:
    """The edited copy of ``labels`` (Qt-free; sizes in the units of ``spacing``, x-first)."""
    from medloop.app.engine import label_edit as edit

    if tool == "Fill holes":
        return edit.fill_holes(labels, label)
    if tool == "Remove islands smaller than":
        return edit.remove_small_islands(labels, label, size, spacing=spacing)
    if tool == "Smooth":
        return edit.smooth(labels, label, size, spacing=spacing)
    if tool == "Dilate":
        return edit.dilate(labels, label, size, spacing=spacing)
    if tool == "Erode":
        return edit.erode(labels, label, size, spacing=spacing)
    if tool == "Keep largest component":
        return edit.keep_largest_component(labels, label)
    if tool == "Interpolate between slices":
        return edit.interpolate_slices(labels, label, axis=0, spacing=spacing)
    if tool == "Copy from layer":
        if source is None:
            raise edit.EditError("Choose a labels layer to copy from.")
        return edit.copy_prediction(source, labels)
    raise ValueError(f"unknown tool {tool!r}")


def match_classes(source: np.ndarray, source_classes: dict | None, target_classes: dict | None) -> np.ndarray:
    """What Copy from layer copies: ``source`` renumbered to the target layer's value of the same
    class name (a prediction's class k is stored as k + 1 in a paint layer, where 0 means "not
    annotated"), 0 (= copy nothing) for background and for classes the target does not have.

    Background is the source's value 0 and any class of the same name: copying it would paint
    every voxel the model left empty. Without class tables the source is copied as it is."""
    if not source_classes or not target_classes:
        return source
    names = {int(v): str(n) for v, n in source_classes.items()}
    background = names.get(0)
    by_name = {str(name): int(value) for value, name in target_classes.items()}
    mapping = {v: by_name[n] for v, n in names.items() if v != 0 and n != background and n in by_name}
    out = np.zeros_like(source)
    for old, new in mapping.items():
        out[source == old] = new
    return out


class MaskToolsBox(QGroupBox):
    """Fill holes, remove islands, smooth, dilate/erode, keep the largest component, interpolate
    slices, copy another layer in; with Undo/Redo. ``layer_names()`` filters the layers offered."""

    def __init__(self, viewer: "napari.Viewer", on_edit: Callable[[Any], None] | None = None) -> None:
        super().__init__("Mask tools")
        self.viewer = viewer
        self.on_edit = on_edit
        self.job = None
        self.last_changed = 0
        self.layer_combo = QComboBox()
        self.label_combo = QComboBox()
        self.label_combo.setEditable(True)  # any label value can be typed
        self.tool_combo = QComboBox()
        self.tool_combo.addItems(list(TOOLS))
        self.size_spin = QDoubleSpinBox()
        self.size_spin.setRange(0.0, 1e6)
        self.size_spin.setDecimals(2)
        self.size_spin.setValue(2.0)
        self.source_combo = QComboBox()
        self.apply_button = QPushButton("Apply")
        self.undo_button = QPushButton("Undo")
        self.redo_button = QPushButton("Redo")
        form = QFormLayout(self)
        form.addRow("Layer", self.layer_combo)
        form.addRow("Label", self.label_combo)
        form.addRow("Tool", self.tool_combo)
        form.addRow("Size", self.size_spin)
        form.addRow("From", self.source_combo)
        row = QHBoxLayout()
        for b in (self.apply_button, self.undo_button, self.redo_button):
            row.addWidget(b)
        form.addRow(row)
        self.apply_button.clicked.connect(self.apply)
        self.undo_button.clicked.connect(lambda: self._history("undo"))
        self.redo_button.clicked.connect(lambda: self._history("redo"))
        self.layer_combo.currentIndexChanged.connect(self._fill_labels)
        self.tool_combo.currentIndexChanged.connect(self._tool_changed)
        viewer.layers.events.inserted.connect(self.refresh_layers)
        viewer.layers.events.removed.connect(self.refresh_layers)
        self.refresh_layers()
        self._tool_changed()

    # -- choices ------------------------------------------------------------------------------
    def _labels_layers(self) -> list:
        return [layer for layer in self.viewer.layers if layer._type_string == "labels"]

    def refresh_layers(self, *_: Any) -> None:
        """Offer every Labels layer (as target and as copy source), keeping current choices."""
        names = [layer.name for layer in self._labels_layers()]
        for combo in (self.layer_combo, self.source_combo):
            current = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(names)
            if current in names:
                combo.setCurrentText(current)
            combo.blockSignals(False)
        self._fill_labels()

    def layer(self):
        name = self.layer_combo.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def select_layer(self, name: str) -> None:
        self.refresh_layers()
        self.layer_combo.setCurrentText(name)

    def _fill_labels(self, *_: Any) -> None:
        layer = self.layer()
        current = self.label_combo.currentText()
        self.label_combo.clear()
        if layer is None:
            return
        classes = layer.metadata.get(CLASSES_KEY) or {}
        values = sorted(int(v) for v in classes) or list(range(1, max(2, int(layer.selected_label)) + 1))
        self.label_combo.addItems([f"{v} {classes.get(v, '')}".strip() for v in values])
        if current:
            self.label_combo.setCurrentText(current)
        else:
            self.label_combo.setCurrentText(str(layer.selected_label))

    def label_value(self) -> int:
        from medloop.app.engine.label_edit import EditError

        text = self.label_combo.currentText().strip().split(" ")[0]
        try:
            value = int(text)
        except ValueError:
            raise EditError(f"The label must be a whole number, got {text!r}.") from None
        if value <= 0:
            raise EditError("Choose a label above 0 (0 means unlabelled).")
        return value

    def _tool_changed(self, *_: Any) -> None:
        meaning = TOOLS[self.tool_combo.currentText()]
        self.size_spin.setEnabled(meaning is not None)
        self.source_combo.setEnabled(self.tool_combo.currentText() == "Copy from layer")
        layer = self.layer()
        unit = _unit(layer)
        self.size_spin.setSuffix(
            "" if meaning is None else (f" {unit}" if meaning == "radius" else f" {unit}^{layer.ndim if layer else 2}")
        )

    # -- actions ------------------------------------------------------------------------------
    def apply(self) -> None:
        """Run the chosen tool in a worker; its result becomes one undoable edit of the layer."""
        from napari.utils.notifications import show_error

        from medloop.app.errors import MedloopError

        layer = self.layer()
        if layer is None or self.job is not None:
            return
        try:
            label = self.label_value()
        except MedloopError as exc:
            show_error(str(exc))
            return
        tool, size = self.tool_combo.currentText(), float(self.size_spin.value())
        snapshot = np.array(layer.data, copy=True)
        source = None
        if tool == "Copy from layer":
            name = self.source_combo.currentText()
            if name == layer.name or name not in self.viewer.layers:
                show_error("Copy from layer: choose another labels layer as the source.")
                return
            source_layer = self.viewer.layers[name]
            source = match_classes(np.asarray(source_layer.data), source_layer.metadata.get(CLASSES_KEY), layer.metadata.get(CLASSES_KEY))
        spacing = tuple(float(s) for s in layer.scale[::-1])  # x-first, as the tools expect

        def compute(progress, should_stop):
            return run_tool(tool, snapshot, label, size, spacing, source)

        self.apply_button.setEnabled(False)
        self.job = start_job(
            compute,
            on_done=lambda edited: self._write(layer, snapshot, edited, tool),
            on_error=lambda exc: show_error(str(exc)),
            on_finished=self._finished,
        )

    def _write(self, layer, snapshot: np.ndarray, edited: np.ndarray, tool: str) -> None:
        current = np.asarray(layer.data)
        # Only voxels the tool changed, and only where nobody painted while it ran.
        changed = (edited != snapshot) & (current == snapshot)
        index = np.nonzero(changed)
        self.last_changed = int(index[0].size)
        if self.last_changed:
            layer.data_setitem(index, edited[index])
        if self.on_edit is not None:
            self.on_edit(layer)
        self.setTitle(f"Mask tools: {tool.lower()} changed {self.last_changed} voxels")

    def _finished(self) -> None:
        self.job = None
        self.apply_button.setEnabled(True)

    def _history(self, which: str) -> None:
        layer = self.layer()
        if layer is None:
            return
        getattr(layer, which)()
        if self.on_edit is not None:  # napari's undo emits no paint event: autosave needs telling
            self.on_edit(layer)


def _unit(layer) -> str:
    image = layer.metadata.get("medloop_image") if layer is not None else None
    return getattr(image, "unit", "px") if image is not None else "px"
