"""Polyline geometry shared by the generator, the environment and the metrics."""

from __future__ import annotations

import numpy as np


def arc_length(polyline: np.ndarray) -> np.ndarray:
    """Cumulative arc length at each vertex of an (N, 2) polyline (0 at the first)."""
    seg = np.linalg.norm(np.diff(polyline, axis=0), axis=1)
    return np.concatenate([[0.0], np.cumsum(seg)])


def resample(polyline: np.ndarray, spacing: float) -> np.ndarray:
    """Points every ``spacing`` px of arc length along ``polyline``, both ends kept (gaps <= spacing)."""
    polyline = np.asarray(polyline, dtype=np.float64)
    s = arc_length(polyline)
    keep = np.concatenate([[True], np.diff(s) > 0])  # repeated vertices break np.interp
    polyline, s = polyline[keep], s[keep]
    if len(polyline) < 2:
        return polyline.copy()
    targets = np.arange(0.0, s[-1], spacing)
    if s[-1] - targets[-1] > 1e-9:
        targets = np.append(targets, s[-1])
    return np.stack([np.interp(targets, s, polyline[:, 0]), np.interp(targets, s, polyline[:, 1])], axis=1)


def densify(polyline: np.ndarray, spacing: float) -> np.ndarray:
    """``polyline`` with every segment split evenly into pieces <= ``spacing``; every original
    vertex is kept (so the curve itself is unchanged, unlike :func:`resample`)."""
    polyline = np.asarray(polyline, dtype=np.float64).reshape(-1, 2)
    if len(polyline) < 2:
        return polyline.copy()
    seg = np.diff(polyline, axis=0)
    parts = np.maximum(1, np.ceil(np.linalg.norm(seg, axis=1) / spacing - 1e-9)).astype(np.int64)
    first = np.repeat(np.arange(len(seg)), parts)
    t = np.concatenate([np.arange(n) / n for n in parts])
    return np.concatenate([polyline[first] + t[:, None] * seg[first], polyline[-1:]])


def point_at(polyline: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Points at arc lengths ``s`` (clipped to the curve) along ``polyline``."""
    cum = arc_length(polyline)
    s = np.clip(s, 0.0, cum[-1])
    return np.stack([np.interp(s, cum, polyline[:, 0]), np.interp(s, cum, polyline[:, 1])], axis=-1)


def project(points: np.ndarray, polyline: np.ndarray, max_distance: float = np.inf) -> tuple[np.ndarray, np.ndarray]:
    """Distance from each of ``points`` (..., 2) to ``polyline`` and the arc length of the nearest
    point on it; ``inf`` distance (and nan arc length) beyond ``max_distance``.

    The polyline is densified to 0.5 px (its vertices kept) so that the nearest segment is one next
    to the nearest vertex (a KD-tree finds it); the projection onto those segments is then exact.
    """
    from scipy.spatial import cKDTree

    points = np.asarray(points, dtype=np.float64)
    flat = points.reshape(-1, 2)
    dense = densify(polyline, 0.5)
    dense = dense[np.concatenate([[True], np.any(np.diff(dense, axis=0) != 0, axis=1)])]  # no zero-length segments
    if len(dense) == 1:
        d = np.linalg.norm(flat - dense[0], axis=1)
        d[d > max_distance] = np.inf
        return d.reshape(points.shape[:-1]), np.where(np.isfinite(d), 0.0, np.nan).reshape(points.shape[:-1])
    cum = arc_length(dense)
    bound = max_distance + 0.5 if np.isfinite(max_distance) else np.inf
    near, k = cKDTree(dense).query(flat, distance_upper_bound=bound)
    found = np.isfinite(near)
    dist = np.full(len(flat), np.inf)
    arc = np.full(len(flat), np.nan)
    q, k = flat[found], k[found]
    best_d = np.full(len(q), np.inf)
    best_s = np.zeros(len(q))
    for first in (k - 1, k):  # the segments before and after the nearest vertex
        i = np.clip(first, 0, len(dense) - 2)
        a, b = dense[i], dense[i + 1]
        ab = b - a
        t = np.clip(np.einsum("ij,ij->i", q - a, ab) / np.einsum("ij,ij->i", ab, ab), 0.0, 1.0)
        d = np.linalg.norm(a + t[:, None] * ab - q, axis=1)
        better = d < best_d
        best_d[better] = d[better]
        best_s[better] = (cum[i] + t * (cum[i + 1] - cum[i]))[better]
    best_d[best_d > max_distance] = np.inf
    dist[found], arc[found] = best_d, np.where(np.isfinite(best_d), best_s, np.nan)
    return dist.reshape(points.shape[:-1]), arc.reshape(points.shape[:-1])


def distance_map(shape: tuple[int, int], polyline: np.ndarray, max_distance: float = np.inf) -> np.ndarray:
    """Distance of every pixel centre of an image of ``shape`` to ``polyline`` (inf beyond ``max_distance``)."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    return project(np.stack([rows, cols], axis=-1).astype(np.float64), polyline, max_distance)[0]


def unit(v: np.ndarray) -> np.ndarray:
    """``v`` (..., 2) scaled to unit length (zero vectors stay zero)."""
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.divide(v, n, out=np.zeros_like(v, dtype=np.float64), where=n > 0)
