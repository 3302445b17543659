"""TIFF-family slides read through tifffile's zarr store: the same pixels and geometry as
OpenSlide, tile-aligned dask chunks, only the touched tiles read; other slides stay with OpenSlide.

All slides are synthetic and seeded (``slide_synth``), written in the test.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from medloop.app.io import slide as slide_mod
from medloop.app.io import slide_tiff
from medloop.app.io.slide import read_region, read_slide

from .slide_synth import write_synthetic_slide

openslide = pytest.importorskip("openslide")
pytest.importorskip("zarr")


@pytest.fixture(scope="module")
def tiled(tmp_path_factory):
    """Deflate (lossless) slides on 256^2 and 240^2 tiles, Aperio-like and generic."""
    folder = tmp_path_factory.mktemp("tiffslides")
    return {
        "aperio256": write_synthetic_slide(folder / "a256.svs", size=(2048, 3072), tile=256, seed=3),
        "generic256": write_synthetic_slide(folder / "g256.tif", size=(1536, 2560), tile=256, mpp=0.5,
                                            seed=4, flavor="generic"),
        "aperio240": write_synthetic_slide(folder / "a240.svs", size=(1920, 2880), tile=240, levels=3, seed=5),
    }


def reader_of(image):
    return slide_mod._tasks_of(image.pyramid[0]).handle


def openslide_rgb(path, level, y, x, h, w) -> np.ndarray:
    """OpenSlide's public read_region at (y, x) of ``level``, composited onto white."""
    with openslide.OpenSlide(str(path)) as s:
        d = s.level_downsamples[level]
        rgba = np.asarray(s.read_region((round(x * d), round(y * d)), level, (w, h)))
    return slide_mod._composite_straight(rgba)


def random_regions(shape, n, rng, side=512):
    h, w = shape
    for _ in range(n):
        rh, rw = int(rng.integers(1, min(side, h) + 1)), int(rng.integers(1, min(side, w) + 1))
        yield int(rng.integers(-20, h - rh + 20)), int(rng.integers(-20, w - rw + 20)), rh, rw


@pytest.mark.parametrize("name", ["aperio256", "generic256", "aperio240"])
def test_regions_equal_openslide_exactly_for_deflate(tiled, name):
    synth = tiled[name]
    image = read_slide(synth.path)
    assert isinstance(reader_of(image), slide_tiff._TiffHandle)
    rng = np.random.default_rng(7)
    for level, shape in enumerate(synth.level_shapes):
        for y, x, h, w in random_regions(shape, 6, rng):  # some reach past the edges: white there
            ours = read_region(image, level, y, x, h, w)
            np.testing.assert_array_equal(ours, openslide_rgb(synth.path, level, y, x, h, w))
        y, x = shape[0] // 3, shape[1] // 3
        dask_part = image.pyramid[level][y : y + 300, x : x + 400].compute()
        np.testing.assert_array_equal(dask_part, synth.expected(level, y, x, *dask_part.shape[:2]))


def test_chunks_are_whole_tiles(tiled):
    for name, chunk in (("aperio256", 512), ("aperio240", 480)):
        image = read_slide(tiled[name].path)
        for level in image.pyramid:
            assert all(c % chunk == 0 for c in level.chunks[0][:-1] + level.chunks[1][:-1])
            assert level.chunksize[:2] == tuple(min(chunk, s) for s in level.shape[:2])


def test_geometry_is_the_same_as_through_openslide(tiled, monkeypatch):
    for synth in tiled.values():
        ours = read_slide(synth.path)
        with monkeypatch.context() as m:
            m.setattr(slide_tiff, "open_tiff_levels", lambda *a: None)
            theirs = read_slide(synth.path)
        assert isinstance(reader_of(theirs), slide_mod._SlideHandle)
        assert ours.spacing == theirs.spacing and ours.unit == theirs.unit == "um"
        assert ours.metadata == theirs.metadata
        assert [lv.shape for lv in ours.pyramid] == [lv.shape for lv in theirs.pyramid]
        assert ours.layer_kwargs()["scale"] == theirs.layer_kwargs()["scale"]
        np.testing.assert_array_equal(ours.pyramid[-1].compute(), theirs.pyramid[-1].compute())


def test_only_the_touched_tiles_are_read(tiled, monkeypatch):
    """A 512^2 region on 256^2 tiles decodes at most 9 tiles (4 when tile-aligned)."""
    from tifffile.zarr import ZarrTiffStore

    keys = []
    original = ZarrTiffStore.get

    async def counting(self, key, *args, **kwargs):
        if not key.rsplit("/", 1)[-1].startswith((".", "zarr.json")):  # tiles, not metadata
            keys.append(key)
        return await original(self, key, *args, **kwargs)

    monkeypatch.setattr(ZarrTiffStore, "get", counting)
    image = read_slide(tiled["aperio256"].path)
    assert keys == []  # opening reads no tiles
    read_region(image, 0, 100, 300, 512, 512)
    assert len(keys) == len(set(keys)) == 9
    keys.clear()
    read_region(image, 0, 256, 512, 512, 512)
    assert len(keys) == 4
    keys.clear()
    image.pyramid[1][10:20, 10:20].compute()  # one dask chunk: 2 x 2 tiles
    assert len(keys) == 4 and all(k.startswith("1/") for k in keys)


