"""Bad input: each gives a medloop error whose exact message names the file and what to do;
the CLI prints it as one line and exits 2; nothing partial is left on disk."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from medloop import read_image, write_image
from medloop.app.errors import ImageMismatchError, ImageReadError, ImageWriteError
from medloop.app.io.validate import check_same_grid

from .synth import label_volume, oblique_volume


def make_bad_inputs(tmp_path):
    """(path, exact message) for every kind of bad file."""
    good = write_image(oblique_volume(), tmp_path / "good.nii.gz")
    raw = good.read_bytes()
    cases = []

    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    cases.append((empty, f"cannot read {empty}: the file is empty; re-export or copy it again"))

    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(raw[: len(raw) // 2])
    cases.append((truncated, f"cannot read {truncated}: the gzip stream is truncated (incomplete copy or download); copy the file again"))

    header = bytearray(gzip.decompress(raw))
    header[40:42] = (9).to_bytes(2, "little")  # dim[0] = 9: no such NIfTI dimensionality
    corrupt = tmp_path / "corrupt.nii"
    corrupt.write_bytes(bytes(header))
    cases.append((corrupt, f"cannot read {corrupt}: corrupt header: dim[0] = 9, must be 1 to 7; check that the file is complete and not damaged"))

    short = tmp_path / "short.nii"
    short.write_bytes(gzip.decompress(raw)[:-100])
    cases.append((short, f"cannot read {short}: the file is shorter than its header says (truncated); copy the file again"))

    from PIL import Image

    renamed = tmp_path / "photo.nii.gz"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(renamed, format="PNG")
    cases.append((renamed, f"cannot read {renamed}: the content is PNG but the extension says .nii.gz; rename it to .png"))

    text = tmp_path / "report.nrrd"
    text.write_text("Patient doing well.\n" * 20)
    cases.append((text, f"cannot read {text}: not a NRRD file (unrecognised or corrupt header); check that this is an image and that it is not damaged"))

    noise = tmp_path / "noise.mha"
    noise.write_bytes(np.random.default_rng(0).bytes(5000))
    cases.append((noise, f"cannot read {noise}: not a MetaImage file (unrecognised or corrupt header); check that this is an image and that it is not damaged"))

    unknown = tmp_path / "table.csv"
    unknown.write_text("a,b\n1,2\n")
    cases.append((unknown, None))

    import SimpleITK as sitk

    five = tmp_path / "five.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 4, 5, 6), np.float32)), str(five))
    cases.append((five, f"cannot read {five}: unsupported dimensionality (5-D, size 6 x 5 x 4 x 3 x 2); medloop reads 2-D and 3-D images - split it first"))

    nan = tmp_path / "nan.nii.gz"
    write_image(oblique_volume(dtype=np.float32).with_array(np.full((9, 11, 13), np.nan, np.float32)), nan)
    cases.append((nan, f"cannot read {nan}: all voxels are NaN (no image data); re-export the image from its source"))
    nan_nrrd = write_image(oblique_volume(dtype=np.float32).with_array(np.full((9, 11, 13), np.nan, np.float32)), tmp_path / "nan.nrrd")
    cases.append((nan_nrrd, f"cannot read {nan_nrrd}: all voxels are NaN (no image data); re-export the image from its source"))
    return cases


def test_every_bad_input_has_its_exact_message(tmp_path):
    for path, message in make_bad_inputs(tmp_path):
        with pytest.raises(ImageReadError) as err:
            read_image(path)
        if message is not None:
            assert str(err.value) == message
        else:
            assert str(err.value).startswith(f"cannot read {path}: ")
    with pytest.raises(ImageReadError, match=r"unsupported file type '\.csv'; supported: \.nii, \.nii\.gz"):
        read_image(tmp_path / "table.csv")


def test_cli_prints_one_line_and_exits_2_for_every_bad_input(cli, tmp_path):
    for path, message in make_bad_inputs(tmp_path):
        for args in (("info", str(path)), ("convert", str(path), str(tmp_path / "out.nrrd"))):
            result = cli(*args)
            assert result.returncode == 2, (args, result.stderr)
            assert len(result.stderr.splitlines()) == 1 and result.stdout == ""
            if message is not None:
                assert result.stderr == f"medloop: error: {message}\n"
    assert not (tmp_path / "out.nrrd").exists()


def test_label_map_that_does_not_fit_its_image(tmp_path):
    image = oblique_volume()
    labels = label_volume()
    check_same_grid(image, labels)  # same grid: no error
    shifted = labels.with_array(labels.array, origin=(labels.origin[0] + 0.5, *labels.origin[1:]), path="mask.nii.gz")
    with pytest.raises(ImageMismatchError) as err:
        check_same_grid(image, shifted)
    assert str(err.value) == (
        "label map mask.nii.gz does not match image the label map: origin -100.75 37.5 -12.125 vs -101.25 37.5 "
        "-12.125; resample the label map onto the image grid or open the image it was drawn on"
    )
    cropped = label_volume(shape=(9, 11, 12))
    with pytest.raises(ImageMismatchError, match=r"shape 9 x 11 x 12 vs 9 x 11 x 13"):
        check_same_grid(image, cropped)


def test_cli_gui_refuses_mismatched_labels_before_opening(cli, tmp_path):
    image = write_image(oblique_volume(), tmp_path / "ct.nii.gz")
    mask = write_image(label_volume(shape=(9, 11, 12)), tmp_path / "ct_mask.nii.gz")
    result = cli("gui", str(image), "--labels", str(mask))
    assert result.returncode == 2
    assert result.stderr == (
        f"medloop: error: label map {mask} does not match image {image}: shape 9 x 11 x 12 vs 9 x 11 x 13; "
        "resample the label map onto the image grid or open the image it was drawn on\n"
    )


def test_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path, monkeypatch):
    import SimpleITK as sitk

    target = tmp_path / "mask.nii.gz"
    target.write_bytes(b"previous version")

    def crash_midway(image, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", crash_midway)
    with pytest.raises(ImageWriteError, match=r"^cannot write .*mask\.nii\.gz: disk full$"):
        write_image(label_volume(), target)
    assert target.read_bytes() == b"previous version"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.nii.gz"]


def test_unwritable_targets(tmp_path):
    with pytest.raises(ImageWriteError) as err:
        write_image(label_volume(), tmp_path / "mask.jpg")
    assert str(err.value) == (
        f"cannot write {tmp_path / 'mask.jpg'}: unsupported output type '.jpg'; "
        "use one of .nii.gz, .nii, .nrrd, .mha, .tif, .tiff, .ome.tif, .ome.tiff"
    )
    with pytest.raises(ImageWriteError, match=r"folder .*missing does not exist; create it first"):
        write_image(label_volume(), tmp_path / "missing" / "mask.nii.gz")


def test_written_files_get_normal_permissions(tmp_path):
    """Atomic writes go through a private temporary file, but the result is as readable as any
    file the user would create (umask), not 0600."""
    import os

    mask = os.umask(0o022)
    try:
        path = write_image(label_volume(), tmp_path / "mask.nii.gz")
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644
