"""DICOM reading: exact geometry against NIfTI, series choice, missing slices, single files, errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import SimpleITK as sitk
from tests.app.io.dicom_synth import synthetic_volume, write_series

from medloop.app.errors import ImageReadError, MedloopWarning
from medloop.app.io.dicom import (
    is_dicom_file,
    list_dicom_series,
    read_all_dicom_series,
    read_dicom_file,
    read_dicom_series,
)

AXIAL = dict(origin=(-30.0, 12.5, -12.75), euler_xyz_deg=(0.0, 0.0, 0.0))


def assert_geometry(image, ref: sitk.Image, atol: float = 1e-6) -> None:
    np.testing.assert_allclose(image.spacing, ref.GetSpacing(), rtol=0, atol=atol)
    np.testing.assert_allclose(image.origin, ref.GetOrigin(), rtol=0, atol=atol)
    np.testing.assert_allclose(image.direction.ravel(), ref.GetDirection(), rtol=0, atol=atol)


def test_series_equals_nifti_voxels_and_geometry(tmp_path):
    ref = synthetic_volume()
    folder = tmp_path / "ct"
    paths = write_series(ref, folder)
    # Name the files against their physical order: the reader must sort by position, not name.
    for k, p in enumerate(paths):
        p.rename(folder / f"img{len(paths) - 1 - k:03d}.dcm")
    sitk.WriteImage(ref, str(tmp_path / "ct.nii.gz"))
    nifti = sitk.ReadImage(str(tmp_path / "ct.nii.gz"))

    image = read_dicom_series(folder)

    assert image.dtype == np.int16 and image.shape == (12, 20, 24)
    np.testing.assert_array_equal(image.array, sitk.GetArrayFromImage(nifti))
    assert_geometry(image, nifti)
    assert image.modality == "CT"
    assert image.path == str(folder)
    assert image.metadata["SeriesDescription"] == "synthetic CT"
    assert image.metadata["SeriesInstanceUID"] == "1.2.826.0.1.3680043.2.1125.1"
    assert image.metadata["Modality"] == "CT"
    assert image.metadata["name"] == "synthetic CT"
    assert image.metadata["0020|0032"] == "-101.25\\37.5\\-12.75"  # tags of the first slice
    assert image.metadata["0018|0050"] == "2.5"
    assert "interpolated_slices" not in image.metadata

    (series,) = list_dicom_series(folder)
    assert (series.uid, series.description, series.modality) == ("1.2.826.0.1.3680043.2.1125.1", "synthetic CT", "CT")
    assert [p.rsplit("/", 1)[-1] for p in series.files] == [f"img{11 - k:03d}.dcm" for k in range(12)]


def test_is_dicom_file(tmp_path):
    (dcm,) = write_series(synthetic_volume(shape_zyx=(1, 4, 5)), tmp_path)
    (tmp_path / "notes.txt").write_text("x" * 200)
    assert is_dicom_file(dcm)
    assert not is_dicom_file(tmp_path / "notes.txt")
    assert not is_dicom_file(tmp_path)
    assert not is_dicom_file(tmp_path / "missing.dcm")


@pytest.fixture
def two_series(tmp_path):
    folder = tmp_path / "study"
    # GDCM lists series by SeriesInstanceUID as text, so "...10" comes before "...9".
    write_series(synthetic_volume(seed=1, shape_zyx=(5, 8, 9)), folder, uid="1.2.3.10", description="T1 axial", modality="MR", prefix="t1_")
    write_series(synthetic_volume(seed=2, shape_zyx=(4, 8, 9)), folder, uid="1.2.3.9", description="", modality="CT", prefix="ct_")
    return folder


def test_several_series_need_a_choice(two_series):
    with pytest.raises(ImageReadError) as err:
        read_dicom_series(two_series)
    assert str(err.value) == (
        f"cannot read {two_series}: it holds 2 DICOM series: 1: T1 axial (1.2.3.10, 5 files); "
        "2: (no description) (1.2.3.9, 4 files); "
        "choose one with --series (its number, description or SeriesInstanceUID)"
    )
    with pytest.raises(ImageReadError) as err:
        read_dicom_series(two_series, series="T2")
    assert str(err.value) == (
        f"cannot read {two_series}: no series 'T2'; the series are: 1: T1 axial (1.2.3.10, 5 files); "
        "2: (no description) (1.2.3.9, 4 files); "
        "choose one with --series (its number, description or SeriesInstanceUID)"
    )


@pytest.mark.parametrize(
    "choice, uid, slices, modality",
    [("1.2.3.9", "1.2.3.9", 4, "CT"), ("T1 axial", "1.2.3.10", 5, "MR"), ("2", "1.2.3.9", 4, "CT"), ("1", "1.2.3.10", 5, "MR")],
)
def test_choose_series_by_uid_description_or_number(two_series, choice, uid, slices, modality):
    image = read_dicom_series(two_series, series=choice)
    assert image.metadata["SeriesInstanceUID"] == uid
    assert image.shape == (slices, 8, 9)
    assert image.modality == modality


def test_read_all_series(two_series):
    images = read_all_dicom_series(two_series)
    assert [(i.metadata["SeriesDescription"], i.metadata["name"], i.shape) for i in images] == [
        ("T1 axial", "T1 axial", (5, 8, 9)),
        ("", "1.2.3.9", (4, 8, 9)),  # the layer name falls back to the uid
    ]
    expected = sitk.GetArrayFromImage(synthetic_volume(seed=1, shape_zyx=(5, 8, 9)))
    np.testing.assert_array_equal(images[0].array, expected)


def test_missing_slice_warns_and_refuses(tmp_path):
    folder = tmp_path / "gap"
    write_series(synthetic_volume(**AXIAL), folder, skip=(5,))  # slices at -12.75 + 2.5 k mm
    with pytest.warns(MedloopWarning) as record, pytest.raises(ImageReadError) as err:
        read_dicom_series(folder)
    assert [str(w.message) for w in record] == [
        f"{folder}: 1 slice(s) missing (1 between -2.75 mm and 2.25 mm along the slice normal, "
        "where slices are otherwise 2.5 mm apart)"
    ]
    assert str(err.value) == (
        f"cannot read {folder}: the slice spacing is irregular (gaps from 2.5 mm to 5 mm), so the "
        "slices would be mis-placed in a regular volume; pass --allow-irregular to resample them "
        "onto a regular grid"
    )


def test_allow_irregular_interpolates_the_missing_slice(tmp_path):
    ref = synthetic_volume()  # oblique: the grid must follow the slice normal
    folder = tmp_path / "gap"
    write_series(ref, folder, skip=(5,))
    with pytest.warns(MedloopWarning, match="1 slice"):
        image = read_dicom_series(folder, allow_irregular=True)

    expected = sitk.GetArrayFromImage(ref)
    assert image.shape == expected.shape and image.dtype == np.int16
    assert image.metadata["interpolated_slices"] == 1
    assert_geometry(image, ref)
    kept = [k for k in range(12) if k != 5]
    np.testing.assert_array_equal(image.array[kept], expected[kept])
    # Smooth along z (400 sin(z/6)) plus ±2 noise: linear interpolation is off by a few units.
    error = np.abs(image.array[5].astype(int) - expected[5])
    assert error.max() <= 10, error.max()
    assert np.ptp(expected[5]) > 300  # ... on a slice with real contrast


def test_duplicate_positions_are_refused(tmp_path):
    ref = synthetic_volume(**AXIAL, shape_zyx=(4, 6, 7))
    write_series(ref, tmp_path)
    write_series(ref, tmp_path, prefix="copy", skip=(0, 1, 3))  # a second slice at position 2
    with pytest.raises(ImageReadError) as err:
        read_dicom_series(tmp_path)
    assert str(err.value) == f"cannot read {tmp_path}: two slices share position -7.75 mm; remove duplicates"


def test_single_axial_file_is_2d(tmp_path):
    ref = synthetic_volume(shape_zyx=(3, 10, 14), origin=(-30.0, 12.5, 4.0), euler_xyz_deg=(0.0, 0.0, 30.0))
    paths = write_series(ref, tmp_path)
    image = read_dicom_file(paths[1])
    assert image.ndim == 2 and image.shape == (10, 14)
    np.testing.assert_array_equal(image.array, sitk.GetArrayFromImage(ref)[1])
    assert image.spacing == pytest.approx((0.8, 0.6), abs=1e-9)
    ipp = ref.TransformIndexToPhysicalPoint((0, 0, 1))
    assert image.origin == pytest.approx(ipp[:2], abs=1e-6)
    rot = np.asarray(ref.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(image.direction, rot[:2, :2], atol=1e-6)
    np.testing.assert_allclose(image.metadata["ImagePositionPatient"], ipp, atol=1e-6)
    np.testing.assert_allclose(image.metadata["ImageOrientationPatient"], list(rot[:, 0]) + list(rot[:, 1]), atol=1e-6)
    assert image.modality == "CT" and image.metadata["name"] == "synthetic CT"
    assert image.path == str(paths[1])


def test_single_oblique_file_keeps_its_position_and_orientation(tmp_path):
    """A non-axial slice has no 2-D frame: it stays a one-slice volume placed exactly where
    ImagePositionPatient and ImageOrientationPatient say (not at the origin, unrotated)."""
    ref = synthetic_volume(shape_zyx=(1, 10, 14))
    (path,) = write_series(ref, tmp_path)
    image = read_dicom_file(path)
    assert image.ndim == 3 and image.shape == (1, 10, 14)
    np.testing.assert_array_equal(image.array, sitk.GetArrayFromImage(ref))
    assert image.spacing[:2] == pytest.approx((0.8, 0.6), abs=1e-9)
    np.testing.assert_allclose(image.origin, ref.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(image.direction, np.reshape(ref.GetDirection(), (3, 3)), atol=1e-6)
    # every pixel lands where the reference puts it
    for ijk in [(0, 0, 0), (13, 0, 0), (0, 9, 0), (13, 9, 0)]:
        np.testing.assert_allclose(image.index_to_physical(np.array(ijk)), ref.TransformIndexToPhysicalPoint(ijk), atol=1e-6)
    # A folder holding one slice reads the same way, named after its series.
    from_folder = read_dicom_series(tmp_path)
    assert from_folder.ndim == 3 and from_folder.path == str(tmp_path)
    np.testing.assert_array_equal(from_folder.array, image.array)
    np.testing.assert_allclose(from_folder.origin, image.origin, atol=0)


def test_multi_frame_file_stays_3d(tmp_path):
    ref = sitk.Cast(synthetic_volume(shape_zyx=(5, 8, 9)) + 1000, sitk.sitkUInt16)
    sitk.WriteImage(ref, str(tmp_path / "multi.dcm"))
    image = read_dicom_file(tmp_path / "multi.dcm")
    assert image.shape == (5, 8, 9)
    np.testing.assert_array_equal(image.array, sitk.GetArrayFromImage(ref))
    assert_geometry(image, ref)


NO_SERIES = "cannot read {}: no DICOM series found in this folder; point to the folder that holds the .dcm files"


def test_empty_folder(tmp_path):
    with pytest.raises(ImageReadError) as err:
        read_dicom_series(tmp_path)
    assert str(err.value) == NO_SERIES.format(tmp_path)


def test_folder_of_text_files(tmp_path):
    for name in ("a.txt", "b.dcm"):
        (tmp_path / name).write_text("not an image\n" * 20)
    with pytest.raises(ImageReadError) as err:
        list_dicom_series(tmp_path)
    assert str(err.value) == NO_SERIES.format(tmp_path)


def test_missing_folder(tmp_path):
    with pytest.raises(ImageReadError) as err:
        read_dicom_series(tmp_path / "nope")
    assert str(err.value) == f"cannot read {tmp_path / 'nope'}: no such file or folder; check the path"


def corrupt_dicom(path):
    path.write_bytes(b"\0" * 128 + b"DICM" + np.random.default_rng(3).bytes(4096))
    return path


def test_corrupt_file(tmp_path):
    bad = corrupt_dicom(tmp_path / "bad.dcm")
    expected = (
        f"cannot read {bad}: not a valid DICOM file (Cannot read requested file); "
        "check that the file is complete and not corrupt, or remove it"
    )
    for read in (read_dicom_series, lambda _: read_dicom_file(bad)):
        with pytest.raises(ImageReadError) as err:
            read(tmp_path)
        assert str(err.value) == expected


def test_corrupt_file_beside_a_series_is_reported(tmp_path):
    ref = synthetic_volume(shape_zyx=(4, 6, 7))
    write_series(ref, tmp_path)
    corrupt_dicom(tmp_path / "zz.dcm")
    with pytest.warns(MedloopWarning) as record:
        image = read_dicom_series(tmp_path)
    assert [str(w.message) for w in record] == [f"{tmp_path}: skipped 1 DICOM file(s) that hold no readable image: zz.dcm"]
    np.testing.assert_array_equal(image.array, sitk.GetArrayFromImage(ref))


def test_regular_series_reads_without_warnings(tmp_path):
    write_series(synthetic_volume(shape_zyx=(4, 6, 7)), tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_dicom_series(tmp_path)


def test_uneven_gap_is_irregular_without_a_missing_slice(tmp_path):
    write_series(synthetic_volume(**AXIAL, shape_zyx=(4, 6, 7)), tmp_path)  # -12.75 … -5.25 mm
    shifted = synthetic_volume(shape_zyx=(1, 6, 7), origin=(-30.0, 12.5, -1.5), euler_xyz_deg=(0, 0, 0))
    write_series(shifted, tmp_path, prefix="late")  # 3.75 mm after the last: 1.5 gaps, not 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no missing-slice warning
        with pytest.raises(ImageReadError) as err:
            read_dicom_series(tmp_path)
    assert str(err.value) == (
        f"cannot read {tmp_path}: the slice spacing is irregular (gaps from 2.5 mm to 3.75 mm), so the "
        "slices would be mis-placed in a regular volume; pass --allow-irregular to resample them "
        "onto a regular grid"
    )


def test_mixed_orientations_are_refused(tmp_path):
    write_series(synthetic_volume(**AXIAL, shape_zyx=(3, 6, 7)), tmp_path)
    write_series(synthetic_volume(shape_zyx=(1, 6, 7)), tmp_path, prefix="tilted")
    with pytest.raises(ImageReadError) as err:
        read_dicom_series(tmp_path)
    assert str(err.value) == (
        f"cannot read {tmp_path}: the slices of series 'synthetic CT' have different orientations "
        "(ImageOrientationPatient), so they do not form one volume; open its files one at a time"
    )


def test_ambiguous_description(tmp_path):
    for uid in ("1.2.3.1", "1.2.3.2"):
        write_series(synthetic_volume(shape_zyx=(2, 4, 5)), tmp_path, uid=uid, description="T1", prefix=uid)
    with pytest.raises(ImageReadError) as err:
        read_dicom_series(tmp_path, series="T1")
    assert str(err.value) == (
        f"cannot read {tmp_path}: 2 series are described as 'T1': 1: T1 (1.2.3.1, 2 files); "
        "2: T1 (1.2.3.2, 2 files); choose one with --series by its number or SeriesInstanceUID"
    )
    assert read_dicom_series(tmp_path, series="2").metadata["SeriesInstanceUID"] == "1.2.3.2"
