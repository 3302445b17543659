"""Mask tools box (widget tier): each tool's edit equals the Qt-free function's, is one undo
step, keeps voxels painted while it ran, and bad choices are notifications."""

from __future__ import annotations

import numpy as np
import pytest
from napari.components import ViewerModel

from medloop.app.gui.mask_tools import CLASSES_KEY, MaskToolsBox
from medloop.app.engine import label_edit as edit


def labels_with_defects() -> np.ndarray:
    lab = np.zeros((40, 50), np.uint8)
    lab[5:25, 5:30] = 2
    lab[10:14, 10:14] = 0  # a hole
    lab[30:32, 40:42] = 2  # an island of 4 px
    lab[30:38, 5:15] = 1  # another class, never overwritten
    return lab


@pytest.fixture
def box(qtbot):
    viewer = ViewerModel()
    layer = viewer.add_labels(labels_with_defects(), name="mask", scale=(0.5, 0.5),
                              metadata={CLASSES_KEY: {1: "background", 2: "tumour"}})
    edits = []
    tools = MaskToolsBox(viewer, on_edit=edits.append)
    qtbot.addWidget(tools)
    tools.select_layer("mask")
    return viewer, layer, tools, edits


def run(qtbot, tools, tool: str, label: str, size: float = 0.0):
    tools.tool_combo.setCurrentText(tool)
    tools.label_combo.setCurrentText(label)
    tools.size_spin.setValue(size)
    tools.apply()
    qtbot.waitUntil(lambda: tools.job is None, timeout=20_000)


@pytest.mark.parametrize(
    ("tool", "size", "expected"),
    [
        ("Fill holes", 0.0, lambda lab: edit.fill_holes(lab, 2)),
        # 4 px of 0.5 x 0.5 = 1.0 (physical units): an island of area 1.0 stays, below 1.25 goes
        ("Remove islands smaller than", 1.25, lambda lab: edit.remove_small_islands(lab, 2, 1.25, spacing=(0.5, 0.5))),
        ("Dilate", 1.0, lambda lab: edit.dilate(lab, 2, 1.0, spacing=(0.5, 0.5))),
        ("Erode", 1.0, lambda lab: edit.erode(lab, 2, 1.0, spacing=(0.5, 0.5))),
        ("Smooth", 1.0, lambda lab: edit.smooth(lab, 2, 1.0, spacing=(0.5, 0.5))),
        ("Keep largest component", 0.0, lambda lab: edit.keep_largest_component(lab, 2)),
    ],
)
def test_tool_edit_is_the_function_result_and_one_undo_step(box, qtbot, tool, size, expected):
    viewer, layer, tools, edits = box
    before = labels_with_defects()
    assert tools.label_combo.itemText(1) == "2 tumour"
    run(qtbot, tools, tool, "2 tumour", size)
    want = expected(before)
    assert not np.array_equal(want, before)  # the case exercises the tool
    np.testing.assert_array_equal(layer.data, want)
    assert tools.last_changed == int((want != before).sum())
    assert edits == [layer]  # autosave / live are told
    assert np.all(layer.data[before == 1] == 1)  # the other class is never overwritten
    tools.undo_button.click()
    np.testing.assert_array_equal(layer.data, before)
    tools.redo_button.click()
    np.testing.assert_array_equal(layer.data, want)


def test_paint_during_a_tool_is_kept(box, qtbot):
    viewer, layer, tools, edits = box
    tools.tool_combo.setCurrentText("Fill holes")
    tools.label_combo.setCurrentText("2")
    tools.apply()
    layer.data[11, 11] = 1  # painted while the tool runs (the hole voxel the tool would fill)
    qtbot.waitUntil(lambda: tools.job is None, timeout=20_000)
    assert layer.data[11, 11] == 1
    assert np.all(layer.data[10:14, 10:14][layer.data[10:14, 10:14] != 1] == 2)


def test_interpolate_and_copy_from_layer(qtbot):
    viewer = ViewerModel()
    vol = np.zeros((9, 30, 30), np.uint8)
    vol[0, 5:15, 5:15] = 1
    vol[8, 5:25, 5:25] = 1
    ann = viewer.add_labels(vol.copy(), name="ann")
    pred = np.zeros_like(vol)
    pred[:, 20:28, 0:4] = 2
    viewer.add_labels(pred, name="pred")
    tools = MaskToolsBox(viewer)
    qtbot.addWidget(tools)
    tools.select_layer("ann")
    run(qtbot, tools, "Interpolate between slices", "1")
    np.testing.assert_array_equal(ann.data, edit.interpolate_slices(vol, 1, axis=0, spacing=(1, 1, 1)))
    assert ann.data[4].sum() > vol[0].sum()  # the middle slice got a shape between the two
    interpolated = np.array(ann.data)
    tools.source_combo.setCurrentText("pred")
    run(qtbot, tools, "Copy from layer", "2")
    np.testing.assert_array_equal(ann.data, edit.copy_prediction(pred, interpolated))


def test_bad_label_and_bad_source_are_notifications(box, qtbot, monkeypatch):
    viewer, layer, tools, edits = box
    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)
    tools.label_combo.setCurrentText("0")
    tools.apply()
    tools.label_combo.setCurrentText("tumour")
    tools.apply()
    tools.tool_combo.setCurrentText("Copy from layer")
    tools.label_combo.setCurrentText("2")
    tools.source_combo.setCurrentText("mask")
    tools.apply()
    assert shown == [
        "Choose a label above 0 (0 means unlabelled).",
        "The label must be a whole number, got 'tumour'.",
        "Copy from layer: choose another labels layer as the source.",
    ]
    assert tools.job is None
    np.testing.assert_array_equal(layer.data, labels_with_defects())


def test_copy_matches_classes_by_name():
    from medloop.app.gui.mask_tools import match_classes

    prediction = np.array([[0, 1, 2, 3]])
    pred_classes = {0: "background", 1: "grey matter", 2: "white matter", 3: "other"}
    paint_classes = {1: "background", 2: "grey matter", 3: "white matter"}
    # background is never copied (0 = leave the voxel), classes the paint layer lacks neither
    np.testing.assert_array_equal(match_classes(prediction, pred_classes, paint_classes), [[0, 2, 3, 0]])
    np.testing.assert_array_equal(match_classes(prediction, None, paint_classes), prediction)
