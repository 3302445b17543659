"""Real files read right (issue 14 section 7): the classes of defect a tester found with files
from other projects, each checked on a corpus made here (pydicom / SimpleITK / tifffile /
nibabel, seeded) or shipped inside pydicom's wheel (``pydicom.data``, read offline).

Every check compares with an independent decode (pydicom, nibabel, the array written) or asserts
the exact one-line message.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from medloop import read_image
from medloop.app.errors import ImageReadError, MedloopWarning
from medloop.app.io.napari_reader import get_reader, read_layers
from medloop.app.io.sniff import sniff

from .dicom_synth import write_dicom_wsi, write_pydicom_image

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")

ROOT = Path(__file__).resolve().parents[3]


def bundled(name: str, folder: Path) -> Path:
    """A copy of a file that ships inside pydicom's wheel (never downloaded)."""
    from pydicom.data import get_testdata_file

    source = get_testdata_file(name, download=False)
    assert source is not None, f"{name} is not bundled with this pydicom"
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(source, folder / name))


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    code = "import sys; from medloop.app.cli import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=ROOT)


# --------------------------------------------------------------------------------------------
# 1. Content sniffing: the DICM magic wins over a preamble that reads as a NIfTI header size


def test_dicom_whose_preamble_reads_348_is_dicom(tmp_path):
    frames = np.arange(12 * 10, dtype=np.uint16).reshape(12, 10)
    folder = tmp_path / "series"
    folder.mkdir()
    path = write_pydicom_image(folder / "a.dcm", frames, preamble=struct.pack("<i", 348))
    assert path.read_bytes()[:4] == struct.pack("<i", 348)
    assert sniff(path) == "dicom"
    np.testing.assert_array_equal(read_image(path).array, frames)
    assert get_reader(str(folder)) is read_layers
    bare = tmp_path / "IM0001"  # extension-less, as scanners write them
    shutil.copy(path, bare)
    assert get_reader(str(bare)) is read_layers
    np.testing.assert_array_equal(read_image(bare).array, frames)


def test_dicom_without_preamble_is_recognised(tmp_path):
    path = bundled("rtstruct.dcm", tmp_path)  # written without preamble and "DICM"
    assert path.read_bytes()[128:132] != b"DICM" and sniff(path) == "dicom"


# --------------------------------------------------------------------------------------------
# 2. DICOM whole-slide images go to the slide reader, at um scale


def test_dicom_whole_slide_reads_as_a_slide_in_microns(tmp_path):
    folder = tmp_path / "slide"
    expected = write_dicom_wsi(folder, size=(1024, 768), tile=256, mpp=0.5, levels=2)
    for source in (folder / "level0.dcm", folder / "level1.dcm", folder):
        image = read_image(source)
        assert image.unit == "um" and image.modality == "SM"
        assert image.spacing == (0.5, 0.5) and image.metadata["spacing_known"]
        assert [lv.shape for lv in image.pyramid] == [(1024, 768, 3), (512, 384, 3)]
        np.testing.assert_array_equal(np.asarray(image.pyramid[0]), expected)
        np.testing.assert_array_equal(np.asarray(image.pyramid[1]), expected[::2, ::2])
    ((levels, kwargs, kind),) = get_reader(str(folder))(str(folder))  # napari: one multiscale layer
    assert kind == "image" and kwargs["multiscale"] and kwargs["scale"] == (0.5, 0.5) and len(levels) == 2


def test_dicom_whole_slide_openslide_cannot_open_is_one_clear_line(tmp_path):
    import openslide

    folder = tmp_path / "slide"
    write_dicom_wsi(folder)
    path = folder / "level0.dcm"
    ds = pydicom.dcmread(path)
    del ds.TotalPixelMatrixRows  # required by the WSI module: OpenSlide refuses the file
    ds.save_as(path)
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    assert str(err.value) == (
        f"cannot read {path}: a DICOM whole-slide image that OpenSlide {openslide.__library_version__} "
        "cannot open (incomplete series or unsupported variant); keep all files of the slide's series "
        "in one folder, or export the slide as .svs or pyramidal .tif"
    )


