"""Correction panel (widget tier) with boxes and points, the training curve, and autosaved
box/point layers."""

from __future__ import annotations

import numpy as np

from medloop.app.engine.metrics import dice_per_class
from medloop.plugins.correction.boxes import boxes_to_shapes
from medloop.plugins.correction.weaklabels import boxes, points
from tests.plugins.correction.test_widget import setup, wait_idle  # noqa: F401 - the shared fixture


def _prediction_dice(viewer, truth):
    return dice_per_class(np.asarray(viewer.layers["cells prediction"].data), truth, 2)[1]


def _base_dice(panel, truth):
    from medloop.plugins.correction.headless import model_input, predict_on_grid

    entry = panel.current_entry()
    image = panel.image_layer().metadata["medloop_image"]
    return dice_per_class(predict_on_grid(panel._network(entry), model_input(image, entry.card)), truth, 2)[1]


def test_boxes_fine_tune_saves_a_version_updates_the_prediction_and_autosaves(setup, qtbot):
    panel, viewer, truth, painted, tmp_path = setup
    from scipy import ndimage

    inst, n = ndimage.label(truth)
    panel.set_kind("boxes")
    layer = panel.annotation_layer()
    assert layer.name == "cells boxes" and layer._type_string == "shapes"
    layer.add_rectangles(boxes_to_shapes(boxes(inst)))
    panel.epochs_spin.setValue(3)
    panel.rounds_spin.setValue(2)
    before = _base_dice(panel, truth)
    panel.fine_tune()
    wait_idle(qtbot, panel)
    assert panel.versions.current == 1, panel.status.text()
    card = panel.versions.current_entry.card
    assert card.raw["training"]["annotation_counts"]["boxes"] == n
    after = _prediction_dice(viewer, truth)
    print(f"boxes: Dice {before:.3f} -> {after:.3f}")
    assert after > before + 0.2, (before, after)
    # The training curve got one point per epoch trained, the loss as train_segmentation reported it.
    assert len(panel.curve.series["train loss"]) >= 3
    # Boxes autosave and come back exactly when the layer is made again.
    panel.saver.flush()
    shapes = [np.array(s) for s in layer.data]
    viewer.layers.remove("cells boxes")
    restored = panel.annotation_layer()
    assert len(restored.data) == n
    for a, b in zip(shapes, restored.data):
        np.testing.assert_allclose(np.sort(a, axis=0), np.sort(np.asarray(b), axis=0), atol=1e-5)


def test_points_fine_tune_learns_and_autosaves(setup, qtbot):
    panel, viewer, truth, painted, tmp_path = setup
    from scipy import ndimage

    inst, n = ndimage.label(truth)
    panel.set_kind("points")
    layer = panel.annotation_layer()
    assert layer.name == "cells points" and layer._type_string == "points"
    clicks = points(inst).astype(float)
    layer.add(clicks)
    panel.epochs_spin.setValue(3)
    before = _base_dice(panel, truth)
    panel.fine_tune()
    wait_idle(qtbot, panel)
    assert panel.versions.current == 1, panel.status.text()
    after = _prediction_dice(viewer, truth)
    print(f"points: Dice {before:.3f} -> {after:.3f}")
    assert after > before + 0.2, (before, after)
    assert panel.versions.current_entry.card.raw["training"]["annotation_counts"]["points"] == len(clicks)
    panel.saver.flush()
    viewer.layers.remove("cells points")
    np.testing.assert_allclose(np.asarray(panel.annotation_layer().data), clicks, atol=1e-5)


def test_curve_shows_each_epoch_of_a_stroke_fine_tune(setup, qtbot):
    panel, viewer, truth, painted, tmp_path = setup
    panel.live_check.setChecked(False)
    panel.annotation_layer().data = painted
    panel.epochs_spin.setValue(3)
    panel.fine_tune()
    wait_idle(qtbot, panel)
    history = panel.versions.current_entry.card.raw["training"]["metrics"]
    losses = panel.curve.series["train loss"]
    assert [x for x, _ in losses] == list(range(1, history["epochs_done"] + 1))
    assert losses[-1][1] == history["final_train_loss"]
    scaled = panel.curve.scaled("train loss")
    assert max(v for _, v in scaled) == 1.0
    dice = panel.curve.series["validation Dice"]
    assert dice and max(v for _, v in dice) == history["best_val_dice"]


