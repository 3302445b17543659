"""Anatomy shown right (viewer tier): every view of an LPS volume in radiological orientation
(superior up, patient right on screen left) with edge markers, physical coordinates unchanged;
layers, scale bar and status bar in mm / µm, slides with their magnification."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtWidgets import QApplication

from medloop.app.gui.orientation import OrientationGuide, magnification, status_prefix
from medloop.app.io.image import MedImage

pytestmark = pytest.mark.viewer

# A NIfTI-like (RAS on disk) volume as ITK reads it: LPS direction diag(-1, -1, 1).
SHAPE = (30, 34, 38)  # z, y, x
DIRECTION = np.diag([-1.0, -1.0, 1.0])


def marked_volume() -> tuple[MedImage, tuple[int, int, int]]:
    """A dim box with one bright block in its superior, anterior, patient-right corner."""
    image = MedImage.from_array(np.full(SHAPE, 10.0, np.float32), spacing=(2.0, 2.0, 2.0),
                                origin=(40.0, 30.0, -20.0), direction=DIRECTION)
    k, j, i = np.indices(SHAPE)
    phys = image.index_to_physical(np.stack([i, j, k], -1).reshape(-1, 3)).reshape(*SHAPE, 3)
    x, y, z = phys[..., 0], phys[..., 1], phys[..., 2]
    # LPS: right = small x, anterior = small y, superior = large z
    block = (x < np.quantile(x, 0.3)) & (y < np.quantile(y, 0.3)) & (z > np.quantile(z, 0.7))
    data = np.asarray(image.array).copy()
    data[block] = 1000.0
    centre = tuple(int(round(c)) for c in np.argwhere(block).mean(axis=0))
    return image.with_array(data), centre


def bright_centroid(shot: np.ndarray) -> tuple[float, float]:
    """Centroid (row, column) of the bright block, as fractions of the canvas height and width."""
    lum = shot[..., :3].astype(float).sum(axis=-1)
    rows, cols = np.nonzero(lum > 600)
    return rows.mean() / shot.shape[0], cols.mean() / shot.shape[1]


@pytest.mark.parametrize(
    ("view", "order", "edges"),
    [
        ("axial", (0, 1, 2), {"top": "A", "bottom": "P", "left": "R", "right": "L"}),
        ("coronal", (1, 0, 2), {"top": "S", "bottom": "I", "left": "R", "right": "L"}),
        ("sagittal", (2, 0, 1), {"top": "S", "bottom": "I", "left": "A", "right": "P"}),
    ],
)
def test_views_are_radiological_with_markers(make_napari_viewer, view, order, edges):
    viewer = make_napari_viewer(show=True)
    guide = OrientationGuide.install(viewer)
    image, centre = marked_volume()
    layer = viewer.add_image(image.array, metadata={"medloop_image": image}, colormap="gray",
                             contrast_limits=(0, 1000), **image.layer_kwargs())
    world_before = layer.data_to_world(centre)
    viewer.dims.order = order
    viewer.dims.set_point(range(3), world_before)  # the slice through the marker block
    viewer.reset_view()
    QApplication.processEvents()
    shot = viewer.screenshot(canvas_only=True, flash=False)
    row, col = bright_centroid(shot)
    # anterior (axial) / superior (coronal, sagittal) up; patient right (axial, coronal) and
    # anterior (sagittal) on screen left
    assert row < 0.5 and col < 0.5, (view, row, col)
    assert guide.view == view
    assert {e: guide.overlay(e).text for e in edges} == edges
    assert all(guide.overlay(e).visible for e in edges)
    # The flip is the camera's: layer transforms and physical coordinates are untouched.
    np.testing.assert_allclose(layer.data_to_world(centre), world_before)
    np.testing.assert_allclose(world_before[::-1], image.index_to_physical(np.array(centre[::-1], float)), atol=1e-9)


def test_units_scale_bar_and_status(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    guide = OrientationGuide.install(viewer)
    volume, _ = marked_volume()
    vol = viewer.add_image(volume.array, metadata={"medloop_image": volume}, **volume.layer_kwargs())
    assert [str(u) for u in vol.units] == ["millimeter"] * 3
    assert status_prefix(vol) == "(mm) "
    viewer.layers.clear()
    slide = MedImage.from_array(np.random.default_rng(0).random((300, 400)).astype(np.float32), spacing=(0.5, 0.5), unit="um")
    layer = viewer.add_image(slide.array, metadata={"medloop_image": slide}, **slide.layer_kwargs())
    assert [str(u) for u in layer.units] == ["micrometer"] * 2
    QApplication.processEvents()
    bar = viewer.canvas.overlays.scale_bar
    assert bar.visible
    visual = viewer.window._qt_viewer.canvas._viewer_overlay_to_visual[bar]
    visual = visual[0] if isinstance(visual, list) else visual
    assert visual.node.text.text.endswith("µm")  # "50 µm", not pixels
    assert status_prefix(layer) == "(µm, 20×) "
    assert guide.overlay("info").text == "20× · 0.50 µm/px" and not guide.overlay("top").visible
    # The status bar gets the unit and the magnification in front of napari's coordinates.
    viewer.layers.selection.active = layer
    status = layer.get_status(np.array([10.0, 20.0]), world=True)  # what napari computes under the cursor
    viewer.status = status
    assert viewer.status["coordinates"] == "(µm, 20×) " + status["coordinates"]
    assert viewer.window._status_bar._coordinates.text().startswith("(µm, 20×) [")


def test_magnification_from_microns_per_pixel():
    assert [magnification(m) for m in (0.25, 0.26, 0.5, 1.0, 2.0)] == [40, 40, 20, 10, 5]
    assert magnification(2.0 * 8) is None and magnification(0) is None


def test_multiplanar_views_are_linked_to_one_cursor(make_napari_viewer, qtbot):
    from types import SimpleNamespace

    from medloop.app.gui.home import HomePanel

    viewer = make_napari_viewer(show=True)
    image, centre = marked_volume()
    layer = viewer.add_image(image.array, metadata={"medloop_image": image}, **image.layer_kwargs())
    home = HomePanel(viewer)
    qtbot.addWidget(home)
    home.multiplanar_check.setChecked(True)
    mpr = home.multiplanar
    coronal, sagittal = mpr.models["coronal"], mpr.models["sagittal"]
    assert viewer.dims.displayed == (1, 2) and coronal.dims.displayed == (0, 2) and sagittal.dims.displayed == (0, 1)
    for model, top in ((coronal, "S"), (sagittal, "S")):
        assert [lay.data is layer.data for lay in model.layers] == [True]  # mirrored, not copied
        guide = OrientationGuide.install(model)
        assert guide.overlay("top").text == top and tuple(str(o) for o in model.camera.orientation2d)[0] == "up"
    # Moving the axial slice moves the cursor of the other views, and a click in the coronal
    # view moves the axial slice through the clicked point.
    target = layer.data_to_world(centre)
    viewer.dims.set_point(0, target[0])
    assert coronal.dims.point[0] == sagittal.dims.point[0] == pytest.approx(target[0])
    clicked = np.array([target[0] - 10.0, target[1], target[2] + 6.0])
    mpr._clicked(coronal, SimpleNamespace(position=clicked))
    np.testing.assert_allclose(viewer.dims.point, clicked)
    np.testing.assert_allclose(sagittal.dims.point, clicked)
    home.multiplanar_check.setChecked(False)
    assert home.multiplanar is None and not mpr.qt_viewers  # the extra views are closed
    del mpr, coronal, sagittal, model
    qtbot.wait(50)
