"""Whole-slide images: lazy multiscale reading (tifffile or OpenSlide), tiled pyramid writing.

Reading never decodes a level whole: every level is a dask array of about 512 x 512 RGB chunks,
and a chunk (or any region napari slices out of it) is read when it is computed. OpenSlide reads
the header (levels, spacing, vendor metadata) of every slide; the pixels of TIFF-family slides
(tiled pyramidal TIFF, SVS, OME-TIFF) that tifffile reads as the same levels come through
tifffile's zarr store (``slide_tiff``: only the touched tiles are decoded; chunks are whole
tiles), those of every other slide from OpenSlide. :func:`read_region` reads one region without
dask. The reader lives in the dask graph (no module-level cache), so the slide stays open as
long as any level is referenced.

Label pyramids and computed RGB slides (e.g. a stain translation) are written tile by tile with
tifffile as a tiled, deflate-compressed TIFF whose reduced levels are successive pages
(``NewSubfileType`` = reduced image): the layout that both OpenSlide's generic-tiff driver and
tifffile read as one pyramid (OpenSlide ignores SubIFDs). Label levels are sampled (nearest
neighbour), image levels averaged over 2 x 2 pixels.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medloop.app.errors import ImageReadError, ImageWriteError
from medloop.app.io.atomic import atomic_target
from medloop.app.io.lazy import compute_here
from medloop.app.io.image import MedImage

SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".vms", ".vmu", ".scn", ".bif", ".svslide")
TIFF_SUFFIXES = (".tif", ".tiff")
CHUNK = 512  # dask chunk side of every level (the common scanner tile size)
LARGE_SIDE = 10000  # a single-level tiled TIFF larger than this is read as a slide
SCRATCH_BUDGET = 64 * 2**20  # bytes of label rows computed at once by write_label_pyramid
# bytes of RGB rows computed at once by write_rgb_pyramid: taller bands than for labels, so that a
# tiled image-to-image pass (whose tiles reach past a band by their context) wastes little work
RGB_BAND_BUDGET = 128 * 2**20


def max_band_rows(width: int, itemsize: int, tile: int, budget: int = SCRATCH_BUDGET) -> int:
    """The tallest band of whole tiles that the pyramid writers compute at once: as many tile
    rows of ``width`` pixels of ``itemsize`` bytes as fit ``budget`` (at least one tile row). The
    tiled slide processors cut their blocks to these bands so that no block is computed twice."""
    return max(tile, (budget // max(1, width * itemsize)) // tile * tile)
# zlib level of label tiles: deflate's fast path (levels 1-3) is ~4x faster than the default 6
# and label maps still compress 30-50x.
_ZLIB_LEVEL = 3


class PyramidCancelled(ImageWriteError):
    """A pyramid writer stopped because ``should_stop()`` said so; nothing was written."""


class LabelPyramidCancelled(PyramidCancelled):
    """``write_label_pyramid`` stopped because ``should_stop()`` said so; nothing was written."""


# --------------------------------------------------------------------------------------------
# Reading


def is_slide(path: str | os.PathLike) -> bool:
    """Whether ``path`` should be read as a whole slide (with OpenSlide) rather than as a plain image.

    True for the vendor suffixes when OpenSlide recognises the file; for ``.tif``/``.tiff`` only
    when OpenSlide recognises it and it is tiled and either pyramidal or larger than
    ``LARGE_SIDE`` pixels on a side (small plain TIFFs stay with tifffile).
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in SLIDE_SUFFIXES + TIFF_SUFFIXES or not p.is_file():
        return False
    import openslide

    try:
        if openslide.OpenSlide.detect_format(str(p)) is None:
            return False
    except (openslide.OpenSlideError, OSError):
        return False
    if suffix in SLIDE_SUFFIXES:
        return True
    import tifffile

    try:
        with tifffile.TiffFile(p) as tif:
            page = tif.pages.first
            # Slides are RGB; grey pyramids (e.g. medloop's label pyramids) keep their exact
            # integer values through tifffile instead of becoming 8-bit RGB.
            if not page.is_tiled or page.samplesperpixel < 3:
                return False
            if max(int(page.imagelength), int(page.imagewidth)) > LARGE_SIDE:
                return True
        with openslide.OpenSlide(str(p)) as slide:
            return slide.level_count > 1
    except Exception:  # unreadable TIFFs are left to the plain reader, which explains the problem
        return False


