"""MedImage geometry: physical positions agree with SimpleITK and with napari's transforms."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from napari.layers import Image
from scipy.spatial.transform import Rotation

from medloop.app.io.image import MedImage
from medloop.app.io.sitk_convert import from_sitk, to_sitk


def oblique_volume() -> sitk.Image:
    rng = np.random.default_rng(7)
    img = sitk.GetImageFromArray(rng.integers(0, 1000, size=(6, 7, 8)).astype(np.int16))
    img.SetSpacing((0.7, 1.3, 3.0))
    img.SetOrigin((-12.5, 40.25, 7.0))
    img.SetDirection(tuple(Rotation.from_euler("xyz", [10, -20, 35], degrees=True).as_matrix().ravel()))
    return img


@pytest.mark.parametrize("oblique", [False, True])
def test_napari_world_coordinates_equal_physical_points(oblique):
    ref = oblique_volume()
    if not oblique:
        ref.SetDirection(np.eye(3).ravel().tolist())
    image = from_sitk(ref)
    layer = Image(image.array, **image.layer_kwargs())
    assert tuple(layer.scale) == pytest.approx(image.spacing[::-1])
    rng = np.random.default_rng(1)
    for _ in range(20):
        ijk = rng.uniform(0, 5, size=3)
        expected = ref.TransformContinuousIndexToPhysicalPoint(ijk.tolist())
        world_zyx = layer.data_to_world(ijk[::-1])
        np.testing.assert_allclose(world_zyx[::-1], expected, atol=1e-9)
        np.testing.assert_allclose(image.index_to_physical(ijk), expected, atol=1e-9)


def test_layer_round_trip_restores_geometry():
    image = from_sitk(oblique_volume())
    layer = Image(image.array, **image.layer_kwargs())
    back = MedImage.from_layer(layer.data, layer.scale, layer.translate, layer.affine.affine_matrix)
    assert back.spacing == pytest.approx(image.spacing, abs=1e-12)
    assert back.origin == pytest.approx(image.origin, abs=1e-12)
    np.testing.assert_allclose(back.direction, image.direction, atol=1e-12)


def test_sitk_round_trip_is_exact():
    ref = oblique_volume()
    again = to_sitk(from_sitk(ref))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(again), sitk.GetArrayFromImage(ref))
    assert again.GetSpacing() == ref.GetSpacing()
    assert again.GetOrigin() == ref.GetOrigin()
    assert again.GetDirection() == ref.GetDirection()


def test_geometry_length_must_match_dimensionality():
    with pytest.raises(ValueError, match=r"need 3 values for a 3-D image of shape \(2, 2, 2\)"):
        MedImage(np.zeros((2, 2, 2)), spacing=(1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=np.eye(3))
