"""The lesion panels in a real viewer: a drawn rectangle becomes a lesion layer that differs from
the source only inside the crop (the GUI thread never blocks for long), the threshold slider
relabels without re-running the model, and pseudo-labels reach Correction's annotation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medloop.plugins.lesions.phantoms import make_phantom
from tests.plugins.lesions.test_zoo import TINY_TRANSLATOR
from tests.plugins.segmentation.test_widget import StallMeter

pytestmark = pytest.mark.viewer


@pytest.fixture(scope="module")
def translator_folder(tmp_path_factory):
    from medloop.plugins.lesions.recipes import train_lesion_recipe

    d = tmp_path_factory.mktemp("panel-unit")
    (d / "tiny.json").write_text(json.dumps(TINY_TRANSLATOR))
    return train_lesion_recipe(d / "tiny.json", d / "model")


def test_a_drawn_box_becomes_a_lesion_layer_changed_only_inside_the_crop(make_napari_viewer, qtbot, translator_folder):
    from medloop.plugins.lesions.widget import SynthesizeLesionPanel

    viewer = make_napari_viewer()
    bone = make_phantom("bone", 5, with_lesion=False).image
    source = viewer.add_image(bone.copy(), name="bone", scale=(0.5, 0.5), translate=(10.0, -4.0))
    panel = SynthesizeLesionPanel(viewer)
    qtbot.addWidget(panel)
    panel.translator_combo.addItem(str(translator_folder))
    panel.translator_combo.setCurrentText(str(translator_folder))
    panel.seed_spin.setValue(2)
    qtbot.waitUntil(lambda: panel.job is None and str(translator_folder) in panel.models, timeout=60_000)  # preloaded
    assert panel.status.text().startswith("Ready: make a box layer")
    boxes = panel.new_box_layer()
    assert tuple(boxes.scale) == (0.5, 0.5) and boxes.mode == "add_rectangle"
    meter = StallMeter()
    # rows 26..35, columns 60..71 in pixels of the image: drawn in the box layer's data coordinates
    boxes.add_rectangles(np.array([[25.6, 59.7], [35.4, 71.2]]))
    # the result layers exist (hidden) since the box layer was made: the result only swaps their data
    qtbot.waitUntil(lambda: viewer.layers["bone_lesion_mask"].visible and panel.job is None, timeout=60_000)
    meter.timer.stop()
    lesion = viewer.layers["bone_lesion"]
    assert tuple(lesion.scale) == (0.5, 0.5) and tuple(lesion.translate) == (10.0, -4.0)
    crop = lesion.metadata["medloop_provenance"]["crops"][0]
    assert lesion.metadata["medloop_provenance"]["boxes"] == [[26, 60, 36, 72]]
    changed = lesion.data != bone
    outside = np.ones(bone.shape, bool)
    outside[crop[0]:crop[2], crop[1]:crop[3]] = False
    assert changed.any() and not changed[outside].any()
    assert np.array_equal(source.data, bone)  # the source is never modified
    assert viewer.layers["bone_lesion_mask"].metadata["derived"] is True
    assert meter.worst < 0.3, f"event loop blocked for {meter.worst * 1000:.0f} ms"
    # Re-roll: the next seed moves the crop; the same layers are updated, none added
    n_layers = len(viewer.layers)
    panel.reroll()
    qtbot.waitUntil(lambda: panel.job is None and lesion.metadata["medloop_provenance"]["params"]["seed"] == 3, timeout=60_000)
    assert len(viewer.layers) == n_layers and panel.seed_spin.value() == 3


def test_a_bad_box_shows_one_line_and_adds_nothing(make_napari_viewer, qtbot, translator_folder):
    from medloop.plugins.lesions.widget import SynthesizeLesionPanel

    viewer = make_napari_viewer()
    viewer.add_image(make_phantom("bone", 5, with_lesion=False).image, name="bone")
    panel = SynthesizeLesionPanel(viewer)
    qtbot.addWidget(panel)
    panel.translator_combo.addItem(str(translator_folder))
    panel.translator_combo.setCurrentText(str(translator_folder))
    panel.auto_check.setChecked(False)
    qtbot.waitUntil(lambda: panel.job is None, timeout=60_000)
    boxes = panel.new_box_layer()
    boxes.add_rectangles(np.array([[1.0, 1.0], [3.0, 9.0]]))
    before = [layer.name for layer in viewer.layers]
    panel.run()
    assert panel.job is None
    assert panel.status.text() == "Cannot run: box 1 (1, 1, 4, 10) is 3x9 px; sides must be at least 4 px, draw a larger box"
    assert [layer.name for layer in viewer.layers] == before == ["bone", "bone_lesion", "bone_lesion_mask", "bone lesion boxes"]
    result, mask = viewer.layers["bone_lesion"], viewer.layers["bone_lesion_mask"]
    assert not result.visible and not mask.visible  # made with the box layer, shown only with a result
    assert np.array_equal(result.data, viewer.layers["bone"].data) and not mask.data.any()


def test_threshold_relabels_without_the_model_and_calibrate_and_send(make_napari_viewer, qtbot, monkeypatch):
    from medloop.app.io.autosave import AnnotationStore, annotation_layer_name
    from medloop.app.gui.layers import layer_image
    from medloop.plugins.lesions import zoo
    from medloop.plugins.lesions.widget import AnomalyMapPanel

    calls = []
    original = zoo.LesionModel.anomaly_map
    monkeypatch.setattr(zoo.LesionModel, "anomaly_map", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    viewer = make_napari_viewer()
    brain = make_phantom("brain", 16)
    viewer.add_image(brain.image, name="flair", scale=(3.0, 3.0))
    viewer.add_labels(brain.lesion.astype(np.uint8), name="truth", scale=(3.0, 3.0))
    panel = AnomalyMapPanel(viewer)
    qtbot.addWidget(panel)
    assert panel.t_spin.value() == pytest.approx(0.095, abs=1e-4)  # the card's calibrated t
    qtbot.waitUntil(lambda: panel.job is None, timeout=60_000)  # the packaged model preloads when the panel opens
    panel.run()
    qtbot.waitUntil(lambda: panel.job is None and "flair_anomaly_labels" in viewer.layers, timeout=60_000)
    overlay, labels = viewer.layers["flair_anomaly"], viewer.layers["flair_anomaly_labels"]
    assert (overlay.colormap.name, overlay.blending, overlay.opacity) == ("inferno", "additive", 0.6)
    assert np.array_equal(labels.data, (panel.residual >= panel.t_spin.value()).astype(np.uint8))
    before = int(labels.data.sum())
    panel.t_slider.setValue(panel.t_slider.maximum())  # t = 0.25
    assert panel.t_spin.value() == pytest.approx(0.25)
    assert int(labels.data.sum()) < before and np.array_equal(labels.data, (panel.residual >= 0.25).astype(np.uint8))
    assert len(calls) == 1  # moving t never re-ran the model
    panel.reference_combo.setCurrentText("truth")
    panel.calibrate()
    from medloop.plugins.lesions.metrics import dice

    assert dice(labels.data > 0, brain.lesion) > 0.8 and panel.status.text().startswith("Calibrated t = ")
    panel.send_to_correction()
    image = layer_image(viewer.layers["flair"])
    saved = AnnotationStore.for_image(image).load(image, annotation_layer_name("flair"))
    assert np.array_equal(saved == 2, labels.data > 0) and (saved == 1).sum() > 0
