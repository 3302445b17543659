""""Where to paint next" in the Correction panel (issue #18 §1, GUI side): the uncertainty of the
current model as an overlay on the image, the ranked regions as rectangles and a list, and "Go to
next" that moves the view to them (ilastik's uncertainty view, MONAI Label's next sample).

The numbers come from :mod:`medloop.plugins.correction.guidance` (Qt-free), computed in the
panel's worker; this box only shows them. Its two layers are made once per image and their data
swapped afterwards (adding a layer costs napari a few hundred ms on the GUI thread).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QAbstractItemView, QCheckBox, QGroupBox, QLabel, QListView, QListWidget, QPushButton, QVBoxLayout

if TYPE_CHECKING:
    import napari

    from medloop.plugins.correction.guidance import Suggestion

EXPLANATION = (
    "Bright = the model is unsure (close call, flips change its answer, or a pixel classifier on "
    "your strokes disagrees). Regions are ranked by that and by distance from your strokes."
)
#: The box to go to fills about this share of the canvas (the rest is context).
BOX_SHARE = 1 / 3
EDGE_COLOR = "cyan"


class GuidanceBox(QGroupBox):
    """The "Where to paint next" group: a switch, the ranked list, "Go to next", a note.

    ``show(image_layer, image, suggestions, u, z, classes)`` puts a result on screen;
    ``on_layers_added()`` runs after the box had to add its layers (the panel keeps its
    annotation layer on top and selected)."""

    def __init__(self, napari_viewer: "napari.Viewer", on_layers_added: Callable[[], None] | None = None) -> None:
        super().__init__("Where to paint next")
        self.viewer = napari_viewer
        self.on_layers_added = on_layers_added
        self.suggestions: list[Suggestion] = []
        self.image_name: str | None = None
        self.position = -1  # the suggestion the view was last moved to (-1: none yet)
        self.show_check = QCheckBox("Show where to paint next")
        self.show_check.setChecked(True)
        self.show_check.setToolTip("After each live update or fine-tune, compute the model's uncertainty and rank regions")
        self.list = QListWidget()
        # rows wrap to the dock's width (a docked panel never scrolls sideways)
        self.list.setWordWrap(True)
        self.list.setResizeMode(QListView.ResizeMode.Adjust)
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.list.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.list.setMinimumHeight(160)
        self.list.setToolTip("Regions ranked by uncertainty and distance from the strokes; select one to go there")
        self.next_button = QPushButton("Go to next")
        self.next_button.setToolTip("Move the view to the next region in rank order")
        self.next_button.setEnabled(False)
        self.note = QLabel(EXPLANATION)
        self.note.setWordWrap(True)
        layout = QVBoxLayout(self)
        for widget in (self.show_check, self.list, self.next_button, self.note):
            layout.addWidget(widget)
        self.show_check.toggled.connect(self._toggled)
        self.next_button.clicked.connect(self.go_next)
        self.list.currentRowChanged.connect(self._row_chosen)

    @property
    def enabled(self) -> bool:
        return self.show_check.isChecked()

    @staticmethod
    def layer_names(image_name: str) -> tuple[str, str]:
        return f"{image_name} uncertainty", f"{image_name} suggestions"

    # -- layers -------------------------------------------------------------------------------
    def ensure_layers(self, image_layer, image) -> tuple[Any, Any]:
        """The uncertainty (Image) and suggestions (Shapes) layers of ``image_layer``, on its
        grid; made when missing."""
        u_name, s_name = self.layer_names(image_layer.name)
        layers = self.viewer.layers
        kwargs = image.layer_kwargs()
        for key in ("rgb", "multiscale"):
            kwargs.pop(key, None)
        spatial = tuple(image.shape[: image.ndim])
        added = False
        if u_name not in layers:
            self.viewer.add_image(
                np.zeros(spatial, np.float32), name=u_name, colormap="magma", blending="additive",
                opacity=0.6, contrast_limits=(0.0, 1.0), visible=self.enabled, **kwargs,
            )
            added = True
        if s_name not in layers:
            self.viewer.add_shapes(
                ndim=image.ndim, name=s_name, edge_color=EDGE_COLOR, face_color="transparent", edge_width=0.5,
                features={"rank": np.zeros(0, int)},
                text={"string": "{rank}", "color": EDGE_COLOR, "size": 16, "anchor": "center"},
                visible=self.enabled, **kwargs,
            )
            added = True
        if added and self.on_layers_added is not None:
            self.on_layers_added()
        return layers[u_name], layers[s_name]

    def _toggled(self, on: bool) -> None:
        if self.image_name is None:
            return
        for name in self.layer_names(self.image_name):
            if name in self.viewer.layers:
                self.viewer.layers[name].visible = on

    # -- results ------------------------------------------------------------------------------
    def show(
        self, image_layer, image, suggestions: Sequence["Suggestion"], u: np.ndarray, z: int | None,
        classes: dict[int, str],
    ) -> None:
        """Show a result: ``u`` the uncertainty of the whole image (``z`` None) or of slice ``z``
        of a volume (whose suggestions then lie on slice ``z``; the other slices show 0)."""
        u_layer, s_layer = self.ensure_layers(image_layer, image)
        if z is None:
            u_layer.data = np.asarray(u, np.float32)
        else:
            data = u_layer.data
            data[...] = 0
            data[z] = u
            u_layer.refresh()
        u_layer.contrast_limits = (0.0, 1.0)
        self.suggestions = [s if z is None else replace(s, slice=z) for s in suggestions]
        self.image_name, self.position = image_layer.name, -1
        s_layer.selected_data = set()
        s_layer.data = [_rectangle(s) for s in self.suggestions]
        s_layer.features = {"rank": np.array([s.rank for s in self.suggestions], int)}
        s_layer.refresh_text()
        self._fill_list(classes)

    def _fill_list(self, classes: dict[int, str]) -> None:
        self.list.blockSignals(True)
        self.list.clear()
        for s in self.suggestions:
            self.list.addItem(row_text(s, classes))
            self.list.item(self.list.count() - 1).setToolTip(
                f"score {s.score:.3f}; {s.distance_px:.0f} px from the nearest stroke" if np.isfinite(s.distance_px)
                else f"score {s.score:.3f}; no strokes yet"
            )
        self.list.blockSignals(False)
        self.next_button.setEnabled(bool(self.suggestions))

    def clear(self) -> None:
        self.suggestions, self.position = [], -1
        self.list.clear()
        self.next_button.setEnabled(False)

    # -- navigation ---------------------------------------------------------------------------
    def go_next(self) -> None:
        """Move to the next suggestion in rank order (after the last: the first)."""
        if self.suggestions:
            self.go_to((self.position + 1) % len(self.suggestions))

    def _row_chosen(self, row: int) -> None:
        if 0 <= row < len(self.suggestions):
            self.go_to(row)

    def go_to(self, index: int) -> None:
        """Show suggestion ``index``: its slice, the camera centred on its box, zoomed so the box
        fills about :data:`BOX_SHARE` of the canvas."""
        if self.image_name not in self.viewer.layers:
            return
        layer = self.viewer.layers[self.image_name]
        s = self.suggestions[index]
        corners = np.array([layer.data_to_world(c) for c in _corners(s)])
        centre, size = corners.mean(0), corners.max(0) - corners.min(0)
        dims = self.viewer.dims
        offset = dims.ndim - layer.ndim  # world axis of the layer's axis 0
        if s.slice is not None:
            dims.set_point(offset, float(centre[0]))
        shown = [d - offset for d in dims.displayed if d >= offset]
        self.viewer.camera.center = tuple(float(centre[d]) for d in shown)
        canvas = np.asarray(self.viewer.canvas.size, float)[-len(shown[-2:]):]
        extent = np.maximum(size[shown[-2:]], 1e-6)
        self.viewer.camera.zoom = float(np.min(canvas * BOX_SHARE / extent))
        self.position = index
        self.list.blockSignals(True)
        self.list.setCurrentRow(index)
        self.list.blockSignals(False)


def row_text(s: "Suggestion", classes: dict[int, str]) -> str:
    """``"1. slice 34 · rows 24–48, cols 48–72 · unsure 0.62 · predicted grey matter"`` (no slice
    for a 2-D image)."""
    y0, x0, y1, x1 = s.box
    where = f"rows {y0}–{y1}, cols {x0}–{x1}"
    if s.slice is not None:
        where = f"slice {s.slice} · {where}"
    name = classes.get(s.predicted_class, f"class {s.predicted_class}")
    return f"{s.rank}. {where} · unsure {s.uncertainty:.2f} · predicted {name}"


def _corners(s: "Suggestion") -> list[tuple[float, ...]]:
    """The four data-coordinate corners of a suggestion's box (pixel edges: centres are integers)."""
    y0, x0, y1, x1 = s.box
    plane = [(y0 - 0.5, x0 - 0.5), (y0 - 0.5, x1 - 0.5), (y1 - 0.5, x1 - 0.5), (y1 - 0.5, x0 - 0.5)]
    return [c if s.slice is None else (float(s.slice), *c) for c in plane]


def _rectangle(s: "Suggestion") -> np.ndarray:
    return np.array(_corners(s), float)
