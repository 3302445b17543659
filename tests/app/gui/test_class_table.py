"""One class table everywhere (viewer tier): prediction, annotation, reference and review layers
show a class in the same colour and hover it by name; Copy from layer copies named classes only;
the class list's volumes are voxel counts x voxel volume."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from medloop.app.gui.layers import add_layer_data
from medloop.app.io.classes import ANNOTATION_OFFSET, BACKGROUND_COLOR, label_style

pytestmark = pytest.mark.viewer

MODEL = "brain-tissue-t1"
IMAGE = "MNI152 T1 (2 mm)"


def color_of(layer, value) -> tuple:
    return tuple(np.round(np.asarray(layer.get_color(value), float)[:3], 3))


def hover(viewer, layer, value) -> str:
    """The status-bar text napari shows with the cursor on a voxel holding ``value`` (its slice shown)."""
    index = np.argwhere(np.asarray(layer.data) == value)[0]
    world = layer.data_to_world(index)
    viewer.dims.set_point(range(len(world)), world)
    return layer.get_status(world, world=True)["coordinates"]


def hex_rgb(color: str) -> tuple:
    return tuple(np.round(np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)]) / 255, 3))


def test_paint_style_keeps_numbers_and_shows_classes():
    classes = {0: "background", 1: "grey matter", 2: "white matter"}
    pred, ann = label_style(classes), label_style(classes, ANNOTATION_OFFSET)
    assert pred["colormap"][0] == "transparent" and ann["colormap"][0] == "transparent"  # 0 = nothing drawn
    assert ann["colormap"][1] == BACKGROUND_COLOR  # painted background is visible
    assert [pred["colormap"][k] for k in (1, 2)] == [ann["colormap"][k + 1] for k in (1, 2)]
    assert dict(zip(ann["features"]["index"], ann["features"]["class"]))[2] == "grey matter"


@pytest.fixture
def brain_viewer(make_napari_viewer, qtbot, tmp_path, brain_sample):
    from medloop.app.samples import brain_sample_layers

    viewer = make_napari_viewer()
    layers = brain_sample_layers()
    t1 = layers[0][1]["metadata"]["medloop_image"]
    layers[0][1]["metadata"]["medloop_image"] = replace(t1, path=str(tmp_path / "t1.nii.gz"))  # autosave in tmp
    add_layer_data(viewer, layers)
    return viewer


def test_one_class_table_across_layers(brain_viewer, qtbot, tmp_path, brain_sample):
    from medloop.plugins.correction.widget import CorrectionPanel
    from medloop.plugins.segmentation.widget import SegmentationPanel

    viewer = brain_viewer
    reference = viewer.layers["tissue labels"]
    assert not reference.visible and reference.contour == 1  # never the look of a model's output
    reference.visible = True  # shown (as outlines) to hover it
    seg = SegmentationPanel(viewer)
    qtbot.addWidget(seg)
    seg.model_combo.setCurrentText(MODEL)
    seg.image_combo.setCurrentText(IMAGE)
    seg.run()
    qtbot.waitUntil(lambda: seg.job is None, timeout=180_000)
    prediction = viewer.layers[f"{IMAGE} {MODEL}"]
    cor = CorrectionPanel(viewer)
    qtbot.addWidget(cor)
    cor.model_combo.setCurrentText(MODEL)
    cor.image_combo.setCurrentText(IMAGE)
    ann = cor.annotation_layer()
    # The annotator paints one voxel of each class through the class list (stored as k + 1).
    cor.class_list.set_layer(ann)
    names = [cor.class_list.table.item(r, 1).text() for r in range(cor.class_list.table.rowCount())]
    assert names == ["background", "grey matter", "white matter"]
    data = np.zeros(ann.data.shape, np.uint8)
    for row, z in enumerate((10, 11, 12)):
        cor.class_list.pick(row)
        data[z, 5, 5] = ann.selected_label
    ann.data = data
    assert sorted(np.unique(data).tolist()) == [0, 1, 2, 3]  # the training paint convention is kept

    for k, name in ((1, "grey matter"), (2, "white matter")):
        expected = hex_rgb(label_style({k: name})["colormap"][k])
        assert color_of(prediction, k) == color_of(reference, k) == color_of(ann, k + ANNOTATION_OFFSET) == expected
        for layer, value in ((prediction, k), (reference, k), (ann, k + ANNOTATION_OFFSET)):
            assert f"class: {name}" in hover(viewer, layer, value), (layer.name, hover(viewer, layer, value))
    assert color_of(ann, ANNOTATION_OFFSET) == hex_rgb(BACKGROUND_COLOR)  # painted background is visible
    assert "class: background" in hover(viewer, ann, ANNOTATION_OFFSET)

    # Copy the prediction in: only grey and white matter voxels that are not annotated change.
    pred = np.asarray(prediction.data)
    before = np.asarray(ann.data).copy()
    tools = cor.tools
    tools.select_layer(ann.name)
    tools.tool_combo.setCurrentText("Copy from layer")
    tools.source_combo.setCurrentText(prediction.name)
    tools.label_combo.setCurrentText("2")
    tools.apply()
    qtbot.waitUntil(lambda: tools.job is None, timeout=60_000)
    expected_changed = int(((before == 0) & (pred != 0)).sum())
    assert 0 < expected_changed < pred.size // 2
    assert tools.last_changed == expected_changed
    np.testing.assert_array_equal(ann.data, np.where((before == 0) & (pred != 0), pred + 1, before))
    tools.undo_button.click()  # one undo step
    np.testing.assert_array_equal(ann.data, before)

    # The class list's sizes: voxel count x voxel volume (2 mm)^3, in mL.
    cor.class_list.set_layer(prediction)
    sizes = cor.class_list.sizes()
    for k in (1, 2):
        assert sizes[k][1] == "mL"
        assert sizes[k][0] == pytest.approx(int((pred == k).sum()) * 8.0 / 1000.0)
        assert cor.class_list.table.item(k, 3).text().endswith("mL")
    # Hiding a class makes it transparent in that layer only.
    cor.class_list.set_shown(1, False)
    assert np.asarray(prediction.get_color(1))[3] == 0 and np.asarray(prediction.get_color(2))[3] > 0
    assert color_of(ann, 2) == color_of(reference, 1)


def test_review_layers_use_the_model_class_table(make_napari_viewer, qtbot, tmp_path, brain_sample):
    from medloop import write_image
    from medloop.plugins.review.project import CaseInput, ReviewProject

    t1, tissue = brain_sample
    src = tmp_path / "src"
    src.mkdir()
    write_image(t1, src / "brain.nii.gz")
    write_image(tissue, src / "brain_pred.nii.gz")
    write_image(tissue, src / "brain_ref.nii.gz")
    project = ReviewProject.create(tmp_path / "proj", [CaseInput(
        image=src / "brain.nii.gz", predictions=[src / "brain_pred.nii.gz"], reference=src / "brain_ref.nii.gz",
        model={"model": MODEL, "model_version": "1", "weights_sha256": None},
    )])
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-medloop", "Review")
    widget.reviewer_edit.setText("dr-a")
    widget.open_project(project.folder)
    case = widget.visible_cases()[0]
    widget.open_case(case)
    mask, ref = viewer.layers[f"{case} review mask"], viewer.layers[f"{case} reference"]
    assert ref.contour == 1 and not ref.visible
    ref.visible = True
    for k, name in ((1, "grey matter"), (2, "white matter")):
        expected = hex_rgb(label_style({k: name})["colormap"][k])
        assert color_of(mask, k) == color_of(ref, k) == expected
        assert f"class: {name}" in hover(viewer, mask, k)
    assert [widget.class_list.table.item(r, 1).text() for r in range(3)] == ["background", "grey matter", "white matter"]
