"""Home panel (widget tier, pytest-qt): lists what is installed; opens the sample with geometry."""

from __future__ import annotations

import numpy as np
from napari.components import ViewerModel
from qtpy.QtCore import Qt

from medloop import __version__
from medloop.app.gui.home import NO_MODELS, HomePanel
from medloop.models.registry import list_models


def list_texts(widget) -> list[str]:
    return [widget.item(i).text() for i in range(widget.count())]


def test_home_lists_methods_and_models(qtbot):
    panel = HomePanel(ViewerModel())
    qtbot.addWidget(panel)
    assert list_texts(panel.method_list) == ["Segmentation", "Correction", "Review", "Click to segment", "Axon tracking", "Stain transfer", "Confocal to H&E", "Normalise stain", "Train stain transfer", "Synthesize lesion", "Anomaly map"]
    assert list_texts(panel.model_list) == ([f"{m.name} - {m.summary}" for m in list_models()] or [NO_MODELS])
    assert panel.title.text() == f"<b>medloop {__version__}</b> - review, correct, retrain"


def test_sample_button_adds_layers_with_physical_geometry(qtbot, brain_sample):
    viewer = ViewerModel()
    panel = HomePanel(viewer)
    qtbot.addWidget(panel)
    qtbot.mouseClick(panel.sample_button, Qt.MouseButton.LeftButton)
    t1, tissue = brain_sample
    assert [layer.name for layer in viewer.layers] == ["MNI152 T1 (2 mm)", "tissue labels"]
    image_layer, labels_layer = viewer.layers
    assert tuple(image_layer.scale) == tuple(labels_layer.scale) == (2.0, 2.0, 2.0)
    assert set(np.unique(labels_layer.data).tolist()) == {0, 1, 2}
    # Voxel (k, j, i) lands at the physical point SimpleITK gives (through the direction affine).
    ijk = np.array([10.0, 20.0, 30.0])
    np.testing.assert_allclose(labels_layer.data_to_world(ijk[::-1])[::-1], tissue.index_to_physical(ijk), atol=1e-9)


