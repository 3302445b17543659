"""medloop's home panel: what is installed, and a one-click sample."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtWidgets import QSizePolicy, QCheckBox, QLabel, QListWidget, QPushButton, QVBoxLayout, QWidget

from medloop import __version__
from medloop.app.manifest import method_panels
from medloop.app.plugin import load_plugins
from medloop.models.registry import list_models

if TYPE_CHECKING:
    import napari

NO_METHODS = "No method panels installed yet."
NO_MODELS = "No models in the zoo yet."


class HomePanel(QWidget):
    """Lists the installed method panels and models; opens a panel on double-click."""

    def __init__(self, napari_viewer: "napari.Viewer | None" = None) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.setObjectName("medloop-home")
        if napari_viewer is not None:
            from medloop.app.gui.orientation import OrientationGuide

            OrientationGuide.install(napari_viewer)  # radiological views, markers, units (once per viewer)
        layout = QVBoxLayout(self)
        self.title = QLabel(f"<b>medloop {__version__}</b> - review, correct, retrain")
        layout.addWidget(self.title)

        self.methods = method_panels()
        layout.addWidget(QLabel("Methods (double-click to open)"))
        self.method_list = QListWidget()
        self.method_list.addItems([m.display_name for m in self.methods] or [NO_METHODS])
        self.method_list.itemDoubleClicked.connect(self._open_method)
        _fit_rows(self.method_list, len(self.methods))
        layout.addWidget(self.method_list)

        self.models = list_models()
        layout.addWidget(QLabel("Models"))
        self.model_list = QListWidget()
        self.model_list.addItems([f"{m.name} - {m.summary}" for m in self.models] or [NO_MODELS])
        _fit_rows(self.model_list, min(len(self.models), 6))
        layout.addWidget(self.model_list)

        self.samples = [s for p in load_plugins() for s in p.samples]
        layout.addWidget(QLabel("Samples (double-click to open)"))
        self.sample_list = QListWidget()
        self.sample_list.addItems([s.display_name for s in self.samples])
        self.sample_list.setCurrentRow(0)
        _fit_rows(self.sample_list, len(self.samples))
        self.sample_list.itemDoubleClicked.connect(self.open_sample)
        layout.addWidget(self.sample_list)
        self.sample_button = QPushButton("Open sample")
        self.sample_button.setEnabled(bool(self.samples))
        self.sample_button.clicked.connect(self.open_sample)
        layout.addWidget(self.sample_button)
        self.multiplanar_check = QCheckBox("Multi-planar: coronal and sagittal views beside the axial one")
        self.multiplanar_check.setToolTip("Three linked views of every volume; a click in one moves the others' slices")
        self.multiplanar_check.setEnabled(napari_viewer is not None and hasattr(napari_viewer, "window"))
        self.multiplanar_check.toggled.connect(self.set_multiplanar)
        layout.addWidget(self.multiplanar_check)
        # Only as tall as its contents: the dock's height goes to the method panels below it.
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)

    def open_sample(self, *_: object) -> None:
        """Add the chosen sample's layers (the first sample when none is chosen) to the viewer."""
        if self.viewer is None or not self.samples:
            return
        from medloop.app.gui.layers import add_layer_data
        from medloop.app.plugin import resolve

        sample = self.samples[max(self.sample_list.currentRow(), 0)]
        add_layer_data(self.viewer, resolve(sample.factory)())

    def set_multiplanar(self, on: bool) -> None:
        """Show or hide the linked coronal and sagittal views."""
        from medloop.app.gui.multiplanar import toggle_multiplanar

        if self.viewer is not None:
            self.multiplanar = toggle_multiplanar(self.viewer, bool(on))

    def _open_method(self, item) -> None:
        if self.viewer is None or item.text() == NO_METHODS:
            return
        from medloop.app.gui.panels import open_panel

        panel = next(m for m in self.methods if m.display_name == item.text())
        open_panel(self.viewer, panel)


def _fit_rows(widget: QListWidget, rows: int) -> None:
    """As tall as ``rows`` entries (at least one) and a horizontal scroll bar: the home panel
    leaves the dock's height to the method panels below it."""
    row = widget.sizeHintForRow(0) if widget.count() else widget.fontMetrics().height() + 4
    widget.setMaximumHeight(row * max(rows, 1) + 2 * widget.frameWidth() + 18)
