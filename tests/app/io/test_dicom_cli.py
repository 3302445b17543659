"""DICOM folders through the CLI and the napari reader: series listing, --series, convert,
missing slices, one layer per series."""

from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk

from medloop.app.io.napari_reader import get_reader

from .dicom_synth import synthetic_volume, write_series


def test_convert_dicom_folder_equals_its_nifti(cli, tmp_path):
    volume = synthetic_volume()
    write_series(volume, tmp_path / "dicom")
    out = tmp_path / "ct.nii.gz"
    result = cli("convert", str(tmp_path / "dicom"), str(out))
    assert result.returncode == 0, result.stderr
    got = sitk.ReadImage(str(out))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(got), sitk.GetArrayFromImage(volume))
    for getter in ("GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(got, getter)(), getattr(volume, getter)(), atol=1e-6, rtol=0)


def test_info_lists_series_and_series_picks_one(cli, tmp_path):
    folder = tmp_path / "study"
    write_series(synthetic_volume(), folder, uid="1.2.3.1", description="T1 axial", modality="MR", prefix="a")
    write_series(synthetic_volume(shape_zyx=(5, 20, 24)), folder, uid="1.2.3.2", description="scout", modality="CT", prefix="b")
    listing = cli("info", str(folder))
    assert listing.returncode == 0
    assert listing.stdout.splitlines() == [
        f"{folder} holds 2 DICOM series; pick one with --series NUMBER|DESCRIPTION|UID",
        "  1: T1 axial  MR  12 files  1.2.3.1",
        "  2: scout  CT  5 files  1.2.3.2",
    ]
    one = json.loads(cli("info", "--json", "--series", "scout", str(folder)).stdout)
    assert one["shape"] == [5, 20, 24] and one["modality"] == "CT"
    refused = cli("convert", str(folder), str(tmp_path / "x.nii.gz"))
    assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1
    assert "it holds 2 DICOM series" in refused.stderr and "choose one with --series" in refused.stderr


def test_missing_slice_on_the_cli(cli, tmp_path):
    folder = tmp_path / "gap"
    write_series(synthetic_volume(), folder, skip=(5,))
    refused = cli("convert", str(folder), str(tmp_path / "x.nii.gz"))
    assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1
    assert "the slice spacing is irregular" in refused.stderr and "--allow-irregular" in refused.stderr
    assert not (tmp_path / "x.nii.gz").exists()
    accepted = cli("convert", "--allow-irregular", str(folder), str(tmp_path / "x.nii.gz"))
    assert accepted.returncode == 0, accepted.stderr
    warning, = accepted.stderr.splitlines()
    assert warning.startswith(f"medloop: warning: {folder}: 1 slice(s) missing")
    assert sitk.ReadImage(str(tmp_path / "x.nii.gz")).GetSize() == (24, 20, 12)


def test_napari_reader_opens_each_series_as_a_named_layer(tmp_path):
    folder = tmp_path / "study"
    write_series(synthetic_volume(), folder, uid="1.2.3.1", description="T1 axial", modality="MR", prefix="a")
    write_series(synthetic_volume(shape_zyx=(5, 20, 24)), folder, uid="1.2.3.2", description="scout", prefix="b")
    reader = get_reader(str(folder))
    assert reader is not None
    layers = reader(str(folder))
    assert [kwargs["name"] for _, kwargs, _ in layers] == ["T1 axial", "scout"]
    assert [data.shape for data, _, _ in layers] == [(12, 20, 24), (5, 20, 24)]
    np.testing.assert_allclose(layers[0][1]["scale"], (2.5, 0.6, 0.8), atol=1e-6)
