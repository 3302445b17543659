"""Confocal (FCM + RCM) to pseudo-H&E: the Gareau (2009) analytic renderer and its inverse.

Paper A (Combalia et al., MIDL 2019) describes the renderer only in words: a linear mix of the
fluorescence (FCM, nuclei, hematoxylin-like) and reflectance (RCM, cytoplasm and collagen,
eosin-like) modes. We use the subtractive form usually cited for it (spec §1.2)::

    RGB = clip(1 - F * (1 - h) - R * (1 - e), 0, 1)

with F, R the normalised modes in [0, 1] and h, e the stains' RGB colours. The colour defaults
were recalled from the 2009 paper, not verified against it, so every function takes them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from medloop.plugins.staining.checks import (
    StainInputError,
    check_colour,
    check_not_constant,
    check_same_shape,
    check_spatial,
    confocal_channels,
    to_unit,
)

#: Hematoxylin (nuclei) and eosin colours of the renderer [gap: unverified defaults, spec §1.2].
H_COLOUR = (0.30, 0.20, 1.00)
E_COLOUR = (1.00, 0.55, 0.88)


def robust_normalise(channel: np.ndarray, lower: float = 1.0, upper: float = 99.0, name: str = "channel") -> np.ndarray:
    """``channel`` mapped so its ``lower``/``upper`` percentiles go to 0/1, clipped to [0, 1]."""
    if not 0 <= lower < upper <= 100:
        raise StainInputError(f"percentiles ({lower}, {upper}) for {name} must satisfy 0 <= low < high <= 100; fix them")
    data = np.asarray(channel, dtype=np.float64)
    check_not_constant(data, name)
    lo, hi = np.percentile(data, [lower, upper])
    if hi <= lo:  # mostly one value: the percentiles coincide although a few pixels differ
        raise StainInputError(
            f"{name} has its {lower:g}th and {upper:g}th percentiles equal ({lo:g}); widen the percentiles or choose another image")
    return np.clip((data - lo) / (hi - lo), 0.0, 1.0)


def _mixing(h: Sequence[float], e: Sequence[float]) -> np.ndarray:
    """The 3 x 2 matrix [1 - h, 1 - e]: how much each mode darkens each RGB channel."""
    return np.stack([1.0 - check_colour(h, "h"), 1.0 - check_colour(e, "e")], axis=1)


def gareau(fcm: np.ndarray, rcm: np.ndarray, h: Sequence[float] = H_COLOUR, e: Sequence[float] = E_COLOUR) -> np.ndarray:
    """Pseudo-H&E RGB (float64 in [0, 1], shape ``fcm.shape + (3,)``) from normalised FCM and RCM.

    F = R = 0 gives white, F = 1, R = 0 gives ``h`` and F = 0, R = 1 gives ``e``; raising F or R
    never brightens any channel (both colours are in [0, 1])."""
    f = to_unit(fcm, "FCM")
    r = to_unit(rcm, "RCM")
    check_same_shape(f, r, ("FCM", "RCM"))
    return np.clip(_unclipped(f, r, h, e), 0.0, 1.0)


def _unclipped(f: np.ndarray, r: np.ndarray, h: Sequence[float], e: Sequence[float]) -> np.ndarray:
    """``1 - F(1 - h) - R(1 - e)`` written as ``(1 - F - R) + F h + R e``: the same numbers,
    but the corners come out exactly (F = 1, R = 0 gives 0 + h, not 1 - (1 - h))."""
    hc, ec = check_colour(h, "h"), check_colour(e, "e")
    return (1.0 - f - r)[..., None] + f[..., None] * hc + r[..., None] * ec


def gareau_unclipped(fcm: np.ndarray, rcm: np.ndarray, h: Sequence[float] = H_COLOUR,
                     e: Sequence[float] = E_COLOUR) -> np.ndarray:
    """True where no RGB channel of :func:`gareau` was clipped (there the inverse is exact)."""
    raw = _unclipped(np.asarray(fcm, np.float64), np.asarray(rcm, np.float64), h, e)
    return np.all((raw >= 0.0) & (raw <= 1.0), axis=-1)


def gareau_inverse(rgb: np.ndarray, h: Sequence[float] = H_COLOUR, e: Sequence[float] = E_COLOUR) -> tuple[np.ndarray, np.ndarray]:
    """(FCM, RCM) from a Gareau rendering by least squares: ``1 - RGB = [1 - h, 1 - e] [F, R]^T``.

    Exact on unclipped pixels (a consistent 3 x 2 system); elsewhere the least-squares fit."""
    arr = np.asarray(rgb, dtype=np.float64)
    if arr.ndim < 1 or arr.shape[-1] != 3:
        raise StainInputError(f"rendering has shape {arr.shape}: expected 3 channels (RGB) last")
    fr = (1.0 - arr) @ np.linalg.pinv(_mixing(h, e)).T
    return fr[..., 0], fr[..., 1]


@dataclass(frozen=True)
class ConfocalParams:
    """How a 2-channel confocal image becomes pseudo-H&E.

    ``channel_axis``: the size-2 axis (None: the first, else the last); ``fcm_index``: which of
    the two channels is FCM; ``value_range``: what maps to 0 and 1 for float data outside [0, 1];
    ``percentiles``: robust normalisation per mode (None: use the data as it is in [0, 1]);
    ``per_plane``: allow 3-D/time stacks, each 2-D plane rendered alone."""

    h: tuple[float, float, float] = H_COLOUR
    e: tuple[float, float, float] = E_COLOUR
    channel_axis: int | None = None
    fcm_index: int = 0
    value_range: tuple[float, float] | None = None
    percentiles: tuple[float, float] | None = (0.1, 99.9)
    per_plane: bool = False


def split_confocal(image: np.ndarray, params: ConfocalParams = ConfocalParams(), name: str = "image") -> tuple[np.ndarray, np.ndarray]:
    """The checked (FCM, RCM) of ``image`` as float64 in [0, 1], before normalisation."""
    stacked, _ = confocal_channels(image, name, params.channel_axis)
    if params.fcm_index not in (0, 1):
        raise StainInputError(f"FCM channel index {params.fcm_index} for {name} must be 0 or 1")
    check_spatial(stacked, name, stacked.ndim - 1, params.per_plane)
    unit = to_unit(stacked, name, params.value_range)
    fcm, rcm = unit[params.fcm_index], unit[1 - params.fcm_index]
    check_not_constant(fcm, f"{name} FCM channel")
    check_not_constant(rcm, f"{name} RCM channel")
    return fcm, rcm


def confocal_to_rgb(
    image: np.ndarray,
    params: ConfocalParams = ConfocalParams(),
    despeckle: Callable[[np.ndarray], np.ndarray] | None = None,
    name: str = "image",
) -> np.ndarray:
    """Pseudo-H&E (float32 (..., Y, X, 3) in [0, 1]) of a 2-channel confocal image.

    Paper A's pipeline: each mode normalised to [0, 1], RCM despeckled (``despeckle``: a 2-D
    [0, 1] array in, the same out, e.g. :func:`medloop.plugins.staining.despeckle.despeckle_fn`),
    then :func:`gareau`. All checks run before any compute."""
    fcm, rcm = split_confocal(image, params, name)
    planes = fcm.shape[:-2]
    out = np.empty(fcm.shape + (3,), np.float32)
    for index in np.ndindex(*planes) if planes else [()]:
        f, r = fcm[index], rcm[index]
        if params.percentiles is not None:
            lo, hi = params.percentiles
            f = robust_normalise(f, lo, hi, f"{name} FCM channel")
            r = robust_normalise(r, lo, hi, f"{name} RCM channel")
        if despeckle is not None:
            r = np.clip(np.asarray(despeckle(r), np.float64), 0.0, 1.0)
        out[index] = gareau(f, r, params.h, params.e)
    return out


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """[0, 1] floats as uint8 (rounded), e.g. for an RGB layer."""
    return np.clip(np.rint(np.asarray(rgb, np.float64) * 255.0), 0, 255).astype(np.uint8)
