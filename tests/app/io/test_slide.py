"""Whole slides: lazy pyramid reading through OpenSlide, tiled label and RGB pyramid writing.

All data is synthetic and seeded (``slide_synth``); peak memory is measured as the growth of
the peak resident set of a fresh subprocess, so C allocations (OpenSlide, zlib) count too.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile

from medloop.app.errors import ImageReadError, ImageWriteError
from medloop.app.io.slide import (
    LabelPyramidCancelled,
    PyramidCancelled,
    is_slide,
    pyramid_shapes,
    read_slide,
    write_label_pyramid,
    write_rgb_pyramid,
)

from .slide_synth import SyntheticSlide, write_synthetic_slide

openslide = pytest.importorskip("openslide")

ROOT = Path(__file__).resolve().parents[3]  # the repository (tests/ is a package)
MB = 2**20


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> dict[str, SyntheticSlide]:
    folder = tmp_path_factory.mktemp("slides")
    return {
        "aperio": write_synthetic_slide(folder / "aperio.svs", size=(2048, 3072), mpp=0.25, seed=1),
        "generic": write_synthetic_slide(
            folder / "generic.tif", size=(1536, 2560), mpp=0.5, seed=2, flavor="generic"
        ),
    }


@pytest.fixture(scope="module")
def big_slide(tmp_path_factory) -> SyntheticSlide:
    """40000 x 40000 RGB (4.8 GB decoded), written tile by tile in about two seconds."""
    folder = tmp_path_factory.mktemp("big")
    return write_synthetic_slide(folder / "big.svs", size=(40000, 40000), pattern="blocks", seed=5)


def run_measured(code: str, **values) -> dict:
    """Run ``code`` in a fresh interpreter; it sets ``result`` (a dict) after ``start()``.

    Returns ``result`` plus ``peak_extra_mb``: how far the peak resident set (``VmHWM``) grew
    past the resident set at ``start()`` (after imports and setup).
    """
    script = textwrap.dedent(
        """
        import json, resource, sys
        sys.path.insert(0, {root!r})
        values = json.loads({values!r})
        def status_mb(field):  # Linux: this process's own counters (ru_maxrss survives exec)
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        return int(line.split()[1]) / 1024
        def peak_mb():
            if sys.platform.startswith("linux"):
                return status_mb("VmHWM")
            r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            return r / 2**20 if sys.platform == "darwin" else r / 1024
        base = None
        def start():
            global base
            try:  # reset the high-water mark to the current resident set
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass
            base = status_mb("VmRSS") if sys.platform.startswith("linux") else peak_mb()
        """
    ).format(root=str(ROOT), values=json.dumps(values))
    script += textwrap.dedent(code)
    script += "\nresult['peak_extra_mb'] = peak_mb() - base\nprint(json.dumps(result))\n"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------
# read_slide


@pytest.mark.parametrize("flavor", ["aperio", "generic"])
def test_levels_chunks_and_spacing(slides, flavor):
    synth = slides[flavor]
    image = read_slide(synth.path)
    shapes = [tuple(level.shape) for level in image.pyramid]
    assert shapes == [(h, w, 3) for h, w in synth.level_shapes]
    assert image.array is image.pyramid[0] and image.is_multiscale
    assert all(level.dtype == np.uint8 for level in image.pyramid)
    assert all(level.chunksize == (512, 512, 3) for level in image.pyramid if min(level.shape[:2]) >= 512)
    assert image.spacing == (synth.mpp, synth.mpp) and image.unit == "um"
    assert image.metadata["spacing_known"] is True
    assert image.modality == "SM" and image.channel_axis and image.origin == (0.0, 0.0)
    assert image.metadata["level_count"] == len(synth.level_shapes)
    assert image.metadata["level_downsamples"] == tuple(float(2**k) for k in range(len(synth.level_shapes)))
    assert image.metadata["vendor"] == {"aperio": "aperio", "generic": "generic-tiff"}[flavor]
    if flavor == "aperio":
        assert image.metadata["objective_power"] == 40.0
    kwargs = image.layer_kwargs()
    assert kwargs["multiscale"] and kwargs["rgb"] and kwargs["scale"] == (synth.mpp, synth.mpp)
    assert len(image.layer_data()) == len(synth.level_shapes)


def pyramid_of(path: Path, construction: str) -> list:
    """The levels as read_slide builds them ("tasks"), or through the from_array fallback."""
    from medloop.app.io import slide as slide_mod

    image = read_slide(path)
    if construction == "tasks":
        return list(image.pyramid)
    handle = slide_mod._SlideHandle(str(path))
    return [
        slide_mod._level_array_from_reader(handle, k, level.shape[:2], ds, f"fallback-{k}")
        for k, (level, ds) in enumerate(zip(image.pyramid, image.metadata["level_downsamples"]))
    ]


@pytest.mark.parametrize("construction", ["tasks", "from_array"])
@pytest.mark.parametrize("flavor", ["aperio", "generic"])
def test_regions_equal_what_was_written(slides, flavor, construction):
    synth = slides[flavor]
    levels = pyramid_of(synth.path, construction)
    # level 0, across chunk boundaries, and the bottom-right edge chunk
    expect = synth.expected
    np.testing.assert_array_equal(levels[0][700:1300, 900:1700].compute(), expect(0, 700, 900, 600, 800))
    h, w = synth.level_shapes[0]
    np.testing.assert_array_equal(levels[0][h - 37 :, w - 600 :].compute(), expect(0, h - 37, w - 600, 37, 600))
    # a lower level, and the whole lowest level
    np.testing.assert_array_equal(levels[2][100:300, 50:600].compute(), synth.expected(2, 100, 50, 200, 550))
    lh, lw = synth.level_shapes[-1]
    np.testing.assert_array_equal(levels[-1].compute(), synth.expected(len(levels) - 1, 0, 0, lh, lw))
    # strided, reversed and integer indexing (dask fuses these into the region reads)
    full1 = synth.expected(1, 0, 0, *synth.level_shapes[1])
    np.testing.assert_array_equal(levels[1][::-3, 5::7].compute(), full1[::-3, 5::7])
    np.testing.assert_array_equal(levels[1][17, 5:900, 1].compute(), full1[17, 5:900, 1])


def slide_readers() -> tuple[type, ...]:
    """The two pixel readers behind read_slide's levels: OpenSlide's and tifffile's."""
    from medloop.app.io import slide as slide_mod
    from medloop.app.io import slide_tiff

    return slide_mod._SlideHandle, slide_tiff._TiffHandle


