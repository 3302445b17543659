"""medloop's home panel: what is installed, and a one-click sample."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtWidgets import QLabel, QListWidget, QPushButton, QVBoxLayout, QWidget

from medloop import __version__
from medloop.app.manifest import PLUGIN_NAME, method_panels
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
        layout = QVBoxLayout(self)
        self.title = QLabel(f"<b>medloop {__version__}</b> - review, correct, retrain")
        layout.addWidget(self.title)

        self.methods = method_panels()
        layout.addWidget(QLabel("Methods (double-click to open)"))
        self.method_list = QListWidget()
        self.method_list.addItems([m.display_name for m in self.methods] or [NO_METHODS])
        self.method_list.itemDoubleClicked.connect(self._open_method)
        layout.addWidget(self.method_list)

        self.models = list_models()
        layout.addWidget(QLabel("Models"))
        self.model_list = QListWidget()
        self.model_list.addItems([f"{m.name} - {m.summary}" for m in self.models] or [NO_MODELS])
        layout.addWidget(self.model_list)

        self.sample_button = QPushButton("Open the brain sample")
        self.sample_button.clicked.connect(self.open_sample)
        layout.addWidget(self.sample_button)
        layout.addStretch(1)

    def open_sample(self) -> None:
        """Add the MNI152 T1 sample and its tissue labels to the viewer."""
        if self.viewer is None:
            return
        from medloop.app.gui.layers import add_layer_data
        from medloop.app.samples import brain_sample_layers

        add_layer_data(self.viewer, brain_sample_layers())

    def _open_method(self, item) -> None:
        if self.viewer is None or item.text() == NO_METHODS:
            return
        self.viewer.window.add_plugin_dock_widget(PLUGIN_NAME, item.text())
