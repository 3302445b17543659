"""Sliding-window (tiled) inference for images larger than a network's input, and whole slides.

:func:`sliding_window_inference` reproduces MONAI's ``sliding_window_inference`` (same tile
grid, same Gaussian importance map, same weighted average), but reads tiles straight from a
numpy or dask array (never materialising a dask image), keeps a single full-size buffer (the
blended output; the weight normaliser is rebuilt slab by slab at the end), and reports progress
and honours cancellation between batches.

:func:`segment_slide` runs it block by block over a whole-slide level and streams the argmax
labels into a tiled label pyramid TIFF with :func:`medloop.app.io.slide.write_label_pyramid`.
"""

from __future__ import annotations

import functools
import itertools
import math
import threading
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medloop.app.engine.devices import autocast_for, choose_device
from medloop.app.engine.jobs import JobCancelled, Progress, ShouldStop, check_stop

Predictor = Callable[[torch.Tensor], torch.Tensor]
"""Maps a float32 batch ``(B, C, *roi)`` to logits ``(B, K, *roi)`` on the same device."""

_BLENDS = ("gaussian", "constant")
_ACTIVATIONS = ("softmax", "sigmoid", None)
# Fraction of free GPU memory the blended output may take before it is kept on the host instead.
_GPU_ACCUMULATOR_SHARE = 0.5


