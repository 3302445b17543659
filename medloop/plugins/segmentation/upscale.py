"""Cost-free output upscaling (seed 000, Pellicer-Valero et al.): any trained model gives labels
on a grid k times finer along chosen axes by segmenting sub-voxel shifted copies of its input
and interleaving the outputs.

For factors ``k`` per axis, the input is resampled (cubic B-spline or linear interpolation in
the image domain, edges clamped) at every combination of the shifts ``t_j = (j + a) / k`` voxels, ``j = 0..k-1``;
the output voxel ``n`` of shift ``j`` is the fine voxel ``n * k + j``. ``align="centre"``
(``a = -(k - 1) / 2``, the default) puts the ``k`` fine voxels symmetrically inside their coarse
voxel, so the fine grid covers exactly the coarse grid's extent (what any resampler's finer
grid of the same extent is); ``align="start"`` (``a = 0``) is the paper's literal choice, whose
fine grid starts at the first coarse voxel centre. With ``overlap=True`` every fine voxel is
also predicted from the neighbouring coarse voxel (shift ``t_j - 1``) and the two predictions
are fused: probability averaging (``fusion="mean"``) or a majority vote of the predicted
classes (``fusion="vote"``, ties to the higher mean probability). That doubles the passes per
axis, like test-time augmentation.

All shifted copies go through the network together: the copies are stacked along the
channel axis, one tiled pass reads each tile once, and on a GPU the network sees
``batch x copies`` tiles per call. On the CPU per-voxel cost does not fall with the batch and
rises once a call's activations outgrow the cache, so there calls are capped (see
:func:`tiles_per_call`) and the copies cost about ``prod(k)`` single passes.

Qt-free; :func:`~medloop.plugins.segmentation.method.segment` uses it for the panel and the CLI.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy import ndimage

from medloop.app.errors import MedloopError
from medloop.app.io.image import MedImage

ALIGNS = ("centre", "start")
FUSIONS = ("mean", "vote")
AXIS_NAMES = {2: ("y", "x"), 3: ("z", "y", "x")}


class UpscaleError(MedloopError, ValueError):
    """Upscaling factors or options that cannot be used with this image."""


def parse_factors(text: str | Sequence[str] | None, ndim: int) -> tuple[int, ...]:
    """Factors per array axis from ``"z=3"``, ``"z=3,y=2"`` or ``["z=3", "x=2"]`` (axis names
    of the image's own array axes: z, y, x for volumes; y, x for 2-D images). None or empty: 1s."""
    names = AXIS_NAMES.get(ndim)
    if names is None:
        raise UpscaleError(f"upscaling needs a 2-D or 3-D image, not {ndim}-D")
    factors = dict.fromkeys(names, 1)
    parts = [text] if isinstance(text, str) else list(text or [])
    items = [p.strip() for part in parts for p in str(part).split(",") if p.strip()]
    for item in items:
        axis, _, value = item.partition("=")
        axis = axis.strip().lower()
        if axis not in factors or not value.strip():
            raise UpscaleError(
                f"cannot read upscale factor {item!r}; write AXIS=K with AXIS one of {', '.join(names)} (e.g. z=3)"
            )
        try:
            k = int(value)
        except ValueError:
            raise UpscaleError(f"upscale factor {item!r} is not a whole number; write e.g. {axis}=3") from None
        if not 1 <= k <= 16:
            raise UpscaleError(f"upscale factor {item!r} must be between 1 and 16")
        factors[axis] = k
    return tuple(factors[n] for n in names)


def shift_offsets(factors: Sequence[int], align: str = "centre", overlap: bool = False) -> list[tuple[tuple[float, int], ...]]:
    """Every combination of per-axis shifts, as ``((t, fine_offset), ...)`` per axis: the input
    is sampled at ``n + t`` and that output voxel ``n`` lands on fine index ``n * k + fine_offset``.
    Ordered with the last axis fastest (row-major over ``j``)."""
    if align not in ALIGNS:
        raise UpscaleError(f"align must be one of {', '.join(ALIGNS)}, got {align!r}")
    per_axis = []
    for k in factors:
        k = int(k)
        a = -(k - 1) / 2 if align == "centre" else 0.0
        shifts = [((j + a) / k, j) for j in range(k)]
        if overlap and k > 1:  # the same fine voxels seen from the next coarse voxel
            shifts += [((j + a) / k - 1.0, j - k) for j in range(k)]
        per_axis.append(shifts)
    return list(itertools.product(*per_axis))


def _bspline3(s: float) -> float:
    s = abs(s)
    return 2 / 3 - s * s + s**3 / 2 if s < 1 else ((2 - s) ** 3 / 6 if s < 2 else 0.0)


def shift_axis(x: np.ndarray, t: float, axis: int, order: int = 3) -> np.ndarray:
    """``x`` sampled at ``n + t`` along ``axis`` (float32): linear (``order=1``) or cubic
    B-spline (``order=3``) interpolation. A constant sub-voxel shift is a fixed 2- or 4-tap
    filter (after the B-spline prefilter), so this costs a few passes over the array instead of
    a full N-D spline evaluation. Positions beyond the first/last voxel take the edge value."""
    if order not in (1, 3):
        raise UpscaleError(f"interpolation order must be 1 (linear) or 3 (cubic), got {order}")
    n = x.shape[axis]
    f = int(np.floor(t))
    u = t - f
    if order == 1:
        coeffs, taps = x.astype(np.float64), [(0, 1.0 - u), (1, u)]
    else:
        coeffs = ndimage.spline_filter1d(x, order=3, axis=axis, mode="nearest", output=np.float64)
        taps = [(i, _bspline3(u - i)) for i in (-1, 0, 1, 2)]
    out = np.zeros(x.shape, np.float64)
    base = np.arange(n) + f
    for i, weight in taps:
        if weight:
            out += weight * np.take(coeffs, np.clip(base + i, 0, n - 1), axis=axis)
    position = np.arange(n) + t
    shape = [1] * x.ndim
    shape[axis] = n
    low, high = (position < 0).reshape(shape), (position > n - 1).reshape(shape)
    out = np.where(low, np.take(x, [0], axis=axis), out)
    out = np.where(high, np.take(x, [n - 1], axis=axis), out)
    return out.astype(np.float32)


def shifted_copies(x: np.ndarray, offsets: Sequence[tuple[tuple[float, int], ...]], order: int = 3) -> np.ndarray:
    """``(S, C, *spatial)`` float32: ``x`` (``(C, *spatial)``) sampled at ``n + t`` for each
    offset, one axis at a time (:func:`shift_axis`; ``order`` 3 = cubic B-spline, the default:
    on thick-slice brain MRI it placed boundaries better than linear, see
    ``benchmarks/bench_upscale.py``). A zero shift is an exact copy; a lone zero shift (no
    upscaling) returns ``x`` itself, so plain segmentation does not copy its input."""
    if len(offsets) == 1 and not any(t for t, _ in offsets[0]):
        return np.asarray(x, np.float32)[None]
    out = np.empty((len(offsets), *x.shape), np.float32)
    for s, combo in enumerate(offsets):
        shifted = np.asarray(x, np.float32)
        for axis, (t, _) in enumerate(combo):
            if t:
                shifted = shift_axis(shifted, t, axis + 1, order)
        out[s] = shifted
    return out


def fuse(outputs: np.ndarray, offsets: Sequence[tuple[tuple[float, int], ...]], factors: Sequence[int], fusion: str = "mean") -> np.ndarray:
    """``(K, *spatial * k)`` fine probabilities from ``(S, K, *spatial)`` per-shift outputs:
    output voxel ``n`` of shift ``(t, f)`` lands on fine index ``n * k + f`` (dropped when that
    lies outside the fine grid). Fine voxels seen more than once are averaged (``"mean"``) or
    take the majority class (``"vote"``; returned as vote shares, ties to the higher mean)."""
    if fusion not in FUSIONS:
        raise UpscaleError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
    outputs = np.asarray(outputs, dtype=np.float32)
    spatial = outputs.shape[2:]
    fine = tuple(int(d) * int(k) for d, k in zip(spatial, factors))
    k_classes = outputs.shape[1]
    total = np.zeros((k_classes, *fine), np.float32)
    votes = np.zeros((k_classes, *fine), np.float32) if fusion == "vote" else None
    count = np.zeros(fine, np.float32)
    for out, combo in zip(outputs, offsets):
        # n * k + f for n = first..d-1 is a strided slice of the fine axis (f > -k, so only
        # n = 0 can fall off the start): views, no index arrays.
        src, dst = [], []
        for d, k, (_, f) in zip(spatial, factors, combo):
            first = 1 if f < 0 else 0
            src.append(slice(first, d))
            dst.append(slice(first * int(k) + f, (d - 1) * int(k) + f + 1, int(k)))
        block = out[(slice(None), *src)]
        total[(slice(None), *dst)] += block
        count[tuple(dst)] += 1
        if votes is not None:
            winner = block.argmax(axis=0)
            for c in range(k_classes):
                votes[(c, *dst)] += winner == c
    count = np.maximum(count, 1)
    mean = total / count
    if votes is None:
        return mean
    shares = votes / count
    return shares + 1e-4 * mean  # ties go to the higher mean probability


def interleave(outputs: np.ndarray, factors: Sequence[int], align: str = "centre") -> np.ndarray:
    """Fine ``(K, *spatial * k)`` from the ``(S, K, *spatial)`` outputs of :func:`shift_offsets`'
    shifts (no overlap): output ``n`` of shift ``j`` at fine index ``n * k + j``."""
    return fuse(outputs, shift_offsets(factors, align), factors)


def fine_grid(image: MedImage, factors: Sequence[int], align: str = "centre") -> MedImage:
    """An empty image on ``image``'s grid refined by ``factors`` (per array axis): spacing / k,
    shape * k, origin moved so fine voxel ``m`` sits at coarse continuous index
    ``(m + a) / k`` (``a`` as in :func:`shift_offsets`)."""
    if align not in ALIGNS:
        raise UpscaleError(f"align must be one of {', '.join(ALIGNS)}, got {align!r}")
    ks = np.asarray([int(k) for k in factors], float)  # array axis order
    spacing_arr = np.asarray(image.spacing, float)[::-1]
    first = -(ks - 1) / 2 / ks if align == "centre" else np.zeros_like(ks)  # coarse index of fine voxel 0
    direction = np.asarray(image.direction, float).reshape(image.ndim, image.ndim)
    shift_xyz = (first * spacing_arr)[::-1]
    origin = np.asarray(image.origin, float) + direction @ shift_xyz
    shape = tuple(int(s * k) for s, k in zip(image.shape[: image.ndim], ks.astype(int)))
    return replace(
        image,
        array=np.zeros(shape, np.uint8),
        spacing=tuple(float(v) for v in (spacing_arr / ks)[::-1]),
        origin=tuple(float(v) for v in origin),
        channel_axis=False,
        pyramid=(),
    )


def stacked_predictor(
    predictor: Callable[[torch.Tensor], torch.Tensor], copies: int, max_tiles: int | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A predictor for ``(B, copies * C, *roi)`` tiles: runs ``predictor`` on the ``B * copies``
    tiles, at most ``max_tiles`` per call (None: all at once), and returns their softmax
    probabilities as ``(B, copies * K, *roi)``."""

    def predict(x: torch.Tensor) -> torch.Tensor:
        b, sc = x.shape[:2]
        roi = x.shape[2:]
        tiles = x.reshape(b * copies, sc // copies, *roi)
        step = len(tiles) if max_tiles is None else max(1, int(max_tiles))
        y = torch.cat([torch.softmax(predictor(tiles[i : i + step]).float(), dim=1) for i in range(0, len(tiles), step)])
        return y.reshape(b, copies * y.shape[1], *roi)

    return predict


CPU_CALL_VOXELS = 2**18
"""Input voxels per network call above which a CPU pass gets slower per voxel: on the 2-core
test machine a 2-D U-Net (16-128 features) ran at 0.85-1.05 us per pixel for calls of 16k-256k
pixels and 1.2-1.35 us beyond (its activations outgrow the cache); batching below that bought
nothing measurable."""


def tiles_per_call(device: torch.device, batch_size: int, tile_voxels: int) -> int | None:
    """How many shifted-copy tiles one network call takes: all of them on an accelerator (the
    batching is what makes the copies cheap there); on the CPU as many as fit
    :data:`CPU_CALL_VOXELS`, but never fewer than the plain pass's ``batch_size``, so a call is
    never larger than needed and the copies cost ``prod(k)`` plain passes, not more."""
    if device.type != "cpu":
        return None
    return max(int(batch_size), CPU_CALL_VOXELS // max(1, int(tile_voxels)))


def model_axis_factors(image: MedImage, grid: MedImage, factors: Sequence[int]) -> tuple[int, ...]:
    """``factors`` (per array axis of ``image``) carried to the array axes of ``grid`` (the same
    image reoriented for the model): each grid axis takes the factor of the image axis whose
    direction it is closest to."""
    n = image.ndim
    d_img = np.asarray(image.direction, float).reshape(n, n)
    d_grid = np.asarray(grid.direction, float).reshape(n, n)
    match = np.abs(d_grid.T @ d_img)  # [grid xyz axis, image xyz axis]
    img_xyz = list(factors)[::-1]
    grid_xyz = [img_xyz[int(np.argmax(match[i]))] for i in range(n)]
    return tuple(grid_xyz[::-1])