def counting_read(original, reads: list):
    """``read_rgb`` that records (level, y, x, h, w) of every read in ``reads``."""

    def counting(self, level, downsample, y, x, h, w):
        reads.append((level, y, x, h, w))
        return original(self, level, downsample, y, x, h, w)

    return counting


def test_only_the_needed_chunks_are_read(slides, monkeypatch):
    """Opening reads no pixels; a region reads just the chunks it overlaps, each once."""
    reads = []
    for cls in slide_readers():
        monkeypatch.setattr(cls, "read_rgb", counting_read(cls.read_rgb, reads))
    image = read_slide(slides["aperio"].path)
    assert reads == []
    image.pyramid[0][100:200, 600:1100].compute()
    assert sorted(reads) == [(0, 0, 512, 512, 512), (0, 0, 1024, 512, 512)]
    reads.clear()
    image.pyramid[-1][:512, :512].compute()  # what napari shows first
    assert reads == [(3, 0, 0, 256, 384)]


def test_spacing_falls_back_to_one_when_the_file_has_none(tmp_path):
    synth = write_synthetic_slide(tmp_path / "nompp.tif", size=(1024, 1536), mpp=None, flavor="generic")
    image = read_slide(synth.path)
    assert "openslide.mpp-x" not in openslide.OpenSlide(str(synth.path)).properties
    assert image.spacing == (1.0, 1.0) and image.metadata["spacing_known"] is False
    assert image.metadata["level_count"] == 3


