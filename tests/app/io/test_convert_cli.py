"""`medloop convert` and `medloop info` on volumes: data bit-exact, geometry within 1e-6."""

from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk

from medloop import read_image, write_image

from .synth import oblique_volume


def test_convert_nifti_to_nrrd_and_back_is_exact(cli, tmp_path):
    source = write_image(oblique_volume(dtype=np.int16), tmp_path / "ct.nii.gz")
    nrrd, again = tmp_path / "ct.nrrd", tmp_path / "again.nii.gz"
    for a, b in ((source, nrrd), (nrrd, again)):
        result = cli("convert", str(a), str(b))
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"wrote {b}\n"
    ref, out = sitk.ReadImage(str(source)), sitk.ReadImage(str(again))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), sitk.GetArrayFromImage(ref))
    for getter in ("GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(out, getter)(), getattr(ref, getter)(), atol=1e-6, rtol=0)
    via_nrrd = read_image(nrrd)
    np.testing.assert_allclose(via_nrrd.direction, oblique_volume().direction, atol=1e-6)


def test_convert_to_tiff_and_back_keeps_geometry(cli, tmp_path):
    source = write_image(oblique_volume(dtype=np.uint16), tmp_path / "vol.mha")
    tif, mha = tmp_path / "vol.tif", tmp_path / "back.mha"
    assert cli("convert", str(source), str(tif)).returncode == 0
    assert cli("convert", str(tif), str(mha)).returncode == 0
    a, b = read_image(source), read_image(mha)
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_allclose(b.affine_xyz(), a.affine_xyz(), atol=1e-6)


def test_info_json_reports_oblique_geometry(cli, tmp_path):
    image = oblique_volume()
    path = write_image(image, tmp_path / "vol.nrrd")
    record = json.loads(cli("info", "--json", str(path)).stdout)
    np.testing.assert_allclose(record["direction"], image.direction, atol=1e-6)
    np.testing.assert_allclose(record["spacing"], image.spacing, atol=1e-6)
    assert record["shape"] == [9, 11, 13] and record["axes"] == ["z", "y", "x"]
