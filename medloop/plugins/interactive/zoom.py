"""Engines on ROIs over their voxel budget: a zoomed-out grid, then a native-resolution band.

nnInteractive's AutoZoom and Slicer's extent growth in mm: a ROI of V voxels over the budget B
is block-averaged by the whole factor f = ceil((V / B)^(1/ndim)) per axis, the engine runs there
with its spacing x f, and its mask is brought back to the ROI by nearest neighbour. A band of
2 voxels around the coarse boundary is then decided at native resolution -- by the engine's
intensity range when it has one, else by its object/background histograms -- and only the parts
connected to a positive prompt are kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from medloop.plugins.interactive.engine_api import EngineInput, RoiPoint

BAND_VOXELS = 2


def zoom_factor(shape: tuple[int, ...], budget: int) -> int:
    """The whole block factor that brings a ROI of ``shape`` within ``budget`` voxels (1: none)."""
    voxels = float(np.prod(shape))
    if voxels <= budget:
        return 1
    return int(np.ceil((voxels / budget) ** (1.0 / len(shape))))


def _block_mean(image: np.ndarray, f: int) -> np.ndarray:
    from skimage.measure import block_reduce

    return block_reduce(image, block_size=(f,) * image.ndim, func=np.mean).astype(np.float32)


def _block_any(mask: np.ndarray, f: int) -> np.ndarray:
    from skimage.measure import block_reduce

    return block_reduce(mask.astype(np.float32), block_size=(f,) * mask.ndim, func=np.mean) >= 0.5


def _coarse(request: EngineInput, f: int) -> EngineInput:
    box = None if request.box is None else (request.box[0] // f, np.maximum(-(-request.box[1] // f), request.box[0] // f + 1))
    scribbles = None
    if request.scribbles is not None:
        from skimage.measure import block_reduce

        scribbles = block_reduce(request.scribbles, block_size=(f,) * request.scribbles.ndim, func=np.max).astype(np.int8)
    return replace(
        request, image=_block_mean(request.image, f), spacing=tuple(s * f for s in request.spacing),
        points=tuple(RoiPoint(tuple(i // f for i in p.index), p.positive) for p in request.points),
        previous=_block_any(request.previous, f), locked=_block_any(request.locked, f), box=box, scribbles=scribbles,
    )


def _upsample(mask: np.ndarray, f: int, shape: tuple[int, ...]) -> np.ndarray:
    up = mask
    for axis in range(mask.ndim):
        up = np.repeat(up, f, axis=axis)
    return up[tuple(slice(0, n) for n in shape)]


def _refine_band(request: EngineInput, mask: np.ndarray, state: dict[str, Any]) -> np.ndarray:
    """Decide the voxels within ``BAND_VOXELS`` of the coarse boundary at native resolution."""
    grown = ndi.binary_dilation(mask, iterations=BAND_VOXELS)
    band = grown & ~ndi.binary_erosion(mask, iterations=BAND_VOXELS)
    values = request.image[band]
    if "lo" in state and "hi" in state:
        inside = (values >= state["lo"]) & (values <= state["hi"])
    elif "fg_hist" in state:
        lo, hi = request.intensity_range
        edges = np.linspace(lo, hi if hi > lo else lo + 1, len(state["fg_hist"]) + 1)
        bins = np.clip(np.digitize(values, edges) - 1, 0, len(edges) - 2)
        inside = state["fg_hist"][bins] > state["bg_hist"][bins]
    else:
        return mask
    refined = mask.copy()
    refined[band] = inside
    refined &= ~request.locked
    seeds = [p.index for p in request.points if p.positive and refined[p.index]]
    if not seeds:
        return refined if refined.any() else mask
    labels, _ = ndi.label(refined)
    keep = {int(labels[s]) for s in seeds}
    return np.isin(labels, list(keep)) | (request.previous & refined)


def run_zoomed(engine: Any, request: EngineInput, budget: int, should_stop: Callable[[], bool] | None = None) -> tuple[np.ndarray, int]:
    """The engine's mask of ``request``'s ROI, computed zoomed out when over ``budget``; the
    zoom factor used (1 = native). ``request.state`` holds the engine's updated memory."""
    f = zoom_factor(request.image.shape, budget)
    if f == 1:
        return engine.segment(request, should_stop), 1
    coarse = _coarse(request, f)
    mask = _upsample(engine.segment(coarse, should_stop), f, request.image.shape)
    # ``coarse`` shares ``request.state``: what the engine remembered is already there.
    return _refine_band(request, mask, request.state), f

