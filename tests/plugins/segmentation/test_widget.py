"""Segmentation panel (widget tier): runs off the GUI thread, never stalls the event loop over
200 ms on a 128^3 volume, updates its result layer in place, and Cancel changes nothing."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from napari.components import ViewerModel
from qtpy.QtCore import QTimer

from medloop.models import registry
from medloop.plugins.segmentation.widget import SegmentationPanel
from tests.models.tiny import make_tiny_model


@pytest.fixture
def panel(qtbot, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    weights, card = make_tiny_model(tmp_path / "src")
    registry.register_model(weights, card, tmp_path / "zoo")
    monkeypatch.setattr(registry, "user_models_dir", lambda: tmp_path / "zoo")
    viewer = ViewerModel()
    data = np.random.default_rng(0).random((128, 128, 128)).astype(np.float32)
    viewer.add_image(data, name="vol", scale=(2.0, 1.0, 1.0), translate=(5.0, -3.0, 1.0))
    widget = SegmentationPanel(viewer)
    qtbot.addWidget(widget)
    widget.model_combo.setCurrentText("tiny-threshold")
    widget.device_combo.setCurrentText("cpu")
    return widget


class StallMeter:
    """Largest gap between 10 ms timer ticks: how long the event loop was blocked."""

    def __init__(self):
        self.last = time.perf_counter()
        self.worst = 0.0
        self.timer = QTimer()
        self.timer.timeout.connect(self.tick)
        self.timer.start(10)

    def tick(self):
        now = time.perf_counter()
        self.worst = max(self.worst, now - self.last)
        self.last = now


def test_run_never_stalls_and_reruns_update_in_place(panel, qtbot):
    panel.tile_spin.setValue(48)
    meter = StallMeter()
    panel.run()
    assert panel.job is not None and not panel.run_button.isEnabled()
    qtbot.waitUntil(lambda: panel.job is None, timeout=120_000)
    meter.timer.stop()
    assert meter.worst < 0.2, f"event loop blocked for {meter.worst * 1000:.0f} ms"
    layer = panel.viewer.layers["vol tiny-threshold"]
    assert layer.data.shape == (128, 128, 128)
    assert tuple(layer.scale) == (2.0, 1.0, 1.0) and tuple(layer.translate) == (5.0, -3.0, 1.0)
    np.testing.assert_array_equal(layer.data, panel.last_result.labels.array)
    n_layers = len(panel.viewer.layers)
    panel.run()
    qtbot.waitUntil(lambda: panel.job is None, timeout=120_000)
    assert len(panel.viewer.layers) == n_layers  # updated in place, not duplicated


def test_cancel_stops_and_changes_nothing(panel, qtbot):
    panel.tile_spin.setValue(32)
    progress = []
    panel.run()
    panel.job.bridge.progressed.connect(lambda d, t: progress.append((d, t)))
    qtbot.waitUntil(lambda: len(progress) >= 1, timeout=60_000)
    panel.cancel()
    qtbot.waitUntil(lambda: panel.job is None, timeout=60_000)
    assert panel.status.text() == "Cancelled; nothing was changed."
    assert [layer.name for layer in panel.viewer.layers] == ["vol"]
    done, total = progress[-1]
    assert done < total


def test_unsuitable_layer_is_a_notification_and_nothing_starts(panel, qtbot, monkeypatch):
    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)
    panel.viewer.add_image(np.zeros((64, 64), np.float32), name="xray")
    panel.image_combo.setCurrentText("xray")
    panel.run()
    assert panel.job is None and panel.run_button.isEnabled()
    assert shown == ["model tiny-threshold segments 3-D images but the image is 2-D; pick a model for this kind of image"]


def test_upscaled_rerun_moves_the_layer_to_the_fine_grid(qtbot, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    weights, card = make_tiny_model(tmp_path / "src")
    registry.register_model(weights, card, tmp_path / "zoo")
    monkeypatch.setattr(registry, "user_models_dir", lambda: tmp_path / "zoo")
    viewer = ViewerModel()
    viewer.add_image(np.random.default_rng(0).random((8, 20, 24)).astype(np.float32), name="vol",
                     scale=(3.0, 1.0, 1.0), translate=(5.0, -3.0, 1.0))
    panel = SegmentationPanel(viewer)
    qtbot.addWidget(panel)
    panel.model_combo.setCurrentText("tiny-threshold")
    panel.run()
    qtbot.waitUntil(lambda: panel.job is None, timeout=60_000)
    panel.upscale_spins["z"].setValue(3)
    panel.run()
    qtbot.waitUntil(lambda: panel.job is None, timeout=60_000)
    layer = viewer.layers["vol tiny-threshold"]
    assert layer.data.shape == (24, 20, 24)
    np.testing.assert_allclose(layer.scale, (1.0, 1.0, 1.0))
    # fine slice 0 is centred one fine slice below the first coarse slice: 5 - 1
    np.testing.assert_allclose(layer.translate, (4.0, -3.0, 1.0))
    np.testing.assert_allclose(layer.data_to_world((1, 0, 0)), viewer.layers["vol"].data_to_world((0, 0, 0)))
    assert panel.status.text().endswith("Upscaled 3 x 1 x 1 from 3 shifted copies.")


def test_cascade_from_the_panel_matches_segment(qtbot, tmp_path, monkeypatch):
    """The panel's "Refine crops with" runs the same segment() call as `medloop segment --cascade`."""
    from medloop.app.io.image import MedImage
    from medloop.plugins.segmentation.method import SegmentParams, segment
    from tests.plugins.segmentation.test_cascade import _register, _scene

    torch.set_num_threads(1)
    _register(tmp_path, "coarse", input_size=[16, 16])
    zoo = _register(tmp_path, "fine", input_size=[16, 16])
    monkeypatch.setattr(registry, "user_models_dir", lambda: zoo)
    image = MedImage.from_array(_scene().astype(np.float32), spacing=(0.5, 0.5))
    viewer = ViewerModel()
    viewer.add_image(image.array, name="cells", metadata={"medloop_image": image}, **image.layer_kwargs())
    panel = SegmentationPanel(viewer)
    qtbot.addWidget(panel)
    panel.model_combo.setCurrentText("coarse")
    panel.cascade_combo.setCurrentText("fine")
    panel.run()
    qtbot.waitUntil(lambda: panel.job is None, timeout=60_000)
    expected = segment(image, SegmentParams(model="coarse", cascade="fine", models_dir=zoo, roi_size=(panel.tile_spin.value(),) * 2))
    layer = viewer.layers["cells coarse+fine"]
    np.testing.assert_array_equal(layer.data, expected.labels.array)
    crops = expected.provenance["cascade"]["crops"]
    assert panel.status.text().endswith(f"Refined {crops} crops with fine.")