def read_slide(path: str | os.PathLike) -> MedImage:
    """Open a whole slide as a lazy RGB pyramid; nothing but the header is read here.

    Returns a :class:`MedImage` whose ``pyramid`` holds one dask array per OpenSlide level,
    finest first, each ``(height, width, 3)`` uint8 in 512 x 512 chunks, or whole tiles near that
    size when tifffile decodes the pixels (see :func:`_pixel_reader`; transparent pixels are
    composited onto white); ``array`` is level 0. ``spacing`` is (mpp-x, mpp-y) in um.

    Raises:
        ImageReadError: the file is missing or OpenSlide cannot open it (also raised later, when
            a chunk is computed, for damaged tile data).
    """
    import openslide

    p = Path(path)
    if not p.is_file():
        raise ImageReadError(f"cannot read {p}: no such file; check the path")
    from medloop.app.io.quiet import quiet_decoders

    try:
        with quiet_decoders():  # libtiff / libdicom remarks on odd tags stay off the terminal
            slide = openslide.OpenSlide(str(p))
    except openslide.OpenSlideUnsupportedFormatError:
        raise ImageReadError(_unsupported_message(p)) from None
    except (openslide.OpenSlideError, OSError) as exc:
        raise ImageReadError(
            f"cannot read {p}: damaged whole-slide image ({_reason(exc)}); "
            "copy the file again or re-export it from the scanner software"
        ) from None
    token = _token(p)
    dims = slide.level_dimensions
    downsamples = slide.level_downsamples
    props = dict(slide.properties)
    handle, chunks = _pixel_reader(p, slide)
    levels = tuple(
        _level_array(handle, k, (int(h), int(w)), float(downsamples[k]), f"slide-{token}-{k}", chunks[k])
        for k, (w, h) in enumerate(dims)
    )
    spacing, known = _spacing(props)
    metadata: dict[str, Any] = {
        "vendor": props.get("openslide.vendor", ""),
        "level_count": len(levels),
        "level_downsamples": tuple(float(d) for d in downsamples),
        "level_dimensions": tuple((int(w), int(h)) for w, h in dims),
        "spacing_known": known,
        "path": str(p),
    }
    power = _float(props.get("openslide.objective-power"))
    if power is not None:
        metadata["objective_power"] = power
    bounds = [_float(props.get(f"openslide.bounds-{k}")) for k in ("x", "y", "width", "height")]
    if all(b is not None for b in bounds):
        metadata["bounds"] = tuple(int(b) for b in bounds)  # type: ignore[arg-type]
    return MedImage(
        array=levels[0],
        spacing=spacing,
        origin=(0.0, 0.0),
        direction=np.eye(2),
        channel_axis=True,
        modality="SM",
        unit="um",
        metadata=metadata,
        path=str(p),
        pyramid=levels,
    )


def _pixel_reader(p: Path, slide: Any) -> tuple[Any, list[tuple[int, int]]]:
    """What decodes the slide's pixels, and each level's dask chunk (rows, columns): tifffile's
    zarr store for TIFF-family slides it reads as OpenSlide's levels (chunks: whole tiles, about
    CHUNK pixels), else OpenSlide itself (CHUNK x CHUNK). The OpenSlide handle is closed when
    tifffile takes over (it only read the header)."""
    from medloop.app.io.slide_tiff import TIFF_READ_SUFFIXES, open_tiff_levels

    dims = tuple((int(w), int(h)) for w, h in slide.level_dimensions)
    tiff = open_tiff_levels(str(p), dims) if p.suffix.lower() in TIFF_READ_SUFFIXES else None
    if tiff is None:
        return _SlideHandle(str(p), slide), [(CHUNK, CHUNK)] * len(dims)
    slide.close()
    return tiff, [(_tile_chunk(th), _tile_chunk(tw)) for th, tw in tiff.tiles]


