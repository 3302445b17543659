"""Random augmentation of (image, label[, weight]) training samples, 2-D and 3-D.

Arrays follow the project's conventions: ``image`` is ``(C, *spatial)`` float32, ``label`` is
``(*spatial)`` integer, an optional ``weight`` map is ``(*spatial)`` float (0 = no say in the
loss). Every random draw comes from the caller's :class:`numpy.random.Generator`, so a seed
reproduces a sample exactly.

Geometry (flips, rotation, scaling, elastic deformation) is composed into ONE coordinate map and
applied in one resampling: linear for the image, nearest-neighbour for label and weight, so the
label stays in the original label set and stays aligned with the image. The map can read from a
whole volume and write a patch (:func:`random_augmented_patch`), so rotated corners show real
neighbouring tissue instead of padding. Where the map leaves the volume the image repeats its
edge, the label is 0 and the weight is 0 (the loss ignores what was never imaged).

Intensity transforms (bias field, resolution, noise, gamma, scale/shift) touch the image only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch


@dataclass
class AugmentConfig:
    """Probabilities (``p_*``, per sample unless said otherwise) and ranges of every transform.

    Ranges are ``(low, high)`` drawn uniformly. Geometric sizes are in voxels of the input grid.
    """

    # Flips: each axis in ``flip_axes`` (None: every spatial axis) flips with ``p_flip``.
    p_flip: float = 0.5
    flip_axes: tuple[int, ...] | None = None
    # Rotation: 3-D, an angle in [-rotate_deg, rotate_deg] about each axis; 2-D, one in-plane
    # angle in that range, or any angle when ``rotate_any_2d``.
    p_rotate: float = 0.3
    rotate_deg: float = 15.0
    rotate_any_2d: bool = False
    # Scaling: > 1 zooms in (structures look larger). One factor for all axes unless
    # ``scale_isotropic`` is False.
    p_scale: float = 0.3
    scale_range: tuple[float, float] = (0.85, 1.15)
    scale_isotropic: bool = True
    # Elastic: a smooth random displacement field, Gaussian control-point displacements with a
    # standard deviation drawn from ``elastic_sigma_range`` (voxels) on an ``elastic_points``^d
    # grid spanning the output, interpolated linearly between them.
    p_elastic: float = 0.2
    elastic_sigma_range: tuple[float, float] = (1.0, 4.0)
    elastic_points: int = 5
    # Multiplicative smooth bias field 1 + b, |b| <= a with a drawn from [0, bias_max]; b is a
    # random polynomial of total degree 1..bias_order over the output window.
    p_bias: float = 0.3
    bias_max: float = 0.3
    bias_order: int = 3
    # Resolution: every axis gets a spacing factor (new / native) from ``resolution_range``; the
    # image is down-sampled by it (box average) and brought back up linearly. Factors below 1
    # leave the axis alone: a finer acquisition, resampled to the native grid, looks native.
    p_resolution: float = 0.2
    resolution_range: tuple[float, float] = (0.5, 1.5)
    # Thick slices: only ``thick_slice_axis`` (array axis; 0 = z for volumes) gets a factor
    # from ``thick_slice_range``.
    p_thick_slices: float = 0.15
    thick_slice_range: tuple[float, float] = (1.5, 3.0)
    thick_slice_axis: int = 0
    # Gaussian noise, standard deviation a fraction (drawn from the range) of the channel's std.
    p_noise: float = 0.15
    noise_range: tuple[float, float] = (0.0, 0.1)
    # Gamma on the channel's [min, max] range.
    p_gamma: float = 0.3
    gamma_range: tuple[float, float] = (0.7, 1.5)
    # Intensity x * scale + shift * std(channel).
    p_intensity: float = 0.3
    intensity_scale_range: tuple[float, float] = (0.9, 1.1)
    intensity_shift_range: tuple[float, float] = (-0.1, 0.1)
    # Draw gamma and scale/shift separately for every channel (colour jitter) or once for all.
    per_channel: bool = False

    @classmethod
    def none(cls) -> "AugmentConfig":
        """A configuration that changes nothing (every probability 0); override what you need."""
        return cls(**{name: 0.0 for name in cls.__dataclass_fields__ if name.startswith("p_")})

    @classmethod
    def strong(cls) -> "AugmentConfig":
        """Heavy augmentation for models that must survive other scanners and protocols (the
        bundled brain model's): frequent rotations and scaling, bias field up to ±30 %, spacing
        1-3 mm relative to a native 2 mm incl. thick slices, wider intensity changes."""
        return cls(
            p_rotate=0.5,
            p_scale=0.4,
            p_elastic=0.2,
            p_bias=0.5,
            p_resolution=0.4,
            p_thick_slices=0.25,
            p_noise=0.3,
            p_gamma=0.3,
            p_intensity=0.5,
            intensity_scale_range=(0.75, 1.25),
            intensity_shift_range=(-0.2, 0.2),
        )


class Sample(NamedTuple):
    """One training sample: image (C, *spatial) float32, label (*spatial), weight (*spatial) float32."""

    image: np.ndarray
    label: np.ndarray
    weight: np.ndarray


# ----------------------------------------------------------------------------------- patches


def foreground_indices(label: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
    """Flat indices of voxels with a label > 0 (and weight > 0 when given): patch centres to prefer.

    Compute once per volume and pass to :func:`random_patch` so each patch costs no full scan.
    """
    mask = np.asarray(label) > 0
    if weight is not None:
        mask &= np.asarray(weight) > 0
    return np.flatnonzero(mask)


def choose_window(
    shape: Sequence[int],
    patch_size: Sequence[int],
    rng: np.random.Generator,
    foreground_fraction: float = 0.5,
    fg_indices: np.ndarray | None = None,
) -> tuple[int, ...]:
    """Start corner of a random ``patch_size`` window in a volume of ``shape``.

    With probability ``foreground_fraction`` (and when there is foreground) the window centres
    on a random foreground voxel. The window stays inside the volume along every axis where it
    fits; where it does not, it is placed at random over the volume (the rest is padding).
    """
    shape = tuple(int(s) for s in shape)
    patch = tuple(int(p) for p in patch_size)
    lo = [min(0, n - p) for n, p in zip(shape, patch)]
    hi = [max(0, n - p) for n, p in zip(shape, patch)]
    # Always draw the same number of values, so the stream does not depend on the branch taken.
    use_fg = rng.random() < foreground_fraction
    if use_fg and fg_indices is not None and len(fg_indices) > 0:
        centre = np.unravel_index(int(fg_indices[rng.integers(len(fg_indices))]), shape)
        return tuple(int(np.clip(c - p // 2, a, b)) for c, p, a, b in zip(centre, patch, lo, hi))
    return tuple(int(rng.integers(a, b + 1)) for a, b in zip(lo, hi))


def crop_window(
    image: np.ndarray,
    label: np.ndarray,
    start: Sequence[int],
    patch_size: Sequence[int],
    weight: np.ndarray | None = None,
) -> Sample:
    """The window ``[start, start + patch_size)``; outside the volume the image repeats its edge,
    label and weight are 0."""
    shape = label.shape
    idx = [np.arange(s, s + p) for s, p in zip(start, patch_size)]
    inside = [(i >= 0) & (i < n) for i, n in zip(idx, shape)]
    clipped = [np.clip(i, 0, n - 1) for i, n in zip(idx, shape)]
    if all(v.all() for v in inside):
        sl = tuple(slice(int(s), int(s) + int(p)) for s, p in zip(start, patch_size))
        img = np.ascontiguousarray(image[(slice(None),) + sl], dtype=np.float32)
        lab = label[sl].copy()
        w = np.ones(lab.shape, np.float32) if weight is None else np.asarray(weight[sl], np.float32).copy()
        return Sample(img, lab, w)
    grid = np.ix_(*clipped)
    img = np.ascontiguousarray(image[(slice(None),) + grid], dtype=np.float32)
    valid = np.ones(tuple(int(p) for p in patch_size), bool)
    for axis, v in enumerate(inside):
        valid &= v.reshape([-1 if a == axis else 1 for a in range(len(shape))])
    lab = np.where(valid, label[grid], 0).astype(label.dtype, copy=False)
    w = valid.astype(np.float32) if weight is None else np.where(valid, weight[grid], 0).astype(np.float32)
    return Sample(img, lab, w)


def random_patch(
    image: np.ndarray,
    label: np.ndarray,
    patch_size: Sequence[int],
    rng: np.random.Generator,
    foreground_fraction: float = 0.5,
    *,
    weight: np.ndarray | None = None,
    fg_indices: np.ndarray | None = None,
) -> Sample:
    """A random ``patch_size`` crop, centred on a random foreground voxel with probability
    ``foreground_fraction``; padded (image edge, label 0, weight 0) where the volume is smaller.

    ``fg_indices`` (from :func:`foreground_indices`) saves a scan of the label per call.
    """
    _check_pair(image, label, weight)
    if fg_indices is None and foreground_fraction > 0:
        fg_indices = foreground_indices(label, weight)
    start = choose_window(label.shape, patch_size, rng, foreground_fraction, fg_indices)
    return crop_window(image, label, start, patch_size, weight)


def random_augmented_patch(
    image: np.ndarray,
    label: np.ndarray,
    patch_size: Sequence[int],
    rng: np.random.Generator,
    config: AugmentConfig,
    foreground_fraction: float = 0.5,
    *,
    weight: np.ndarray | None = None,
    fg_indices: np.ndarray | None = None,
) -> Sample:
    """:func:`random_patch` and :func:`augment` in one resampling that reads from the whole
    volume (rotated and zoomed-out patches see real context instead of padding)."""
    _check_pair(image, label, weight)
    if fg_indices is None and foreground_fraction > 0:
        fg_indices = foreground_indices(label, weight)
    start = choose_window(label.shape, patch_size, rng, foreground_fraction, fg_indices)
    return augment(image, label, config, rng, weight=weight, out_shape=patch_size, start=start)


# ------------------------------------------------------------------------------ augmentation


def augment(
    image: np.ndarray,
    label: np.ndarray,
    config: AugmentConfig,
    rng: np.random.Generator,
    *,
    weight: np.ndarray | None = None,
    out_shape: Sequence[int] | None = None,
    start: Sequence[int] | None = None,
) -> Sample:
    """Randomly augment one sample.

    By default the output has the input's shape. With ``out_shape`` and ``start`` it is the
    window ``[start, start + out_shape)`` of the input, transformed about the window's centre.
    The returned weight is the input weight (ones when None) resampled, 0 outside the volume.
    """
    import torch

    _check_pair(image, label, weight)
    ndim = label.ndim
    if ndim not in (2, 3):
        raise ValueError(f"augment handles 2-D and 3-D samples, got label shape {label.shape}")
    out = tuple(int(s) for s in (label.shape if out_shape is None else out_shape))
    start = tuple(int(s) for s in ((0,) * ndim if start is None else start))
    matrix, flips, elastic_sigma = _draw_geometry(ndim, config, rng)

    if matrix is None and elastic_sigma is None:
        # Flips only: an exact crop and flip, no interpolation at all.
        sample = crop_window(image, label, start, out, weight)
        axes = tuple(a for a in range(ndim) if flips[a])
        if axes:
            # The image has a leading channel axis; label and weight do not.
            sample = Sample(*(np.ascontiguousarray(np.flip(a, tuple(x + a.ndim - ndim for x in axes))) for a in sample))
        img_t = torch.from_numpy(sample.image)
        lab, w = sample.label, sample.weight
    else:
        if matrix is None:
            matrix = np.eye(ndim)
        matrix = matrix @ np.diag([-1.0 if f else 1.0 for f in flips])
        displacement = None
        if elastic_sigma is not None:
            displacement = _elastic_field(out, config.elastic_points, elastic_sigma, rng)
        centre = np.asarray(start, float) + (np.asarray(out, float) - 1) / 2
        img_t, lab, w = _resample(image, label, weight, out, centre, matrix, displacement)

    img_t = _intensity(img_t, config, rng)
    return Sample(img_t.numpy(), lab, w)


def _check_pair(image: np.ndarray, label: np.ndarray, weight: np.ndarray | None) -> None:
    if image.ndim != label.ndim + 1 or image.shape[1:] != label.shape:
        raise ValueError(f"image {image.shape} must be (C, *spatial) for label {label.shape}")
    if weight is not None and weight.shape != label.shape:
        raise ValueError(f"weight map {weight.shape} does not match label {label.shape}")


def _plane_rotation(ndim: int, i: int, j: int, angle: float) -> np.ndarray:
    r = np.eye(ndim)
    c, s = math.cos(angle), math.sin(angle)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def _draw_geometry(
    ndim: int, config: AugmentConfig, rng: np.random.Generator
) -> tuple[np.ndarray | None, list[bool], float | None]:
    """Random linear map (None: identity), per-axis flips and elastic sigma (None: no elastic).

    Every branch draws a fixed number of values so one transform's probability does not shift
    the random stream of the others.
    """
    axes = range(ndim) if config.flip_axes is None else config.flip_axes
    flip_draws = rng.random(ndim)
    flips = [bool(a in axes and flip_draws[a] < config.p_flip) for a in range(ndim)]

    matrix = None
    do_rot, do_scale, do_elastic = rng.random(3) < (config.p_rotate, config.p_scale, config.p_elastic)
    angles = rng.uniform(-1.0, 1.0, 3) * math.radians(config.rotate_deg)
    scales = rng.uniform(*config.scale_range, ndim)
    any_angle = rng.uniform(0, 2 * math.pi)
    sigma = float(rng.uniform(*config.elastic_sigma_range))
    if do_rot:
        if ndim == 2:
            angle = any_angle if config.rotate_any_2d else angles[0]
            matrix = _plane_rotation(2, 0, 1, float(angle))
        else:
            matrix = (
                _plane_rotation(3, 1, 2, float(angles[0]))
                @ _plane_rotation(3, 0, 2, float(angles[1]))
                @ _plane_rotation(3, 0, 1, float(angles[2]))
            )
    if do_scale:
        s = np.full(ndim, scales[0]) if config.scale_isotropic else scales
        # Output offset d maps to input offset d / s: s > 1 magnifies.
        zoom = np.diag(1.0 / s)
        matrix = zoom if matrix is None else matrix @ zoom
    return matrix, flips, (sigma if do_elastic and sigma > 0 else None)


def _elastic_field(out: tuple[int, ...], points: int, sigma: float, rng: np.random.Generator) -> "torch.Tensor":
    """(ndim, *out) displacement in voxels: random control points, interpolated linearly."""
    import torch
    import torch.nn.functional as F

    ndim = len(out)
    coarse = rng.standard_normal((1, ndim) + (max(2, points),) * ndim).astype(np.float32) * sigma
    mode = "bilinear" if ndim == 2 else "trilinear"
    return F.interpolate(torch.from_numpy(coarse), size=out, mode=mode, align_corners=True)[0]


def _resample(
    image: np.ndarray,
    label: np.ndarray,
    weight: np.ndarray | None,
    out: tuple[int, ...],
    centre: np.ndarray,
    matrix: np.ndarray,
    displacement: "torch.Tensor | None",
) -> tuple["torch.Tensor", np.ndarray, np.ndarray]:
    """Sample input coordinates ``centre + matrix @ d + displacement`` (d = offset from the
    output centre) with one grid_sample per interpolation kind, reading only the bounding box."""
    import torch
    import torch.nn.functional as F

    ndim = len(out)
    offsets = [torch.arange(n, dtype=torch.float32) - (n - 1) / 2 for n in out]
    coords = []
    for i in range(ndim):
        c = torch.full(out, float(centre[i]))
        for j in range(ndim):
            if matrix[i, j] != 0.0:
                shape = [1] * ndim
                shape[j] = out[j]
                c = c + float(matrix[i, j]) * offsets[j].view(shape)
        if displacement is not None:
            c = c + displacement[i]
        coords.append(c)

    # Read only the bounding box of the sampled coordinates (+1 voxel for linear interpolation).
    shape = label.shape
    box = []
    for i in range(ndim):
        lo = int(np.clip(math.floor(float(coords[i].min())), 0, shape[i] - 1))
        hi = int(np.clip(math.floor(float(coords[i].max())) + 2, lo + 1, shape[i]))
        box.append(slice(lo, hi))
    box_t = tuple(box)
    grid = torch.empty(out + (ndim,), dtype=torch.float32)
    for i in range(ndim):
        n = box[i].stop - box[i].start
        # grid_sample's last axis is (x, y[, z]): reversed array axes; align_corners=False units.
        grid[..., ndim - 1 - i] = (2 * (coords[i] - box[i].start) + 1) / n - 1
    grid = grid.unsqueeze(0)

    img = torch.from_numpy(np.ascontiguousarray(image[(slice(None),) + box_t], dtype=np.float32)).unsqueeze(0)
    img_out = F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)[0]

    # Label and weight together, nearest neighbour, zeros outside: label 0, weight 0.
    lab_box = label[box_t]
    w_box = np.ones(lab_box.shape, np.float32) if weight is None else np.asarray(weight[box_t], np.float32)
    discrete = torch.from_numpy(np.stack([lab_box.astype(np.float32), w_box])).unsqueeze(0)
    disc_out = F.grid_sample(discrete, grid, mode="nearest", padding_mode="zeros", align_corners=False)[0]
    lab = disc_out[0].numpy().round().astype(label.dtype)
    return img_out, lab, disc_out[1].numpy().copy()


def _intensity(img: "torch.Tensor", config: AugmentConfig, rng: np.random.Generator) -> "torch.Tensor":
    """Bias field, resolution, noise, gamma, scale/shift, in the order an acquisition adds them."""
    import torch

    channels, spatial = img.shape[0], tuple(img.shape[1:])
    ndim = len(spatial)
    nch = channels if config.per_channel else 1
    # Fixed-size draws, as in _draw_geometry.
    do_bias, do_res, do_thick, do_noise, do_gamma, do_int = rng.random(6) < (
        config.p_bias, config.p_resolution, config.p_thick_slices, config.p_noise, config.p_gamma, config.p_intensity
    )
    bias_amp = float(rng.uniform(0.0, config.bias_max))
    res_factors = rng.uniform(*config.resolution_range, ndim)
    thick = float(rng.uniform(*config.thick_slice_range))
    noise_frac = float(rng.uniform(*config.noise_range))
    gammas = rng.uniform(*config.gamma_range, nch)
    scales = rng.uniform(*config.intensity_scale_range, nch)
    shifts = rng.uniform(*config.intensity_shift_range, nch)

    if do_bias and bias_amp > 0:
        field = bias_field(spatial, config.bias_order, bias_amp, rng)
        img = img * torch.from_numpy(1.0 + field)

    factors = np.where(res_factors > 1.0, res_factors, 1.0) if do_res else np.ones(ndim)
    if do_thick:
        axis = config.thick_slice_axis
        factors[axis] = max(factors[axis], thick)
    if np.any(factors > 1.0):
        img = resample_resolution(img, factors)

    if do_noise and noise_frac > 0:
        std = img.reshape(channels, -1).std(dim=1).view((channels,) + (1,) * ndim)
        noise = torch.from_numpy(rng.standard_normal(img.shape, dtype=np.float32))
        img = img + noise * (std * noise_frac)

    view = (nch,) + (1,) * ndim
    if do_gamma:
        flat = img.reshape(channels, -1)
        mn = flat.min(dim=1).values.view((channels,) + (1,) * ndim)
        rngs = (flat.max(dim=1).values.view((channels,) + (1,) * ndim) - mn).clamp_min(1e-8)
        g = torch.from_numpy(gammas.astype(np.float32)).view(view)
        img = ((img - mn) / rngs).clamp(0, 1).pow(g) * rngs + mn

    if do_int:
        std = img.reshape(channels, -1).std(dim=1).view((channels,) + (1,) * ndim)
        s = torch.from_numpy(scales.astype(np.float32)).view(view)
        t = torch.from_numpy(shifts.astype(np.float32)).view(view)
        img = img * s + t * std
    return img.contiguous().to(torch.float32)


def bias_field(spatial: Sequence[int], order: int, amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth field b over ``spatial`` with max |b| == ``amplitude``: a random polynomial of total
    degree 1..``order`` in coordinates scaled to [-1, 1] (multiply the image by 1 + b)."""
    ndim = len(spatial)
    k = order + 1
    coeffs = rng.standard_normal((k,) * ndim)
    degree = np.indices((k,) * ndim).sum(axis=0)
    coeffs[(degree > order) | (degree == 0)] = 0.0
    # Separable evaluation: contract the coefficient tensor with per-axis power tables.
    powers = [np.linspace(-1.0, 1.0, n)[None, :] ** np.arange(k)[:, None] for n in spatial]
    field = coeffs
    for p in powers:
        field = np.tensordot(field, p, axes=([0], [0]))  # leading axis consumed, spatial appended
    peak = np.abs(field).max()
    if peak < 1e-12:
        return np.zeros(tuple(spatial), np.float32)
    return (field * (amplitude / peak)).astype(np.float32)


def resample_resolution(img: "torch.Tensor", factors: Sequence[float]) -> "torch.Tensor":
    """Simulate an acquisition with spacing ``factors`` x native per axis: box-average down to
    that grid, then back to the original grid with linear interpolation. ``img`` is (C, *spatial)."""
    import torch.nn.functional as F

    spatial = tuple(img.shape[1:])
    small = tuple(max(1, int(round(n / max(f, 1.0)))) for n, f in zip(spatial, factors))
    if small == spatial:
        return img
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    down = F.interpolate(img.unsqueeze(0), size=small, mode="area")
    return F.interpolate(down, size=spatial, mode=mode, align_corners=False)[0]
