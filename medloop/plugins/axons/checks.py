"""The tracker's input error and the checks shared by tracing, training and the metrics.

Every check runs before any work and raises :class:`TracingInputError` with a one-line message
that names the offending value and says what to do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medloop.app.errors import MedloopError

MIN_SIDE = 21  # the coarse view spans 21 x 21 px


class TracingInputError(MedloopError, ValueError):
    """Bad input to the axon tracker (image, seeds, settings, checkpoint or ground truth)."""


def check_image(image: Any) -> np.ndarray:
    """``image`` as a finite float32 2-D array, or an error saying what is wrong with it."""
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        raise TracingInputError(
            f"image has shape {arr.shape} (RGB); tracing needs one 2-D greyscale image: pick one channel or convert to grey")
    if arr.ndim != 2:
        raise TracingInputError(
            f"image has shape {arr.shape}; tracing needs one 2-D greyscale image: for a 3-D stack use its maximum "
            "projection (image.max(axis=0))")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise TracingInputError(f"image has dtype {arr.dtype}; give a real-valued greyscale image")
    arr = arr.astype(np.float32)
    bad = int(np.count_nonzero(~np.isfinite(arr)))
    if bad:
        raise TracingInputError(f"image has {bad} NaN or infinite pixels; replace them (e.g. numpy.nan_to_num) before tracing")
    if arr.shape[0] < MIN_SIDE or arr.shape[1] < MIN_SIDE:
        raise TracingInputError(
            f"image is {arr.shape[0]}x{arr.shape[1]} px, smaller than the {MIN_SIDE}x{MIN_SIDE} coarse view; "
            f"use an image of at least {MIN_SIDE}x{MIN_SIDE} px")
    if float(arr.max()) == float(arr.min()):
        raise TracingInputError(f"image is constant (every pixel {float(arr.flat[0]):g}); there is nothing to trace, choose another image")
    return arr


def check_points(points: Any, shape: tuple[int, int], what: str = "seed") -> np.ndarray:
    """(N, 2) float (row, col) points, each inside an image of ``shape``."""
    arr = np.asarray(points, dtype=np.float64)
    if arr.size == 0:
        raise TracingInputError(f"no {what} given; add at least one {what} point (row, col) at an axon end")
    if arr.ndim == 1 and arr.shape[0] == 2:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise TracingInputError(f"{what}s must be an (N, 2) array of (row, col), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        i = int(np.flatnonzero(~np.all(np.isfinite(arr), axis=1))[0])
        raise TracingInputError(f"{what} {i} has a non-finite coordinate {tuple(arr[i])}; give finite (row, col) values")
    h, w = shape
    outside = (arr[:, 0] < 0) | (arr[:, 0] > h - 1) | (arr[:, 1] < 0) | (arr[:, 1] > w - 1)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise TracingInputError(
            f"{what} {i} at (row {arr[i, 0]:g}, col {arr[i, 1]:g}) is outside the {h}x{w} image; move it inside "
            f"(rows 0-{h - 1}, cols 0-{w - 1})")
    return arr


def check_positive(**values: float | None) -> None:
    """Every given (non-None) setting must be a positive number."""
    for name, value in values.items():
        if value is None:
            continue
        if not np.isfinite(value) or value <= 0:
            raise TracingInputError(f"{name} must be positive, got {value}; choose a value above 0")


def check_path(path: Any, index: int = 0, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A ground-truth centreline: (N >= 2, 2) finite (row, col) vertices, inside ``shape`` if given."""
    arr = np.asarray(path, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[-1] != 2:
        raise TracingInputError(f"ground-truth path {index} must be an (N, 2) array of (row, col), got shape {arr.shape}")
    if len(arr) < 2:
        raise TracingInputError(f"ground-truth path {index} has {len(arr)} vertex; draw at least 2 vertices along the axon")
    if not np.all(np.isfinite(arr)):
        raise TracingInputError(f"ground-truth path {index} has non-finite vertices; redraw it")
    if shape is not None:
        h, w = shape
        outside = (arr[:, 0] < 0) | (arr[:, 0] > h - 1) | (arr[:, 1] < 0) | (arr[:, 1] > w - 1)
        if outside.any():
            j = int(np.flatnonzero(outside)[0])
            raise TracingInputError(
                f"ground-truth path {index} vertex {j} at (row {arr[j, 0]:g}, col {arr[j, 1]:g}) is outside the "
                f"{h}x{w} image; redraw the path inside the image")
    return arr


def check_pairs(images: Sequence[Any], paths: Sequence[Any]) -> list[tuple[np.ndarray, np.ndarray]]:
    """User (image, true path) pairs for fine-tuning, each checked."""
    if len(images) == 0:
        raise TracingInputError("no training images given; give at least one (image, ground-truth path) pair")
    if len(images) != len(paths):
        raise TracingInputError(f"{len(images)} images but {len(paths)} ground-truth paths; give one path per image")
    pairs = []
    for i, (image, path) in enumerate(zip(images, paths)):
        arr = check_image(image)
        pairs.append((arr, check_path(path, i, arr.shape)))
    return pairs
