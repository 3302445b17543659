"""Multi-planar layout: the main canvas shows the axial view; a dock beside it shows the coronal
and sagittal views of the same layers, each in radiological orientation with its markers, all
three linked to one cursor (the slice position). Clicking a point in any view moves the other
views' slices through it.

napari 0.9 has one camera and one slice position per viewer (its grid mode tiles layers, not
views), so the two extra views are small ``ViewerModel`` + ``QtViewer`` pairs whose layers mirror
the main viewer's (same data arrays, same transforms and colours; label edits show at once).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import weakref

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QLabel, QSplitter, QVBoxLayout, QWidget

from medloop.app.gui.orientation import OrientationGuide

if TYPE_CHECKING:
    import napari

#: The extra views: name -> dims order (the last two axes are displayed).
VIEWS = {"coronal": (1, 0, 2), "sagittal": (2, 0, 1)}
MIRRORED = ("image", "labels")
SYNCED = ("visible", "opacity", "colormap", "contrast_limits", "gamma")


class MultiPlanarView(QWidget):
    """Coronal and sagittal views linked to ``viewer`` (which shows the axial view)."""

    def __init__(self, viewer: "napari.Viewer") -> None:
        from napari.components import ViewerModel
        from napari.qt import QtViewer

        super().__init__()
        self.setObjectName("medloop-multiplanar")
        self.viewer = viewer
        self.models: dict[str, Any] = {}
        self.qt_viewers: dict[str, Any] = {}
        self._syncing = False
        splitter = QSplitter(Qt.Orientation.Horizontal)  # side by side, under the axial view
        for name in VIEWS:
            model = ViewerModel(title=name)
            self.models[name] = model
            qt_viewer = QtViewer(model)
            self.qt_viewers[name] = qt_viewer
            box = QWidget()
            box_layout = QVBoxLayout(box)
            box_layout.setContentsMargins(0, 0, 0, 0)
            box_layout.addWidget(QLabel(name.capitalize()))
            box_layout.addWidget(qt_viewer)
            splitter.addWidget(box)
            OrientationGuide.install(model)
            model.dims.events.point.connect(lambda event, m=model: self._point_changed(m))
            model.mouse_drag_callbacks.append(self._clicked)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(splitter)
        self.setMinimumHeight(320)
        viewer.dims.order = (0, 1, 2) if viewer.dims.ndim == 3 else viewer.dims.order
        viewer.dims.events.point.connect(self._main_point_changed)
        viewer.mouse_drag_callbacks.append(self._clicked)
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed, viewer.layers.events.moved):
            event.connect(self._rebuild)
        self._links: list[tuple[Any, Any]] = []
        self._rebuild()

    def close_views(self) -> None:
        """Disconnect from the main viewer and close the extra views (the dock is going away)."""
        viewer = self.viewer
        viewer.dims.events.point.disconnect(self._main_point_changed)
        if self._clicked in viewer.mouse_drag_callbacks:
            viewer.mouse_drag_callbacks.remove(self._clicked)
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed, viewer.layers.events.moved):
            event.disconnect(self._rebuild)
        self._unlink()
        for name, qt_viewer in self.qt_viewers.items():
            self.models[name].layers.clear()
            qt_viewer.close()
            qt_viewer.setParent(None)
            qt_viewer.deleteLater()
        self.qt_viewers.clear()

    def _main_point_changed(self, event=None) -> None:
        self._point_changed(self.viewer)

    # -- layers -------------------------------------------------------------------------------
    def _rebuild(self, *_: Any) -> None:
        """Mirror the main viewer's image and labels layers into every extra view."""
        from napari.layers import Layer

        sources = [layer for layer in self.viewer.layers if layer._type_string in MIRRORED]
        self._unlink()
        for name, model in self.models.items():
            model.layers.clear()
            for layer in sources:
                data, state, kind = layer.as_layer_data_tuple()
                mirror = Layer.create(layer.data, state, kind)
                if kind == "labels":
                    mirror.contour = layer.contour
                    mirror.editable = False
                model.layers.append(mirror)
                self._link(layer, mirror)
            if model.dims.ndim == 3:
                model.dims.order = VIEWS[name]
            self._copy_point(self.viewer, model)
            model.reset_view()

    def _link(self, layer, mirror) -> None:
        """Display changes of ``layer`` (and label edits) follow in ``mirror``."""

        def connect(emitter, callback) -> None:
            emitter.connect(callback)
            self._links.append((emitter, callback))

        for attr in SYNCED:
            if hasattr(layer.events, attr) and hasattr(mirror, attr):
                connect(getattr(layer.events, attr), lambda event, a=attr, m=mirror, src=layer: setattr(m, a, getattr(src, a)))
        if layer._type_string == "labels":
            connect(layer.events.paint, lambda event, m=mirror: m.refresh())
            connect(layer.events.data, lambda event, m=mirror, src=layer: setattr(m, "data", src.data))
            connect(layer.events.features, lambda event, m=mirror, src=layer: setattr(m, "features", src.features))

    def _unlink(self) -> None:
        for emitter, callback in self._links:
            emitter.disconnect(callback)
        self._links = []

    # -- one cursor ---------------------------------------------------------------------------
    def _point_changed(self, source) -> None:
        if self._syncing:
            return
        self._syncing = True
        try:
            for target in (self.viewer, *self.models.values()):
                if target is not source:
                    self._copy_point(source, target)
        finally:
            self._syncing = False

    @staticmethod
    def _copy_point(source, target) -> None:
        if source.dims.ndim != target.dims.ndim or target.dims.ndim < 3:
            return
        point = np.asarray(source.dims.point, float)
        if not np.allclose(point, target.dims.point):
            target.dims.point = tuple(point)

    def _clicked(self, viewer, event) -> None:
        """A click in any view moves every view's slice through the clicked point."""
        position = np.asarray(event.position, float)
        if viewer.dims.ndim < 3 or len(position) != viewer.dims.ndim:
            return
        viewer.dims.point = tuple(position)  # the displayed axes too: the other views follow
        self._point_changed(viewer)


def toggle_multiplanar(viewer: "napari.Viewer", on: bool) -> MultiPlanarView | None:
    """Show (``on``) or remove the multi-planar dock of ``viewer``; returns the view when shown."""
    dock_name = "Multi-planar (coronal, sagittal)"
    window = viewer.window
    existing = _DOCKS.pop(viewer, None)
    if existing is not None:
        existing.widget().close_views()
        window.remove_dock_widget(existing)
    if not on:
        return None
    view = MultiPlanarView(viewer)
    _DOCKS[viewer] = window.add_dock_widget(view, name=dock_name, area="bottom")
    viewer.reset_view()  # the axial canvas got smaller
    return view


_DOCKS: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()
