"""TIFF-family slides (tiled pyramidal TIFF, SVS, OME-TIFF) read through tifffile's zarr store.

tifffile's ``ZarrTiffStore`` maps each tile of each level to one zarr chunk, so a region reads
and decodes exactly the tiles it touches, with no tile cache of its own (OpenSlide keeps one,
which is why it grows in memory). :func:`open_tiff_levels` hands a slide to this reader only
when tifffile sees the same levels as OpenSlide (same count and sizes), every level is tiled
8-bit RGB in one plane and tifffile can decode its compression; anything else (NDPI, MRXS, RGBA,
JPEG 2000, ...) stays with OpenSlide. OpenSlide still reads the header, so the geometry
(spacing, levels, vendor metadata) is the same whichever reader decodes the pixels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medloop.app.errors import ImageReadError

TIFF_READ_SUFFIXES = (".svs", ".tif", ".tiff")
# TIFF compressions tifffile decodes to the same pixels as OpenSlide: none, LZW, JPEG, deflate
# (Adobe and old), zstd, WebP. JPEG 2000 (Aperio 33003/33005) keeps OpenSlide's colour handling.
_COMPRESSIONS = frozenset({1, 5, 7, 8, 32946, 50000, 50001})
_RGB, _YCBCR, _JPEG = 2, 6, 7


def open_tiff_levels(path: str, level_dims: tuple[tuple[int, int], ...]) -> _TiffHandle | None:
    """A tifffile reader for the slide at ``path`` whose levels are OpenSlide's ``level_dims``
    ((width, height) per level; tifffile's further levels, e.g. an OME-TIFF's SubIFDs that
    OpenSlide does not see, are left out so the geometry stays OpenSlide's), or None when
    tifffile cannot read it as those tiled RGB levels."""
    try:
        import tifffile
        import zarr  # noqa: F401 (the store needs it)
    except ImportError:
        return None
    try:
        tif = tifffile.TiffFile(path)
    except Exception:  # not for tifffile: OpenSlide reads it (or explains why not)
        return None
    try:
        if _readable_levels(tif, level_dims):
            return _TiffHandle(path, tif, len(level_dims))
    except Exception:
        pass
    tif.close()
    return None


def _readable_levels(tif: Any, level_dims: tuple[tuple[int, int], ...]) -> bool:
    """Whether tifffile's first series holds OpenSlide's levels as tiled 8-bit RGB it decodes."""
    import tifffile

    series = tif.series[0]
    levels = series.levels
    # OpenSlide ignores SubIFDs, so it may list fewer levels (an OME-TIFF's level 0 only)
    if len(levels) < len(level_dims) or series.axes != "YXS":
        return False
    for level, (w, h) in zip(levels, level_dims):
        page = level.keyframe
        photometric, compression = int(page.photometric), int(page.compression)
        if (
            tuple(level.shape) != (int(h), int(w), 3)
            or len(level.pages) != 1
            or not page.is_tiled
            or page.dtype != np.uint8
            or int(page.planarconfig) != 1
            or compression not in _COMPRESSIONS
            or not (photometric == _RGB or (photometric == _YCBCR and compression == _JPEG))
            or compression not in tifffile.TIFF.DECOMPRESSORS
        ):
            return False
    return True


class _TiffHandle:
    """An open TiffFile with one zarr array per level; reopened from its path when unpickled
    (e.g. by dask.distributed). Same ``read_rgb`` as the OpenSlide handle."""

    def __init__(self, path: str, tif: Any = None, levels: int | None = None) -> None:
        import tifffile
        import zarr

        self.path = path
        self.tif = tif if tif is not None else tifffile.TiffFile(path)
        series = self.tif.series[0]
        # a tile missing from the file (offset 0) reads white, as OpenSlide's transparent pixels
        self.store = series.aszarr(fillvalue=255)
        opened = zarr.open(self.store, mode="r")
        n = len(series.levels) if levels is None else levels
        self.levels = [opened] if hasattr(opened, "shape") else [opened[str(k)] for k in range(n)]
        # (rows, columns) of one tile per level, for tile-aligned dask chunks
        self.tiles = [(int(lv.keyframe.tilelength), int(lv.keyframe.tilewidth)) for lv in series.levels[:n]]

    def __reduce__(self) -> tuple[Any, ...]:
        return (_TiffHandle, (self.path, None, len(self.levels)))

    def read_rgb(self, level: int, downsample: float, y: int, x: int, h: int, w: int) -> np.ndarray:
        """The (h, w, 3) uint8 region at (y, x) in ``level``'s pixels; white outside the level
        (as OpenSlide's transparent pixels composited onto white). Reads only the touched tiles."""
        arr = self.levels[level]
        lh, lw = int(arr.shape[0]), int(arr.shape[1])
        y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + h, lh), min(x + w, lw)
        try:
            inside = np.asarray(arr[y0:y1, x0:x1]) if y1 > y0 and x1 > x0 else None
        except Exception as exc:
            location = (round(x * downsample), round(y * downsample))
            raise ImageReadError(
                f"cannot read {self.path}: damaged tile data at level {level} near {location} "
                f"({_reason(exc)}); copy the file again or re-export it from the scanner software"
            ) from None
        if inside is not None and inside.shape[:2] == (h, w):
            return inside
        out = np.full((max(h, 0), max(w, 0), 3), 255, dtype=np.uint8)
        if inside is not None:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = inside
        return out


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[-1] if text else type(exc).__name__)[:200]