def test_bad_boxes_and_too_few_points_are_notifications(setup, qtbot, monkeypatch):
    panel, viewer, truth, painted, tmp_path = setup
    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)
    panel.set_kind("boxes")
    layer = panel.annotation_layer()
    layer.add_rectangles(boxes_to_shapes(np.array([[2, 2, 10, 10]])))
    layer.add_polygons([np.array([[20, 20], [30, 22], [25, 35]])])
    panel.fine_tune()
    panel.set_kind("points")
    panel.annotation_layer().add(np.array([[5.0, 5.0]]))
    panel.fine_tune()
    assert panel.job is None and panel.versions.list() == []
    assert shown == [
        "Box layer 'cells boxes': shape 1 is not a rectangle (polygon), redraw it with the rectangle tool.",
        "need at least 2 points inside the image, got 1; click one point per nucleus",
    ]


def test_annotation_off_the_image_grid_or_nan_image_is_refused(setup, qtbot, monkeypatch):
    panel, viewer, truth, painted, tmp_path = setup
    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)
    panel.live_check.setChecked(False)
    ann = panel.annotation_layer()
    ann.data = painted
    ann.scale = (1.0, 1.0)  # the image is at 0.5 x 0.5
    panel.fine_tune()
    ann.scale = (0.5, 0.5)
    image = viewer.layers["cells"]
    image.data = np.where(np.arange(image.data.size).reshape(image.data.shape) == 7, np.nan, image.data)
    image.metadata.pop("medloop_image")
    panel.fine_tune()
    assert panel.job is None and panel.versions.list() == []
    assert shown[0] == (
        "layer 'cells annotations' is not on the grid of 'cells' (scale or translate differ); "
        "annotate in the layer made by 'New / restore annotation layer'"
    )
    assert shown[1] == "the image contains NaN or infinite values; fix or mask them before segmenting"
    np.testing.assert_array_equal(ann.data, painted)


def test_panel_fine_tune_equals_the_headless_replay(setup, qtbot):
    """The panel and `medloop train --weak` share one code path: the same strokes and seed give
    bit-identical weights."""
    import torch

    from medloop.plugins.correction.headless import train_weak

    panel, viewer, truth, painted, tmp_path = setup
    panel.live_check.setChecked(False)
    panel.annotation_layer().data = painted
    panel.epochs_spin.setValue(2)
    panel.fine_tune()
    wait_idle(qtbot, panel)
    gui = panel.versions.load().state_dict()
    image = viewer.layers["cells"].metadata["medloop_image"]
    entry = train_weak("strokes", image, painted, "tiny-threshold", tmp_path / "replay", models_dir=tmp_path / "zoo", epochs=2)
    from medloop.models.registry import build_model

    replay = build_model(entry).state_dict()
    assert gui.keys() == replay.keys()
    assert all(torch.equal(gui[k], replay[k]) for k in gui)


def test_boxes_stage2_uses_the_other_open_images(setup, qtbot):
    from scipy import ndimage

    from medloop.app.io.image import MedImage
    from medloop.plugins.correction.synth import nuclei

    panel, viewer, truth, painted, tmp_path = setup
    for seed in (11, 12):
        other = nuclei(np.random.default_rng(seed), channels=1)
        img = MedImage.from_array(other.image[0], spacing=(0.5, 0.5))
        viewer.add_image(img.array, name=f"other {seed}", metadata={"medloop_image": img}, **img.layer_kwargs())
    panel.image_combo.setCurrentText("cells")
    assert [i.shape for i in panel._unlabeled_images(viewer.layers["cells"])] == [(64, 64), (64, 64)]
    inst, n = ndimage.label(truth)
    panel.set_kind("boxes")
    panel.annotation_layer().add_rectangles(boxes_to_shapes(boxes(inst)))
    panel.epochs_spin.setValue(2)
    panel.rounds_spin.setValue(1)
    panel.stage2_check.setChecked(True)
    panel.fine_tune()
    wait_idle(qtbot, panel)
    metrics = panel.versions.current_entry.card.raw["training"]["metrics"]
    assert metrics["stage2"]["rounds"], metrics.get("stage2")
    assert _prediction_dice(viewer, truth) > _base_dice_of_base(panel, truth)


def _base_dice_of_base(panel, truth):
    from medloop.models.registry import build_model
    from medloop.plugins.correction.headless import model_input, predict_on_grid

    image = panel.image_layer().metadata["medloop_image"]
    return dice_per_class(predict_on_grid(build_model(panel.base_entry()), model_input(image, panel.base_entry().card)), truth, 2)[1]
