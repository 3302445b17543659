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
    wait_idle(qtbot, panel)  # "Use this version" re-predicts (a job)
    assert panel.status.text() == "Using tiny-threshold; the prediction shows it."


def test_empty_annotation_is_a_notification(setup, qtbot, monkeypatch):
    panel, viewer, truth, painted, tmp_path = setup
    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)
    panel.annotation_layer()
    panel.fine_tune()
    assert panel.job is None
    assert shown == ["the annotation layer is empty; paint strokes of at least two classes"]


def _predict(entry, image):
    from medloop.models.registry import build_model
    from medloop.plugins.correction.headless import model_input, predict_on_grid

    return predict_on_grid(build_model(entry), model_input(image, entry.card)).astype(np.uint8)


def test_use_this_version_repredicts_and_strokes_stay_above_the_prediction(setup, qtbot, monkeypatch):
    """Issue 14 §5: rolling back to base shows the base model's prediction at once (a job); the
    annotation layer is drawn above the prediction whichever is made first; a version whose
    held-out Dice fell below its parent's is announced (notification + status line)."""
    panel, viewer, truth, painted, tmp_path = setup
    ann = panel.annotation_layer()  # made before the prediction exists
    ann.data = painted
    wait_idle(qtbot, panel)  # the live update adds the prediction layer
    names = [layer.name for layer in viewer.layers]
    # just above the prediction and the "where to paint next" layers drawn over it
    assert names.index("cells annotations") == names.index("cells prediction") + 3
    assert names[names.index("cells prediction") + 1 :] == ["cells uncertainty", "cells suggestions", "cells annotations"]
    panel.live_check.setChecked(False)
    panel.epochs_spin.setValue(3)
    panel.fine_tune()
    wait_idle(qtbot, panel)
    image = viewer.layers["cells"].metadata["medloop_image"]
    v1 = _predict(panel.versions.entry(1), image)
    base = _predict(panel.versions.entry(0), image)
    assert (v1 != base).any()  # the fine-tune changed the prediction
    np.testing.assert_array_equal(viewer.layers["cells prediction"].data, v1)
    panel.version_combo.setCurrentText("base")
    panel.rollback_button.click()
    assert panel.job is not None  # off the GUI thread
    wait_idle(qtbot, panel)
    np.testing.assert_array_equal(viewer.layers["cells prediction"].data, base)
    assert panel.status.text() == "Using tiny-threshold; the prediction shows it."
    names = [layer.name for layer in viewer.layers]
    assert names.index("cells annotations") > names.index("cells prediction")

    # A version worse than its parent on held-out strokes: warned when it is saved.
    panel.version_combo.setCurrentText("v1")
    panel.rollback()
    wait_idle(qtbot, panel)
    parent = panel.versions.entry(1).card.raw["training"]["metrics"]["best_val_dice"]
    warned = []
    monkeypatch.setattr("napari.utils.notifications.show_warning", warned.append)
    from types import SimpleNamespace

    run = SimpleNamespace(network=panel.versions.load(1), metrics={"best_val_dice": parent - 0.25}, annotation_counts={}, kind="strokes")
    panel._save_version(run)
    message = f"held-out Dice fell from {parent:.3f} (v1) to {parent - 0.25:.3f}; choose v1 under Version and press 'Use this version' to go back"
    assert warned == [message]
    assert panel.status.text() == f"Saved tiny-threshold@v2 (held-out stroke Dice {parent - 0.25:.3f}); the prediction shows it. Warning: {message}"
    assert panel.dice_fell(0.8, 0.9, "v1") is None and panel.dice_fell(None, 0.5, "base") is None


def test_use_this_version_while_a_job_runs_predicts_when_it_ends(setup, qtbot):
    panel, viewer, truth, painted, tmp_path = setup
    running = object()
    panel.job = running  # e.g. a live update in flight
    panel.rollback_button.click()
    assert panel.pending_predict and panel.job is running and "cells prediction" not in viewer.layers
    panel.job = None
    panel.job_finished()  # what MethodPanel does when the job ends
    assert panel.job is not None and not panel.pending_predict
    wait_idle(qtbot, panel)
    image = viewer.layers["cells"].metadata["medloop_image"]
    np.testing.assert_array_equal(viewer.layers["cells prediction"].data, _predict(panel.versions.entry(0), image))


def test_making_the_annotation_layer_warms_the_live_session_so_the_first_stroke_reuses_it(setup, qtbot):
    panel, viewer, truth, painted, tmp_path = setup
    panel.annotation_layer()
    assert panel.job is None and panel.warm_job is not None  # its own job: the buttons stay usable
    qtbot.waitUntil(lambda: panel.warm_job is None, timeout=60_000)
    warmed = panel.session
    assert warmed is not None and warmed._features is not None and warmed.updates == 0
    assert panel.session_key == ("cells", "tiny-threshold", None)
    viewer.layers["cells annotations"].data = painted
    wait_idle(qtbot, panel)
    assert panel.session is warmed and warmed.updates == 1  # the first stroke fitted the warmed head only
