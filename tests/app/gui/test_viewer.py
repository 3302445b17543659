"""Viewer tier (needs Xvfb + Mesa): the sample through napari's own sample-data menu path,
and the demo's screenshot."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.io import imread

pytestmark = pytest.mark.viewer


def test_open_sample_through_plugin_contribution(make_napari_viewer, brain_sample):
    viewer = make_napari_viewer(show=True)
    layers = viewer.open_sample("napari-medloop", "brain-t1")
    t1, tissue = brain_sample
    image_layer, labels_layer = layers
    assert image_layer._type_string == "image" and labels_layer._type_string == "labels"
    assert tuple(image_layer.scale) == tuple(labels_layer.scale) == tuple(t1.spacing[::-1])
    assert set(np.unique(labels_layer.data).tolist()) == {0, 1, 2}
    # The canvas renders the brain: the centre of the screenshot is not blank.
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)
    h, w = shot.shape[:2]
    centre = shot[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4, :3].astype(float)
    assert (centre.sum(axis=-1) > 60).mean() > 0.3


def test_demo_screenshot_shows_the_brain(cli, tmp_path):
    target = tmp_path / "demo.png"
    result = cli("demo", "--screenshot", str(target), timeout=300)
    assert result.returncode == 0, result.stderr
    shot = imread(target)[..., :3].astype(float)
    assert shot.shape[0] >= 600 and shot.shape[1] >= 900
    # Grey- and white-matter overlay colours are both on screen (#e69f00 and #56b4e9 at 50 %).
    lum = shot.sum(axis=-1)
    orange = (shot[..., 0] > shot[..., 2] + 40) & (lum > 150)
    blue = (shot[..., 2] > shot[..., 0] + 40) & (lum > 150)
    assert orange.mean() > 0.01 and blue.mean() > 0.01
