"""The staining plugin's input error and the checks shared by every staining method.

Every check runs before any compute and raises :class:`StainInputError` with a one-line message
that names the input and says what to do (spec §5). The same checks serve the Python API, the
CLI verbs and the panels, so the three give the same message for the same mistake.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medloop.app.errors import MedloopError

#: dtypes the staining methods accept as they are (signed integers are accepted when >= 0).
DTYPES = ("uint8", "uint16", "float32", "float64")


class StainInputError(MedloopError, ValueError):
    """Bad input to a staining method (image, channels, colours, settings, model or training data)."""


def check_array(image: Any, name: str = "image") -> np.ndarray:
    """``image`` as a non-empty real array of a supported dtype without NaN/Inf."""
    arr = np.asarray(image)
    if arr.size == 0:
        raise StainInputError(f"{name} is empty (shape {arr.shape}); give an image with pixels")
    kind = arr.dtype.kind
    if kind == "b" or kind == "c" or kind not in "uif":
        raise StainInputError(f"{name} has dtype {arr.dtype}; give uint8, uint16, float32 or float64 data")
    if kind == "i" and arr.min() < 0:
        raise StainInputError(
            f"{name} has dtype {arr.dtype} with negative values (min {arr.min()}); give uint8, uint16 or float data")
    if kind == "u" and arr.dtype.itemsize > 2:
        raise StainInputError(f"{name} has dtype {arr.dtype}; give uint8, uint16, float32 or float64 data")
    if kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            raise StainInputError(f"{name} has {bad} NaN or infinite values; replace them (e.g. numpy.nan_to_num) first")
    return arr


def integer_scale(arr: np.ndarray, name: str) -> float:
    """The full-scale value of integer data: 255 for uint8 (or int data up to 255), else 65535."""
    if arr.dtype == np.uint8:
        return 255.0
    top = float(arr.max())
    if arr.dtype != np.uint16 and top > 65535:
        raise StainInputError(f"{name} has integer values up to {top:g}; give uint8/uint16 data or floats in [0, 1]")
    return 255.0 if arr.dtype != np.uint16 and top <= 255 else 65535.0


def to_unit(image: Any, name: str = "image", value_range: Sequence[float] | None = None) -> np.ndarray:
    """``image`` as float64 in [0, 1]: integers by their dtype's full scale; floats must already lie
    in [0, 1] unless ``value_range=(lo, hi)`` says what maps to 0 and 1 (then clipped)."""
    arr = check_array(image, name)
    if value_range is not None:
        lo, hi = (float(v) for v in value_range)
        if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
            raise StainInputError(f"value range {tuple(value_range)} for {name} is not (low, high) with high > low; fix it")
        return np.clip((arr.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0)
    if arr.dtype.kind == "f":
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise StainInputError(
                f"{name} is float data in [{lo:g}, {hi:g}], outside [0, 1]; give its value range (low, high) or scale it to [0, 1]")
        return arr.astype(np.float64)
    return arr.astype(np.float64) / integer_scale(arr, name)


def check_not_constant(channel: np.ndarray, name: str) -> None:
    """A constant channel cannot be normalised (its percentiles coincide)."""
    if float(channel.max()) == float(channel.min()):
        raise StainInputError(
            f"{name} is constant (every pixel {float(channel.flat[0]):g}); it cannot be normalised, choose another channel or image")


def check_spatial(arr: np.ndarray, name: str, spatial: int, per_plane: bool) -> None:
    """``spatial`` image axes must be 2 unless ``per_plane`` (then each leading plane runs alone)."""
    if spatial < 2:
        raise StainInputError(f"{name} has shape {arr.shape}: no 2-D image in it; give a (Y, X) image per channel")
    if spatial > 2 and not per_plane:
        raise StainInputError(
            f"{name} has shape {arr.shape}: {spatial} spatial axes (3-D or time); tick 'per plane' to process each 2-D plane")


def check_rgb(image: Any, name: str = "image", value_range: Sequence[float] | None = None,
              per_plane: bool = False) -> np.ndarray:
    """An RGB image (..., Y, X, 3) as float64 in [0, 1]; RGBA only with a constant alpha."""
    arr = check_array(image, name)
    channels = arr.shape[-1] if arr.ndim >= 3 else 1
    if channels == 4:
        alpha = arr[..., 3]
        if float(alpha.max()) != float(alpha.min()):
            raise StainInputError(f"{name} is RGBA with a varying alpha channel; flatten it onto a background first")
        arr = arr[..., :3]
    elif channels != 3:
        raise StainInputError(f"{name} has shape {arr.shape}: expected 3 channels (RGB) last, got {channels}")
    check_spatial(arr, name, arr.ndim - 1, per_plane)
    return to_unit(arr, name, value_range)


def confocal_channels(image: Any, name: str = "image", channel_axis: int | None = None) -> tuple[np.ndarray, int]:
    """``image`` with its size-2 (FCM, RCM) channel axis first, and that axis' original index.

    Without ``channel_axis`` the first axis is tried, then the last: a confocal layer has its
    two channels at either end."""
    arr = check_array(image, name)
    if channel_axis is None:
        if arr.ndim >= 3 and arr.shape[0] == 2:
            channel_axis = 0
        elif arr.ndim >= 3 and arr.shape[-1] == 2:
            channel_axis = arr.ndim - 1
        else:
            found = 1 if arr.ndim < 3 else (arr.shape[0] if arr.shape[0] <= arr.shape[-1] else arr.shape[-1])
            raise StainInputError(f"{name}: expected 2 channels (FCM, RCM), got {found}")
    axis = channel_axis % arr.ndim
    if arr.shape[axis] != 2:
        raise StainInputError(f"{name}: expected 2 channels (FCM, RCM), got {arr.shape[axis]}")
    return np.moveaxis(arr, axis, 0), axis


def check_colour(colour: Sequence[float], name: str) -> np.ndarray:
    """An RGB colour as three floats in [0, 1]."""
    arr = np.asarray(colour, dtype=np.float64)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1:
        raise StainInputError(f"colour {name} = {tuple(np.ravel(colour))} is not three values in [0, 1]; pick an RGB colour")
    return arr


def check_positive(**values: float | None) -> None:
    """Every given (non-None) setting must be a positive finite number."""
    for key, value in values.items():
        if value is not None and (not np.isfinite(value) or value <= 0):
            raise StainInputError(f"{key} must be positive, got {value}; choose a value above 0")


def check_same_shape(a: np.ndarray, b: np.ndarray, names: tuple[str, str]) -> None:
    if a.shape != b.shape:
        raise StainInputError(f"{names[0]} has shape {a.shape} but {names[1]} has {b.shape}; give co-registered images of one shape")
