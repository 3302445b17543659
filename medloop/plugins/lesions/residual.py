"""Residual anomaly maps of Baur et al. (spec §3): r = median(max(x - x_hat, 0)), the threshold t
that maximises pooled Dice on labelled validation images, and the UAD scores (pooled Dice, AUPRC).

Only hyper-intense residuals count (FLAIR lesions are bright), so a dark blob is never detected.
The median removes isolated bright pixels the autoencoder leaves (noise) but keeps lesion-sized
blobs: 5 x 5 per 2-D slice, or 5 x 5 x 5 over a stack of slices as in the paper.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medloop.plugins.lesions.checks import LesionInputError, check_mask, check_normalised, check_threshold
from medloop.plugins.lesions.metrics import average_precision, dice


def _median_size(median: int | Sequence[int], shape: tuple[int, ...], name: str) -> tuple[int, ...] | None:
    """The filter footprint for ``shape``: an int applies to every axis; None means no filter."""
    if isinstance(median, (int, np.integer)) and not isinstance(median, bool):
        size = (int(median),) * len(shape)
    else:
        size = tuple(int(k) for k in median)
    if len(size) not in (2, 3) or min(size) < 1:
        raise LesionInputError(f"median size {median!r}; give a positive odd size such as 5, (5, 5) or (5, 5, 5)")
    depth = 1 if len(shape) == 2 else shape[0]
    if len(size) == 3 and size[0] > 1 and depth == 1:
        raise LesionInputError(
            f"a {'x'.join(map(str, size))} median runs over a stack of slices, but {name} is a single slice {shape}; "
            f"use median={size[-1]} (per slice) or give the whole stack")
    if len(size) == 2 and len(shape) == 3:
        size = (1, *size)  # per slice of the stack
    if len(size) != len(shape):
        raise LesionInputError(f"median size {size} does not fit {name} of shape {shape}; give {len(shape)} sizes or one")
    return None if max(size) == 1 else size


def residual_map(
    image: np.ndarray, reconstruction: np.ndarray, brain_mask: np.ndarray | None = None,
    median: int | Sequence[int] = 5, name: str = "image",
) -> np.ndarray:
    """r = median(max(x - x_hat, 0)), zero outside the brain mask (default: image > 0); float32.

    ``median``: 5 means 5 x 5 on a 2-D slice and 5 x 5 x 5 on a (Z, Y, X) stack; (5, 5) filters
    each slice of a stack on its own; 1 or 0 turns it off (0 is read as 1)."""
    from scipy.ndimage import median_filter

    x = np.asarray(image, np.float32)
    x_hat = np.asarray(reconstruction, np.float32)
    if x.ndim not in (2, 3):
        raise LesionInputError(f"{name} has shape {x.shape}; give a 2-D slice or a 3-D stack of slices (Z, Y, X)")
    if x_hat.shape != x.shape:
        raise LesionInputError(f"reconstruction has shape {x_hat.shape} but {name} has {x.shape}; reconstruct the same image")
    mask = check_mask(x > 0 if brain_mask is None else brain_mask, x.shape, f"brain mask of {name}")
    size = _median_size(max(median, 1) if isinstance(median, (int, np.integer)) else median, x.shape, name)
    r = np.maximum(x - x_hat, 0.0)
    if size is not None:
        r = median_filter(r, size=size, mode="mirror")
    return np.where(mask, r, 0.0).astype(np.float32)


def anomaly_map(
    model: Any, image: np.ndarray, brain_mask: np.ndarray | None = None, median: int | Sequence[int] = 5,
    name: str = "image",
) -> np.ndarray:
    """The residual map of ``image`` (2-D or a (Z, Y, X) stack in [0, 1]) under the autoencoder
    ``model``; see :func:`residual_map`."""
    from medloop.plugins.lesions.anomaly import reconstruct

    x = np.asarray(image)
    if x.dtype.kind not in "uif" or x.dtype.kind == "b":
        raise LesionInputError(f"{name} has dtype {x.dtype}; give numeric greyscale data")
    x = x.astype(np.float32)
    bad = int(np.count_nonzero(~np.isfinite(x)))
    if bad:
        raise LesionInputError(f"{name} has {bad} NaN or infinite values; replace them first")
    check_normalised(x, name)
    if brain_mask is not None:
        check_mask(brain_mask, x.shape, f"brain mask of {name}")
    return residual_map(x, reconstruct(model, x), brain_mask, median, name)


def threshold_map(r: np.ndarray, t: float) -> np.ndarray:
    """s = r >= t as uint8 {0, 1}; t in [0, 1]. t = 0 would label everything, so it is refused
    only by the range check's lower bound being inclusive: pick t > 0 in practice."""
    return (np.asarray(r) >= check_threshold(t)).astype(np.uint8)


def _pooled(maps: Sequence[np.ndarray], truths: Sequence[np.ndarray], masks: Sequence[np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
    if len(maps) != len(truths) or not len(maps) or (masks is not None and len(masks) != len(maps)):
        raise LesionInputError(
            f"{len(maps)} maps, {len(truths)} truths and {'no' if masks is None else len(masks)} masks; give one truth (and mask) per map")
    rs, ys = [], []
    for i, (r, y) in enumerate(zip(maps, truths)):
        r, y = np.asarray(r, np.float64), np.asarray(y) != 0
        if r.shape != y.shape:
            raise LesionInputError(f"map {i} has shape {r.shape} but its truth {y.shape}; pair each map with its own mask")
        keep = np.ones(r.shape, bool) if masks is None else check_mask(masks[i], r.shape, f"brain mask {i}")
        rs.append(r[keep])
        ys.append(y[keep])
    return np.concatenate(rs), np.concatenate(ys)


def calibrate_threshold(
    maps: Sequence[np.ndarray], truths: Sequence[np.ndarray], grid: Sequence[float] | None = None,
    masks: Sequence[np.ndarray] | None = None,
) -> tuple[float, float]:
    """(t, Dice): the threshold maximising pooled Dice of ``r >= t`` over labelled validation
    images (the smallest such t on ties). Default grid: 400 steps over (0, max r], within [0, 1]."""
    r, y = _pooled(maps, truths, masks)
    if not y.any():
        raise LesionInputError("the validation truths have no lesion pixel; calibrate on images with lesions")
    if grid is None:
        top = float(min(r.max(), 1.0))
        grid = np.linspace(0.0, top, 401)[1:] if top > 0 else np.array([0.0])
    ts = np.asarray([check_threshold(t, "grid threshold") for t in grid], np.float64)
    # Counts of r >= t for every t at once: sort once, then binary search.
    order = np.argsort(r, kind="mergesort")
    r_sorted, y_sorted = r[order], y[order]
    tp_from = np.r_[np.cumsum(y_sorted[::-1])[::-1], 0]  # lesion pixels at index >= i
    first = np.searchsorted(r_sorted, ts, side="left")
    tp = tp_from[first].astype(np.float64)
    predicted = (len(r_sorted) - first).astype(np.float64)
    scores = 2.0 * tp / (predicted + y.sum())
    best = int(np.argmax(scores))
    return float(ts[best]), float(scores[best])


def uad_scores(
    maps: Sequence[np.ndarray], truths: Sequence[np.ndarray], t: float, masks: Sequence[np.ndarray] | None = None,
) -> dict[str, float]:
    """Pooled Dice of ``r >= t`` and AUPRC of r over every pixel inside the brain masks."""
    r, y = _pooled(maps, truths, masks)
    return {"dice": dice(r >= check_threshold(t), y), "auprc": average_precision(y, r)}
