"""Synthetic whole-slide images for tests and benchmarks (no downloads, no imagecodecs).

A slide is written tile by tile with tifffile as a pyramidal, tiled, deflate-compressed RGB TIFF
that OpenSlide reads: either Aperio-like (``flavor="aperio"``: an ``Aperio Image Library``
description with ``MPP`` and ``AppMag``, a stripped thumbnail as the second page, as real .svs
files have) or plain generic TIFF (``flavor="generic"``: resolution tags only).

Every pixel is a function of its level-0 coordinates, so any region of any level can be
checked with :meth:`SyntheticSlide.expected`; level *k* holds level 0 sampled at every 2**k-th
pixel. The full image is never materialised, so 40000 x 40000 slides take seconds:

* ``pattern="gradient"``: every pixel differs from its neighbours (for region checks).
* ``pattern="blocks"``: 4096-pixel blocks of seeded palette colours with a 32-pixel checker
  texture; full tiles repeat, so their compressed bytes are cached (for huge slides).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BLOCK = 4096  # level-0 side of one colour block in the "blocks" pattern
CHECKER = 32  # level-0 side of one checker square in the "blocks" pattern


@dataclass(frozen=True)
class SyntheticSlide:
    """What :func:`write_synthetic_slide` wrote, and what any region of it must hold."""

    path: Path
    level_shapes: tuple[tuple[int, int], ...]  # (h, w) per level, finest first
    tile: int
    mpp: float | None
    pattern: str
    seed: int
    flavor: str
    _palette: np.ndarray = field(repr=False, compare=False, default=None)
    _table: np.ndarray = field(repr=False, compare=False, default=None)

    @property
    def size(self) -> tuple[int, int]:
        return self.level_shapes[0]

    def expected(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        """The (h, w, 3) uint8 RGB region at ``(y, x)`` in ``level``'s own pixel coordinates."""
        d = 2**level
        ys = (np.arange(y, y + h, dtype=np.int64) * d)[:, None]
        xs = (np.arange(x, x + w, dtype=np.int64) * d)[None, :]
        return _pattern(self.pattern, ys, xs, self.seed, self._palette, self._table)


