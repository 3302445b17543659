"""napari reader/writer contributions: geometry in, geometry out, errors as notifications."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from medloop import write_image
from medloop.app.io.napari_reader import NOTHING_READ, get_reader, read_layers, write_labels

from .synth import label_volume, oblique_volume


def test_reader_declines_files_it_does_not_own(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "empty_dir").mkdir()
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader(str(tmp_path / "empty_dir")) is None
    assert get_reader(str(tmp_path / "does-not-exist.xyz")) is None


def test_bad_file_becomes_a_notification_not_an_exception(tmp_path, monkeypatch):
    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00garbage")
    reader = get_reader(str(bad))
    assert reader is not None
    assert reader(str(bad)) == NOTHING_READ
    assert shown == [f"cannot read {bad}: the gzip stream is truncated (incomplete copy or download); copy the file again"]


def test_label_names_open_as_labels(tmp_path):
    write_image(label_volume(), tmp_path / "liver_mask.nii.gz")
    write_image(oblique_volume(), tmp_path / "ct.nii.gz")
    (_, _, mask_type), (_, ct_kwargs, ct_type) = read_layers([str(tmp_path / "liver_mask.nii.gz"), str(tmp_path / "ct.nii.gz")])
    assert (mask_type, ct_type) == ("labels", "image")
    assert ct_kwargs["name"] == "ct"


def test_writer_restores_source_geometry_exactly(tmp_path):
    source = write_image(oblique_volume(), tmp_path / "ct.nii.gz")
    (data, kwargs, _), = read_layers(str(source))
    edited = (np.asarray(data) > 100).astype(np.uint8)
    meta = {"scale": kwargs["scale"], "translate": (0, 0, 0), "affine": kwargs["affine"], "metadata": kwargs["metadata"]}
    out = write_labels(str(tmp_path / "seg.nrrd"), edited, meta)
    ref, seg = sitk.ReadImage(str(source)), sitk.ReadImage(out[0])
    for getter in ("GetSpacing", "GetOrigin", "GetDirection"):  # NRRD prints 16 digits: 1e-12
        np.testing.assert_allclose(getattr(seg, getter)(), getattr(ref, getter)(), atol=1e-12, rtol=0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(seg), edited)


def test_writer_uses_layer_transform_when_layer_was_not_opened_by_medloop(tmp_path):
    image = oblique_volume()
    kwargs = image.layer_kwargs()
    meta = {"scale": kwargs["scale"], "translate": (0, 0, 0), "affine": kwargs["affine"], "metadata": {}}
    out = write_labels(str(tmp_path / "seg.mha"), np.ones(image.shape, np.uint8), meta)
    seg = sitk.ReadImage(out[0])
    np.testing.assert_allclose(seg.GetOrigin(), image.origin, atol=1e-9)
    np.testing.assert_allclose(np.reshape(seg.GetDirection(), (3, 3)), image.direction, atol=1e-9)
    assert seg.GetSpacing() == pytest.approx(image.spacing, abs=1e-12)