def test_napari_layer_reads_only_the_lowest_level(big_slide, monkeypatch):
    """A napari multiscale layer over the 40000^2 slide: placed in microns, and making it (with
    its thumbnail) reads chunks of the lowest level only."""
    from napari.layers import Image

    reads = []
    for cls in slide_readers():
        monkeypatch.setattr(cls, "read_rgb", counting_read(cls.read_rgb, reads))
    image = read_slide(big_slide.path)
    layer = Image(image.layer_data(), **image.layer_kwargs())
    assert layer.multiscale and layer.rgb
    assert [tuple(s) for s in layer.level_shapes] == [shape for shape in big_slide.level_shapes]
    assert tuple(layer.scale) == (0.25, 0.25)
    levels_read = [r[0] for r in reads]
    assert set(levels_read) == {len(big_slide.level_shapes) - 1} and len(levels_read) <= 4


def test_levels_survive_pickling(slides):
    """A level can go to another process (dask.distributed): the handle reopens from the path."""
    synth = slides["aperio"]
    level = pickle.loads(pickle.dumps(read_slide(synth.path).pyramid[1]))
    np.testing.assert_array_equal(level[600:700, 1000:1200].compute(), synth.expected(1, 600, 1000, 100, 200))


def test_outside_pixels_are_composited_onto_white(slides):
    """OpenSlide returns transparent pixels outside the level; both read paths give white there."""
    from medloop.app.io import slide as slide_mod

    synth = slides["generic"]
    reader = slide_mod._SlideHandle(str(synth.path))
    assert reader._raw is not None  # the fast path is available with this openslide-python
    h, w = synth.level_shapes[0]
    region = reader.read_rgb(0, 1.0, h - 10, w - 20, 30, 40)
    assert region.shape == (30, 40, 3)
    np.testing.assert_array_equal(region[:10, :20], synth.expected(0, h - 10, w - 20, 10, 20))
    assert (region[10:] == 255).all() and (region[:, 20:] == 255).all()
    rgba = np.asarray(reader.slide.read_region((w - 20, h - 10), 0, (40, 30)))
    public = slide_mod._composite_straight(rgba)
    np.testing.assert_array_equal(public, region)


def test_big_slide_first_tiles_use_little_memory(big_slide):
    """Open a 40000^2 slide (4.8 GB at level 0) and compute what napari shows first."""
    result = run_measured(
        """
        import numpy as np
        from medloop.app.io.slide import read_slide
        import dask.array  # noqa: F401 (import cost before start())
        start()
        image = read_slide(values["path"])
        low = image.pyramid[-1][:512, :512].compute()
        top = image.pyramid[0][20480:20992, 16384:16896].compute()
        result = {"levels": len(image.pyramid), "low": low.tolist()[::97], "top_mean": float(top.mean()),
                  "shape0": list(image.shape)}
        """,
        path=str(big_slide.path),
    )
    assert result["shape0"] == [40000, 40000, 3] and result["levels"] == 7
    k = len(big_slide.level_shapes) - 1
    low = np.asarray(result["low"], dtype=np.uint8)
    assert np.array_equal(low, big_slide.expected(k, 0, 0, 512, 512)[::97])
    assert result["top_mean"] == pytest.approx(big_slide.expected(0, 20480, 16384, 512, 512).mean())
    print(f"peak extra memory opening a 40000^2 slide + 2 tiles: {result['peak_extra_mb']:.1f} MB")
    assert result["peak_extra_mb"] < 300


def test_corrupt_svs_is_an_image_read_error(tmp_path):
    path = tmp_path / "corrupt.svs"
    path.write_bytes(np.random.default_rng(3).bytes(200_000))
    with pytest.raises(ImageReadError) as info:
        read_slide(path)
    assert str(info.value) == (
        f"cannot read {path}: not a whole-slide image OpenSlide recognises (corrupt, incomplete or "
        "an unsupported variant); copy the file again, or export it from the scanner software "
        "as .svs or pyramidal .tif"
    )
    assert not is_slide(path)


def test_missing_slide_is_an_image_read_error(tmp_path):
    with pytest.raises(ImageReadError, match=r"no such file; check the path"):
        read_slide(tmp_path / "gone.svs")