# --------------------------------------------------------------------------------------------
# 3. `medloop info` proves that the tiles decode


def test_info_refuses_a_slide_whose_tiles_are_damaged(tmp_path):
    import tifffile

    from .slide_synth import write_synthetic_slide

    good = write_synthetic_slide(tmp_path / "good.svs", size=(2048, 3072), mpp=0.25, seed=1).path
    assert cli("info", str(good)).returncode == 0
    damaged = tmp_path / "damaged.svs"
    damaged.write_bytes(good.read_bytes())
    with tifffile.TiffFile(damaged) as tif:
        offsets = list(tif.pages[0].dataoffsets)
    with open(damaged, "r+b") as f:
        for offset in offsets:  # every level-0 tile; the header and other levels stay intact
            f.seek(offset)
            f.write(b"\0" * 64)
    done = cli("info", str(damaged))
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"medloop: error: cannot read {damaged}: damaged tile data at level 0 near (")
    assert lines[0].endswith("; copy the file again or re-export it from the scanner software")


# --------------------------------------------------------------------------------------------
# 4. Pixels exactly as pydicom decodes them, or a one-line refusal


def test_one_bit_frames_are_zero_and_one(tmp_path):
    liver = bundled("liver_1frame.dcm", tmp_path)  # a 1-bit DICOM SEG frame
    image = read_image(liver)
    np.testing.assert_array_equal(image.array, pydicom.dcmread(liver).pixel_array)
    assert image.array.max() == 1
    frames = np.random.default_rng(4).integers(0, 2, size=(3, 16, 24), dtype=np.uint8)
    seg = write_pydicom_image(tmp_path / "seg.dcm", frames, bits=1)
    image = read_image(seg)
    assert image.dtype == np.uint8
    np.testing.assert_array_equal(image.array, frames)
    np.testing.assert_array_equal(image.array, pydicom.dcmread(seg).pixel_array)


@pytest.mark.parametrize(
    "declared, said",
    [("2", "2"), ("4", "4"), ("2.5", "malformed ('2.5')"), ("0", "malformed ('0')")],
)
def test_number_of_frames_that_disagrees_with_the_pixels_is_refused(tmp_path, declared, said):
    frames = np.arange(3 * 8 * 6, dtype=np.uint16).reshape(3, 8, 6)
    path = write_pydicom_image(tmp_path / "multi.dcm", frames, number_of_frames=declared)
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    assert str(err.value) == (
        f"cannot read {path}: NumberOfFrames is {said} but the pixel data holds 3 frame(s); "
        "correct NumberOfFrames (e.g. with dcmodify) or re-export the file"
    )
    right = write_pydicom_image(tmp_path / "right.dcm", frames, number_of_frames="3")
    np.testing.assert_array_equal(read_image(right).array, frames)


@pytest.mark.parametrize("declared, said", [("2", "2"), ("7", "7"), ("2.5", "malformed ('2.5')")])
def test_number_of_frames_is_checked_for_compressed_pixel_data_too(tmp_path, declared, said):
    from pydicom.uid import RLELossless

    frames = np.random.default_rng(5).integers(0, 4000, size=(3, 8, 6)).astype(np.uint16)
    path = write_pydicom_image(tmp_path / "rle.dcm", frames)
    ds = pydicom.dcmread(path)
    ds.compress(RLELossless, encoding_plugin="pydicom")  # encapsulated: frames counted by the offset table
    ds.save_as(path)
    np.testing.assert_array_equal(read_image(path).array, frames)
    ds.NumberOfFrames = None
    ds.add_new(0x00280008, "IS", declared)
    ds.save_as(path)
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    assert str(err.value) == (
        f"cannot read {path}: NumberOfFrames is {said} but the pixel data holds 3 frame(s); "
        "correct NumberOfFrames (e.g. with dcmodify) or re-export the file"
    )


