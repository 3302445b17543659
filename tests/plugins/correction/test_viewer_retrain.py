"""Viewer tier: paint strokes on the brain sample in a real viewer, run live and full
retraining from an untrained slice-by-slice model, and watch Dice against the sample's labels rise."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medloop.app.engine.metrics import dice_per_class
from medloop.models import registry
from medloop.plugins.correction.weaklabels import strokes

pytestmark = pytest.mark.viewer


def untrained_brain_model(folder):
    from medloop.models.nets import build_network
    from tests.models.tiny import tiny_card

    torch.manual_seed(0)
    card = tiny_card("untrained-brain", spatial_dims=2, classes={"0": "background", "1": "grey matter", "2": "white matter"})
    card["architecture"]["kwargs"].update(out_channels=3, features=[8, 16, 32])
    card["inputs"][0]["preprocessing"] = {"name": "percentile", "lower": 0.5, "upper": 99.0}
    card["medical"]["slice_axis"] = 0
    net = build_network(card["architecture"]["name"], **card["architecture"]["kwargs"])
    folder.mkdir(parents=True)
    torch.save(net.state_dict(), folder / "weights.pt")
    (folder / "card.json").write_text(json.dumps(card))
    return folder / "weights.pt", folder / "card.json"


def test_live_and_full_retraining_on_the_sample(make_napari_viewer, qtbot, tmp_path, monkeypatch, brain_sample):
    torch.set_num_threads(1)
    weights, card = untrained_brain_model(tmp_path / "src")
    registry.register_model(weights, card, tmp_path / "zoo")
    monkeypatch.setattr(registry, "user_models_dir", lambda: tmp_path / "zoo")
    _, tissue = brain_sample
    viewer = make_napari_viewer()
    viewer.open_sample("napari-medloop", "brain-t1")
    _, panel = viewer.window.add_plugin_dock_widget("napari-medloop", "Correction")
    panel.model_combo.setCurrentText("untrained-brain")
    panel.image_combo.setCurrentText("MNI152 T1 (2 mm)")
    z = 47
    viewer.dims.set_point(0, viewer.layers["MNI152 T1 (2 mm)"].data_to_world((z, 0, 0))[0])
    truth = np.asarray(tissue.array)[z].astype(np.int64)
    painted, coverage = strokes(truth, coverage=0.05, margin=1, rng=np.random.default_rng(0))
    ann = panel.annotation_layer()
    data = np.zeros(ann.data.shape, np.uint8)
    data[z] = painted
    ann.data = data
    painted_volume = data.copy()
    qtbot.waitUntil(lambda: panel.job is None and not panel.live_timer.isActive() and panel.session is not None, timeout=180_000)
    from medloop.plugins.correction.retrain import predict_with_head

    before = dice_per_class(predict_with_head(panel.session.features, panel.session.base_head)[0], truth, 3)
    live = dice_per_class(np.asarray(viewer.layers["MNI152 T1 (2 mm) prediction"].data[z]), truth, 3)
    assert np.mean(list(live.values())) > np.mean(list(before.values())) + 0.2, (before, live)

    panel.live_check.setChecked(False)
    panel.epochs_spin.setValue(4)
    panel.fine_tune()
    qtbot.waitUntil(lambda: panel.job is None, timeout=300_000)
    assert panel.versions.current == 1
    from medloop.plugins.correction.headless import predict_labels

    x = panel._model_input(viewer.layers["MNI152 T1 (2 mm)"].metadata["medloop_image"])[:, z]
    after = dice_per_class(predict_labels(panel.versions.load(), x), truth, 3)
    assert np.mean(list(after.values())) > np.mean(list(before.values())) + 0.2, (before, after)
    # The prediction layer now shows the fine-tuned model on every slice.
    shown = dice_per_class(np.asarray(viewer.layers["MNI152 T1 (2 mm) prediction"].data[z]), truth, 3)
    assert shown == after
    # Correct the prediction with a mask tool, copy it into the annotations, undo: one step each.
    tools = panel.tools
    tools.select_layer("MNI152 T1 (2 mm) annotations")
    tools.tool_combo.setCurrentText("Copy from layer")
    tools.source_combo.setCurrentText("MNI152 T1 (2 mm) prediction")
    tools.label_combo.setCurrentText("1")
    tools.apply()
    qtbot.waitUntil(lambda: tools.job is None, timeout=60_000)
    pred_all = np.asarray(viewer.layers["MNI152 T1 (2 mm) prediction"].data)
    # unannotated voxels the model gave a tissue class take it (paint convention: k + 1); the
    # predicted background is not copied, so the rest stays "not annotated"
    copied = (painted_volume == 0) & (pred_all != 0)
    np.testing.assert_array_equal(ann.data, np.where(copied, pred_all + 1, painted_volume))
    assert tools.last_changed == int(copied.sum())
    assert panel.saver.dirty or panel.saver.saves > 0
    tools.undo_button.click()
    np.testing.assert_array_equal(ann.data, painted_volume)
    print("mean Dice: model", np.mean(list(before.values())), "live", np.mean(list(live.values())), "fine-tuned", np.mean(list(after.values())))
    np.testing.assert_array_equal(ann.data[z], painted)  # training never writes the annotations
