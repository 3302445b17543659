"""Click -> object panel, widget tier (pytest-qt, napari's ViewerModel, offscreen): the layers
Start makes, clicks through napari's own mouse callbacks, keys (and that they leave napari's
defaults alone), refusals in the status line, the Correction ring, the Review record and the
restore after a crash. The viewer tier (the brain sample, GUI stalls) is test_widget_viewer.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from napari.components import ViewerModel

from medloop.app.io.image import MedImage
from medloop.plugins.interactive import loop
from medloop.plugins.interactive.widget import ALTERNATIVES, KEYS, REFUSED_3D, InteractivePanel, layer_keys, napari_keys

SHAPE = (24, 40, 40)
CENTRE = (12, 20, 20)


def sphere_image() -> MedImage:
    rng = np.random.default_rng(3)
    zz, yy, xx = np.indices(SHAPE)
    inside = (zz - CENTRE[0]) ** 2 + (yy - CENTRE[1]) ** 2 + (xx - CENTRE[2]) ** 2 <= 6**2
    array = (inside * 1.0 + rng.normal(0, 0.1, SHAPE)).astype(np.float32)
    return MedImage(array, (1.0, 1.0, 1.0), (10.0, -5.0, 3.0), np.eye(3))


def sphere_reference() -> np.ndarray:
    zz, yy, xx = np.indices(SHAPE)
    return (zz - CENTRE[0]) ** 2 + (yy - CENTRE[1]) ** 2 + (xx - CENTRE[2]) ** 2 <= 6**2


def open_panel(qtbot, viewer=None, target_name=None, target_metadata=None, target_data=None):
    viewer = viewer or ViewerModel()
    image = sphere_image()
    viewer.add_image(image.array, name="sphere", metadata={"medloop_image": image}, **image.layer_kwargs())
    if target_name:
        data = np.zeros(SHAPE, np.uint8) if target_data is None else target_data
        viewer.add_labels(data, name=target_name, metadata=dict(target_metadata or {}), **image.layer_kwargs())
    panel = InteractivePanel(viewer)
    qtbot.addWidget(panel)
    panel.image_combo.setCurrentText("sphere")
    panel.refresh_layers()
    if target_name:
        panel.target_combo.setCurrentText(target_name)
    return viewer, panel


def start(qtbot, panel):
    panel.start_session()
    qtbot.waitUntil(lambda: panel.bound is not None and not panel.busy(), timeout=60_000)
    return panel.bound


def settle(qtbot, panel):
    qtbot.waitUntil(lambda: not panel.busy(), timeout=60_000)
    qtbot.wait(10)


def click(layer, index, modifiers=()):
    """A click through napari's mouse callbacks at an array index of ``layer``'s grid."""
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

    pos = tuple(float(v) for v in layer.data_to_world(np.asarray(index, float)))
    mouse_press_callbacks(layer, read_only_mouse_event(type="mouse_press", position=pos, modifiers=list(modifiers)))
    mouse_release_callbacks(layer, read_only_mouse_event(type="mouse_release", position=pos, modifiers=list(modifiers)))


def press(layer, key):
    from napari.utils.key_bindings import coerce_keybinding

    layer.keymap[coerce_keybinding(key)](layer)


def test_panel_keys_leave_napari_defaults_alone():
    from napari.layers import Image, Labels, Points, Shapes

    for cls in (Points, Image, Shapes, Labels):
        taken = napari_keys(cls)
        from napari.utils.key_bindings import coerce_keybinding

        assert not {str(coerce_keybinding(k)) for k in layer_keys(cls).values()} & taken, cls.__name__
    assert layer_keys(Image) == KEYS  # no collisions there
    assert layer_keys(Points) == {**KEYS, "scribble": "Shift-S"}  # napari's S: the points select mode
    # napari binds T (path), Enter and Escape (finish drawing) on Shapes; Enter/Escape (polygon)
    # and Ctrl+Z / Ctrl+Shift+Z (its own undo) on Labels: the documented alternatives are used
    shapes, labels = layer_keys(Shapes), layer_keys(Labels)
    assert (shapes["polarity"], shapes["commit"], shapes["reset"]) == ("Shift-T", "Shift-Enter", "Shift-Escape")
    assert (labels["commit"], labels["reset"], labels["undo"], labels["redo"]) == ("Shift-Enter", "Shift-Escape", "Alt-Z", "Alt-Shift-Z")
    assert set(ALTERNATIVES) <= set(KEYS)


def test_start_makes_prompt_layers_on_the_image_grid_and_a_click_segments(qtbot):
    viewer, panel = open_panel(qtbot)
    assert panel.target_combo.currentText() == "(new) sphere objects"
    b = start(qtbot, panel)
    image_layer = viewer.layers["sphere"]
    for name in ("sphere prompts", "sphere prompt box", "sphere scribbles", "sphere objects"):
        layer = viewer.layers[name]
        np.testing.assert_allclose(layer.scale, image_layer.scale)
        np.testing.assert_allclose(layer.translate, image_layer.translate)
    click(b.prompts, CENTRE)
    settle(qtbot, panel)
    mask = np.asarray(b.target.data) == 1
    ref = sphere_reference()
    dice = 2 * (mask & ref).sum() / (mask.sum() + ref.sum())
    assert dice >= 0.9, dice
    assert b.prompts.features["positive"].tolist() == [True]
    np.testing.assert_allclose(b.prompts.data[0], CENTRE)
    np.testing.assert_allclose(b.prompts.face_color[0][:3], [0x2C / 255, 0xA0 / 255, 0x2C / 255], atol=1e-3)
    assert "Engine: classical" in panel.info_label.text() and "ms" in panel.info_label.text()
    assert f"{int(mask.sum())} voxels" in panel.info_label.text()
    panel.stop_session()
    from napari.utils.key_bindings import coerce_keybinding

    assert not image_layer.keymap and not b.prompts.keymap  # the panel's keys and mouse go with the session
    assert panel._on_drag not in image_layer.mouse_drag_callbacks and panel._on_wheel not in image_layer.mouse_wheel_callbacks
    assert coerce_keybinding("T") not in b.box.keymap


def test_shift_click_is_a_negative_point_and_t_flips_the_polarity(qtbot):
    viewer, panel = open_panel(qtbot)
    b = start(qtbot, panel)
    click(b.prompts, CENTRE)
    settle(qtbot, panel)
    before = int((np.asarray(b.target.data) == 1).sum())
    edge = (CENTRE[0], CENTRE[1], CENTRE[2] + 5)
    click(b.prompts, edge, modifiers=["Shift"])
    settle(qtbot, panel)
    assert b.prompts.features["positive"].tolist() == [True, False]
    np.testing.assert_allclose(b.prompts.face_color[1][:3], [0xD6 / 255, 0x27 / 255, 0x28 / 255], atol=1e-3)
    after = int((np.asarray(b.target.data) == 1).sum())
    assert after <= before  # a negative click never adds voxels
    assert b.runner.session.log[-1].positive == 0
    press(b.prompts, "T")  # T: the next plain click is negative, Shift+click positive
    assert panel.negative_next and "negative" in panel.status.text()
    press(b.prompts, "T")
    assert not panel.negative_next
    panel.stop_session()


def test_a_click_in_3d_display_is_refused(qtbot):
    viewer, panel = open_panel(qtbot)
    b = start(qtbot, panel)
    viewer.dims.ndisplay = 3
    click(b.prompts, CENTRE)
    assert panel.status.text() == REFUSED_3D == "Clicks work on a 2-D view only: press Ctrl+Y for 2-D and click on a slice."
    settle(qtbot, panel)
    assert not np.asarray(b.target.data).any() and b.runner.runs == 0
    panel.stop_session()


def test_a_target_on_another_grid_is_refused_with_one_line(qtbot):
    viewer = ViewerModel()
    viewer.add_labels(np.zeros((10, 12, 14), np.uint8), name="elsewhere")
    viewer, panel = open_panel(qtbot, viewer)
    panel.target_combo.setCurrentText("elsewhere")
    panel.start_session()
    assert panel.bound is None and panel.job is None
    assert panel.status.text() == (
        "Cannot run: The target 'elsewhere' is not on the grid of 'sphere' (10x12x14 voxels vs 24x40x40, or another "
        "spacing/position); choose a labels layer made on that image.")


def test_a_scribble_layer_of_another_shape_is_refused_with_one_line(qtbot):
    viewer = ViewerModel()
    viewer.add_labels(np.zeros((24, 40, 41), np.uint8), name="sphere scribbles")
    viewer, panel = open_panel(qtbot, viewer)
    panel.start_session()
    assert panel.bound is None and panel.job is None
    assert panel.status.text() == (
        "Cannot run: The scribble layer 'sphere scribbles' is not on the grid of 'sphere' (24x40x41 voxels vs 24x40x40, or "
        "another spacing/position); delete or rename it and press Start again.")


def test_keys_undo_redo_reset_and_napari_history_stays_consistent(qtbot):
    viewer, panel = open_panel(qtbot)
    b = start(qtbot, panel)
    empty = np.array(b.target.data, copy=True)
    click(b.prompts, CENTRE)
    settle(qtbot, panel)
    clicked = np.array(b.target.data, copy=True)
    assert clicked.any()
    press(b.prompts, "Control-Z")
    settle(qtbot, panel)
    assert np.array_equal(b.target.data, empty)  # bit for bit
    assert b.prompts.data.shape[0] == 0  # the undone click's point went too
    press(b.prompts, "Control-Shift-Z")
    settle(qtbot, panel)
    assert np.array_equal(b.target.data, clicked)
    # napari's own history holds one step per interaction: its undo reverts the redo exactly
    b.target.undo()
    assert np.array_equal(b.target.data, empty)
    b.target.redo()
    assert np.array_equal(b.target.data, clicked)
    press(b.prompts, "Escape")
    settle(qtbot, panel)
    assert np.array_equal(b.target.data, empty)
    press(b.prompts, "B")  # B: draw a box; Shift+B on the box layer (napari's B) goes back to clicking
    assert viewer.layers.selection.active is b.box and b.box.mode == "add_rectangle"
    press(b.box, "Shift-B")
    assert viewer.layers.selection.active is b.prompts
    press(b.prompts, "Shift-S")
    assert viewer.layers.selection.active is b.scribbles and b.scribbles.mode == "paint" and b.scribbles.selected_label == 1
    press(b.scribbles, "S")
    assert viewer.layers.selection.active is b.prompts
    press(b.box, "Shift-Escape")  # the box layer's alternative key reaches the same action
    settle(qtbot, panel)
    assert "empty" in panel.status.text()
    panel.stop_session()


def test_commit_in_a_correction_layer_adds_a_2mm_background_ring_on_unlabelled_voxels(qtbot):
    legend = {1: "background", 2: "sphere", 3: "other"}
    painted = np.zeros(SHAPE, np.uint8)
    painted[CENTRE[0], CENTRE[1], CENTRE[2] + 7] = 3  # a voxel of another class just outside the sphere
    meta = {loop.CLASSES_KEY: legend, "classes": {0: "background", 1: "sphere", 2: "other"}, "class_offset": 1}
    other = painted.copy()  # the layer edits ``painted`` in place
    viewer, panel = open_panel(qtbot, target_name="sphere annotations", target_metadata=meta, target_data=painted)
    assert panel.class_combo.currentData() == 2  # the first class that is not background
    b = start(qtbot, panel)
    click(b.prompts, CENTRE)
    settle(qtbot, panel)
    obj = np.asarray(b.target.data) == 2
    press(b.prompts, "Enter")
    settle(qtbot, panel)
    labels = np.asarray(b.target.data)
    assert np.array_equal(labels == 2, obj)  # the object stays, as class value 2
    from scipy import ndimage as ndi

    near = (ndi.distance_transform_edt(~obj) <= 2.0) & ~obj
    ring = near & (other == 0)
    assert np.array_equal(labels == 1, ring)  # the ring: 2 mm, unlabelled voxels only
    assert labels[CENTRE[0], CENTRE[1], CENTRE[2] + 7] == 3
    assert "background ring" in panel.status.text()
    assert b.prompts.data.shape[0] == 0  # the next object starts with no prompts
    panel.stop_session()


def test_a_review_mask_records_prompt_count_and_seconds(qtbot):
    viewer, panel = open_panel(qtbot, target_name="case-7 review mask", target_metadata={})
    b = start(qtbot, panel)
    click(b.prompts, CENTRE)
    settle(qtbot, panel)
    click(b.prompts, (CENTRE[0], CENTRE[1], CENTRE[2] + 5), modifiers=["Shift"])
    settle(qtbot, panel)
    record = b.target.metadata[loop.PROMPTS_KEY]
    assert record["count"] == 2 and record["seconds"] >= 0.0
    panel.stop_session()


def test_box_and_scribble_prompts(qtbot):
    viewer, panel = open_panel(qtbot)
    b = start(qtbot, panel)
    viewer.dims.set_point(0, viewer.layers["sphere"].data_to_world(np.asarray(CENTRE, float))[0])
    z = CENTRE[0]
    b.box.add_rectangles(np.array([[z, 12, 12], [z, 12, 28], [z, 28, 28], [z, 28, 12]], float))
    settle(qtbot, panel)
    row = b.runner.session.log[-1]
    assert (row.kind, row.plane) == ("box", 0)  # on the displayed axial slice
    np.testing.assert_allclose([row.x, row.y, row.z, row.x2, row.y2, row.z2], [22, 7, 15, 38, 23, 15])  # mm
    assert panel.status.text() == row.message  # the engine's own explanation is shown
    press(b.prompts, "Escape")
    settle(qtbot, panel)
    b.scribbles.paint((z, 20, 20), 1)  # one brush stroke = one paint event 
    qtbot.waitUntil(lambda: b.runner.runs == 2, timeout=10_000)
    settle(qtbot, panel)
    stroke = np.argwhere(np.asarray(b.scribbles.data) == 1)
    rows = [r for r in b.runner.session.log if r.kind == "scribble"]
    assert len(rows) == len(stroke) and all(r.positive == 1 for r in rows)  # one row per painted voxel, in mm
    np.testing.assert_allclose(sorted((r.z, r.y, r.x) for r in rows), sorted(map(tuple, stroke + [3, -5, 10])))
    mask = np.asarray(b.target.data) == 1
    assert mask[tuple(stroke.T)].all() and mask.sum() > len(stroke)  # the stroke grew into the sphere
    print("scribble:", rows[-1].message)
    panel.stop_session()


def test_restore_after_a_crash_gives_back_committed_objects_and_the_open_objects_prompts(qtbot):
    viewer, panel = open_panel(qtbot)
    b = start(qtbot, panel)
    click(b.prompts, CENTRE)
    settle(qtbot, panel)
    press(b.prompts, "N")  # object 1 committed
    settle(qtbot, panel)
    panel.class_spin.setValue(2)
    click(b.prompts, (CENTRE[0] + 4, CENTRE[1], CENTRE[2]))
    settle(qtbot, panel)  # the second click lies inside object 1 (class 1, locked): refused
    click(b.prompts, (3, 3, 3))  # background corner: the open object, class 2
    settle(qtbot, panel)
    before_crash = np.array(b.target.data, copy=True)
    log_path, saved_path = b.setup.log_path, b.saver.path
    qtbot.waitUntil(lambda: saved_path.is_file() and not b.saver.dirty, timeout=10_000)
    # "kill -9": nothing is flushed or closed; the process's files are what autosave wrote
    from medloop.app.io.read import read_image

    saved = np.asarray(read_image(saved_path).array)
    assert np.array_equal(saved, np.where(before_crash == 2, 0, before_crash))  # the open object lives in the log
    assert log_path.is_file()
    panel._alive[0] = False
    b.runner.stop()
    viewer2, panel2 = open_panel(qtbot)
    b2 = start(qtbot, panel2)
    assert np.array_equal(b2.target.data, before_crash)
    assert "Restored 1 committed objects" in panel2.status.text() and "2 prompts" in panel2.status.text()
    assert b2.prompts.data.shape[0] == 1 and b2.runner.session.object.id == 2
    press(b2.prompts, "Control-Z")  # the restored prompt is undoable
    settle(qtbot, panel2)
    assert np.array_equal(b2.target.data, np.where(before_crash == 2, 0, before_crash))
    panel2.stop_session()


def test_alt_wheel_sets_the_tolerance_of_the_next_prompt_and_learned_is_explained(qtbot):
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import mouse_wheel_callbacks

    viewer, panel = open_panel(qtbot)
    item = panel.engine_combo.model().item(2)
    try:
        from medloop.plugins.interactive.clicknet import learned_status

        enabled = learned_status()[0]
    except ImportError:
        enabled = False
    assert item.isEnabled() == enabled
    if not enabled:
        assert item.toolTip().startswith("Learned engine disabled: ") and panel.engine_combo.toolTip() == item.toolTip()
    b = start(qtbot, panel)
    for delta in ((0, 1), (0, 1), (0, -1), (0, 1)):
        mouse_wheel_callbacks(b.prompts, read_only_mouse_event(type="mouse_wheel", delta=delta, modifiers=["Alt"]))
    mouse_wheel_callbacks(b.prompts, read_only_mouse_event(type="mouse_wheel", delta=(0, 1)))  # no Alt: napari zooms
    assert panel.tolerance_spin.value() == pytest.approx(2.7)
    settle(qtbot, panel)
    assert b.runner.session.params.tolerance == pytest.approx(2.7)
    panel.stop_session()


def test_a_click_on_a_2d_image_segments_the_disk(qtbot):
    rng = np.random.default_rng(4)
    yy, xx = np.indices((48, 56))
    disk = (yy - 24) ** 2 + (xx - 30) ** 2 <= 9**2
    image = MedImage((disk * 1.0 + rng.normal(0, 0.1, disk.shape)).astype(np.float32), (0.5, 0.5), (0.0, 0.0), np.eye(2))
    viewer = ViewerModel()
    viewer.add_image(image.array, name="slice", metadata={"medloop_image": image}, **image.layer_kwargs())
    panel = InteractivePanel(viewer)
    qtbot.addWidget(panel)
    b = start(qtbot, panel)
    click(b.prompts, (24, 30))
    settle(qtbot, panel)
    mask = np.asarray(b.target.data) == 1
    assert 2 * (mask & disk).sum() / (mask.sum() + disk.sum()) >= 0.9
    assert "mm²" in panel.info_label.text()  # a 2-D object's area, in physical units
    panel.stop_session()
