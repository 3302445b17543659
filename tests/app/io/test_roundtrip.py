"""Every writable format round-trips voxels bit-exactly and geometry within 1e-6, and other
tools (SimpleITK, nibabel, tifffile) read the same geometry from our files."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from medloop import read_image, write_image
from medloop.app.io.image import MedImage

from .synth import label_volume, oblique_volume

ITK_SUFFIXES = [".nii.gz", ".nii", ".nrrd", ".mha"]


def assert_same_geometry(a: MedImage, b: MedImage, tol: float = 1e-6) -> None:
    np.testing.assert_allclose(a.spacing, b.spacing, atol=tol, rtol=0)
    np.testing.assert_allclose(a.origin, b.origin, atol=tol, rtol=0)
    np.testing.assert_allclose(a.direction, b.direction, atol=tol, rtol=0)


@pytest.mark.parametrize("suffix", ITK_SUFFIXES)
@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.uint8])
def test_itk_formats_round_trip(tmp_path, suffix, dtype):
    image = oblique_volume(dtype=dtype)
    path = write_image(image, tmp_path / f"vol{suffix}")
    back = read_image(path)
    assert back.dtype == image.dtype
    np.testing.assert_array_equal(back.array, image.array)
    assert_same_geometry(back, image)
    ref = sitk.ReadImage(str(path))
    np.testing.assert_allclose(ref.GetSpacing(), image.spacing, atol=1e-6)
    np.testing.assert_allclose(ref.GetOrigin(), image.origin, atol=1e-6)
    np.testing.assert_allclose(np.reshape(ref.GetDirection(), (3, 3)), image.direction, atol=1e-6)
    assert list(path.parent.iterdir()) == [path]  # no temporary files left behind


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_nifti_affine_matches_nibabel(tmp_path, suffix):
    import nibabel as nib

    image = label_volume()
    path = write_image(image, tmp_path / f"labels{suffix}")
    nii = nib.load(str(path))
    # nibabel: RAS world, (x, y, z) array order; medloop: LPS world, (z, y, x) array order.
    lps_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    np.testing.assert_allclose(nii.affine, lps_to_ras @ image.affine_xyz(), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(nii.dataobj).transpose(2, 1, 0), image.array)


def test_tiff_round_trip_keeps_full_geometry(tmp_path):
    import tifffile

    image = oblique_volume(dtype=np.uint16)
    path = write_image(image, tmp_path / "vol.tif")
    back = read_image(path)
    np.testing.assert_array_equal(back.array, image.array)
    assert_same_geometry(back, image, tol=1e-12)
    # Other TIFF readers get the pixel size from the standard resolution tags (pixels per cm).
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        num, den = tags["XResolution"].value
        assert tags["ResolutionUnit"].value == 3
        assert 1e4 * den / num == pytest.approx(image.spacing[0] * 1000, rel=1e-6)


def test_rgb_tiff_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    image = MedImage.from_array(
        rng.integers(0, 255, size=(40, 60, 3), dtype=np.uint8), spacing=(0.25, 0.5), channel_axis=True, unit="um"
    )
    back = read_image(write_image(image, tmp_path / "rgb.tiff"))
    assert back.channel_axis and back.shape == (40, 60, 3)
    np.testing.assert_array_equal(back.array, image.array)
    assert back.spacing == (0.25, 0.5) and back.unit == "um"


def test_ome_tiff_physical_size(tmp_path):
    import tifffile

    data = np.arange(4 * 20 * 30, dtype=np.uint16).reshape(4, 20, 30)
    path = tmp_path / "cells.ome.tif"
    tifffile.imwrite(
        path, data, ome=True,
        metadata={"axes": "ZYX", "PhysicalSizeX": 0.325, "PhysicalSizeY": 0.325, "PhysicalSizeZ": 2.0,
                  "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm", "PhysicalSizeZUnit": "µm"},
    )
    image = read_image(path)
    np.testing.assert_array_equal(image.array, data)
    assert image.spacing == pytest.approx((0.325, 0.325, 2.0)) and image.unit == "um"


def test_imagej_tiff_pixel_size(tmp_path):
    import tifffile

    data = np.zeros((5, 16, 24), dtype=np.uint8)
    data[2, 3, 4] = 7
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / 0.2, 1 / 0.4), metadata={"spacing": 1.5, "unit": "um", "axes": "ZYX"})
    image = read_image(path)
    assert image.shape == (5, 16, 24) and image.array[2, 3, 4] == 7
    assert image.spacing == pytest.approx((0.2, 0.4, 1.5))


def test_tiff_with_time_axis_is_refused(tmp_path):
    import tifffile

    from medloop.app.errors import ImageReadError

    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, np.zeros((3, 4, 8, 8), np.uint8), imagej=True, metadata={"axes": "TZYX"})
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    assert str(err.value) == (
        f"cannot read {path}: unsupported dimensionality (T=3, Z=4, Y=8, X=8); medloop reads 2-D and "
        "3-D images with optional channels - split the time points or positions first"
    )


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_raster_images(tmp_path, suffix):
    from PIL import Image

    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 255, size=(30, 50, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / f"photo{suffix}")
    Image.fromarray(rgb[..., 0]).save(tmp_path / f"xray{suffix}")
    photo, xray = read_image(tmp_path / f"photo{suffix}"), read_image(tmp_path / f"xray{suffix}")
    assert photo.shape == (30, 50, 3) and photo.channel_axis and photo.ndim == 2
    assert xray.shape == (30, 50) and not xray.channel_axis
    if suffix == ".png":  # lossless
        np.testing.assert_array_equal(photo.array, rgb)
        np.testing.assert_array_equal(xray.array, rgb[..., 0])
    assert photo.unit == "px" and photo.spacing == (1.0, 1.0)


def test_palette_png_becomes_rgb(tmp_path):
    from PIL import Image

    img = Image.fromarray(np.array([[0, 1], [1, 0]], dtype=np.uint8), mode="P")
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.save(tmp_path / "pal.png")
    image = read_image(tmp_path / "pal.png")
    np.testing.assert_array_equal(image.array[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(image.array[0, 1], [0, 0, 255])


def test_micrometre_images_are_written_in_millimetres_to_nifti(tmp_path):
    image = MedImage.from_array(np.ones((4, 5), np.uint8), spacing=(0.5, 0.25), unit="um")
    back = read_image(write_image(image, tmp_path / "mask.nii.gz"))
    assert back.spacing == pytest.approx((0.0005, 0.00025)) and back.unit == "mm"


def test_4d_nifti_with_one_volume_reads_as_3d(tmp_path):
    import nibabel as nib

    data = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4, 1)
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 3.0, 4.0, 1.0])), tmp_path / "one.nii.gz")
    image = read_image(tmp_path / "one.nii.gz")
    assert image.shape == (4, 3, 2)
    np.testing.assert_array_equal(image.array, data[..., 0].transpose(2, 1, 0))
    assert image.spacing == (2.0, 3.0, 4.0)
