"""Model-input preparation shared by every method: is this image one the model can take, and the
normalised, channels-first array the network sees (Qt-free)."""

from __future__ import annotations

import numpy as np

from medloop.app.errors import MedloopError
from medloop.app.io.image import MedImage


class SegmentationInputError(MedloopError):
    """The image does not fit the model (dimensionality, channels, values)."""


class CascadeInputError(SegmentationInputError):
    """Segment-then-segment (seed 002) cannot run on this image with these two models."""


def check_input(image: MedImage, card) -> None:
    """Refuse images the model cannot take, before any work starts."""
    where = image.path or "the image"
    if not card.accepts_ndim(image.ndim):
        kinds = f"{card.spatial_dims}-D images" + (" (and volumes slice by slice)" if card.slice_axis is not None else "")
        raise SegmentationInputError(
            f"model {card.name} segments {kinds} but {where} is {image.ndim}-D; pick a model for this kind of image"
        )
    channels = image.shape[-1] if image.channel_axis else 1
    if channels != card.in_channels:
        raise SegmentationInputError(
            f"model {card.name} needs {card.in_channels} channel(s) but {where} has {channels}; "
            "pick a model for this kind of image"
        )
    if image.is_multiscale:
        raise SegmentationInputError(
            f"{where} is a whole-slide pyramid; segment slides with 'medloop segment' to a .tif output"
        )
    _check_values(image)


def _check_values(image: MedImage) -> None:
    where = image.path or "the image"
    array = np.asarray(image.array)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise SegmentationInputError(f"{where} contains NaN or infinite values; fix or mask them before segmenting")


def network_input(image: MedImage, card) -> np.ndarray:
    """``(C, *spatial)`` float32: ``image`` on its own grid, normalised as ``card`` says, channels first."""
    from medloop.app.engine.resample import normalise

    values = normalise(np.asarray(image.array), card.normalisation)
    x = np.moveaxis(values, -1, 0) if image.channel_axis else values[None]
    return np.ascontiguousarray(x, dtype=np.float32)
