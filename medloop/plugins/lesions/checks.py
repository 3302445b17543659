"""The lesion plugin's input error and the checks shared by every entry point (spec §1, §3, §6).

Each check runs before any compute and raises :class:`LesionInputError` with one line that names
the input, the expected and the actual value, and what to do. The Python API, the CLI verbs and
the panels call the same checks, so they give the same message for the same mistake.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medloop.app.errors import MedloopError

#: Box side below which no lesion is synthesised (spec §1: "box side < 4 px").
MIN_BOX_SIDE = 4
#: Crop scale factors of Gupta et al.: the crop side is s * max(box width, box height).
SCALES = (1, 2)
#: Range outside which an image is "not normalised" for the anomaly model (spec §3).
NORMALISED_RANGE = (-0.5, 1.5)


class LesionInputError(MedloopError, ValueError):
    """Bad input to a lesion method: image, box, mask, threshold, scale, model or training data."""


def check_image_2d(image: Any, name: str = "image") -> np.ndarray:
    """``image`` as a finite, non-constant 2-D greyscale float32 array."""
    arr = np.asarray(image)
    if arr.dtype.kind not in "uif" or arr.dtype.kind == "b":
        raise LesionInputError(f"{name} has dtype {arr.dtype}; give numeric greyscale data")
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        raise LesionInputError(f"{name} has shape {arr.shape}: RGB(A), but a 2-D greyscale image is expected; convert it to grey first")
    if arr.ndim != 2:
        raise LesionInputError(f"{name} has shape {arr.shape}: {arr.ndim} axes, but a 2-D greyscale image (Y, X) is expected; pick one slice")
    arr = arr.astype(np.float32)
    bad = int(np.count_nonzero(~np.isfinite(arr)))
    if bad:
        raise LesionInputError(f"{name} has {bad} NaN or infinite values; replace them first")
    if float(arr.max()) == float(arr.min()):
        raise LesionInputError(f"{name} is constant (every pixel {float(arr.flat[0]):g}); give an image with content")
    return arr


def check_box(box: Sequence[float], shape: tuple[int, ...], name: str = "box") -> tuple[int, int, int, int]:
    """A box ``(y0, x0, y1, x1)`` in pixels, half-open, fully inside ``shape``, sides >= 4 px."""
    try:
        y0, x0, y1, x1 = (int(round(float(v))) for v in box)
    except (TypeError, ValueError):
        raise LesionInputError(f"{name} {tuple(box) if isinstance(box, Sequence) else box!r} is not four numbers Y0 X0 Y1 X1") from None
    if y1 < y0:
        y0, y1 = y1, y0
    if x1 < x0:
        x0, x1 = x1, x0
    height, width = int(shape[0]), int(shape[1])
    if y0 < 0 or x0 < 0 or y1 > height or x1 > width:
        raise LesionInputError(
            f"{name} ({y0}, {x0}, {y1}, {x1}) is not fully inside the image (0, 0, {height}, {width}); draw it inside the image")
    if min(y1 - y0, x1 - x0) < MIN_BOX_SIDE:
        raise LesionInputError(
            f"{name} ({y0}, {x0}, {y1}, {x1}) is {y1 - y0}x{x1 - x0} px; sides must be at least {MIN_BOX_SIDE} px, draw a larger box")
    return y0, x0, y1, x1


def check_scale(s: Any) -> int:
    """The crop scale ``s`` of Gupta et al.: 1 or 2."""
    if s not in SCALES or isinstance(s, bool):
        raise LesionInputError(f"crop scale s = {s!r}; choose 1 or 2 (the crop side is s x the box's longer side)")
    return int(s)


def check_threshold(t: Any, name: str = "threshold t") -> float:
    """A score or residual threshold in [0, 1]."""
    try:
        value = float(t)
    except (TypeError, ValueError):
        raise LesionInputError(f"{name} = {t!r} is not a number; choose a value in [0, 1]") from None
    if not np.isfinite(value) or value < 0.0 or value > 1.0:
        raise LesionInputError(f"{name} = {t!r} is outside [0, 1]; choose a value in [0, 1]")
    return value


def check_normalised(image: np.ndarray, name: str = "image") -> None:
    """The anomaly model expects intensities in [0, 1] (spec §3: min < -0.5 or max > 1.5 is refused)."""
    lo, hi = float(np.min(image)), float(np.max(image))
    if lo < NORMALISED_RANGE[0] or hi > NORMALISED_RANGE[1]:
        raise LesionInputError(
            f"{name} has values in [{lo:g}, {hi:g}] but the anomaly model expects an image scaled to [0, 1]; "
            "normalise it first (e.g. divide by its 99.5th percentile)")


def check_mask(mask: Any, shape: tuple[int, ...], name: str = "brain mask") -> np.ndarray:
    """A non-empty boolean mask of ``shape``."""
    arr = np.asarray(mask)
    if arr.shape != tuple(shape):
        raise LesionInputError(f"{name} has shape {arr.shape} but the image has {tuple(shape)}; give a mask of the image's shape")
    arr = arr != 0
    if not arr.any():
        raise LesionInputError(f"{name} is empty; draw or compute a mask that covers the anatomy")
    return arr


def check_count(value: Any, name: str, minimum: int = 1) -> int:
    """A whole number >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
        raise LesionInputError(f"{name} = {value!r}; give a whole number >= {minimum}")
    return int(value)
