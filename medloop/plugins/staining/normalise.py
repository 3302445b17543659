"""Classical stain normalisation, Macenko and Reinhard, through ``torchstain`` (not re-written).

They map colour statistics of an image onto those of a reference region; unlike the CycleGAN
they cannot restructure an image, and medloop offers them beside it for comparison. torchstain's
numpy backend is used (no torch, no TensorFlow); it works on 8-bit RGB. Fit on a reference
region, apply to any image: :func:`fit_normaliser` then :meth:`StainNormaliser.apply`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from medloop.plugins.staining.checks import StainInputError, check_rgb
from medloop.plugins.staining.confocal import to_uint8

METHODS = ("macenko", "reinhard")
MIN_PIXELS = 64  # a handful of pixels gives no usable colour statistics
BETA = 0.15  # torchstain's (and Macenko's) optical-density threshold


@dataclass
class StainNormaliser:
    """A fitted torchstain normaliser; :meth:`apply` maps an RGB image to the reference's stain."""

    method: str
    normaliser: Any
    beta: float = BETA

    def apply(self, image: np.ndarray, name: str = "image", beta: float | None = None) -> np.ndarray:
        """``image`` (RGB; uint8/uint16 or floats in [0, 1]) normalised, as uint8 RGB. Macenko
        estimates the image's own stain vectors from pixels with optical density >= ``beta`` in
        every channel (None: the fitted value; lower it for images that barely absorb a colour)."""
        rgb = to_uint8(check_rgb(image, name))
        beta = self.beta if beta is None else float(beta)
        _check_tissue(rgb, self.method, name, beta)
        with np.errstate(all="ignore"):
            try:
                out = (self.normaliser.normalize(I=rgb, beta=beta, stains=False)[0] if self.method == "macenko"
                       else self.normaliser.normalize(rgb))
            except (np.linalg.LinAlgError, ValueError, IndexError) as exc:
                raise StainInputError(
                    f"{self.method} normalisation of {name} failed ({exc}); the image needs stained tissue") from None
        return np.asarray(out, np.uint8)


def _check_tissue(rgb: np.ndarray, method: str, name: str, beta: float) -> None:
    """Enough pixels, not one colour, and for Macenko enough stained ones."""
    if rgb.ndim != 3:
        raise StainInputError(f"{name} has shape {rgb.shape}; normalise one 2-D RGB image at a time")
    if rgb.shape[0] * rgb.shape[1] < MIN_PIXELS:
        raise StainInputError(f"{name} has only {rgb.shape[0] * rgb.shape[1]} pixels; give a region of at least {MIN_PIXELS}")
    if float(rgb.reshape(-1, 3).std(axis=0).min()) == 0.0:
        raise StainInputError(f"{name} has a constant colour channel; choose a region over stained tissue")
    if method == "macenko":
        _macenko_stained(rgb, name, beta=beta)


def _macenko_stained(rgb: np.ndarray, name: str, io: float = 240.0, beta: float = BETA) -> None:
    """Macenko estimates stain vectors from pixels with optical density >= beta in every channel."""
    od = -np.log((rgb.reshape(-1, 3).astype(np.float64) + 1.0) / io)
    stained = int(np.count_nonzero(~np.any(od < beta, axis=1)))
    if stained < MIN_PIXELS:
        raise StainInputError(
            f"{name} has {stained} stained pixels (optical density >= {beta:g} in R, G and B); "
            "choose a region over stained tissue (or lower Macenko's beta)")


def fit_normaliser(reference: np.ndarray, method: str = "macenko", name: str = "reference", beta: float = BETA) -> StainNormaliser:
    """A ``method`` ("macenko" or "reinhard") normaliser fitted to the ``reference`` region
    (``beta``: Macenko's optical-density threshold for stained pixels, torchstain's default)."""
    import torchstain

    if method not in METHODS:
        raise StainInputError(f"stain normalisation method {method!r} is unknown; choose 'macenko' or 'reinhard'")
    rgb = to_uint8(check_rgb(reference, name))
    _check_tissue(rgb, method, name, beta)
    if method == "macenko":
        normaliser = torchstain.normalizers.MacenkoNormalizer(backend="numpy")
    else:
        normaliser = torchstain.normalizers.ReinhardNormalizer(backend="numpy")
    with np.errstate(all="ignore"):
        normaliser.fit(rgb, beta=beta) if method == "macenko" else normaliser.fit(rgb)
    return StainNormaliser(method, normaliser, beta)


def normalise(image: np.ndarray, reference: np.ndarray, method: str = "macenko") -> np.ndarray:
    """``image`` normalised to the stain of ``reference`` by ``method`` (uint8 RGB)."""
    return fit_normaliser(reference, method).apply(image)
