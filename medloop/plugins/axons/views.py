"""Egocentric views: bilinear sampling with zero outside, the 11x11 windows, the history raster.

Everything works on a batch: ``images`` (B, H, W) (episodes of different sizes are zero-padded to
a common size, which samples exactly like "zero outside"), positions (B, 2) in (row, col) px.
"""

from __future__ import annotations

import numpy as np

VIEW = 11  # every view is 11 x 11 samples
FINE_SPACING = 1.0  # the full-resolution window: 11 px span
COARSE_SPACING = 2.0  # the 21 x 21 px window resampled to 11 x 11


def bilinear(images: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Sample ``images`` (B, H, W) at float ``points`` (B, P, 2) (row, col): (B, P) values.

    Pixel centres sit at integer coordinates, so an integer point returns the pixel exactly;
    pixels outside the image count as 0 (a point half a pixel outside reads half the edge).
    """
    images = np.asarray(images)
    b, h, w = images.shape
    r, c = points[..., 0], points[..., 1]
    r0, c0 = np.floor(r), np.floor(c)
    fr, fc = r - r0, c - c0
    r0, c0 = r0.astype(np.int64), c0.astype(np.int64)
    flat = images.reshape(b, h * w)
    out = np.zeros(r.shape, dtype=np.float64)
    for dr, dc, weight in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        rr, cc = r0 + dr, c0 + dc
        valid = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        index = np.where(valid, rr * w + cc, 0)
        out += np.where(valid, np.take_along_axis(flat, index, axis=1), 0.0) * weight
    return out


def sample(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """:func:`bilinear` for one (H, W) image and points of any shape (..., 2)."""
    pts = np.asarray(points, dtype=np.float64)
    return bilinear(np.asarray(image)[None], pts.reshape(1, -1, 2))[0].reshape(pts.shape[:-1])


def window_offsets(spacing: float, size: int = VIEW) -> np.ndarray:
    """(size, size, 2) (row, col) offsets of a window centred on 0 with ``spacing`` px between samples."""
    axis = (np.arange(size) - (size - 1) / 2.0) * spacing
    rows, cols = np.meshgrid(axis, axis, indexing="ij")
    return np.stack([rows, cols], axis=-1)


def window(images: np.ndarray, positions: np.ndarray, spacing: float) -> np.ndarray:
    """(B, 11, 11) windows of ``images`` (B, H, W) centred on ``positions`` (B, 2)."""
    offsets = window_offsets(spacing).reshape(1, -1, 2)
    values = bilinear(images, positions[:, None, :] + offsets)
    return values.reshape(len(positions), VIEW, VIEW).astype(np.float32)


def fine_view(images: np.ndarray, positions: np.ndarray, window_scale: float = 1.0) -> np.ndarray:
    """The full-resolution window: 11 samples every ``window_scale`` px (11 px span at scale 1)."""
    return window(images, positions, FINE_SPACING * window_scale)


def coarse_view(images: np.ndarray, positions: np.ndarray, window_scale: float = 1.0) -> np.ndarray:
    """The 21 x 21 px window resampled to 11 x 11 (a sample every 2 px at scale 1; 31.5 px at 1.5)."""
    return window(images, positions, COARSE_SPACING * window_scale)


def rasterise(raster: np.ndarray, starts: np.ndarray, ends: np.ndarray, rows: np.ndarray | None = None) -> None:
    """Mark in ``raster`` (B, H, W) the pixels on each segment ``starts[i] -> ends[i]`` (in place).

    ``rows`` picks which rasters the segments belong to (default: one segment per raster).
    Points every <= 0.25 px along a segment (a step is at most 4*sqrt(2) px), rounded to pixels.
    """
    rows = np.arange(len(starts)) if rows is None else rows
    t = np.linspace(0.0, 1.0, 24)[None, :, None]
    pts = np.rint(starts[:, None, :] + t * (ends - starts)[:, None, :]).astype(np.int64)
    h, w = raster.shape[1:]
    pts[..., 0] = np.clip(pts[..., 0], 0, h - 1)
    pts[..., 1] = np.clip(pts[..., 1], 0, w - 1)
    raster[np.repeat(rows, pts.shape[1]), pts[..., 0].ravel(), pts[..., 1].ravel()] = 1.0