def test_compressed_frames_without_offset_table_are_bounded_by_their_fragments(tmp_path):
    from pydicom.encaps import encapsulate, generate_frames
    from pydicom.uid import RLELossless

    frames = np.random.default_rng(6).integers(0, 4000, size=(3, 8, 6)).astype(np.uint16)
    path = write_pydicom_image(tmp_path / "rle.dcm", frames)
    ds = pydicom.dcmread(path)
    ds.compress(RLELossless, encoding_plugin="pydicom")
    ds.PixelData = encapsulate(list(generate_frames(ds.PixelData, number_of_frames=3)), has_bot=False)
    ds.NumberOfFrames = 4
    ds.save_as(path)
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    assert str(err.value) == (
        f"cannot read {path}: NumberOfFrames is 4 but the pixel data holds at most 3 frame(s); "
        "correct NumberOfFrames (e.g. with dcmodify) or re-export the file"
    )


@pytest.mark.parametrize(
    "name",
    [
        "SC_rgb_rle_32bit.dcm", "SC_rgb_rle_32bit_2frame.dcm", "SC_rgb_rle_16bit.dcm",
        "SC_rgb_rle_16bit_2frame.dcm",  # multi-byte RLE colour
        "rtdose_expb.dcm",  # 32-bit big-endian
    ],
)
def test_what_gdcm_decodes_wrong_equals_pydicom(tmp_path, name):
    path = bundled(name, tmp_path)
    ref = pydicom.dcmread(path).pixel_array
    image = read_image(path)
    assert image.dtype == ref.dtype.newbyteorder("=") and image.shape == ref.shape
    np.testing.assert_array_equal(image.array, ref)


# --------------------------------------------------------------------------------------------
# 5. Decoder chatter stays off stderr


def test_decoder_chatter_never_reaches_stderr(tmp_path):
    # pydicom's 12-bit JPEG makes libjpeg print "Unsupported JPEG data precision 12" lines.
    jpeg = bundled("JPEG-lossy.dcm", tmp_path)
    done = cli("info", str(jpeg))
    assert done.returncode == 0 and done.stderr == ""
    assert read_image(jpeg).metadata["decoder_messages"]  # kept, not printed
    raw = jpeg.read_bytes()
    start = raw.find(b"\xff\xd8")
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(raw[: start + 2000] + b"\0" * 100 + raw[start + 2100 :])
    done = cli("info", str(broken))
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith(f"medloop: error: cannot read {broken}: not a valid DICOM file (")


# --------------------------------------------------------------------------------------------
# 6. Valid files are not "corrupt"


def _volume(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(5, 6, 7)).astype(np.float32)


def test_nifti2_reads_like_nifti1(tmp_path):
    data = _volume()
    affine = np.array([[-1.5, 0, 0, 90.0], [0, 2.0, 0.3, -126.0], [0, -0.2, 2.5, -72.0], [0, 0, 0, 1]])
    affine[:3, 1:3] = np.linalg.qr(affine[:3, 1:3])[0] * [2.0, 2.5]  # orthogonal columns
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "one.nii.gz")
    nib.save(nib.Nifti2Image(data, affine), tmp_path / "two.nii.gz")
    nib.save(nib.Nifti2Image(data, affine), tmp_path / "two.nii")
    one = read_image(tmp_path / "one.nii.gz")
    for name in ("two.nii.gz", "two.nii"):
        two = read_image(tmp_path / name)
        np.testing.assert_array_equal(two.array, one.array)
        np.testing.assert_allclose(two.spacing, one.spacing, atol=1e-6)
        np.testing.assert_allclose(two.origin, one.origin, atol=1e-4)
        np.testing.assert_allclose(two.direction, one.direction, atol=1e-6)
    np.testing.assert_array_equal(one.array, data.transpose(2, 1, 0))  # nibabel is (x, y, z)


