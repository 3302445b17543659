"""Sliding-window (tiled) inference for images larger than a network's input, and whole slides.

:func:`tiled_inference` reproduces MONAI's ``sliding_window_inference`` (same tile grid, same
Gaussian importance map, same weighted average), but reads tiles straight from a numpy or dask
array (never materialising a dask image), keeps a single full-size buffer (the blended output;
the weight normaliser is rebuilt slab by slab at the end), and reports progress and honours
cancellation between batches. Its settings are a :class:`TilingParams`;
:func:`sliding_window_inference` is the same call with the settings as keyword arguments.

The same tiler also runs de Bel et al.'s seam-free scheme for image-to-image networks with
instance norm (``TilingParams.keep``): each tile's output is cropped to its central ``keep``
voxels, tiles are ``stride`` apart (half of ``keep``: every voxel in 4 tiles in 2-D), blended
with pyramid weights (:func:`importance_map`), the image mirrored at its borders
(:func:`kept_centre_grid`).

:func:`segment_level` runs it block by block over a whole-slide level (settings: a
:class:`SlideParams`) and streams the argmax labels into a tiled label pyramid TIFF with
:func:`medloop.app.io.slide.write_label_pyramid`; :func:`segment_slide` is its keyword form.
:func:`translate_level` does the same for RGB-to-RGB networks (settings: a
:class:`TranslationParams`), each block running exactly the level grid's tiles that reach into
it, into an RGB pyramid (:func:`medloop.app.io.slide.write_rgb_pyramid`).
"""

from __future__ import annotations

import functools
import itertools
import math
import threading
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medloop.app.engine.devices import autocast_for, choose_device
from medloop.app.engine.jobs import JobCancelled, Progress, ShouldStop, check_stop

Predictor = Callable[[torch.Tensor], torch.Tensor]
"""Maps a float32 batch ``(B, C, *roi)`` to logits ``(B, K, *roi)`` on the same device."""

_DE_BEL_BLENDS = ("pyramid", "flat", "literal", "none")
_BLENDS = ("gaussian", "constant", *_DE_BEL_BLENDS)
_PAD_MODES = ("constant", "edge", "reflect")
# Added to de Bel's weights so that no covered voxel has a zero weight sum.
_EPS = 1e-3
_ACTIVATIONS = ("softmax", "sigmoid", None)
# Fraction of free GPU memory the blended output may take before it is kept on the host instead.
_GPU_ACCUMULATOR_SHARE = 0.5