def _pattern(pattern: str, ys: np.ndarray, xs: np.ndarray, seed: int, palette, table) -> np.ndarray:
    """RGB at level-0 rows ``ys`` (n, 1) and columns ``xs`` (1, m)."""
    if pattern == "gradient":
        r = (xs + 3 * seed) % 251 + 0 * ys
        g = (ys + 5 * seed) % 241 + 0 * xs
        b = (xs // 251 + 7 * (ys // 241) + seed) % 256
        return np.stack([r, g, b], axis=-1).astype(np.uint8)
    if pattern == "blocks":
        rgb = palette[table[ys // BLOCK, xs // BLOCK]]
        checker = (((ys // CHECKER) + (xs // CHECKER)) % 2 * 40).astype(np.uint8)
        return rgb ^ checker[..., None]
    raise ValueError(f"unknown pattern {pattern!r}; use 'gradient' or 'blocks'")


def default_levels(size: tuple[int, int], tile: int) -> int:
    """Halve while both sides stay even (exact downsamples) and the level exceeds one tile."""
    h, w = size
    n = 1
    while h % 2 == 0 and w % 2 == 0 and max(h, w) > tile:
        h, w = h // 2, w // 2
        n += 1
    return n


def write_synthetic_slide(
    path: str | Path,
    size: tuple[int, int] = (2048, 3072),
    tile: int = 512,
    levels: int | None = None,
    mpp: float | None = 0.25,
    seed: int = 0,
    pattern: str = "gradient",
    flavor: str = "aperio",
    compresslevel: int = 1,
) -> SyntheticSlide:
    """Write a pyramidal tiled RGB TIFF tile by tile (never the whole image in memory).

    Args:
        path: output file (``.svs`` or ``.tif``).
        size: level-0 ``(height, width)``.
        tile: tile side (a multiple of 16).
        levels: number of pyramid levels (level k is 2**k smaller); default: see
            :func:`default_levels`.
        mpp: microns per pixel at level 0 (description and resolution tags); None writes
            neither (the TIFF default: resolution 1 with no unit).
        seed: selects the pattern's offsets / palette.
        pattern: ``"gradient"`` or ``"blocks"`` (see module docstring).
        flavor: ``"aperio"`` or ``"generic"``.
        compresslevel: zlib level of the tiles.
    """
    import tifffile

    path = Path(path)
    h, w = size
    n_levels = default_levels(size, tile) if levels is None else int(levels)
    shapes = tuple((-(-h // 2**k), -(-w // 2**k)) for k in range(n_levels))
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, size=(16, 3), dtype=np.uint8)
    table = rng.integers(0, 16, size=(-(-h // BLOCK), -(-w // BLOCK)))
    slide = SyntheticSlide(path, shapes, tile, mpp, pattern, seed, flavor, palette, table)
    if flavor not in ("aperio", "generic"):
        raise ValueError(f"unknown flavor {flavor!r}; use 'aperio' or 'generic'")

    def tiles(level: int):
        lh, lw = shapes[level]
        cache: dict[tuple[int, int], bytes] = {}
        for ty in range(0, lh, tile):
            for tx in range(0, lw, tile):
                key = _cache_key(slide, level, ty, tx) if pattern == "blocks" else None
                if key is not None and key in cache:
                    yield cache[key]
                    continue
                block = np.zeros((tile, tile, 3), np.uint8)
                th, tw = min(tile, lh - ty), min(tile, lw - tx)
                block[:th, :tw] = slide.expected(level, ty, tx, th, tw)
                # Repeated tiles are compressed once, so spend the effort: the file stays small.
                data = zlib.compress(block.tobytes(), 9 if key is not None else compresslevel)
                if key is not None:
                    cache[key] = data
                yield data

    res = 1e4 / mpp if mpp else None  # pixels per centimetre
    common = dict(tile=(tile, tile), compression="zlib", photometric="rgb", metadata=None, dtype=np.uint8)
    desc0 = (
        f"Aperio Image Library v10.0.0\r\n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) RGB deflate"
        f"|AppMag = 40{f'|MPP = {mpp}' if mpp else ''}|Filename = {path.stem}|Seed = {seed}"
    )
    bigtiff = 3 * h * w > 2**31
    with tifffile.TiffWriter(path, bigtiff=bigtiff) as tw:
        for level, (lh, lw) in enumerate(shapes):
            r = res / 2**level if res else None
            resolution = dict(resolution=(r, r), resolutionunit="CENTIMETER") if r else {}
            if flavor == "aperio":
                desc = desc0 if level == 0 else f"Aperio Image Library v10.0.0\r\n{w}x{h} -> {lw}x{lh}"
                tw.write(tiles(level), shape=(lh, lw, 3), description=desc, **resolution, **common)
                if level == 0:  # the thumbnail: stripped, so OpenSlide treats it as associated
                    th = shapes[-1]
                    thumb = slide.expected(n_levels - 1, 0, 0, *th)
                    tw.write(thumb, photometric="rgb", compression="zlib", metadata=None,
                             description=f"Aperio Image Library v10.0.0\r\n{w}x{h} -> {th[1]}x{th[0]}")
            else:
                tw.write(tiles(level), shape=(lh, lw, 3), subfiletype=1 if level else 0,
                         **resolution, **common)
    return slide


def _cache_key(slide: SyntheticSlide, level: int, ty: int, tx: int) -> tuple[int, int] | None:
    """A key for full tiles that lie inside one colour block (their content depends on nothing else)."""
    lh, lw = slide.level_shapes[level]
    t, d = slide.tile, 2**level
    if ty + t > lh or tx + t > lw or (t * d) % (2 * CHECKER) or BLOCK % (t * d):
        return None
    y0, x0 = ty * d, tx * d
    return (level, int(slide._table[y0 // BLOCK, x0 // BLOCK]))