def test_jpeg_slide_matches_openslide_within_jpeg_tolerance(tmp_path):
    """The same JPEG tiles decoded by imagecodecs and by OpenSlide's libjpeg."""
    tifffile = pytest.importorskip("tifffile")
    pytest.importorskip("imagecodecs")
    rng = np.random.default_rng(11)
    yy, xx = np.mgrid[0:1536, 0:2048]
    base = np.stack([(xx // 3) % 256, (yy // 2) % 256, (xx + yy) // 16 % 256], axis=-1).astype(np.uint8)
    base = np.clip(base.astype(int) + rng.integers(-8, 9, base.shape), 0, 255).astype(np.uint8)
    path = tmp_path / "jpeg.tif"
    with tifffile.TiffWriter(path) as tw:
        for k in range(3):
            tw.write(base[:: 2**k, :: 2**k], tile=(256, 256), compression="jpeg", photometric="rgb",
                     subfiletype=1 if k else 0, resolution=(40000.0 / 2**k,) * 2, resolutionunit="CENTIMETER")
    image = read_slide(path)
    assert isinstance(reader_of(image), slide_tiff._TiffHandle)
    for level, (y, x) in ((0, (300, 700)), (1, (100, 200)), (2, (0, 0))):
        ours = read_region(image, level, y, x, 384, 384).astype(int)
        theirs = openslide_rgb(path, level, y, x, 384, 384).astype(int)
        assert np.abs(ours - theirs).mean() < 1.0 and np.abs(ours - theirs).max() <= 8


def test_other_slides_stay_with_openslide(tiled, tmp_path):
    """Vendor formats only OpenSlide reads (by suffix) and TIFFs whose levels tifffile cannot
    decode as tiled RGB (here RGBA) are read by OpenSlide, with the same pixels as before."""
    tifffile = pytest.importorskip("tifffile")
    synth = tiled["generic256"]
    ndpi = tmp_path / "slide.ndpi"  # OpenSlide finds the generic-tiff content by itself
    shutil.copy(synth.path, ndpi)
    image = read_slide(ndpi)
    assert isinstance(reader_of(image), slide_mod._SlideHandle)
    np.testing.assert_array_equal(read_region(image, 1, 5, 6, 70, 80), synth.expected(1, 5, 6, 70, 80))
    rgba = np.concatenate([synth.expected(0, 0, 0, 1024, 1024), np.full((1024, 1024, 1), 255, np.uint8)], -1)
    path = tmp_path / "rgba.tif"
    with tifffile.TiffWriter(path) as tw:
        for k in range(2):
            tw.write(rgba[:: 2**k, :: 2**k], tile=(256, 256), compression="zlib", photometric="rgb",
                     extrasamples=[2], subfiletype=1 if k else 0)
    image = read_slide(path)
    assert isinstance(reader_of(image), slide_mod._SlideHandle)
    np.testing.assert_array_equal(read_region(image, 0, 10, 20, 30, 40), rgba[10:40, 20:60, :3])


def test_read_region_by_path_and_pickled_levels(tiled):
    import pickle

    synth = tiled["aperio240"]
    np.testing.assert_array_equal(read_region(synth.path, 2, 7, 9, 50, 60), synth.expected(2, 7, 9, 50, 60))
    level = pickle.loads(pickle.dumps(read_slide(synth.path).pyramid[1]))
    np.testing.assert_array_equal(level[600:700, 1000:1200].compute(), synth.expected(1, 600, 1000, 100, 200))
    with pytest.raises(slide_mod.ImageReadError, match="level 9"):
        read_region(synth.path, 9, 0, 0, 10, 10)


def test_ome_tiff_with_subifds_keeps_openslides_levels(tiled, tmp_path):
    """OpenSlide does not see SubIFD levels: tifffile decodes level 0, the levels stay OpenSlide's."""
    tifffile = pytest.importorskip("tifffile")
    synth = tiled["generic256"]
    full = synth.expected(0, 0, 0, *synth.level_shapes[0])
    path = tmp_path / "pyramid.ome.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(full, tile=(256, 256), compression="zlib", photometric="rgb", subifds=1)
        tw.write(full[::2, ::2], tile=(256, 256), compression="zlib", photometric="rgb", subfiletype=1)
    with openslide.OpenSlide(str(path)) as s:
        assert s.level_count == 1
    image = read_slide(path)
    assert isinstance(reader_of(image), slide_tiff._TiffHandle)
    assert [lv.shape for lv in image.pyramid] == [full.shape]
    np.testing.assert_array_equal(read_region(image, 0, 700, 900, 300, 500), full[700:1000, 900:1400])


def test_a_missing_tile_reads_white_as_through_openslide(tmp_path):
    """A tile whose offset and byte count are 0 (not stored) is transparent in OpenSlide: white."""
    tifffile = pytest.importorskip("tifffile")
    write_synthetic_slide(tmp_path / "sparse.tif", size=(1024, 1536), tile=256, flavor="generic", seed=1)
    with tifffile.TiffFile(tmp_path / "sparse.tif", mode="r+b") as tif:
        page = tif.pages[0]
        offsets, counts = list(page.dataoffsets), list(page.databytecounts)
        offsets[7] = counts[7] = 0  # row 1, column 1 of 6 tiles a row
        page.tags["TileOffsets"].overwrite(offsets)
        page.tags["TileByteCounts"].overwrite(counts)
    image = read_slide(tmp_path / "sparse.tif")
    assert isinstance(reader_of(image), slide_tiff._TiffHandle)
    ours = read_region(image, 0, 200, 200, 200, 300)
    np.testing.assert_array_equal(ours, openslide_rgb(tmp_path / "sparse.tif", 0, 200, 200, 200, 300))
    assert (ours[56:, 56:] == 255).all() and not (ours[:56] == 255).all()