# --------------------------------------------------------------------------------------------
# Tile grid and weights (MONAI's conventions, so results match it)


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of one sliding-window pass go.

    ``padded`` is the image size after padding (``pad_before`` voxels of it in front of the image
    on each axis); ``starts`` holds each axis' tile starts in padded coordinates. Tiles are every
    combination of starts, first axis slowest (MONAI's order).

    ``keep`` (None: all of ``roi``) is the central part of each tile's output that is blended (de
    Bel's kept centre); it lies ``margin`` voxels inside the tile. The blended outputs cover the
    ``canvas``: the padded image less one margin on every side, where a tile starting at ``s``
    lands at ``s`` (so with no kept centre the canvas is the padded image).
    """

    shape: tuple[int, ...]
    roi: tuple[int, ...]
    padded: tuple[int, ...]
    pad_before: tuple[int, ...]
    starts: tuple[tuple[int, ...], ...]
    keep: tuple[int, ...] | None = None

    @property
    def n_tiles(self) -> int:
        return math.prod(len(s) for s in self.starts)

    def tiles(self) -> list[tuple[int, ...]]:
        return list(itertools.product(*self.starts))

    @property
    def kept(self) -> tuple[int, ...]:
        return self.roi if self.keep is None else self.keep

    @property
    def margin(self) -> tuple[int, ...]:
        return tuple((r - k) // 2 for r, k in zip(self.roi, self.kept))

    @property
    def canvas(self) -> tuple[int, ...]:
        return tuple(p - 2 * m for p, m in zip(self.padded, self.margin))

    @property
    def image_origin(self) -> tuple[int, ...]:
        """Where the image starts on the canvas."""
        return tuple(b - m for b, m in zip(self.pad_before, self.margin))

    def seams(self, axis: int) -> tuple[int, ...]:
        """Where along spatial ``axis`` a tile's blended part begins or ends inside the image (a
        seam between voxels ``c - 1`` and ``c`` is reported as ``c``)."""
        origin, k, n = self.image_origin[axis], self.kept[axis], self.shape[axis]
        edges = {s - origin for s in self.starts[axis]} | {s + k - origin for s in self.starts[axis]}
        return tuple(sorted(c for c in edges if 0 < c < n))


def tile_grid(
    shape: Sequence[int],
    roi_size: int | Sequence[int],
    overlap: float | Sequence[float] = 0.25,
    divisible_by: int = 1,
) -> TileGrid:
    """The tile grid MONAI's ``sliding_window_inference`` uses for a spatial ``shape``.

    A non-positive roi component means the whole axis. With ``divisible_by`` > 1 each roi
    component is rounded up to a multiple of it (networks that downsample need that). The image
    is padded (centred, as MONAI does) where it is smaller than the roi; the scan interval is
    ``int(roi * (1 - overlap))`` (at least 1, or the roi itself where it spans the axis), and the
    last tile on each axis is moved back to end flush with the border.
    """
    shape = tuple(int(s) for s in shape)
    n = len(shape)
    roi = _per_axis(roi_size, n, "roi_size")
    ov = tuple(float(o) for o in _per_axis(overlap, n, "overlap", kind=float))
    if any(not 0.0 <= o < 1.0 for o in ov):
        raise ValueError(f"overlap must be >= 0 and < 1, got {overlap}")
    if divisible_by < 1:
        raise ValueError(f"divisible_by must be >= 1, got {divisible_by}")
    roi = tuple(int(r) if r > 0 else s for r, s in zip(roi, shape))
    roi = tuple(-(-r // divisible_by) * divisible_by for r in roi)
    if any(s < 1 for s in shape):
        raise ValueError(f"cannot tile an empty image of spatial shape {shape}")
    padded = tuple(max(s, r) for s, r in zip(shape, roi))
    pad_before = tuple((p - s) // 2 for p, s in zip(padded, shape))
    starts = []
    for size, r, o in zip(padded, roi, ov):
        interval = r if r == size else max(int(r * (1 - o)), 1)
        # MONAI dense_patch_slices: the first count whose tile reaches the end, then flush it.
        count = next(d for d in range(-(-size // interval)) if d * interval + r >= size) + 1
        starts.append(tuple(d * interval - max(d * interval + r - size, 0) for d in range(count)))
    return TileGrid(shape, roi, padded, pad_before, tuple(starts))


def _per_axis(value: Any, n: int, name: str, kind: type = int) -> tuple[Any, ...]:
    if isinstance(value, (int, float, np.integer, np.floating)):
        return (kind(value),) * n
    out = tuple(kind(v) for v in value)
    if len(out) != n:
        raise ValueError(f"{name} {tuple(value)} needs {n} values for {n} spatial axes")
    return out


def kept_centre_grid(
    shape: Sequence[int],
    roi_size: int | Sequence[int],
    keep: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
) -> TileGrid:
    """The tile grid of de Bel's scheme: ``roi`` tiles whose central ``keep`` outputs are
    blended, ``stride`` apart (None: half of ``keep``).

    The image is padded in front by ``margin + keep - stride`` (margin = ``(roi - keep) / 2``), so
    the first pixel is covered by as many kept centres as any other, and behind by as much plus
    what makes the tiles reach the end (up to a multiple of the stride). Where the stride divides
    ``keep`` every image voxel is covered by exactly ``keep / stride`` kept centres per axis (4
    tiles in 2-D at the default stride), borders included; any image size works.

    Raises:
        ValueError: ``keep`` larger than the roi, ``roi - keep`` odd, or ``stride`` not in
            ``[1, keep]`` (each named with its values).
    """
    shape = tuple(int(s) for s in shape)
    n = len(shape)
    roi, kept = _per_axis(roi_size, n, "roi_size"), _per_axis(keep, n, "keep")
    step = tuple(max(k // 2, 1) for k in kept) if stride is None else _per_axis(stride, n, "stride")
    if any(s < 1 for s in shape):
        raise ValueError(f"cannot tile an empty image of spatial shape {shape}")
    for r, k, t in zip(roi, kept, step):
        if not 1 <= k <= r:
            raise ValueError(f"the kept centre {k} must be between 1 and the input tile {r}")
        if (r - k) % 2:
            raise ValueError(f"input tile {r} minus kept centre {k} must be even (a margin on each side)")
        if not 1 <= t <= k:
            raise ValueError(f"stride {t} must be between 1 and the kept centre {k}")
    before = tuple((r - k) // 2 + k - t for r, k, t in zip(roi, kept, step))
    # tile j keeps [j * t - (k - t), j * t + t) of the image: the last one must reach its end
    counts = tuple((s - 1 + k - t) // t + 1 for s, k, t in zip(shape, kept, step))
    padded = tuple(r + (c - 1) * t for r, c, t in zip(roi, counts, step))
    starts = tuple(tuple(j * t for j in range(c)) for c, t in zip(counts, step))
    return TileGrid(shape, roi, padded, before, starts, kept)


def importance_map(
    roi: Sequence[int], blend: str = "gaussian", sigma_scale: float | Sequence[float] = 0.125
) -> torch.Tensor:
    """The per-tile blending weights, float32 of shape ``roi`` (the kept part of a tile).

    ``"gaussian"``: the product of 1-D Gaussians with sigma ``sigma_scale * roi`` centred on the
    tile (peak 1 for odd sizes); ``"constant"``: ones. Both exactly as MONAI computes them,
    clipped below at ``max(min weight, 1e-3)`` so tile corners still count where no other tile
    covers them.

    De Bel's weights, with ``d_i = |x_i - c_i|`` the distance from the centre along axis i and
    ``h_i`` half the size: ``"pyramid"``: ``min_i(h_i - d_i) + eps``, falling off linearly to the
    border; ``"literal"``: Eq. 2 as printed, ``min_i(d_i) + eps`` (0 on the central cross, largest
    at the corners: the paper's misprint, kept for comparison only); ``"flat"`` and ``"none"``:
    ones (for "none" the tiles must not overlap).
    """
    roi = tuple(int(r) for r in roi)
    if blend in _DE_BEL_BLENDS:
        return _de_bel_weights(roi, blend)
    if blend == "constant":
        weights = torch.ones(roi, dtype=torch.float)
    elif blend == "gaussian":
        scales = _per_axis(sigma_scale, len(roi), "sigma_scale", kind=float)
        weights = None
        for i, (r, s) in enumerate(zip(roi, scales)):
            sigma = r * s
            x = torch.arange(start=-(r - 1) / 2.0, end=(r - 1) / 2.0 + 1, dtype=torch.float)
            x = torch.exp(x**2 / (-2 * sigma**2))
            weights = x if weights is None else weights.unsqueeze(-1) * x[(None,) * i]
        assert weights is not None
    else:
        raise ValueError(f"unknown blend {blend!r}; use one of {', '.join(map(repr, _BLENDS))}")
    floor = max(torch.min(weights).item(), 1e-3)
    return torch.clamp_(weights, min=floor)


def _de_bel_weights(roi: tuple[int, ...], blend: str) -> torch.Tensor:
    """De Bel's weights (see :func:`importance_map`), computed in float64."""
    if blend in ("flat", "none"):
        return torch.ones(roi, dtype=torch.float)
    grids = np.meshgrid(*(np.abs(np.arange(r) - (r - 1) / 2) for r in roi), indexing="ij")
    if blend == "pyramid":
        w = np.min([r / 2 - d for r, d in zip(roi, grids)], axis=0)
    else:  # "literal"
        w = np.min(grids, axis=0)
    return torch.from_numpy((w + _EPS).astype(np.float32))


@functools.lru_cache(maxsize=16)
def _cached_importance_map(roi: tuple[int, ...], blend: str, sigma_scale: tuple[float, ...]) -> torch.Tensor:
    # Blocks of a slide (and repeated calls) share one map; callers only read it.
    return importance_map(roi, blend, sigma_scale)


# --------------------------------------------------------------------------------------------
# Sliding-window inference


@dataclass(frozen=True)
class TilingParams:
    """How :func:`tiled_inference` tiles an image, runs the predictor and blends its outputs.

    Attributes:
        roi_size: tile size per spatial axis (an int for all); non-positive means the whole axis.
        overlap: fraction of a tile shared with its neighbour, in [0, 1).
        blend: MONAI's ``"gaussian"`` (tile centres count more) or ``"constant"``, or de Bel's
            ``"pyramid"``, ``"flat"``, ``"literal"`` (Eq. 2 as printed, for comparison only) or
            ``"none"`` (see :func:`importance_map`). None: ``"pyramid"`` with a kept centre,
            else ``"gaussian"``.
        sigma_scale: Gaussian sigma as a fraction of the tile size.
        batch_size: tiles per predictor call.
        device: where the predictor runs; None: the device of the predictor's parameters if it
            is a ``torch.nn.Module``, else :func:`choose_device` ("auto"). A string is checked
            with :func:`choose_device`.
        amp: mixed precision (see :func:`autocast_for`; None: on for CUDA only).
        divisible_by: round the roi up to a multiple of this (e.g. 2**levels of a U-Net).
        activation: ``"softmax"`` (over K) or ``"sigmoid"`` applied to each tile's logits
            *before* blending (so the result is blended probabilities); None blends the raw
            outputs, as MONAI does.
        out_dtype: dtype of the returned array.
        pad_value: value of the padding where the image is smaller than the roi.
        pad_mode: ``"constant"`` (``pad_value``), ``"edge"`` (the image's border voxels repeated,
            as training patches are padded: a model trained so must not see a step to 0 at the
            border of a small field of view that its training never showed it) or ``"reflect"``
            (mirrored without repeating the border voxel, as numpy's, however wide the padding).
            None: ``"reflect"`` with a kept centre, else ``"constant"``.
        keep: de Bel's scheme when set: only the central ``keep`` voxels of each tile's output
            are blended (the rest, which saw the tile's zero padding, is dropped) and tiles are
            ``stride`` apart on the grid of :func:`kept_centre_grid`; ``overlap`` is then unused.
            The roi is not rounded: it, ``keep`` and ``stride`` must be multiples of
            ``divisible_by``.
        stride: tile step with a kept centre; None: half of ``keep`` (every voxel in 4 tiles in
            2-D), or ``keep`` for ``blend="none"``.
    """

    roi_size: int | Sequence[int]
    overlap: float | Sequence[float] = 0.25
    blend: str | None = None
    sigma_scale: float | Sequence[float] = 0.125
    batch_size: int = 4
    device: torch.device | str | None = None
    amp: bool | None = None
    divisible_by: int = 1
    activation: str | None = None
    out_dtype: Any = np.float32
    pad_value: float = 0.0
    pad_mode: str | None = None
    keep: int | Sequence[int] | None = None
    stride: int | Sequence[int] | None = None

    def __post_init__(self) -> None:
        # Resolve the scheme's defaults once, so every reader of the settings sees the same.
        kept = self.keep is not None
        if self.blend is None:
            object.__setattr__(self, "blend", "pyramid" if kept else "gaussian")
        if self.pad_mode is None:
            object.__setattr__(self, "pad_mode", "reflect" if kept else "constant")


def sliding_window_inference(
    image: Any,
    predictor: Predictor,
    roi_size: int | Sequence[int],
    overlap: float | Sequence[float] = 0.25,
    blend: str = "gaussian",
    sigma_scale: float | Sequence[float] = 0.125,
    batch_size: int = 4,
    device: torch.device | str | None = None,
    amp: bool | None = None,
    divisible_by: int = 1,
    activation: str | None = None,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
    out_dtype: Any = np.float32,
    pad_value: float = 0.0,
    pad_mode: str = "constant",
) -> np.ndarray:
    """:func:`tiled_inference` with the fields of :class:`TilingParams` as keyword arguments
    (the form the segmentation method, retraining and the tests call)."""
    params = TilingParams(
        roi_size, overlap, blend, sigma_scale, batch_size, device, amp, divisible_by, activation,
        out_dtype, pad_value, pad_mode,
    )
    return tiled_inference(image, predictor, params, progress, should_stop)


def tiled_inference(
    image: Any,
    predictor: Predictor,
    params: TilingParams,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> np.ndarray:
    """Run ``predictor`` over overlapping tiles of ``image`` and blend the tiles' outputs.

    Same result as MONAI's ``sliding_window_inference(image[None], roi_size, batch_size,
    predictor, overlap, mode=blend, sigma_scale=sigma_scale)[0]`` (see :func:`tile_grid` for
    the grid, :func:`importance_map` for the weights): each output voxel is the weighted mean
    of the tiles covering it.

    Args:
        image: ``(C, *spatial)`` numpy or dask array with 2 or 3 spatial axes. Tiles are read
            (dask: computed, one batch at a time, the next batch in the background) as float32;
            a dask image is never computed whole.
        predictor: maps a float32 tensor ``(B, C, *roi)`` on the device to ``(B, K, *roi)``
            logits; called under ``torch.inference_mode`` and :func:`autocast_for`.
        params: the tiling, device and blending settings (:class:`TilingParams`).
        progress: ``progress(done_tiles, total_tiles)`` after each batch.
        should_stop: polled before each batch; True raises :class:`JobCancelled`, so a cancel
            takes effect within one batch.

    Returns:
        ``(K, *spatial)`` array of ``params.out_dtype``, the same spatial shape as ``image``.

    Raises:
        JobCancelled: ``should_stop()`` returned True.
        ValueError: bad shapes or settings, or the predictor's output does not fit its input.
    """
    shape = _checked_tiling(image, params)
    grid = tiling_grid(shape[1:], params)
    acc = _run_grid(image, predictor, grid, params, progress, should_stop)
    return _cropped(acc, grid.image_origin, grid.shape, params.out_dtype)


def tiling_grid(spatial: Sequence[int], params: TilingParams) -> TileGrid:
    """The tile grid :func:`tiled_inference` uses for an image of this spatial shape."""
    if params.keep is None:
        return tile_grid(spatial, params.roi_size, params.overlap, params.divisible_by)
    n = len(spatial)
    keep = _per_axis(params.keep, n, "keep")
    if params.stride is not None:
        stride = _per_axis(params.stride, n, "stride")
    else:
        stride = keep if params.blend == "none" else tuple(max(k // 2, 1) for k in keep)
    if params.blend == "none" and stride != keep:
        raise ValueError(f"blend 'none' needs non-overlapping tiles: stride {stride} != keep {keep}")
    roi = _per_axis(params.roi_size, n, "roi_size")
    d = params.divisible_by
    for name, sizes in (("input tile", roi), ("kept centre", keep), ("stride", stride)):
        if d > 1 and any(v % d for v in sizes):
            raise ValueError(f"{name} {sizes} must be a multiple of {d} (the network's divisor)")
    return kept_centre_grid(spatial, roi, keep, stride)


def _run_grid(
    image: Any,
    predictor: Predictor,
    grid: TileGrid,
    params: TilingParams,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> torch.Tensor:
    """Every tile of ``grid`` over ``image``, blended: the canvas ``(K, *grid.canvas)`` (each
    voxel the weighted mean of the kept outputs covering it)."""
    dev = _resolve_device(params.device, predictor)
    scales = _per_axis(params.sigma_scale, len(grid.roi), "sigma_scale", kind=float)
    weights = _cached_importance_map(grid.kept, params.blend, scales).to(dev)
    reader = _TileReader(image, grid, int(image.shape[0]), params.batch_size, dev, params.pad_value, params.pad_mode)
    try:
        acc = _blend_tiles(reader, predictor, weights, params, progress, should_stop)
    finally:
        reader.close()
    with torch.inference_mode():
        _normalise(acc, grid, weights.to(acc.device))
    return acc


def _checked_tiling(image: Any, params: TilingParams) -> tuple[int, ...]:
    """The image's shape, after checking it and the settings :func:`tile_grid` does not check."""
    shape = tuple(int(s) for s in image.shape)
    if len(shape) not in (3, 4):
        raise ValueError(
            f"image must be (C, *spatial) with 2 or 3 spatial axes, got shape {shape}"
        )
    if params.blend not in _BLENDS:
        raise ValueError(f"unknown blend {params.blend!r}; use one of {', '.join(map(repr, _BLENDS))}")
    if params.activation not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {params.activation!r}; use 'softmax', 'sigmoid' or None")
    if params.pad_mode not in _PAD_MODES:
        raise ValueError(f"unknown pad_mode {params.pad_mode!r}; use 'constant', 'edge' or 'reflect'")
    if params.blend == "none" and params.keep is None:
        raise ValueError("blend 'none' needs a kept centre (keep); use 'constant' with overlap 0")
    if params.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {params.batch_size}")
    return shape


def _blend_tiles(
    reader: _TileReader,
    predictor: Predictor,
    weights: torch.Tensor,
    params: TilingParams,
    progress: Progress | None,
    should_stop: ShouldStop | None,
) -> torch.Tensor:
    """The weighted sum of every tile's output over the padded image, batch by batch (the
    reader reads the next batch while the predictor runs where it reads ahead)."""
    grid, dev = reader.grid, reader.dev
    tiles = grid.tiles()
    batches = [tiles[i : i + params.batch_size] for i in range(0, len(tiles), params.batch_size)]
    acc: torch.Tensor | None = None
    done = 0
    pending = reader.submit(batches[0]) if reader.ahead else None
    for index, batch in enumerate(batches):
        check_stop(should_stop)
        x = reader.result(pending if reader.ahead else reader.submit(batch))
        if reader.ahead and index + 1 < len(batches):  # read on while the network runs
            pending = reader.submit(batches[index + 1])
        with torch.inference_mode():
            y = _predict_tiles(predictor, x, len(batch), grid, dev, params)
            if acc is None:
                acc = _accumulator((y.shape[1], *grid.canvas), dev)
            _add_tiles(acc, _kept(y, grid), batch, grid.kept, weights)
        done += len(batch)
        if progress is not None:
            progress(done, len(tiles))
    assert acc is not None
    return acc


def _predict_tiles(
    predictor: Predictor, x: torch.Tensor, n: int, grid: TileGrid, dev: torch.device, params: TilingParams
) -> torch.Tensor:
    """The predictor's float32 output for a batch of ``n`` tiles, after ``params.activation``."""
    with autocast_for(dev, params.amp):
        y = predictor(x)
    y = _checked_output(y, n, grid.roi, grid.keep)
    if params.activation == "softmax":
        y = torch.softmax(y, dim=1)
    elif params.activation == "sigmoid":
        y = torch.sigmoid(y)
    return y


def _kept(y: torch.Tensor, grid: TileGrid) -> torch.Tensor:
    """The kept centre of a batch of tile outputs (a predictor may return only that)."""
    if tuple(y.shape[2:]) == grid.kept:
        return y
    return y[(slice(None), slice(None)) + tuple(slice(m, m + k) for m, k in zip(grid.margin, grid.kept))]


def _add_tiles(
    acc: torch.Tensor, y: torch.Tensor, batch: list[tuple[int, ...]], kept: tuple[int, ...], weights: torch.Tensor
) -> None:
    """Add each tile's (kept) output times ``weights`` into the canvas ``acc`` at the tile's place."""
    if acc.device == y.device:
        for t, start in zip(y, batch):
            acc[_tile_index(start, kept)].addcmul_(t, weights)
    else:  # GPU result, host accumulator: weight on the GPU, add on the host
        weighted = (y * weights).cpu()
        for t, start in zip(weighted, batch):
            acc[_tile_index(start, kept)].add_(t)


def _cropped(acc: torch.Tensor, origin: Sequence[int], size: Sequence[int], out_dtype: Any) -> np.ndarray:
    """The ``size`` region of the blended canvas at ``origin``, as a numpy array."""
    crop = (slice(None),) + tuple(slice(o, o + n) for o, n in zip(origin, size))
    with torch.inference_mode():
        out = acc[crop]
        if out.device.type != "cpu":
            out = out.cpu()
        result = out.numpy()
    if not result.flags.c_contiguous:  # cropped padding
        result = np.ascontiguousarray(result)
    return result.astype(out_dtype, copy=False)


def _resolve_device(device: torch.device | str | None, predictor: Any) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device is None:
        if isinstance(predictor, torch.nn.Module):
            param = next(itertools.chain(predictor.parameters(), predictor.buffers()), None)
            if param is not None:
                return param.device
        return choose_device("auto")
    return choose_device(device)


def _tile_index(start: Sequence[int], roi: Sequence[int]) -> tuple[slice, ...]:
    return (slice(None),) + tuple(slice(s, s + r) for s, r in zip(start, roi))


def _checked_output(y: Any, n: int, roi: tuple[int, ...], kept: tuple[int, ...] | None = None) -> torch.Tensor:
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"the predictor must return a tensor, got {type(y).__name__}")
    if y.ndim != len(roi) + 2 or y.shape[0] != n or tuple(y.shape[2:]) not in (roi, kept):
        raise ValueError(
            f"the predictor returned shape {tuple(y.shape)} for a batch of {n} tiles of {roi}; "
            f"it must return (batch, classes, {', '.join(map(str, roi))})"
        )
    return y.float()  # autocast outputs are half precision; blend in float32


def _accumulator(shape: tuple[int, ...], dev: torch.device) -> torch.Tensor:
    """The blended-output buffer: on the GPU when it fits comfortably (no per-tile transfers),
    else on the host. Host buffers are numpy-allocated (calloc: pages appear as tiles land, and
    tracemalloc sees them) and shared with torch without a copy."""
    nbytes = math.prod(shape) * 4
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        if nbytes <= _GPU_ACCUMULATOR_SHARE * free:
            return torch.zeros(shape, dtype=torch.float32, device=dev)
    return torch.from_numpy(np.zeros(shape, dtype=np.float32))


def _normalise(acc: torch.Tensor, grid: TileGrid, weights: torch.Tensor) -> None:
    """Divide ``acc`` by the summed weights of the tiles covering each voxel, in place.

    The weight sum is built for one slab of the first axis at a time (a slab lies between
    consecutive tile borders, so the same tiles cover all of it), adding the tiles in MONAI's
    order so the sums are bit-identical to its full-size count map, without holding one.
    """
    first, rest = grid.starts[0], list(itertools.product(*grid.starts[1:]))
    kept = grid.kept  # the canvas holds each tile's kept part at the tile's start
    r0 = kept[0]
    borders = sorted({s for s in first} | {s + r0 for s in first})
    for a, b in zip(borders[:-1], borders[1:]):
        covering = [s for s in first if s <= a and s + r0 >= b]
        count = torch.zeros((b - a, *grid.canvas[1:]), dtype=torch.float32, device=acc.device)
        for s0 in covering:
            slab = weights[a - s0 : b - s0]
            for start in rest:
                count[_tile_index(start, kept[1:])] += slab
        acc[:, a:b].div_(count)


class _TileReader:
    """Fills float32 batches of tiles from the image, padded outside it as ``pad_mode`` says.

    Dask images are read in a background thread (one batch ahead) with one ``dask.compute`` per
    batch, so chunks shared by a batch's tiles are computed once. On CUDA the batches go through
    pinned host buffers and are copied asynchronously, also one batch ahead. Reading ahead
    needs two buffers; otherwise (numpy on the CPU, where a copy is cheap) one will do.
    """

    def __init__(self, image: Any, grid: TileGrid, channels: int, batch_size: int,
                 dev: torch.device, pad_value: float, pad_mode: str = "constant") -> None:
        self.image, self.grid, self.dev, self.pad_value = image, grid, dev, float(pad_value)
        self.pad_mode = pad_mode
        self.is_dask = hasattr(image, "dask") and hasattr(image, "compute")
        shape = (batch_size, channels, *grid.roi)
        self.cuda = dev.type == "cuda"
        self.ahead = self.is_dask or self.cuda
        slots = 2 if self.ahead else 1
        if self.cuda:
            self.host = [torch.empty(shape, dtype=torch.float32).pin_memory() for _ in range(slots)]
            self.events: list[Any] = [None] * slots
        else:
            self.host = [torch.from_numpy(np.empty(shape, dtype=np.float32)) for _ in range(slots)]
        self.views = [h.numpy() for h in self.host]
        self.turn = 0
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="medloop-tiles") if self.is_dask else None

    def submit(self, batch: list[tuple[int, ...]]) -> Future | tuple[int, int]:
        slot = self.turn
        self.turn = (slot + 1) % len(self.host)
        if self.pool is not None:
            return self.pool.submit(self._fill, slot, batch)
        return self._fill(slot, batch)

    def result(self, pending: Future | tuple[int, int]) -> torch.Tensor:
        slot, n = pending.result() if isinstance(pending, Future) else pending
        x = self.host[slot][:n]
        if self.cuda:
            x = x.to(self.dev, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self.events[slot] = event  # the host buffer is reusable once this copy is done
            return x
        return x if self.dev.type == "cpu" else x.to(self.dev)

    def _fill(self, slot: int, batch: list[tuple[int, ...]]) -> tuple[int, int]:
        if self.cuda and self.events[slot] is not None:
            self.events[slot].synchronize()
        buf = self.views[slot]
        regions = [self._region(start) for start in batch]
        sources = [self.image[src] for src, _, _ in regions]
        if self.is_dask:
            from medloop.app.io.lazy import compute_here

            sources = compute_here(*sources)
        for i, ((src, dst, full), data) in enumerate(zip(regions, sources)):
            if not full and self.pad_mode == "reflect":
                buf[i] = self._reflected(batch[i], src, np.asarray(data, np.float32))
                continue
            if not full and self.pad_mode == "edge":
                widths = [(0, 0)] + [(d.start, r - d.stop) for d, r in zip(dst[1:], self.grid.roi)]
                buf[i] = np.pad(np.asarray(data, np.float32), widths, mode="edge")
                continue
            if not full:
                buf[i].fill(self.pad_value)
            buf[i][dst] = data
        return slot, len(batch)

    def _region(self, start: tuple[int, ...]) -> tuple[tuple[slice, ...], tuple[slice, ...], bool]:
        """(image index, tile index, whether the tile lies wholly inside the image). With
        reflection, the image index is the span the mirrored tile reads from."""
        src, dst, full = [slice(None)], [slice(None)], True
        for s, r, p, n in zip(start, self.grid.roi, self.grid.pad_before, self.grid.shape):
            a = s - p
            lo, hi = max(a, 0), min(a + r, n)
            if self.pad_mode == "reflect" and (lo != a or hi != a + r):
                index = reflect_index(np.arange(a, a + r), n)
                lo, hi = int(index.min()), int(index.max()) + 1
            src.append(slice(lo, hi))
            dst.append(slice(lo - a, hi - a))
            full = full and lo == a and hi == a + r
        return tuple(src), tuple(dst), full

    def _reflected(self, start: tuple[int, ...], src: tuple[slice, ...], data: np.ndarray) -> np.ndarray:
        """The tile at ``start`` from ``data`` (the image at ``src``), mirrored at the borders."""
        take = [
            reflect_index(np.arange(s - p, s - p + r), n) - span.start
            for s, r, p, n, span in zip(start, self.grid.roi, self.grid.pad_before, self.grid.shape, src[1:])
        ]
        return data[(slice(None), *np.ix_(*take))]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def reflect_index(coords: np.ndarray, n: int) -> np.ndarray:
    """Image indices of (possibly outside) coordinates under numpy's ``"reflect"`` padding of an
    axis of ``n`` voxels, however far outside (mirrored again and again, period ``2 (n - 1)``)."""
    if n == 1:
        return np.zeros_like(coords)
    period = 2 * (n - 1)
    folded = np.mod(coords, period)
    return np.where(folded >= n, period - folded, folded)


def predict_labels(probabilities: Any, threshold: float = 0.5) -> np.ndarray:
    """Labels from ``(K, *spatial)`` class scores: the argmax over K (uint8 up to 256 classes,
    else uint16), or for a single channel ``score > threshold`` as uint8."""
    p = np.asarray(probabilities)
    k = p.shape[0]
    if k == 1:
        return (p[0] > threshold).astype(np.uint8)
    dtype = np.uint8 if k <= 256 else np.uint16
    if k > 65536:
        raise ValueError(f"cannot store {k} classes in a uint16 label map")
    if k > 8:
        return np.argmax(p, axis=0).astype(dtype)
    # A running maximum over the few class planes: contiguous passes, several times faster than
    # numpy's argmax across the (outermost) class axis; ties go to the lower class, as argmax.
    labels = np.zeros(p.shape[1:], dtype)
    best = p[0].copy()
    for c in range(1, k):
        better = p[c] > best
        labels[better] = c
        np.maximum(best, p[c], out=best)
    return labels


# --------------------------------------------------------------------------------------------
# Whole slides


def default_normalise(rgb: np.ndarray) -> np.ndarray:
    """``(h, w, 3)`` uint8 RGB to ``(3, h, w)`` float32 in [0, 1]."""
    x = np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32)
    x *= np.float32(1 / 255)  # in place: no second block-sized buffer
    return x


def _slide_tiling() -> TilingParams:
    return TilingParams((512, 512), overlap=0.125, activation="softmax")


@dataclass(frozen=True)
class SlideParams:
    """How :func:`segment_level` cuts a slide level into blocks and segments each.

    Attributes:
        tiling: the sliding-window settings of every block (:class:`TilingParams`; here 512 x 512
            tiles, overlap 0.125 and softmax by default). ``out_dtype`` is the probabilities'.
        normalise: maps an ``(h, w, 3)`` uint8 block to the network input ``(C, h, w)`` float32;
            None: :func:`default_normalise` (scales to [0, 1]).
        block_size: block width in pixels (block rows are write_label_pyramid's bands).
        margin: context read on every side of a block; None: ``ceil(roi * overlap)``.
        num_classes: classes the predictor outputs; None: found with one probe call. Decides
            the label dtype (uint8 up to 256).
        workers: blocks processed at once (None: 2 on a GPU, so reading overlaps inference,
            else 1: on a CPU the network already uses every core).
        tile: tile side of the label pyramid, as for ``write_label_pyramid``.
    """

    tiling: TilingParams = field(default_factory=_slide_tiling)
    normalise: Callable[[np.ndarray], np.ndarray] | None = None
    block_size: int = 2048
    margin: int | None = None
    num_classes: int | None = None
    workers: int | None = None
    tile: int = 512


def segment_slide(
    level: Any,
    predictor: Predictor,
    out_path: str | Path,
    spacing_um: tuple[float, float],
    roi_size: int | Sequence[int] = (512, 512),
    overlap: float = 0.125,
    blend: str = "gaussian",
    sigma_scale: float = 0.125,
    batch_size: int = 4,
    device: torch.device | str | None = None,
    amp: bool | None = None,
    divisible_by: int = 1,
    activation: str | None = "softmax",
    normalise: Callable[[np.ndarray], np.ndarray] | None = None,
    block_size: int = 2048,
    margin: int | None = None,
    num_classes: int | None = None,
    workers: int | None = None,
    tile: int = 512,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> Path:
    """:func:`segment_level` with the fields of :class:`SlideParams` and of its
    :class:`TilingParams` as keyword arguments (the form the segmentation method and the tests
    call)."""
    tiling = TilingParams(roi_size, overlap, blend, sigma_scale, batch_size, device, amp, divisible_by, activation)
    params = SlideParams(tiling, normalise, block_size, margin, num_classes, workers, tile)
    return segment_level(level, predictor, out_path, spacing_um, params, progress, should_stop)


def segment_level(
    level: Any,
    predictor: Predictor,
    out_path: str | Path,
    spacing_um: tuple[float, float],
    params: SlideParams = SlideParams(),
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> Path:
    """Segment a whole-slide level block by block into a label pyramid TIFF at ``out_path``.

    The level is cut into blocks (``params.block_size`` wide; as tall as write_label_pyramid's
    bands allow, so every block is computed once); each block is read with a ``margin`` of
    context on every side, normalised, run through :func:`tiled_inference` and reduced to
    labels with :func:`predict_labels`, and only its centre is kept, so block seams get the
    same context as tile overlaps. The labels form a lazy dask array that
    :func:`~medloop.app.io.slide.write_label_pyramid` computes band by band and writes tile by
    tile: memory is bounded by ``workers`` blocks plus one band of labels, whatever the slide
    size.

    Args:
        level: ``(H, W, 3)`` uint8 dask (e.g. a :func:`~medloop.app.io.slide.read_slide` pyramid
            level) or numpy array.
        predictor: as for :func:`tiled_inference`.
        out_path, spacing_um: as for ``write_label_pyramid`` (spacing of this level).
        params: blocks, tiles and classes (:class:`SlideParams`).
        progress: ``progress(done_tiles, total_tiles)`` over all blocks' tiles; called from
            worker threads.
        should_stop: polled before each batch of tiles and each written tile.

    Returns:
        ``out_path``; it appears complete or not at all.

    Raises:
        JobCancelled: ``should_stop()`` returned True (nothing is left at ``out_path``).
        ImageWriteError: the pyramid cannot be written there.
    """
    from medloop.app.io import slide as slide_io

    plan = _plan_slide(level, predictor, params, should_stop)
    blocks = _SegmentedBlocks(level, predictor, plan, progress, should_stop)
    return _write_blocks(blocks, slide_io.write_label_pyramid, out_path, spacing_um, plan, progress, should_stop)


def _write_blocks(blocks: Any, writer: Callable[..., Path], out_path: Any, spacing_um: Any, plan: Any,
                  progress: Progress | None, should_stop: ShouldStop | None) -> Path:
    """Write ``blocks`` (computed lazily as the writer reads them) with a pyramid ``writer``; a
    cancel leaves nothing at ``out_path``; the workers stop either way."""
    from medloop.app.io import slide as slide_io

    try:
        path = writer(blocks.array(), out_path, spacing_um, tile=plan.tile, should_stop=should_stop)
    except slide_io.PyramidCancelled:  # LabelPyramidCancelled is one
        raise JobCancelled("cancelled") from None
    finally:
        blocks.close()
    if progress is not None:
        progress(plan.total, plan.total)
    return path


Span = tuple[int, int]


@dataclass(frozen=True)
class _SlidePlan:
    """The blocks of one :func:`segment_level` or :func:`translate_level` run: ``rows`` x
    ``cols`` are the output blocks kept, ``regions[i, j]`` the (row, column) spans read for block
    ``(i, j)`` (with context; outside the level they are mirrored); ``tiling`` has the rounded
    roi and the resolved device; ``total`` counts all blocks' tiles. Each block is stored as
    ``dtype`` with ``channels`` trailing axes; ``num_classes`` is what the predictor must return
    (None: not known in advance)."""

    tiling: TilingParams
    normalise: Callable[[np.ndarray], np.ndarray]
    num_classes: int | None
    dtype: np.dtype
    workers: int
    tile: int
    rows: list[Span]
    cols: list[Span]
    regions: dict[tuple[int, int], tuple[Span, Span]]
    total: int
    channels: tuple[int, ...] = ()
    grid: TileGrid | None = None  # the level's kept-centre grid (translation)
    finish: Callable[[np.ndarray], np.ndarray] | None = None  # (K, h, w) float -> stored block


def _plan_slide(level: Any, predictor: Predictor, params: SlideParams, should_stop: ShouldStop | None) -> _SlidePlan:
    shape = tuple(int(s) for s in level.shape)
    if len(shape) != 3:
        raise ValueError(f"level must be (height, width, channels), got shape {shape}")
    height, width = shape[:2]
    t = params.tiling
    normalise = params.normalise or default_normalise
    dev = _resolve_device(t.device, predictor)
    roi = _per_axis(t.roi_size, 2, "roi_size")
    roi = tuple(-(-r // t.divisible_by) * t.divisible_by for r in roi)
    margins = (
        tuple(math.ceil(r * t.overlap) for r in roi) if params.margin is None else (int(params.margin),) * 2
    )
    workers = params.workers or (2 if dev.type == "cuda" else 1)
    check_stop(should_stop)
    num_classes = params.num_classes
    if num_classes is None:
        num_classes = _probe_classes(predictor, normalise, roi, dev, t.amp)
    dtype = np.dtype(np.uint8 if num_classes <= 256 else np.uint16)
    rows, cols, regions = _slide_blocks((height, width), roi, margins, dtype, params)
    total = sum(
        tile_grid((ry[1] - ry[0], rx[1] - rx[0]), roi, t.overlap, t.divisible_by).n_tiles
        for ry, rx in regions.values()
    )
    tiling = replace(t, roi_size=roi, device=dev)
    return _SlidePlan(tiling, normalise, num_classes, dtype, workers, params.tile, rows, cols, regions, total)


def _slide_blocks(
    size: Span, roi: tuple[int, ...], margins: tuple[int, ...], dtype: np.dtype, params: SlideParams
) -> tuple[list[Span], list[Span], dict[tuple[int, int], tuple[Span, Span]]]:
    """Block rows, block columns and each block's region with context."""
    from medloop.app.io import slide as slide_io

    height, width = size
    rows, cols = _band_blocks(size, dtype.itemsize, params.tile, params.block_size, slide_io.SCRATCH_BUDGET)
    regions = {
        (i, j): (_context(y0, y1, height, margins[0], roi[0]), _context(x0, x1, width, margins[1], roi[1]))
        for i, (y0, y1) in enumerate(rows)
        for j, (x0, x1) in enumerate(cols)
    }
    return rows, cols, regions


class _SlideBlocks:
    """A slide level's output as a lazy dask array: computing block ``(i, j)`` reads its region
    (normalised), runs the tiled predictor (:meth:`_infer`, per kind of output) and keeps the
    block. Blocks run on this object's own ``plan.workers`` threads, whichever dask thread asks
    for them: that bounds the blocks in flight, and so memory, also against the C allocator,
    which keeps a heap per thread that has allocated (a block on each of 16 dask threads would
    leave 16 block-sized heaps). Progress adds up the tiles of all blocks; :meth:`close` ends
    the threads."""

    def __init__(
        self, level: Any, predictor: Predictor, plan: _SlidePlan, progress: Progress | None,
        should_stop: ShouldStop | None,
    ) -> None:
        self.level, self.predictor, self.plan = level, predictor, plan
        self.progress, self.should_stop = progress, should_stop
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(plan.workers, thread_name_prefix="medloop-blocks")
        self.done = 0

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def array(self) -> Any:
        import dask.array as da

        plan = self.plan
        name = f"medloop-slide-{uuid.uuid4().hex}"
        extra = (0,) * len(plan.channels)
        graph = {(name, i, j, *extra): (self.block, i, j) for i, j in plan.regions}
        chunks = (tuple(b - a for a, b in plan.rows), tuple(b - a for a, b in plan.cols))
        chunks += tuple((c,) for c in plan.channels)
        meta = np.empty((0, 0) + tuple(0 for _ in plan.channels), dtype=plan.dtype)
        return da.Array(graph, name, chunks, meta=meta)

    def block(self, i: int, j: int) -> np.ndarray:
        return self.pool.submit(self._block, i, j).result()

    def _block(self, i: int, j: int) -> np.ndarray:
        plan = self.plan
        (y0, y1), (x0, x1) = plan.rows[i], plan.cols[j]
        (ry0, ry1), (rx0, rx1) = plan.regions[i, j]
        check_stop(self.should_stop)
        # no local name for the input: _infer frees it once the tiles are blended
        return self._infer(self._read(ry0, ry1, rx0, rx1), (y0 - ry0, y1 - ry0), (x0 - rx0, x1 - rx0))

    def _infer(self, x: np.ndarray, rows: Span, cols: Span) -> np.ndarray:
        """The stored block: ``rows`` x ``cols`` of the output over the region ``x``."""
        raise NotImplementedError

    def _read(self, ry0: int, ry1: int, rx0: int, rx1: int) -> np.ndarray:
        """The normalised network input ``(C, h, w)`` of one region; parts of it outside the
        level are mirrored (numpy's "reflect"), as :func:`tiled_inference` pads."""
        from medloop.app.io.lazy import compute_here

        height, width = (int(n) for n in self.level.shape[:2])
        index_y = reflect_index(np.arange(ry0, ry1), height)
        index_x = reflect_index(np.arange(rx0, rx1), width)
        y_lo, y_hi, x_lo, x_hi = index_y.min(), index_y.max() + 1, index_x.min(), index_x.max() + 1
        rgb = np.asarray(compute_here(self.level[y_lo:y_hi, x_lo:x_hi])[0])
        if (ry0, ry1, rx0, rx1) != (y_lo, y_hi, x_lo, x_hi):  # a region reaching past the level
            rgb = rgb[np.ix_(index_y - y_lo, index_x - x_lo)]
        x = np.asarray(self.plan.normalise(rgb), dtype=np.float32)
        del rgb
        if x.ndim != 3 or x.shape[1:] != (ry1 - ry0, rx1 - rx0):
            raise ValueError(
                f"normalise must map an (h, w, 3) block to (C, h, w); it returned {x.shape} "
                f"for a block of {(ry1 - ry0, rx1 - rx0)}"
            )
        return x

    def _block_progress(self) -> Progress:
        """One block's ``progress(done, total)``, reporting the tiles of all blocks so far."""
        last = [0]
        total = self.plan.total

        def block_progress(done: int, _total: int) -> None:
            with self.lock:
                self.done += done - last[0]
                last[0] = done
                now = min(self.done, total)
            if self.progress is not None:
                self.progress(now, total)

        return block_progress


class _SegmentedBlocks(_SlideBlocks):
    """Labels: each region through :func:`tiled_inference`, the block's argmax kept."""

    def _infer(self, x: np.ndarray, rows: Span, cols: Span) -> np.ndarray:
        plan = self.plan
        probs = tiled_inference(x, self.predictor, plan.tiling, self._block_progress(), self.should_stop)
        del x
        if probs.shape[0] != plan.num_classes:
            raise ValueError(f"the predictor returned {probs.shape[0]} classes, expected {plan.num_classes}")
        keep = probs[:, rows[0] : rows[1], cols[0] : cols[1]]
        return predict_labels(keep).astype(plan.dtype, copy=False)


# --------------------------------------------------------------------------------------------
# Whole slides, image to image (e.g. stain translation)


def default_denormalise(y: np.ndarray) -> np.ndarray:
    """``(3, h, w)`` float in [0, 1] to ``(h, w, 3)`` uint8 RGB (clipped, rounded half up)."""
    out = np.empty(y.shape[1:] + y.shape[:1], dtype=np.uint8)
    np.clip(np.moveaxis(y, 0, -1) * 255 + 0.5, 0, 255, out=out, casting="unsafe")
    return out


def _translation_tiling() -> TilingParams:
    # One tile per batch: on a CPU, larger batches only add page faults (activations over the C
    # allocator's reuse threshold are mapped afresh every time); set more for a GPU.
    return TilingParams(512, keep=256, stride=128, batch_size=1)


@dataclass(frozen=True)
class TranslationParams:
    """How :func:`translate_level` cuts a slide level into blocks and translates each.

    Attributes:
        tiling: the tiling of every block; it must have a kept centre (``keep``). Default: the
            staining spec's CPU preset, 512 in / 256 kept / stride 128, pyramid weights, reflect
            padding, 1 tile per batch (more pays off on a GPU).
        normalise: ``(h, w, 3)`` uint8 block to the network input ``(C, h, w)`` float32; None:
            :func:`default_normalise` ([0, 1]). Must work pixel by pixel (blocks are
            normalised separately).
        denormalise: the blended output ``(K, h, w)`` float32 to ``(h, w, 3)`` uint8 RGB; None:
            :func:`default_denormalise` (from [0, 1]).
        block_size: block width (and at most the height) in pixels; block rows are the RGB
            pyramid writer's bands. Each block also runs the tiles reaching into it from its
            neighbours (about ``keep / block_size`` more tiles per axis).
        workers: blocks processed at once (None: 2 on a GPU, else 1).
        tile: tile side of the written pyramid.
    """

    tiling: TilingParams = field(default_factory=_translation_tiling)
    normalise: Callable[[np.ndarray], np.ndarray] | None = None
    denormalise: Callable[[np.ndarray], np.ndarray] | None = None
    block_size: int = 2048
    workers: int | None = None
    tile: int = 256


def translate_level(
    level: Any,
    predictor: Predictor,
    out_path: str | Path,
    spacing_um: tuple[float, float],
    params: TranslationParams = TranslationParams(),
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> Path:
    """Translate a whole-slide level (RGB to RGB) into a tiled pyramidal RGB TIFF at ``out_path``.

    The result equals :func:`tiled_inference` of the whole normalised level with
    ``params.tiling`` (then denormalised), but is computed block by block: each block reads the
    region its tiles need (mirrored past the level's borders, as the whole-level padding would
    be), runs exactly the tiles of the level's grid that reach into it, and keeps its own pixels.
    The blocks form a lazy dask array that :func:`~medloop.app.io.slide.write_rgb_pyramid`
    computes band by band and writes tile by tile, so memory is bounded by ``workers`` blocks
    plus one band, whatever the slide size.

    Args:
        level: ``(H, W, 3)`` uint8 dask (e.g. a :func:`~medloop.app.io.slide.read_slide` pyramid
            level) or numpy array.
        predictor: as for :func:`tiled_inference` (e.g. a generator in eval mode).
        out_path, spacing_um: as for ``write_rgb_pyramid`` (the µm/pixel of this level).
        params: tiling and blocks (:class:`TranslationParams`).
        progress: ``progress(done_tiles, total_tiles)`` over all blocks' tiles.
        should_stop: polled before each batch of tiles and each written tile.

    Returns:
        ``out_path``; it appears complete or not at all.

    Raises:
        JobCancelled: ``should_stop()`` returned True (nothing is left at ``out_path``).
        ValueError: bad level shape or tiling, or a denormalised block that is not RGB uint8.
        ImageWriteError: the pyramid cannot be written there.
    """
    from medloop.app.io import slide as slide_io

    plan = _plan_translation(level, predictor, params, should_stop)
    blocks = _TranslatedBlocks(level, predictor, plan, progress, should_stop)
    return _write_blocks(blocks, slide_io.write_rgb_pyramid, out_path, spacing_um, plan, progress, should_stop)


def _plan_translation(
    level: Any, predictor: Predictor, params: TranslationParams, should_stop: ShouldStop | None
) -> _SlidePlan:
    from medloop.app.io import slide as slide_io

    shape = tuple(int(s) for s in level.shape)
    if len(shape) != 3 or shape[2] != 3:
        raise ValueError(f"level must be (height, width, 3) RGB, got shape {shape}")
    t = params.tiling
    if t.keep is None:
        raise ValueError("translate_level needs a kept-centre tiling: set TilingParams.keep (and stride)")
    check_stop(should_stop)
    dev = _resolve_device(t.device, predictor)
    grid = tiling_grid(shape[:2], t)
    rows, cols = _band_blocks(shape[:2], 3, params.tile, params.block_size, slide_io.RGB_BAND_BUDGET)
    spans = [[_lattice_span(grid, axis, a, b) for a, b in blocks] for axis, blocks in enumerate((rows, cols))]
    regions = {
        (i, j): (_tiles_region(grid, 0, spans[0][i]), _tiles_region(grid, 1, spans[1][j]))
        for i in range(len(rows))
        for j in range(len(cols))
    }
    stride = tuple(s[1] - s[0] if len(s) > 1 else 1 for s in grid.starts)
    total = sum(
        ((b0 - a0) // stride[0] + 1) * ((b1 - a1) // stride[1] + 1)
        for (a0, b0), (a1, b1) in itertools.product(spans[0], spans[1])
    )
    workers = params.workers or (2 if dev.type == "cuda" else 1)
    return _SlidePlan(
        replace(t, device=dev), params.normalise or default_normalise, None, np.dtype(np.uint8), workers,
        params.tile, rows, cols, regions, total, (3,), grid, params.denormalise or default_denormalise,
    )


def _lattice_span(grid: TileGrid, axis: int, a: int, b: int) -> Span:
    """The first and last tile starts on ``axis`` whose kept part reaches into image ``[a, b)``."""
    origin, k = grid.image_origin[axis], grid.kept[axis]
    starts = [s for s in grid.starts[axis] if s - origin < b and s - origin + k > a]
    return starts[0], starts[-1]


def _tiles_region(grid: TileGrid, axis: int, span: Span) -> Span:
    """The image span (may reach past the image) that the tiles ``span`` read on ``axis``."""
    return span[0] - grid.pad_before[axis], span[1] + grid.roi[axis] - grid.pad_before[axis]


class _TranslatedBlocks(_SlideBlocks):
    """RGB: each region is the level grid's tiles that reach into the block, side by side
    (a grid of its own with no padding), blended and denormalised."""

    def _infer(self, x: np.ndarray, rows: Span, cols: Span) -> np.ndarray:
        plan, g = self.plan, self.plan.grid
        assert g is not None and plan.finish is not None
        spatial = tuple(int(n) for n in x.shape[1:])
        stride = tuple(s[1] - s[0] if len(s) > 1 else k for s, k in zip(g.starts, g.kept))
        starts = tuple(tuple(range(0, n - r + 1, st)) for n, r, st in zip(spatial, g.roi, stride))
        local = TileGrid(spatial, g.roi, spatial, (0, 0), starts, g.keep)
        acc = _run_grid(x, self.predictor, local, plan.tiling, self._block_progress(), self.should_stop)
        del x
        # the canvas starts one margin into the region
        origin = (rows[0] - local.margin[0], cols[0] - local.margin[1])
        out = _cropped(acc, origin, (rows[1] - rows[0], cols[1] - cols[0]), np.float32)
        del acc
        rgb = np.asarray(plan.finish(out))
        if rgb.shape != out.shape[1:] + (3,) or rgb.dtype != np.uint8:
            raise ValueError(
                f"denormalise must map the translator's output {out.shape} to (h, w, 3) uint8; "
                f"it returned {rgb.shape} {rgb.dtype}"
            )
        return rgb


def _band_blocks(
    size: Span, pixel_bytes: int, tile: int, block_size: int, budget: int
) -> tuple[list[Span], list[Span]]:
    """Block rows and columns of a level. Block rows are exactly the pyramid writer's bands
    (whole tiles within its budget), so each band computes its blocks once and nothing is
    recomputed."""
    from medloop.app.io import slide as slide_io

    height, width = size
    band_rows = slide_io.max_band_rows(width, pixel_bytes, tile, budget)
    block_h = min(-(-max(block_size, 1) // tile) * tile, band_rows)
    return _axis_blocks(height, block_h), _axis_blocks(width, max(int(block_size), 1))


def _axis_blocks(n: int, size: int) -> list[tuple[int, int]]:
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def _context(a: int, b: int, n: int, margin: int, roi: int) -> tuple[int, int]:
    """[a, b) grown by ``margin`` (within [0, n)), and to at least one roi where the slide
    allows: an edge block takes context from inside the slide rather than from padding."""
    lo, hi = max(0, a - margin), min(n, b + margin)
    lo = max(0, min(lo, hi - roi))
    hi = min(n, max(hi, lo + roi))
    return lo, hi


def _probe_classes(
    predictor: Predictor, normalise: Callable[[np.ndarray], np.ndarray], roi: tuple[int, ...],
    dev: torch.device, amp: bool | None,
) -> int:
    """Classes the predictor outputs, from one white tile."""
    x = np.asarray(normalise(np.full((*roi, 3), 255, dtype=np.uint8)), dtype=np.float32)
    with torch.inference_mode(), autocast_for(dev, amp):
        y = predictor(torch.from_numpy(x)[None].to(dev))
    return int(y.shape[1])