# --------------------------------------------------------------------------------------------
# Tile grid and weights (MONAI's conventions, so results match it)


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of one sliding-window pass go.

    ``padded`` is the image size after padding up to ``roi`` (``pad_before`` voxels of it in front
    of the image on each axis); ``starts`` holds each axis' tile starts in padded coordinates.
    Tiles are every combination of starts, first axis slowest (MONAI's order).
    """

    shape: tuple[int, ...]
    roi: tuple[int, ...]
    padded: tuple[int, ...]
    pad_before: tuple[int, ...]
    starts: tuple[tuple[int, ...], ...]

    @property
    def n_tiles(self) -> int:
        return math.prod(len(s) for s in self.starts)

    def tiles(self) -> list[tuple[int, ...]]:
        return list(itertools.product(*self.starts))


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


def importance_map(
    roi: Sequence[int], blend: str = "gaussian", sigma_scale: float | Sequence[float] = 0.125
) -> torch.Tensor:
    """The per-tile blending weights, float32 of shape ``roi``, exactly as MONAI computes them.

    ``"gaussian"``: the product of 1-D Gaussians with sigma ``sigma_scale * roi`` centred on the
    tile (peak 1 for odd sizes); ``"constant"``: ones. Weights are clipped below at
    ``max(min weight, 1e-3)`` so tile corners still count where no other tile covers them.
    """
    roi = tuple(int(r) for r in roi)
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
        raise ValueError(f"unknown blend {blend!r}; use 'gaussian' or 'constant'")
    floor = max(torch.min(weights).item(), 1e-3)
    return torch.clamp_(weights, min=floor)


@functools.lru_cache(maxsize=16)
def _cached_importance_map(roi: tuple[int, ...], blend: str, sigma_scale: tuple[float, ...]) -> torch.Tensor:
    # Blocks of a slide (and repeated calls) share one map; callers only read it.
    return importance_map(roi, blend, sigma_scale)


# --------------------------------------------------------------------------------------------
# Sliding-window inference


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
        predictor: maps a float32 tensor ``(B, C, *roi)`` on ``device`` to ``(B, K, *roi)``
            logits; called under ``torch.inference_mode`` and :func:`autocast_for`.
        roi_size: tile size per spatial axis (an int for all); non-positive means the whole axis.
        overlap: fraction of a tile shared with its neighbour, in [0, 1).
        blend: ``"gaussian"`` (tile centres count more) or ``"constant"``.
        sigma_scale: Gaussian sigma as a fraction of the tile size.
        batch_size: tiles per predictor call.
        device: where the predictor runs; None: the device of ``predictor``'s parameters if it
            is a ``torch.nn.Module``, else :func:`choose_device` ("auto"). A string is checked
            with :func:`choose_device`.
        amp: mixed precision (see :func:`autocast_for`; None: on for CUDA only).
        divisible_by: round the roi up to a multiple of this (e.g. 2**levels of a U-Net).
        activation: ``"softmax"`` (over K) or ``"sigmoid"`` applied to each tile's logits
            *before* blending (so the result is blended probabilities); None blends the raw
            outputs, as MONAI does.
        progress: ``progress(done_tiles, total_tiles)`` after each batch.
        should_stop: polled before each batch; True raises :class:`JobCancelled`, so a cancel
            takes effect within one batch.
        out_dtype: dtype of the returned array.
        pad_value: value of the padding where the image is smaller than the roi.

    Returns:
        ``(K, *spatial)`` array of ``out_dtype``, the same spatial shape as ``image``.

    Raises:
        JobCancelled: ``should_stop()`` returned True.
        ValueError: bad shapes or settings, or the predictor's output does not fit its input.
    """
    shape = tuple(int(s) for s in image.shape)
    if len(shape) not in (3, 4):
        raise ValueError(
            f"image must be (C, *spatial) with 2 or 3 spatial axes, got shape {shape}"
        )
    if blend not in _BLENDS:
        raise ValueError(f"unknown blend {blend!r}; use 'gaussian' or 'constant'")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; use 'softmax', 'sigmoid' or None")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    channels, spatial = shape[0], shape[1:]
    grid = tile_grid(spatial, roi_size, overlap, divisible_by)
    dev = _resolve_device(device, predictor)
    scales = _per_axis(sigma_scale, len(grid.roi), "sigma_scale", kind=float)
    weights = _cached_importance_map(grid.roi, blend, scales).to(dev)
    tiles = grid.tiles()
    batches = [tiles[i : i + batch_size] for i in range(0, len(tiles), batch_size)]
    reader = _TileReader(image, grid, channels, batch_size, dev, pad_value)
    acc: torch.Tensor | None = None
    done = 0
    try:
        pending = reader.submit(batches[0]) if reader.ahead else None
        for index, batch in enumerate(batches):
            check_stop(should_stop)
            x = reader.result(pending if reader.ahead else reader.submit(batch))
            if reader.ahead and index + 1 < len(batches):  # read on while the network runs
                pending = reader.submit(batches[index + 1])
            with torch.inference_mode():
                with autocast_for(dev, amp):
                    y = predictor(x)
                y = _checked_output(y, len(batch), grid.roi)
                if activation == "softmax":
                    y = torch.softmax(y, dim=1)
                elif activation == "sigmoid":
                    y = torch.sigmoid(y)
                if acc is None:
                    acc = _accumulator((y.shape[1], *grid.padded), dev)
                if acc.device == y.device:
                    for t, start in zip(y, batch):
                        acc[_tile_index(start, grid.roi)].addcmul_(t, weights)
                else:  # GPU result, host accumulator: weight on the GPU, add on the host
                    weighted = (y * weights).cpu()
                    for t, start in zip(weighted, batch):
                        acc[_tile_index(start, grid.roi)].add_(t)
            done += len(batch)
            if progress is not None:
                progress(done, len(tiles))
    finally:
        reader.close()
    assert acc is not None
    with torch.inference_mode():
        _normalise(acc, grid, weights.to(acc.device))
        crop = (slice(None),) + tuple(slice(p, p + s) for p, s in zip(grid.pad_before, spatial))
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


def _checked_output(y: Any, n: int, roi: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"the predictor must return a tensor, got {type(y).__name__}")
    if y.ndim != len(roi) + 2 or y.shape[0] != n or tuple(y.shape[2:]) != roi:
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
    r0 = grid.roi[0]
    borders = sorted({s for s in first} | {s + r0 for s in first})
    for a, b in zip(borders[:-1], borders[1:]):
        covering = [s for s in first if s <= a and s + r0 >= b]
        count = torch.zeros((b - a, *grid.padded[1:]), dtype=torch.float32, device=acc.device)
        for s0 in covering:
            slab = weights[a - s0 : b - s0]
            for start in rest:
                count[_tile_index(start, grid.roi[1:])] += slab
        acc[:, a:b].div_(count)


class _TileReader:
    """Fills float32 batches of tiles from the image, zero-padding (``pad_value``) outside it.

    Dask images are read in a background thread (one batch ahead) with one ``dask.compute`` per
    batch, so chunks shared by a batch's tiles are computed once. On CUDA the batches go through
    pinned host buffers and are copied asynchronously, also one batch ahead. Reading ahead
    needs two buffers; otherwise (numpy on the CPU, where a copy is cheap) one will do.
    """

    def __init__(self, image: Any, grid: TileGrid, channels: int, batch_size: int,
                 dev: torch.device, pad_value: float) -> None:
        self.image, self.grid, self.dev, self.pad_value = image, grid, dev, float(pad_value)
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
            import dask

            sources = dask.compute(*sources)
        for i, ((_, dst, full), data) in enumerate(zip(regions, sources)):
            if not full:
                buf[i].fill(self.pad_value)
            buf[i][dst] = data
        return slot, len(batch)

    def _region(self, start: tuple[int, ...]) -> tuple[tuple[slice, ...], tuple[slice, ...], bool]:
        """(image index, tile index, whether the tile lies wholly inside the image)."""
        src, dst, full = [slice(None)], [slice(None)], True
        for s, r, p, n in zip(start, self.grid.roi, self.grid.pad_before, self.grid.shape):
            a = s - p
            lo, hi = max(a, 0), min(a + r, n)
            src.append(slice(lo, hi))
            dst.append(slice(lo - a, hi - a))
            full = full and lo == a and hi == a + r
        return tuple(src), tuple(dst), full

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


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
    """Segment a whole-slide level block by block into a label pyramid TIFF at ``out_path``.

    The level is cut into blocks (``block_size`` wide; as tall as write_label_pyramid's bands
    allow, so every block is computed once); each block is read with a ``margin`` of context on
    every side (default ``ceil(roi * overlap)``), normalised, run through
    :func:`sliding_window_inference` and reduced to labels with :func:`predict_labels`, and only
    its centre is kept, so block seams get the same context as tile overlaps. The labels form
    a lazy dask array that :func:`~medloop.app.io.slide.write_label_pyramid` computes band by
    band and writes tile by tile: memory is bounded by ``workers`` blocks plus one band of
    labels, whatever the slide size.

    Args:
        level: ``(H, W, 3)`` uint8 dask (e.g. a :func:`~medloop.app.io.slide.read_slide` pyramid
            level) or numpy array.
        predictor, roi_size, overlap, blend, sigma_scale, batch_size, device, amp, divisible_by,
            activation: as for :func:`sliding_window_inference`.
        out_path, spacing_um, tile: as for ``write_label_pyramid`` (spacing of this level).
        normalise: maps an ``(h, w, 3)`` uint8 block to the network input ``(C, h, w)`` float32;
            default :func:`default_normalise` (scales to [0, 1]).
        num_classes: classes the predictor outputs; None: found with one probe call. Decides
            the label dtype (uint8 up to 256).
        workers: blocks processed at once (default 2 on a GPU, so reading overlaps inference,
            else 1: on a CPU the network already uses every core).
        progress: ``progress(done_tiles, total_tiles)`` over all blocks' tiles; called from
            worker threads.
        should_stop: polled before each batch of tiles and each written tile.

    Returns:
        ``out_path``; it appears complete or not at all.

    Raises:
        JobCancelled: ``should_stop()`` returned True (nothing is left at ``out_path``).
        ImageWriteError: the pyramid cannot be written there.
    """
    import dask.array as da

    from medloop.app.io import slide as slide_io

    shape = tuple(int(s) for s in level.shape)
    if len(shape) != 3:
        raise ValueError(f"level must be (height, width, channels), got shape {shape}")
    height, width = shape[:2]
    normalise = normalise or default_normalise
    dev = _resolve_device(device, predictor)
    roi = _per_axis(roi_size, 2, "roi_size")
    roi = tuple(-(-r // divisible_by) * divisible_by for r in roi)
    margins = (
        tuple(math.ceil(r * overlap) for r in roi) if margin is None else (int(margin),) * 2
    )
    workers = workers or (2 if dev.type == "cuda" else 1)
    check_stop(should_stop)
    if num_classes is None:
        num_classes = _probe_classes(predictor, normalise, roi, dev, amp)
    dtype = np.dtype(np.uint8 if num_classes <= 256 else np.uint16)

    # Block rows are exactly write_label_pyramid's bands (whole label tiles within its scratch
    # budget), so each band computes its blocks once and nothing is recomputed.
    band_rows = slide_io.max_band_rows(width, dtype.itemsize, tile)
    block_h = min(-(-max(block_size, 1) // tile) * tile, band_rows)
    block_w = max(int(block_size), 1)
    rows = _axis_blocks(height, block_h)
    cols = _axis_blocks(width, block_w)
    regions = {
        (i, j): (_context(y0, y1, height, margins[0], roi[0]), _context(x0, x1, width, margins[1], roi[1]))
        for i, (y0, y1) in enumerate(rows)
        for j, (x0, x1) in enumerate(cols)
    }
    counts = {
        key: tile_grid((ry[1] - ry[0], rx[1] - rx[0]), roi, overlap, divisible_by).n_tiles
        for key, (ry, rx) in regions.items()
    }
    total = sum(counts.values())
    lock = threading.Lock()
    gate = threading.BoundedSemaphore(workers)
    state = {"done": 0}

    def block(i: int, j: int) -> np.ndarray:
        (y0, y1), (x0, x1) = rows[i], cols[j]
        (ry0, ry1), (rx0, rx1) = regions[i, j]
        last = [0]

        def block_progress(done: int, _total: int) -> None:
            with lock:
                state["done"] += done - last[0]
                last[0] = done
                now = min(state["done"], total)
            if progress is not None:
                progress(now, total)

        with gate:  # bounds memory: at most `workers` blocks are in flight
            check_stop(should_stop)
            rgb = np.asarray(level[ry0:ry1, rx0:rx1])
            x = np.asarray(normalise(rgb), dtype=np.float32)
            del rgb
            if x.ndim != 3 or x.shape[1:] != (ry1 - ry0, rx1 - rx0):
                raise ValueError(
                    f"normalise must map an (h, w, 3) block to (C, h, w); it returned {x.shape} "
                    f"for a block of {(ry1 - ry0, rx1 - rx0)}"
                )
            probs = sliding_window_inference(
                x, predictor, roi, overlap=overlap, blend=blend, sigma_scale=sigma_scale,
                batch_size=batch_size, device=dev, amp=amp, divisible_by=divisible_by,
                activation=activation, progress=block_progress, should_stop=should_stop,
            )
            del x
            if probs.shape[0] != num_classes:
                raise ValueError(
                    f"the predictor returned {probs.shape[0]} classes, expected {num_classes}"
                )
            keep = probs[:, y0 - ry0 : y1 - ry0, x0 - rx0 : x1 - rx0]
            return predict_labels(keep).astype(dtype, copy=False)

    name = f"medloop-segment-{uuid.uuid4().hex}"
    graph = {(name, i, j): (block, i, j) for i, j in regions}
    chunks = (tuple(b - a for a, b in rows), tuple(b - a for a, b in cols))
    labels = da.Array(graph, name, chunks, meta=np.empty((0, 0), dtype=dtype))
    try:
        path = slide_io.write_label_pyramid(
            labels, out_path, spacing_um, tile=tile, should_stop=should_stop
        )
    except slide_io.LabelPyramidCancelled:
        raise JobCancelled("cancelled") from None
    if progress is not None:
        progress(total, total)
    return path


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