def test_sheared_sform_is_orthonormalised_with_a_warning(tmp_path):
    data = _volume(1)
    sheared = np.array([[2.0, 0.8, 0, 10.0], [0, 3.0, 0, 20.0], [0, 0, 4.0, 30.0], [0, 0, 0, 1]])
    img = nib.Nifti1Image(data, sheared)
    img.set_qform(None, code=0)
    img.set_sform(sheared, code=2)
    path = tmp_path / "sheared.nii"
    nib.save(img, path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = read_image(path)
    m = sheared[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    u, _, vt = np.linalg.svd(m / spacing)
    corners = np.array(np.meshgrid([0, 4], [0, 5], [0, 6], indexing="ij")).reshape(3, -1)  # (x, y, z) corners
    shift = np.max(np.linalg.norm(m @ corners - ((u @ vt) * spacing) @ corners, axis=0))
    messages = [str(w.message) for w in caught if issubclass(w.category, MedloopWarning)]
    assert messages == [
        f"{path}: its sform is sheared (not orthonormal); read with the nearest orthonormal direction "
        f"and the sform's column lengths as spacing, which moves voxels by up to {shift:.3g} mm"
    ]
    np.testing.assert_allclose(image.spacing, spacing, atol=1e-6)
    np.testing.assert_allclose(image.direction @ image.direction.T, np.eye(3), atol=1e-9)
    np.testing.assert_allclose(image.origin, (-10.0, -20.0, 30.0), atol=1e-6)  # RAS -> LPS
    np.testing.assert_array_equal(image.array, data.transpose(2, 1, 0))


def test_sheared_sform_beside_a_qform_says_the_qform_was_used(tmp_path):
    data = _volume(3)
    plain = np.diag([2.0, 3.0, 4.0, 1.0])
    sheared = plain.copy()
    sheared[0, 1] = 0.8  # x moves 0.8 mm per y step: up to 0.8 * 5 = 4 mm at y = 5
    img = nib.Nifti1Image(data, sheared)
    img.set_qform(plain, code=1)
    img.set_sform(sheared, code=2)
    path = tmp_path / "both.nii.gz"
    nib.save(img, path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = read_image(path)
    assert [str(w.message) for w in caught if issubclass(w.category, MedloopWarning)] == [
        f"{path}: its sform is sheared (not orthonormal), so it was read with its qform instead; "
        "the sform would place voxels up to 4 mm elsewhere"
    ]
    np.testing.assert_allclose(image.spacing, (2.0, 3.0, 4.0), atol=1e-6)
    np.testing.assert_allclose(image.direction, np.diag([-1.0, -1.0, 1.0]), atol=1e-6)


def test_analyze_pair_reads_and_a_lone_hdr_says_what_is_missing(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    nib.save(nib.AnalyzeImage(data, np.diag([2.0, 3.0, 4.0, 1.0])), tmp_path / "pair.hdr")
    for name in ("pair.hdr", "pair.img"):
        np.testing.assert_array_equal(read_image(tmp_path / name).array, data.transpose(2, 1, 0))
    lone = tmp_path / "lone.hdr"
    shutil.copy(tmp_path / "pair.hdr", lone)
    with pytest.raises(ImageReadError) as err:
        read_image(lone)
    assert str(err.value) == (
        f"cannot read {lone}: the .img beside it is missing (an Analyze/NIfTI pair needs both "
        "lone.hdr and lone.img); copy the .img file too"
    )


@pytest.mark.parametrize(
    "name, kind",
    [
        ("rtplan.dcm", "RT Plan Storage"),
        ("rtstruct.dcm", "RT Structure Set Storage"),
        ("test-SR.dcm", "Comprehensive SR Storage"),
        ("waveform_ecg.dcm", "12-lead ECG Waveform Storage"),
    ],
)
def test_dicom_objects_without_pixels_contain_no_image(tmp_path, name, kind):
    path = bundled(name, tmp_path)
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    assert str(err.value) == (
        f"cannot read {path}: this DICOM file contains no image ({kind}); open a DICOM image file or series instead"
    )


# --------------------------------------------------------------------------------------------
# 7. NaN kept; pyramids convert


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_voxels_stay_nan(tmp_path, suffix, dtype):
    data = _volume(2).astype(dtype)
    data[1, 2, 3] = data[4, 0, 0] = np.nan
    path = tmp_path / f"nan{suffix}"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    image = read_image(path)
    expected = np.asarray(nib.load(path).dataobj).transpose(2, 1, 0)
    assert np.isnan(image.array).sum() == 2
    np.testing.assert_array_equal(image.array, expected)  # NaN compare equal here


def test_convert_writes_a_slide_pyramid_tile_by_tile(tmp_path, monkeypatch):
    from medloop.app.cli import main
    from medloop.app.io import slide as slide_module

    from .slide_synth import write_synthetic_slide

    source = write_synthetic_slide(tmp_path / "in.svs", size=(1536, 2560), mpp=0.25, seed=3).path
    original = read_image(source)
    largest = []
    real = slide_module.compute_here

    def recording(*arrays):
        out = real(*arrays)
        largest.extend(int(np.prod(a.shape)) for a in out)
        return out

    monkeypatch.setattr(slide_module, "compute_here", recording)
    assert main(["convert", str(source), str(tmp_path / "out.tif")]) == 0
    assert max(largest) <= 512 * 512 * 3  # one tile at a time, never a level
    copy = read_image(tmp_path / "out.tif")
    assert copy.unit == "um" and copy.spacing == pytest.approx((0.25, 0.25))
    assert [lv.shape for lv in copy.pyramid] == [lv.shape for lv in original.pyramid]
    for a, b in zip(copy.pyramid, original.pyramid):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    monkeypatch.setattr(slide_module, "compute_here", real)
    assert main(["convert", str(source), str(tmp_path / "level1.tif"), "--level", "1"]) == 0
    level1 = read_image(tmp_path / "level1.tif")
    assert level1.shape == (768, 1280, 3) and level1.spacing == pytest.approx((0.5, 0.5)) and level1.unit == "um"
    np.testing.assert_array_equal(level1.array, np.asarray(original.pyramid[1]))


def test_convert_level_out_of_range_is_one_line(tmp_path):
    from .slide_synth import write_synthetic_slide

    source = write_synthetic_slide(tmp_path / "in.svs", size=(1536, 2560), mpp=0.25, seed=3).path
    done = cli("convert", str(source), str(tmp_path / "x.tif"), "--level", "9")
    assert done.returncode == 2
    assert done.stderr == (
        f"medloop: error: cannot read level 9 of {source}: it has 4 level(s) (0: 2560 x 1536, 1: 1280 x 768, "
        "2: 640 x 384, 3: 320 x 192); "
        "choose one of them\n"
    )


# --------------------------------------------------------------------------------------------
# 8. The napari reader claims only what medloop reads


def test_reader_patterns_claim_only_medloop_formats(tmp_path):
    from fnmatch import fnmatch

    from medloop.app.manifest import manifest_dict

    (reader,) = manifest_dict()["contributions"]["readers"]
    patterns = reader["filename_patterns"]
    assert "*" not in patterns and reader["accepts_directories"]
    claims = lambda name: any(fnmatch(name, p) for p in patterns)  # noqa: E731 - as npe2 matches
    assert not any(claims(n) for n in ("notes.txt", "table.csv", "movie.mp4", "data.h5"))
    assert all(claims(n) for n in ("ct.nii.gz", "ct.nii", "pair.hdr", "slice.dcm", "slide.svs", "x.ome.tif"))
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    bare = tmp_path / "README"
    bare.write_text("not DICOM either")
    assert get_reader(str(text)) is None and get_reader(str(bare)) is None