def test_damaged_tile_fails_when_computed(slides, tmp_path):
    """Opening reads only headers; a damaged tile becomes an ImageReadError when it is read."""
    path = tmp_path / "damaged.svs"
    path.write_bytes(slides["aperio"].path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].dataoffsets[7]  # tile row 1, column 1 of level 0
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\0" * 64)
    level0 = read_slide(path).pyramid[0]
    assert level0[:512, :512].compute().shape == (512, 512, 3)  # other tiles still read
    damaged = r"^cannot read .*damaged tile data at level 0 near \(512, 512\)"
    with pytest.raises(ImageReadError, match=damaged):
        level0[512:1024, 512:1024].compute()


# --------------------------------------------------------------------------------------------
# is_slide


def test_is_slide(slides, tmp_path):
    from PIL import Image

    assert is_slide(slides["aperio"].path) and is_slide(slides["generic"].path)
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((64, 64, 3), np.uint8), photometric="rgb")
    tiled_small = tmp_path / "tiled_small.tif"  # tiled, one level, small: OpenSlide could, tifffile should
    tifffile.imwrite(tiled_small, np.zeros((600, 800, 3), np.uint8), photometric="rgb", tile=(256, 256))
    tiled_large = tmp_path / "tiled_large.tif"  # one level but wider than 10000 px
    tifffile.imwrite(tiled_large, np.zeros((256, 10240, 3), np.uint8), photometric="rgb", tile=(256, 256), compression="zlib")
    grey_large = tmp_path / "grey_large.tif"  # a grey pyramid keeps its exact values: tifffile reads it
    tifffile.imwrite(grey_large, np.zeros((256, 10240), np.uint8), tile=(256, 256), compression="zlib")
    png = tmp_path / "image.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(png)
    renamed = tmp_path / "image.svs"
    renamed.write_bytes(png.read_bytes())
    assert openslide.OpenSlide.detect_format(str(tiled_small)) == "generic-tiff"
    verdicts = [is_slide(p) for p in (plain, tiled_small, tiled_large, grey_large, png, renamed)]
    assert verdicts == [False, False, True, False, False, False]
    assert not is_slide(tmp_path / "missing.svs")


# --------------------------------------------------------------------------------------------
# write_label_pyramid


