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


def test_oblique_volume_opens_with_its_affine_and_saves_back(make_napari_viewer, tmp_path):
    import SimpleITK as sitk

    from medloop import write_image
    from tests.app.io.synth import label_volume, oblique_volume

    image = oblique_volume()
    source = write_image(image, tmp_path / "ct.nii.gz")
    write_image(label_volume(), tmp_path / "ct_labels.nii.gz")
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(source), plugin="napari-medloop")
    ref = sitk.ReadImage(str(source))
    for ijk in ([0, 0, 0], [12, 10, 8], [3.5, 2.25, 7.0]):
        world_zyx = layer.data_to_world(np.asarray(ijk, float)[::-1])
        np.testing.assert_allclose(world_zyx[::-1], ref.TransformContinuousIndexToPhysicalPoint(ijk), atol=1e-6)
    (labels,) = viewer.open(str(tmp_path / "ct_labels.nii.gz"), plugin="napari-medloop")
    assert labels._type_string == "labels"
    labels.data[labels.data == 3] = 0  # an edit, then save through the writer contribution
    out = tmp_path / "edited.nrrd"
    labels.save(str(out), plugin="napari-medloop")
    saved = sitk.ReadImage(str(out))
    for getter in ("GetSpacing", "GetOrigin", "GetDirection"):  # NRRD prints 16 digits: 1e-12
        np.testing.assert_allclose(getattr(saved, getter)(), getattr(ref, getter)(), atol=1e-12, rtol=0)
    assert 3 not in np.unique(sitk.GetArrayFromImage(saved))