def _tile_chunk(tile: int) -> int:
    """A chunk side of whole tiles: as many as fit CHUNK (at least one)."""
    return tile * max(1, CHUNK // tile)


def read_region(image: Any, level: int, y: int, x: int, height: int, width: int) -> np.ndarray:
    """The ``(height, width, 3)`` uint8 RGB region at ``(y, x)`` of pyramid level ``level`` (in
    that level's pixels) of a slide (a :class:`MedImage` from :func:`read_slide` or a path), read
    straight from the file without dask (for TIFF-family slides only the tiles it touches are
    decoded). Pixels outside the level are white. For an image whose levels are not a slide's,
    the level is sliced (and the region clipped to it).

    Raises:
        ImageReadError: no such level, or damaged tile data.
    """
    if not isinstance(image, MedImage):
        image = read_slide(image)
    levels = list(image.pyramid) or [image.array]
    if not 0 <= level < len(levels):
        raise ImageReadError(f"cannot read level {level} of {image.path}: it has {len(levels)} level(s); choose one of them")
    tasks = _tasks_of(levels[level])
    if tasks is not None:
        return tasks.handle.read_rgb(level, tasks.downsample, int(y), int(x), int(height), int(width))
    part = levels[level][max(0, y) : y + height, max(0, x) : x + width]
    return np.asarray(compute_here(part)[0])


def _tasks_of(level: Any) -> _ChunkTasks | None:
    """The chunk tasks (and so the open reader) behind a level as read_slide made it, else None."""
    layers = getattr(getattr(level, "dask", None), "layers", None) or {}
    mapping = getattr(layers.get(getattr(level, "name", None)), "mapping", None)
    return mapping if isinstance(mapping, _ChunkTasks) else None


def read_dicom_slide(path: str | os.PathLike) -> MedImage:
    """A DICOM whole-slide image (VL Whole Slide Microscopy Image Storage) through OpenSlide,
    which finds the other levels among the files of the same folder; spacing in um from the file.

    Raises:
        ImageReadError: this OpenSlide cannot read DICOM slides, or not this one.
    """
    import openslide

    p = Path(path)
    version = getattr(openslide, "__library_version__", "?")
    try:
        fmt = openslide.OpenSlide.detect_format(str(p))
    except (openslide.OpenSlideError, OSError):
        fmt = None
    if fmt != "dicom":
        raise ImageReadError(
            f"cannot read {p}: DICOM whole-slide images (VL Whole Slide Microscopy) need OpenSlide 4 "
            f"or later with DICOM support, and OpenSlide {version} does not recognise this one; "
            "update openslide-bin, or export the slide as .svs or pyramidal .tif"
        )
    try:
        return read_slide(p)
    except ImageReadError:
        raise ImageReadError(
            f"cannot read {p}: a DICOM whole-slide image that OpenSlide {version} cannot open "
            "(incomplete series or unsupported variant); keep all files of the slide's series in "
            "one folder, or export the slide as .svs or pyramidal .tif"
        ) from None


LEVEL_BYTES_LIMIT = 2 * 2**30  # one level read whole (convert --level) may take this much memory


def pyramid_level(image: MedImage, level: int, path: Any) -> MedImage:
    """Level ``level`` of a pyramid as a plain in-memory image with that level's pixel size.

    Raises:
        ImageReadError: no such level, or the level is too large to hold in memory.
    """
    levels = list(image.pyramid) or [image.array]
    if not 0 <= level < len(levels):
        shapes = ", ".join(f"{k}: {int(a.shape[1])} x {int(a.shape[0])}" for k, a in enumerate(levels))
        raise ImageReadError(f"cannot read level {level} of {path}: it has {len(levels)} level(s) ({shapes}); choose one of them")
    chosen = levels[level]
    size = int(np.prod(chosen.shape)) * np.dtype(chosen.dtype).itemsize
    if size > LEVEL_BYTES_LIMIT:
        raise ImageReadError(
            f"cannot read level {level} of {path}: it is {int(chosen.shape[1])} x {int(chosen.shape[0])} "
            f"pixels ({size / 2**30:.1f} GiB), too large to hold at once; choose a higher level, or "
            "convert the whole pyramid to .tif (written tile by tile)"
        )
    scale = _downsample(image, level)
    from dataclasses import replace

    meta = {**image.metadata, "level": level, "level_downsample": scale}
    return replace(
        image, array=np.asarray(compute_here(chosen)[0]), pyramid=(), metadata=meta,
        spacing=tuple(s * scale for s in image.spacing),
    )


def _downsample(image: MedImage, level: int) -> float:
    """Level ``level``'s downsample: OpenSlide's own figure when the slide gave it, else widths."""
    known = image.metadata.get("level_downsamples") or ()
    if level < len(known):
        return float(known[level])
    levels = list(image.pyramid) or [image.array]
    return int(levels[0].shape[1]) / int(levels[level].shape[1])


def check_slide_decodes(image: MedImage, side: int = 256) -> None:
    """Decode one small region at the centre of the lowest-resolution level and of level 0, so
    a damaged slide is reported now rather than when its tiles are first shown.

    Raises:
        ImageReadError: a tile does not decode (the message names the level and place).
    """
    levels = list(image.pyramid) or [image.array]
    for level in dict.fromkeys((len(levels) - 1, 0)):
        h, w = int(levels[level].shape[0]), int(levels[level].shape[1])
        y, x = max(0, h // 2 - side // 2), max(0, w // 2 - side // 2)
        compute_here(levels[level][y : y + side, x : x + side])


def _unsupported_message(p: Path) -> str:
    return (
        f"cannot read {p}: not a whole-slide image OpenSlide recognises (corrupt, incomplete or "
        "an unsupported variant); copy the file again, or export it from the scanner software "
        "as .svs or pyramidal .tif"
    )


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[-1] if text else type(exc).__name__)[:200]


def _float(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _spacing(props: Any) -> tuple[tuple[float, float], bool]:
    """(x, y) microns per pixel and whether the file said so."""
    mx, my = _float(props.get("openslide.mpp-x")), _float(props.get("openslide.mpp-y"))
    if mx and mx > 0:
        return (mx, my if my and my > 0 else mx), True
    per_unit = {"centimeter": 1e4, "inch": 25400.0}.get(str(props.get("tiff.ResolutionUnit", "")).lower())
    rx, ry = _float(props.get("tiff.XResolution")), _float(props.get("tiff.YResolution"))
    if per_unit and rx and rx > 0:
        return (per_unit / rx, per_unit / (ry if ry and ry > 0 else rx)), True
    return (1.0, 1.0), False


def _token(p: Path) -> str:
    """Graph-name token: the same file, unchanged, gives the same dask keys."""
    from dask.base import tokenize

    st = p.stat()
    return tokenize(str(p.resolve()), st.st_size, st.st_mtime_ns)


class _SlideHandle:
    """An open OpenSlide, reopened from its path when unpickled (e.g. by dask.distributed)."""

    def __init__(self, path: str, slide: Any = None) -> None:
        import openslide

        self.path = path
        self.slide = slide if slide is not None else openslide.OpenSlide(path)
        self._raw = _raw_reader(self.slide)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_SlideHandle, (self.path,))

    def read_rgb(self, level: int, downsample: float, y: int, x: int, h: int, w: int) -> np.ndarray:
        """The (h, w, 3) uint8 RGB region at (y, x) in ``level``'s pixels, alpha composited onto white."""
        import openslide

        location = (round(x * downsample), round(y * downsample))
        try:
            if self._raw is not None:
                return self._raw(location, level, h, w)
            rgba = np.asarray(self.slide.read_region(location, level, (w, h)), dtype=np.uint8)
        except openslide.OpenSlideError as exc:
            raise ImageReadError(
                f"cannot read {self.path}: damaged tile data at level {level} near "
                f"{location} ({_reason(exc)}); copy the file again or re-export it from the scanner software"
            ) from None
        return _composite_straight(rgba)


def _raw_reader(slide: Any) -> Callable[..., np.ndarray] | None:
    """A reader straight into a numpy buffer (skips PIL's copies), or None if this
    openslide-python lacks the low-level call (then the public ``read_region`` is used)."""
    import ctypes

    try:
        from openslide import lowlevel

        c_read = lowlevel._read_region
        osr = slide._osr
    except (ImportError, AttributeError):
        return None
    # OpenSlide writes premultiplied ARGB as native-endian uint32.
    b, g, r, a = (0, 1, 2, 3) if sys.byteorder == "little" else (3, 2, 1, 0)
    pointer = ctypes.POINTER(ctypes.c_uint32)

    def read(location: tuple[int, int], level: int, h: int, w: int) -> np.ndarray:
        buf = np.empty((h, w), dtype=np.uint32)
        if h and w:
            c_read(osr, buf.ctypes.data_as(pointer), location[0], location[1], level, w, h)
        px = buf.view(np.uint8).reshape(h, w, 4)
        out = np.empty((h, w, 3), dtype=np.uint8)
        out[..., 0], out[..., 1], out[..., 2] = px[..., r], px[..., g], px[..., b]
        alpha = px[..., a]
        if h and w and alpha.min() < 255:
            # premultiplied colour over white: c*a + 255*(1 - a) = c_pm + (255 - a)
            out += (255 - alpha)[..., None]
        return out

    return read


def _composite_straight(rgba: np.ndarray) -> np.ndarray:
    """Straight (non-premultiplied) RGBA composited onto white, as uint8 RGB."""
    alpha = rgba[..., 3:4]
    if rgba.size == 0 or alpha.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    a = alpha.astype(np.uint16)
    out = (rgba[..., :3].astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


class _LevelReader:
    """Array-like view of one level for the ``dask.array.from_array`` fallback: indexing reads
    only the requested region (dask fuses slicing into this call), never the whole level."""

    ndim = 3
    dtype = np.dtype(np.uint8)

    def __init__(self, handle: _SlideHandle, level: int, shape: tuple[int, int], downsample: float) -> None:
        self.handle, self.level, self.downsample = handle, level, downsample
        self.shape = (shape[0], shape[1], 3)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = _expand_key(key, 3)
        (y0, y1, ly), (x0, x1, lx) = _span(key[0], self.shape[0]), _span(key[1], self.shape[1])
        region = self.handle.read_rgb(self.level, self.downsample, y0, x0, y1 - y0, x1 - x0)
        return region[ly, lx][..., key[2]]


def _expand_key(key: Any, ndim: int) -> tuple[Any, ...]:
    key = key if isinstance(key, tuple) else (key,)
    if any(k is Ellipsis for k in key):
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (ndim - len(key) + 1) + key[i + 1 :]
    return key + (slice(None),) * (ndim - len(key))


def _span(k: Any, n: int) -> tuple[int, int, Any]:
    """(first, stop) of the rows an index touches, and the index relative to ``first``."""
    if isinstance(k, slice):
        r = range(*k.indices(n))
        if len(r) == 0:
            return 0, 0, slice(0, 0)
        lo, hi = min(r[0], r[-1]), max(r[0], r[-1]) + 1
        stop = r.stop - lo
        return lo, hi, slice(r.start - lo, stop if stop >= 0 else None, r.step)
    i = int(k)  # an integer index (dask may fuse one into the getter)
    i = i + n if i < 0 else i
    if not 0 <= i < n:
        raise IndexError(f"index {k} is out of bounds for axis with size {n}")
    return i, i + 1, 0


_META = np.empty((0, 0, 0), dtype=np.uint8)


def _level_array(
    handle: Any, level: int, shape: tuple[int, int], downsample: float, name: str,
    chunk: tuple[int, int] = (CHUNK, CHUNK),
) -> Any:
    """One level as a dask array of ``chunk`` (default CHUNK x CHUNK) chunks whose tasks are made
    only when asked for; ``handle`` is a :class:`_SlideHandle` or a tifffile ``_TiffHandle``.

    ``from_array`` costs ~0.2 ms a level even for a lazy source; a task mapping costs nothing,
    which keeps opening a slide close to OpenSlide's own open (see benchmarks/bench_slide_open.py).
    """
    import dask.array as da

    chunks = (_axis_chunks(shape[0], chunk[0]), _axis_chunks(shape[1], chunk[1]), (3,))
    try:
        from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

        tasks = _ChunkTasks(name, handle, level, shape, downsample, chunk)
        graph = HighLevelGraph({name: MaterializedLayer(tasks)}, {name: set()})
        return da.Array(graph, name, chunks, meta=_META)
    except (ImportError, AttributeError, TypeError):  # a dask without HighLevelGraph layers
        return _level_array_from_reader(handle, level, shape, downsample, name, chunk)


def _level_array_from_reader(
    handle: Any, level: int, shape: tuple[int, int], downsample: float, name: str,
    chunk: tuple[int, int] = (CHUNK, CHUNK),
) -> Any:
    import dask.array as da

    return da.from_array(
        _LevelReader(handle, level, shape, downsample),
        chunks=(chunk[0], chunk[1], 3),
        name=name,
        lock=False,  # OpenSlide handles are thread-safe
        asarray=False,
        fancy=False,
        meta=_META,
    )


def _axis_chunks(n: int, chunk: int = CHUNK) -> tuple[int, ...]:
    return (chunk,) * (n // chunk) + ((n % chunk,) if n % chunk else ())


def _read_chunk(
    handle: _SlideHandle, level: int, downsample: float, y: int, x: int, h: int, w: int
) -> np.ndarray:
    return handle.read_rgb(level, downsample, y, x, h, w)


class _ChunkTasks(Mapping):
    """The dask tasks of one level's chunks, made on demand (a 40000^2 level has 6241)."""

    def __init__(
        self, name: str, handle: Any, level: int, shape: tuple[int, int], downsample: float,
        chunk: tuple[int, int] = (CHUNK, CHUNK),
    ) -> None:
        self.name, self.handle, self.level, self.downsample = name, handle, level, downsample
        self.h, self.w = shape
        self.ch, self.cw = chunk
        self.ny, self.nx = -(-self.h // self.ch), -(-self.w // self.cw)

    def __getitem__(self, key: Any) -> tuple[Any, ...]:
        try:
            name, i, j, c = key
            valid = name == self.name and c == 0 and 0 <= i < self.ny and 0 <= j < self.nx
        except (TypeError, ValueError):
            valid = False
        if not valid:
            raise KeyError(key)
        y, x = i * self.ch, j * self.cw
        h, w = min(self.ch, self.h - y), min(self.cw, self.w - x)
        return (_read_chunk, self.handle, self.level, self.downsample, y, x, h, w)

    def __iter__(self) -> Iterator[tuple[str, int, int, int]]:
        return ((self.name, i, j, 0) for i in range(self.ny) for j in range(self.nx))

    def __len__(self) -> int:
        return self.ny * self.nx


# --------------------------------------------------------------------------------------------
# Writing


class _Stop(Exception):
    pass


def pyramid_shapes(shape: tuple[int, int], min_level_size: int = 512) -> list[tuple[int, int]]:
    """Level shapes of a stride-2 pyramid: halve (rounding up) until the level fits in
    ``min_level_size`` on both sides."""
    h, w = int(shape[0]), int(shape[1])
    shapes = [(h, w)]
    s = 1
    while max(shapes[-1]) > min_level_size:
        s *= 2
        shapes.append((-(-h // s), -(-w // s)))
    return shapes


def write_label_pyramid(
    labels: Any,
    path: str | os.PathLike,
    spacing_um: tuple[float, float],
    tile: int = 512,
    min_level_size: int = 512,
    progress: Callable[[int, int], Any] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Path:
    """Write a 2-D integer label map as a tiled, deflate-compressed pyramidal TIFF, tile by tile.

    ``labels`` (numpy or dask, ``(rows, columns)``) is computed in bands of whole tile rows, so
    level 0 is never in memory; the reduced levels (every 2**k-th pixel, nearest neighbour) are
    collected on the way in a scratch file next to ``path`` and written after level 0. Levels
    are successive pages (``NewSubfileType`` reduced image) with resolution tags from
    ``spacing_um`` (x, y): OpenSlide (generic-tiff) and tifffile both read them as one pyramid.
    Values are stored in the input dtype (bool as uint8); OpenSlide shows them unchanged only
    for 8-bit labels.

    Args:
        tile: tile side in pixels (a multiple of 16).
        min_level_size: add levels until the smallest fits in this many pixels on a side.
        progress: called as ``progress(done, total)`` as each tile goes to the writer.
        should_stop: polled before every tile; when it returns True the write stops.

    Returns:
        ``path``, which appears complete or not at all (written to a temporary file in the same
        folder, then renamed: :func:`~medloop.app.io.atomic.atomic_target`).

    Raises:
        ImageWriteError: not a 2-D integer map, missing folder, or the write failed.
        LabelPyramidCancelled: ``should_stop()`` returned True (nothing is left at ``path``).
    """
    p = Path(path)
    out_dtype = _label_pyramid_dtype(labels, p)
    _check_pyramid_target(p, spacing_um, tile, min_level_size)
    layout = _Layout(out_dtype, tile, "nearest", "minisblack", SCRATCH_BUDGET, "medloop label pyramid",
                     "level k is level 0 sampled every 2**k pixels")
    try:
        _write_pyramid(labels, p, spacing_um, layout, min_level_size, progress, should_stop)
    except _Stop:
        raise LabelPyramidCancelled(f"cannot write {p}: cancelled; nothing was written") from None
    return p


def write_rgb_pyramid(
    image: Any,
    path: str | os.PathLike,
    spacing_um: tuple[float, float],
    tile: int = 256,
    min_level_size: int = 512,
    progress: Callable[[int, int], Any] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Path:
    """Write an ``(rows, columns, 3)`` uint8 RGB image (numpy or dask, e.g. a computed slide) as a
    tiled, deflate-compressed pyramidal TIFF, tile by tile, that OpenSlide and tifffile open as
    a slide with ``spacing_um`` (x, y) at level 0.

    As :func:`write_label_pyramid`, but level k is level k - 1 averaged over 2 x 2 pixels
    (rounded; an odd last row or column is averaged on its own), and ``image`` is computed in
    bands of at most :data:`RGB_BAND_BUDGET` bytes.

    Raises:
        ImageWriteError: not ``(rows, columns, 3)`` uint8, missing folder, or the write failed.
        PyramidCancelled: ``should_stop()`` returned True (nothing is left at ``path``).
    """
    p = Path(path)
    shape = tuple(int(s) for s in image.shape)
    if len(shape) != 3 or shape[2] != 3 or np.dtype(image.dtype) != np.uint8 or min(shape) == 0:
        raise ImageWriteError(
            f"cannot write {p}: an RGB pyramid needs (rows, columns, 3) uint8, got {shape} {np.dtype(image.dtype)}"
        )
    _check_pyramid_target(p, spacing_um, tile, min_level_size)
    layout = _Layout(np.dtype(np.uint8), tile, "mean", "rgb", RGB_BAND_BUDGET, "medloop image pyramid",
                     "level k is level k-1 averaged over 2x2 pixels")
    try:
        _write_pyramid(image, p, spacing_um, layout, min_level_size, progress, should_stop)
    except _Stop:
        raise PyramidCancelled(f"cannot write {p}: cancelled; nothing was written") from None
    return p


def _write_pyramid(
    data: Any, p: Path, spacing_um: tuple[float, float], layout: _Layout, min_level_size: int,
    progress: Callable[[int, int], Any] | None, should_stop: Callable[[], bool] | None,
) -> None:
    """Every level of ``data`` into a pyramidal TIFF at ``p``, atomically (see the writers)."""
    shapes = pyramid_shapes(tuple(int(s) for s in data.shape[:2]), min_level_size)
    total = sum(-(-h // layout.tile) * -(-w // layout.tile) for h, w in shapes)
    try:
        with atomic_target(p) as tmp, _levels_scratch(p, len(shapes)) as scratch:
            writer = _PyramidTiles(data, shapes, layout, scratch, progress, should_stop, total)
            _write_pyramid_tiff(tmp, writer, spacing_um)
    except OSError as exc:
        raise ImageWriteError(
            f"cannot write {p}: {exc.strerror or _reason(exc)}; check free disk space and permissions"
        ) from None


def _check_pyramid_target(p: Path, spacing_um: tuple[float, float], tile: int, min_level_size: int) -> None:
    if tile <= 0 or tile % 16:
        raise ValueError(f"tile must be a positive multiple of 16, got {tile}")
    if min_level_size < 1:
        raise ValueError(f"min_level_size must be positive, got {min_level_size}")
    sx, sy = (float(s) for s in spacing_um)
    if not (sx > 0 and sy > 0 and math.isfinite(sx) and math.isfinite(sy)):
        raise ImageWriteError(f"cannot write {p}: spacing {spacing_um} um must be positive")
    if not p.parent.is_dir():
        raise ImageWriteError(f"cannot write {p}: folder {p.parent} does not exist; create it first")


def _label_pyramid_dtype(labels: Any, p: Path) -> np.dtype:
    """The dtype the pyramid stores ``labels`` in, after checking them."""
    shape = tuple(int(s) for s in labels.shape)
    dtype = np.dtype(labels.dtype)
    if len(shape) != 2:
        raise ImageWriteError(f"cannot write {p}: a label pyramid needs a 2-D label map, got shape {shape}")
    if dtype.kind not in "iub":
        raise ImageWriteError(
            f"cannot write {p}: label maps must have an integer type, got {dtype}; round and cast it first"
        )
    out_dtype = np.dtype(np.uint8) if dtype.kind == "b" else dtype.newbyteorder("=")  # native, as the file
    if min(shape) == 0:
        raise ImageWriteError(f"cannot write {p}: the label map is empty (shape {shape})")
    return out_dtype


def write_image_pyramid(
    image: MedImage,
    path: str | os.PathLike,
    tile: int = 512,
    progress: Callable[[int, int], Any] | None = None,
) -> Path:
    """Write a whole-slide pyramid (every level of ``image.pyramid``) as a tiled, deflate-
    compressed pyramidal TIFF, one tile at a time: no level is ever whole in memory. Pixels are
    kept exactly; OpenSlide (generic-tiff) and tifffile read the result as the same pyramid.

    Raises:
        ImageWriteError: missing folder or a failed write.
    """
    import tifffile

    p = Path(path)
    if not p.parent.is_dir():
        raise ImageWriteError(f"cannot write {p}: folder {p.parent} does not exist; create it first")
    levels = list(image.pyramid) or [image.array]
    um = {"mm": 1000.0, "um": 1.0}.get(image.unit, 1.0)
    sx, sy = (float(v) * um for v in image.spacing[:2])
    total = sum(-(-int(a.shape[0]) // tile) * -(-int(a.shape[1]) // tile) for a in levels)
    done = [0]
    raw = sum(int(np.prod(a.shape)) for a in levels)
    workers = max(1, min(4, os.cpu_count() or 1))
    pool = ThreadPoolExecutor(workers, thread_name_prefix="medloop-deflate")
    try:
        with atomic_target(p) as tmp, tifffile.TiffWriter(tmp, bigtiff=raw > 2**31) as tw:
            for k, level in enumerate(levels):
                h, w = int(level.shape[0]), int(level.shape[1])
                scale = _downsample(image, k)
                tw.write(
                    _deflated(_image_tiles(level, tile, progress, done, total), pool, workers),
                    shape=(h, w) + tuple(int(c) for c in level.shape[2:]),
                    dtype=np.dtype(level.dtype),
                    tile=(tile, tile),
                    compression="zlib",
                    photometric="rgb" if level.ndim == 3 and level.shape[2] in (3, 4) else "minisblack",
                    subfiletype=1 if k else 0,
                    resolution=(1e4 / (sx * scale), 1e4 / (sy * scale)),
                    resolutionunit="CENTIMETER",
                    metadata=None,
                    software="medloop",
                )
    except OSError as exc:
        raise ImageWriteError(
            f"cannot write {p}: {exc.strerror or _reason(exc)}; check free disk space and permissions"
        ) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return p


def _image_tiles(level: Any, tile: int, progress, done: list, total: int) -> Iterator[np.ndarray]:
    """The level's tiles in row-major order, each computed on its own, edges zero-padded."""
    h, w = int(level.shape[0]), int(level.shape[1])
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            part = np.asarray(compute_here(level[y : y + tile, x : x + tile])[0])
            if part.shape[:2] != (tile, tile):
                full = np.zeros((tile, tile) + part.shape[2:], dtype=part.dtype)
                full[: part.shape[0], : part.shape[1]] = part
                part = full
            done[0] += 1
            if progress is not None:
                progress(done[0], total)
            yield part


@contextmanager
def _levels_scratch(p: Path, levels: int) -> Iterator[Any]:
    """The scratch file next to ``p`` that collects the reduced levels while level 0 streams
    through (None for a single level); deleted on exit."""
    if levels <= 1:
        yield None
        return
    with tempfile.NamedTemporaryFile(prefix=f".{p.name}.", suffix=".levels.tmp", dir=p.parent) as scratch:
        yield scratch


def _write_pyramid_tiff(tmp: str, writer: _PyramidTiles, spacing_um: tuple[float, float]) -> None:
    """Every level of ``writer`` as a page of the TIFF at ``tmp``, tiles deflated on a few threads."""
    import tifffile

    sx, sy = (float(s) for s in spacing_um)
    shapes, layout = writer.shapes, writer.layout
    raw = sum(h * w for h, w in shapes) * writer.pixel_bytes
    description = (
        f"{layout.title}; spacing_um={sx!r},{sy!r}; levels={len(shapes)}; {layout.levels_note}"
    )
    workers = max(1, min(4, os.cpu_count() or 1))
    pool = ThreadPoolExecutor(workers, thread_name_prefix="medloop-deflate")
    try:
        with tifffile.TiffWriter(tmp, bigtiff=raw > 2**31) as tw:
            for k, (h, w) in enumerate(shapes):
                tw.write(
                    _deflated(writer.tiles(k), pool, workers),
                    shape=(h, w) + writer.channels,
                    dtype=layout.dtype,
                    tile=(layout.tile, layout.tile),
                    compression="zlib",
                    photometric=layout.photometric,
                    subfiletype=1 if k else 0,
                    resolution=(1e4 / (sx * 2**k), 1e4 / (sy * 2**k)),
                    resolutionunit="CENTIMETER",
                    description=description if k == 0 else None,
                    metadata=None,
                    software="medloop",
                )
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _deflated(tiles: Iterator[np.ndarray], pool: ThreadPoolExecutor, workers: int) -> Iterator[bytes]:
    """zlib-compressed tiles, in order, compressed on ``pool``'s threads (zlib releases the GIL);
    at most a few tiles ahead are held."""
    import zlib

    ahead = 2 * workers
    pending: deque = deque()
    for tile in tiles:
        pending.append(pool.submit(zlib.compress, np.ascontiguousarray(tile), _ZLIB_LEVEL))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


@dataclass(frozen=True)
class _Layout:
    """How a pyramid is stored: pixel type, tile side, how levels are reduced ("nearest" or
    "mean"), TIFF photometric, bytes computed per band, and the description's title and note."""

    dtype: np.dtype
    tile: int
    reduce: str
    photometric: str
    band_budget: int
    title: str
    levels_note: str


class _PyramidTiles:
    """Tile generators for every level; level 0 also fills the scratch file with levels >= 1,
    each reduced from the one above it as level 0's bands stream through."""

    def __init__(self, data, shapes, layout: _Layout, scratch, progress, should_stop, total) -> None:
        self.data, self.shapes, self.layout, self.tile = data, shapes, layout, layout.tile
        self.dtype = layout.dtype
        self.channels = tuple(int(c) for c in data.shape[2:])
        self.pixel_bytes = self.dtype.itemsize * math.prod(self.channels)
        self.scratch, self.progress, self.should_stop, self.total = scratch, progress, should_stop, total
        self.done = 0
        # byte offset of each reduced level (k >= 1) in the scratch file
        self.offsets = [0, 0]
        for h, w in shapes[1:-1]:
            self.offsets.append(self.offsets[-1] + h * w * self.pixel_bytes)
        self.reducers = [_LevelReducer(layout.reduce) for _ in shapes[1:]]

    def tiles(self, level: int) -> Iterator[np.ndarray]:
        return self._level0() if level == 0 else self._reduced(level)

    def _band_height(self) -> int:
        h, w = self.shapes[0]
        t = self.tile
        rows = max_band_rows(w, self.pixel_bytes, t, self.layout.band_budget)
        chunks = getattr(self.data, "chunks", None)
        if chunks:  # whole input chunk rows when they fit: each input chunk is computed once
            want = -(-max(chunks[0]) // t) * t
            rows = want if want <= rows else t
        else:
            rows = t
        return min(rows, -(-h // t) * t)

    def _level0(self) -> Iterator[np.ndarray]:
        h, w = self.shapes[0]
        band_h = self._band_height()
        for y0 in range(0, h, band_h):
            self._check_stop()
            band = np.asarray(compute_here(self.data[y0 : y0 + band_h])[0]).astype(self.dtype, copy=False)
            if self.scratch is not None:
                self._save_reduced(self.scratch, band, last=y0 + band_h >= h)
            for r in range(0, band.shape[0], self.tile):
                yield from self._row_tiles(band[r : r + self.tile], w)

    def _save_reduced(self, f: Any, rows: np.ndarray, last: bool) -> None:
        """Reduce rows of level 0 down the levels, appending each level's rows to its place."""
        for k, reducer in enumerate(self.reducers, start=1):
            rows = reducer.push(rows, last)
            if rows.size:
                f.seek(self.offsets[k] + reducer.written * self.shapes[k][1] * self.pixel_bytes)
                f.write(memoryview(np.ascontiguousarray(rows)).cast("B"))
                reducer.written += rows.shape[0]

    def _reduced(self, level: int) -> Iterator[np.ndarray]:
        h, w = self.shapes[level]
        f = self.scratch
        for r in range(0, h, self.tile):
            rows = np.empty((min(self.tile, h - r), w) + self.channels, dtype=self.dtype)
            f.seek(self.offsets[level] + r * w * self.pixel_bytes)
            if f.readinto(memoryview(rows).cast("B")) != rows.nbytes:
                raise OSError(f"the scratch file {f.name} ended early")
            yield from self._row_tiles(rows, w)

    def _row_tiles(self, rows: np.ndarray, w: int) -> Iterator[np.ndarray]:
        t = self.tile
        for x in range(0, w, t):
            self._check_stop()
            part = rows[:, x : x + t]
            if part.shape[:2] != (t, t):  # edge tile: zero padding
                full = np.zeros((t, t) + self.channels, dtype=self.dtype)
                full[: part.shape[0], : part.shape[1]] = part
                part = full
            self.done += 1
            if self.progress is not None:
                self.progress(self.done, self.total)
            yield part

    def _check_stop(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise _Stop


class _LevelReducer:
    """Halves a stream of rows (arriving in order, in any batches) into the next level's rows:
    every other row and column ("nearest"), or 2 x 2 means rounded half up ("mean"). An odd row
    waits for its partner in the next batch; at the end (and for an odd last column) a lone
    row or column is its own partner, so level sizes are halved rounding up."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.pending: np.ndarray | None = None  # "mean": a row waiting for its partner
        self.seen = 0  # "nearest": rows received so far
        self.written = 0  # rows of the reduced level written so far (kept by the caller)

    def push(self, rows: np.ndarray, last: bool) -> np.ndarray:
        if self.mode == "nearest":
            first = self.seen % 2
            self.seen += rows.shape[0]
            return rows[first::2, ::2]
        if self.pending is not None:
            rows = np.concatenate([self.pending, rows])
            self.pending = None
        if rows.shape[0] % 2:
            if last:
                rows = np.concatenate([rows, rows[-1:]])
            else:
                rows, self.pending = rows[:-1], rows[-1:].copy()
        w = rows.shape[1]
        out = np.empty((rows.shape[0] // 2, -(-w // 2)) + rows.shape[2:], dtype=rows.dtype)
        for r in range(0, out.shape[0], 64):  # a few rows at a time: small temporaries
            pairs = rows[2 * r : 2 * r + 128 : 2].astype(np.uint16)
            pairs += rows[2 * r + 1 : 2 * r + 128 : 2]
            quad = pairs[:, 0::2].copy()
            quad[:, : w // 2] += pairs[:, 1::2]
            if w % 2:  # a lone last column is its own partner
                quad[:, -1] *= 2
            quad += 2
            quad //= 4
            out[r : r + 64] = quad
        return out