def dask_labels(shape, chunks=1000, dtype=np.uint8):
    """A lazy label map with 5 classes in slanted bands (never materialised as a whole)."""
    import dask.array as da

    def classes(y, x):
        return ((y // 300 + x // 700 + (x * y) // 1_000_000) % 5).astype(dtype)

    return da.fromfunction(classes, shape=shape, chunks=chunks, dtype=np.int32)


def test_label_pyramid_round_trip(tmp_path):
    labels = dask_labels((3000, 5000))
    expected = labels.compute()
    path = tmp_path / "labels.tif"
    calls = []
    assert write_label_pyramid(labels, path, (0.5, 0.25), progress=lambda d, t: calls.append((d, t))) == path
    assert os.listdir(tmp_path) == ["labels.tif"]  # no temporary or scratch file left

    shapes = [(3000, 5000), (1500, 2500), (750, 1250), (375, 625), (188, 313)]
    assert pyramid_shapes((3000, 5000), 512) == shapes
    total = sum(-(-h // 512) * -(-w // 512) for h, w in shapes)
    assert calls[-1] == (total, total) and [d for d, _ in calls] == list(range(1, total + 1))

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        assert [level.shape for level in series.levels] == shapes
        for k, level in enumerate(series.levels):
            np.testing.assert_array_equal(level.asarray(), expected[:: 2**k, :: 2**k])
        page = tif.pages[0]
        assert page.is_tiled and (page.tilelength, page.tilewidth) == (512, 512)
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert page.get_resolution(tifffile.RESUNIT.CENTIMETER) == pytest.approx((1e4 / 0.5, 1e4 / 0.25))

    slide = openslide.OpenSlide(str(path))
    assert slide.level_count == len(shapes)
    assert slide.level_dimensions == tuple((w, h) for h, w in shapes)
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5)
    assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(0.25)
    for k in (0, 1):
        rgba = np.asarray(slide.read_region((1000 * 2**k, 300 * 2**k), k, (700, 400)))
        np.testing.assert_array_equal(rgba[..., 0], expected[:: 2**k, :: 2**k][300:700, 1000:1700])
    # medloop reads it back as exact integer labels (not as 8-bit RGB) with the written spacing
    from medloop import read_image

    assert not is_slide(path)
    back = read_image(path)
    np.testing.assert_array_equal(back.array, expected)
    assert back.spacing == pytest.approx((0.5, 0.25)) and back.unit == "um"


@pytest.mark.parametrize("dtype", ["bool", "uint16", ">u2", "int32"])
def test_label_pyramid_keeps_values_of_any_integer_type(tmp_path, dtype):
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 2 if dtype == bool else 40000, size=(700, 1100)).astype(dtype)
    path = write_label_pyramid(labels, tmp_path / "l.tif", (1.0, 1.0), tile=256, min_level_size=256)
    with tifffile.TiffFile(path) as tif:
        levels = tif.series[0].levels
        assert [lv.shape for lv in levels] == [(700, 1100), (350, 550), (175, 275), (88, 138)]
        for k, level in enumerate(levels):
            np.testing.assert_array_equal(level.asarray(), labels[:: 2**k, :: 2**k].astype(level.dtype))
        assert levels[0].dtype == (np.uint8 if dtype == bool else dtype.newbyteorder("="))


def test_label_pyramid_writing_uses_bounded_memory(tmp_path):
    """A 20000^2 label map (400 MB as uint8, 3.2 GB as the int64 it is computed from)."""
    path = tmp_path / "big_labels.tif"
    result = run_measured(
        """
        import time
        import dask
        from medloop.app.io.slide import write_label_pyramid
        from tests.app.io.test_slide import dask_labels
        labels = dask_labels((20000, 20000), chunks=1024)
        dask.config.set(num_workers=2)  # the input's own temporaries scale with the thread count
        start()
        t = time.perf_counter()
        write_label_pyramid(labels, values["path"], (0.5, 0.5))
        result = {"seconds": time.perf_counter() - t}
        """,
        path=str(path),
    )
    print(f"peak extra memory writing a 20000^2 label pyramid: {result['peak_extra_mb']:.1f} MB "
          f"in {result['seconds']:.1f} s")
    assert result["peak_extra_mb"] < 250
    slide = openslide.OpenSlide(str(path))
    assert slide.dimensions == (20000, 20000) and slide.level_count == 7
    region = np.asarray(slide.read_region((12288, 7168), 0, (512, 512)))[..., 0]
    expected = dask_labels((20000, 20000), chunks=1024)[7168:7680, 12288:12800].compute()
    np.testing.assert_array_equal(region, expected)


def test_label_pyramid_cancel_leaves_nothing(tmp_path):
    polls = []

    def should_stop() -> bool:
        polls.append(1)
        return len(polls) > 25

    with pytest.raises(LabelPyramidCancelled) as info:
        write_label_pyramid(
            dask_labels((3000, 5000)), tmp_path / "new.tif", (1.0, 1.0), should_stop=should_stop
        )
    assert isinstance(info.value, ImageWriteError)
    assert str(info.value) == f"cannot write {tmp_path / 'new.tif'}: cancelled; nothing was written"
    assert len(polls) == 26 and os.listdir(tmp_path) == []
    # an existing file at the target is left as it was
    old = tmp_path / "old.tif"
    old.write_bytes(b"previous result")
    with pytest.raises(LabelPyramidCancelled):
        write_label_pyramid(dask_labels((3000, 5000)), old, (1.0, 1.0), should_stop=lambda: True)
    assert os.listdir(tmp_path) == ["old.tif"] and old.read_bytes() == b"previous result"


def test_label_pyramid_failure_leaves_nothing(tmp_path):
    """An error while computing the input (here in the third band) removes every temporary file."""
    import dask.array as da

    def boom(block, block_info=None):
        if block_info[None]["array-location"][0][0] >= 2048:
            raise RuntimeError("model crashed")
        return block

    labels = da.zeros((3000, 2000), dtype=np.uint8, chunks=1024).map_blocks(boom, dtype=np.uint8)
    with pytest.raises(RuntimeError, match="model crashed"):
        write_label_pyramid(labels, tmp_path / "l.tif", (1.0, 1.0))
    assert os.listdir(tmp_path) == []


def test_label_pyramid_rejects_bad_input(tmp_path):
    with pytest.raises(ImageWriteError, match=r"must have an integer type, got float32"):
        write_label_pyramid(np.zeros((10, 10), np.float32), tmp_path / "l.tif", (1.0, 1.0))
    with pytest.raises(ImageWriteError, match=r"needs a 2-D label map, got shape \(2, 10, 10\)"):
        write_label_pyramid(np.zeros((2, 10, 10), np.uint8), tmp_path / "l.tif", (1.0, 1.0))
    with pytest.raises(ImageWriteError, match=r"folder .* does not exist"):
        write_label_pyramid(np.zeros((10, 10), np.uint8), tmp_path / "no" / "l.tif", (1.0, 1.0))
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------------------
# write_rgb_pyramid


def halve_mean(rgb: np.ndarray) -> np.ndarray:
    """2 x 2 means rounded half up, a lone last row or column its own partner (the reference)."""
    padded = np.pad(rgb.astype(np.float64), [(0, rgb.shape[0] % 2), (0, rgb.shape[1] % 2), (0, 0)], mode="edge")
    means = (padded[0::2, 0::2] + padded[1::2, 0::2] + padded[0::2, 1::2] + padded[1::2, 1::2]) / 4
    return np.floor(means + 0.5).astype(np.uint8)


@pytest.mark.parametrize("lazy", [False, True])
def test_rgb_pyramid_round_trip(tmp_path, lazy):
    import dask.array as da

    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, size=(701, 1103, 3), dtype=np.uint8)
    data = da.from_array(rgb, chunks=(300, 500, 3)) if lazy else rgb
    path = write_rgb_pyramid(data, tmp_path / "rgb.tif", (0.5, 0.25), tile=256, min_level_size=256)
    assert os.listdir(tmp_path) == ["rgb.tif"]
    levels = [rgb]
    while max(levels[-1].shape[:2]) > 256:
        levels.append(halve_mean(levels[-1]))
    assert [lv.shape[:2] for lv in levels] == pyramid_shapes((701, 1103), 256)
    with tifffile.TiffFile(path) as tif:
        assert [lv.shape for lv in tif.series[0].levels] == [lv.shape for lv in levels]
        for level, want in zip(tif.series[0].levels, levels):
            np.testing.assert_array_equal(level.asarray(), want)
        page = tif.pages[0]
        assert (page.tilelength, page.tilewidth) == (256, 256) and page.photometric == tifffile.PHOTOMETRIC.RGB
    slide = openslide.OpenSlide(str(path))
    assert slide.level_dimensions == tuple((lv.shape[1], lv.shape[0]) for lv in levels)
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5)
    assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(0.25)
    region = np.asarray(slide.read_region((600, 200), 0, (200, 150)))[..., :3]
    np.testing.assert_array_equal(region, rgb[200:350, 600:800])
    # (level 1's downsample is 1103 / 552, not 2: read it from its origin)
    region = np.asarray(slide.read_region((0, 0), 1, (400, 300)))[..., :3]
    np.testing.assert_array_equal(region, levels[1][:300, :400])
    # medloop opens it as a slide, with the written spacing
    assert is_slide(path)
    back = read_slide(path)
    assert back.spacing == pytest.approx((0.5, 0.25)) and back.array.shape == rgb.shape
    np.testing.assert_array_equal(np.asarray(back.pyramid[2]), levels[2])


def test_rgb_pyramid_cancel_and_bad_input_leave_nothing(tmp_path):
    rgb = np.zeros((600, 600, 3), np.uint8)
    with pytest.raises(PyramidCancelled, match="cancelled; nothing was written"):
        write_rgb_pyramid(rgb, tmp_path / "c.tif", (1.0, 1.0), should_stop=lambda: True)
    with pytest.raises(ImageWriteError, match=r"needs \(rows, columns, 3\) uint8, got \(600, 600, 3\) float32"):
        write_rgb_pyramid(rgb.astype(np.float32), tmp_path / "f.tif", (1.0, 1.0))
    with pytest.raises(ImageWriteError, match=r"needs \(rows, columns, 3\) uint8, got \(600, 600\)"):
        write_rgb_pyramid(rgb[..., 0], tmp_path / "g.tif", (1.0, 1.0))
    assert os.listdir(tmp_path) == []
