"""Correction panel (widget tier): strokes autosave, the live prediction improves, fine-tuning
saves a version without touching the annotation layer, Cancel changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from napari.components import ViewerModel

from medloop.app.engine.metrics import dice_per_class
from medloop.app.io.image import MedImage
from medloop.models import registry
from medloop.plugins.correction.synth import nuclei
from medloop.plugins.correction.weaklabels import strokes
from medloop.plugins.correction.widget import CorrectionPanel
from tests.models.tiny import make_tiny_model


@pytest.fixture
def setup(qtbot, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    weights, card = make_tiny_model(tmp_path / "src", spatial_dims=2, in_channels=1)
    registry.register_model(weights, card, tmp_path / "zoo")
    monkeypatch.setattr(registry, "user_models_dir", lambda: tmp_path / "zoo")
    rng = np.random.default_rng(3)
    sample = nuclei(rng, channels=1)
    image = MedImage.from_array(sample.image[0], spacing=(0.5, 0.5), path=str(tmp_path / "cells.tif"))
    viewer = ViewerModel()
    viewer.add_image(image.array, name="cells", metadata={"medloop_image": image}, **image.layer_kwargs())
    panel = CorrectionPanel(viewer, live_delay_ms=10)
    qtbot.addWidget(panel)
    panel.model_combo.setCurrentText("tiny-threshold")
    truth = (sample.semantic > 0).astype(np.int64)
    painted, coverage = strokes(truth, coverage=0.08, margin=1, rng=np.random.default_rng(0))
    return panel, viewer, truth, painted.astype(np.uint8), tmp_path


def wait_idle(qtbot, panel):
    qtbot.waitUntil(lambda: panel.job is None and not panel.live_timer.isActive(), timeout=120_000)


def test_strokes_autosave_and_live_prediction_improves(setup, qtbot):
    panel, viewer, truth, painted, tmp_path = setup
    ann = panel.annotation_layer()
    assert ann.name == "cells annotations" and ann.data.shape == truth.shape
    ann.data = painted  # a data event, as napari's paint tools emit
    wait_idle(qtbot, panel)
    pred = viewer.layers["cells prediction"].data
    before = dice_per_class(_base_prediction(panel), truth, 2)[1]  # the model's own prediction
    after = dice_per_class(np.asarray(pred), truth, 2)[1]
    assert after > before + 0.1, (before, after)
    print(f"live update: Dice {before:.3f} -> {after:.3f}")
    np.testing.assert_array_equal(ann.data, painted)  # the annotation layer is never written
    panel.saver.flush()
    saved = panel.saver.store.load(panel.saver.image, "cells annotations")
    np.testing.assert_array_equal(saved, painted)
    # Making the layer again (e.g. after a crash) restores the strokes.
    viewer.layers.remove("cells annotations")
    restored = panel.annotation_layer()
    np.testing.assert_array_equal(restored.data, painted)


def _base_prediction(panel):
    from medloop.plugins.correction.retrain import predict_with_head

    return predict_with_head(panel.session.features, panel.session.base_head)[0]


def test_fine_tune_saves_a_version_and_cancel_changes_nothing(setup, qtbot):
    panel, viewer, truth, painted, tmp_path = setup
    panel.live_check.setChecked(False)
    ann = panel.annotation_layer()
    ann.data = painted
    panel.epochs_spin.setValue(2)
    panel.fine_tune()
    wait_idle(qtbot, panel)
    assert panel.versions.list() == [1] and panel.versions.current == 1
    assert [panel.version_combo.itemText(i) for i in range(panel.version_combo.count())] == ["base", "v1"]
    np.testing.assert_array_equal(ann.data, painted)
    panel.fine_tune()
    panel.cancel()
    wait_idle(qtbot, panel)
    assert panel.versions.list() == [1]
    assert panel.status.text() == "Cancelled; the model and the layers are unchanged."
    panel.version_combo.setCurrentText("base")
    panel.rollback()
    assert panel.versions.current == 0 and panel.status.text() == "Using tiny-threshold."


def test_empty_annotation_is_a_notification(setup, qtbot, monkeypatch):
    panel, viewer, truth, painted, tmp_path = setup
    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)
    panel.annotation_layer()
    panel.fine_tune()
    assert panel.job is None
    assert shown == ["the annotation layer is empty; paint strokes of at least two classes"]
