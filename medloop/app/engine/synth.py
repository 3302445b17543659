"""Synthetic heads for contrast- and acquisition-agnostic brain models (SynthSeg-style).

Billot et al. (MedIA 2023) train on images drawn from label maps: deform the labels, give every
tissue a random intensity, then add what scanners add (bias, resolution, noise). A model that
never sees the same contrast twice learns anatomy instead of intensities. This module draws such
volumes from one soft template (CSF, GM, WM probabilities on a model grid), with the extra-cerebral
tissues a real head has (meninges, skull, diploë, scalp, eyes, neck, sinuses) drawn around it per
volume, so that a model also learns what is *not* brain. ``../shared/specs/robust-brain.md`` §4
is the recipe; deviations from SynthSeg are named there and in :class:`SynthConfig`.

Everything is numpy/scipy/torch on the CPU and seeded by the caller's generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from medloop.app.engine.augment import AugmentConfig, Sample, _draw_geometry, _elastic_field, _resample

# Generation labels (the table in the spec). Brain regions carry the soft maps' partial volume.
AIR, BRAIN_SURFACE, BRAIN_DEEP = 0, 1, 2
EC_CSF, SKULL, DIPLOE, SCALP_MUSCLE, SCALP_FAT, EYE, NECK, SINUS, SKULL_BASE = 6, 7, 8, 9, 10, 11, 12, 13, 14
# Intensity classes: 0 air, 1 cortical GM, 2 deep GM, 3 WM, 4 ventricular CSF, 5 sulcal CSF, 6.. as above.
N_CLASSES = 15

# MR-like (mean low, mean high) per intensity class, on a [0, 1] scale: T1, T2, FLAIR, PD.
PRIORS: dict[str, list[tuple[float, float]]] = {
    "T1": [(0, 0.02), (0.42, 0.58), (0.55, 0.72), (0.78, 1.0), (0.05, 0.2), (0.08, 0.25), (0.05, 0.2), (0, 0.1),
           (0.5, 0.9), (0.3, 0.5), (0.8, 1.1), (0.05, 0.2), (0.3, 0.6), (0, 0.05), (0, 0.15)],
    "T2": [(0, 0.02), (0.45, 0.62), (0.4, 0.55), (0.22, 0.4), (0.85, 1.0), (0.75, 1.0), (0.85, 1.0), (0, 0.1),
           (0.4, 0.7), (0.2, 0.35), (0.6, 0.9), (0.85, 1.0), (0.3, 0.5), (0, 0.05), (0, 0.1)],
    "FLAIR": [(0, 0.02), (0.55, 0.72), (0.5, 0.65), (0.35, 0.5), (0.02, 0.1), (0.05, 0.15), (0.02, 0.12), (0, 0.1),
              (0.4, 0.7), (0.2, 0.4), (0.6, 0.9), (0.02, 0.1), (0.3, 0.5), (0, 0.05), (0, 0.1)],
    "PD": [(0, 0.02), (0.7, 0.85), (0.65, 0.8), (0.55, 0.7), (0.8, 1.0), (0.8, 1.0), (0.8, 1.0), (0, 0.1),
           (0.6, 0.9), (0.4, 0.6), (0.8, 1.0), (0.8, 1.0), (0.4, 0.6), (0, 0.05), (0.05, 0.15)],
}


@dataclass
class SynthConfig:
    """Probabilities (``p_*``) and ranges of every step of :func:`synthesize` (spec §4)."""

    spacing_mm: float = 2.0
    p_skull_stripped: float = 0.35  # every extra-cerebral label becomes background
    deep_mm: float = 14.0  # deeper than this inside the brain: deep GM / ventricular CSF
    # Deformation: rotation per axis, anisotropic scaling, elastic, left/right flip, centre jitter.
    rotate_deg: float = 15.0
    scale_range: tuple[float, float] = (0.85, 1.15)
    p_elastic: float = 0.8
    elastic_sigma_range: tuple[float, float] = (0.0, 2.0)
    p_flip: float = 0.5
    jitter_voxels: float = 6.0
    # Intensities: SynthSeg's random GMM, else MR-like priors (T1, T2, FLAIR, PD).
    p_random_gmm: float = 0.55
    random_sigma_max: float = 0.08
    mr_sigma_max: float = 0.05
    contrast_weights: tuple[float, float, float, float] = (0.4, 0.3, 0.2, 0.1)
    wm_modulation: float = 0.08
    p_background_zero: float = 0.5
    p_background_low: float = 0.3
    # Share of volumes whose brain keeps the template's real T1 intensities (same chain after).
    template_fraction: float = 0.15
    # Acquisition.
    p_bias: float = 0.9
    bias_sigma_max: float = 0.4
    gamma_sigma: float = 0.4
    p_resolution: float = 0.6
    p_isotropic: float = 0.35
    isotropic_mm: tuple[float, float] = (2.0, 5.0)
    p_axial: float = 0.6
    thick_mm: tuple[float, float] = (2.0, 8.0)
    p_noise: float = 0.85
    noise_max: float = 0.07  # x the 99th percentile
    p_rician: float = 0.7
    p_gibbs: float = 0.15
    gibbs_keep: tuple[float, float] = (0.45, 0.85)
    p_crop: float = 0.3
    crop_fraction: tuple[float, float] = (0.2, 1.0)

    @classmethod
    def quiet(cls) -> "SynthConfig":
        """Deformation and random contrasts only: no skull, bias, blur, noise, ringing or crop."""
        return cls(p_skull_stripped=1.0, p_bias=0, p_resolution=0, p_noise=0, p_gibbs=0, p_crop=0, template_fraction=0)


class Template(NamedTuple):
    """A soft brain template on a padded model grid, with what every draw reuses."""

    soft: np.ndarray  # (3, z, y, x) float32: CSF, GM, WM probabilities (sum <= 1)
    brain: np.ndarray  # (z, y, x) bool
    deep: np.ndarray  # (z, y, x) bool: inside the brain, deeper than ``deep_mm``
    outside_mm: np.ndarray  # (z, y, x) float32: distance to the brain, mm (0 inside)
    t1: np.ndarray | None  # (z, y, x) float32: the template's T1 scaled so WM ~ 0.9, or None
    eyes: np.ndarray  # (2, 3) voxel indices (z, y, x) of the eye centres
    neck_top: int  # the slice (axis 0) at z = -32 mm; the neck column hangs below it


def make_template(
    soft: np.ndarray,
    t1: np.ndarray | None,
    index_of_ras: Callable[[Sequence[float]], np.ndarray],
    spacing_mm: float = 2.0,
    pad: tuple[int, int] = (14, 6),
    deep_mm: float = 14.0,
) -> Template:
    """Pad the template (``pad[0]`` slices below the brain on axis 0, ``pad[1]`` voxels on every
    other side) and precompute the brain, its depth and the distance outside it.

    ``soft`` is (3, z, y, x) CSF/GM/WM in [0, 1] on an axial (axis 0 = inferior → superior)
    grid; ``index_of_ras(point_mm)`` gives the (z, y, x) voxel index of an RAS point, unpadded.
    """
    from scipy import ndimage

    below, side = pad
    widths = [(below, side), (side, side), (side, side)]
    soft = np.stack([np.pad(c, widths) for c in np.asarray(soft, np.float32)])
    brain = ndimage.binary_fill_holes(soft.sum(axis=0) > 0.5)
    depth = ndimage.distance_transform_edt(brain) * spacing_mm
    outside = ndimage.distance_transform_edt(~brain).astype(np.float32) * spacing_mm
    shift = np.array([below, side, side], float)
    eyes = np.stack([index_of_ras((x, 55.0, -35.0)) + shift for x in (-32.0, 32.0)])
    neck_top = int(round(float(index_of_ras((0.0, 0.0, -32.0))[0] + below)))
    t1_padded = None
    if t1 is not None:
        t = np.pad(np.asarray(t1, np.float32), widths)
        wm = soft[2] > 0.9
        level = float(np.median(t[wm])) if wm.any() else float(np.percentile(t, 99))
        t1_padded = t / max(level, 1e-6) * 0.9
    return Template(soft, brain, brain & (depth > deep_mm), outside, t1_padded, eyes, neck_top)


def _smooth_field(shape: Sequence[int], points: int, rng: np.random.Generator, sigma: float = 1.0) -> np.ndarray:
    """A smooth N(0, sigma²) field: ``points``³ random values interpolated trilinearly."""
    import torch
    import torch.nn.functional as F

    coarse = torch.from_numpy(rng.standard_normal((1, 1) + (points,) * len(shape)).astype(np.float32) * sigma)
    return F.interpolate(coarse, size=tuple(shape), mode="trilinear", align_corners=True)[0, 0].numpy()


def head_labels(template: Template, rng: np.random.Generator, config: SynthConfig) -> np.ndarray:
    """Generation labels (uint8) of one random head around the template's brain (spec §4 table)."""
    labels = np.zeros(template.brain.shape, np.uint8)
    labels[template.brain] = BRAIN_SURFACE
    labels[template.deep] = BRAIN_DEEP
    draws = rng.random(4)
    r1 = float(rng.uniform(1, 4)) * (1 + 0.4 * np.clip(_smooth_field(labels.shape, 4, rng), -1, 1))
    skull, scalp, split = float(rng.uniform(4, 9)), float(rng.uniform(3, 10)), float(rng.uniform(0.3, 0.7))
    if draws[0] < config.p_skull_stripped:
        return labels
    d = template.outside_mm
    r2 = r1 + skull
    shell = (d > 0)
    labels[shell & (d <= r1)] = EC_CSF
    labels[shell & (d > r1) & (d <= r2)] = SKULL
    if draws[1] < 0.7:
        labels[(d > r1 + 0.3 * skull) & (d <= r1 + 0.7 * skull)] = DIPLOE
    labels[(d > r2) & (d <= r2 + split * scalp)] = SCALP_FAT
    labels[(d > r2 + split * scalp) & (d <= r2 + scalp)] = SCALP_MUSCLE
    _add_neck(labels, template, rng)
    if draws[2] < 0.85:
        _add_eyes(labels, template, rng, config.spacing_mm)
    return labels


def _grid_mm(shape: Sequence[int], centre: np.ndarray, spacing: float) -> list[np.ndarray]:
    return [(np.arange(n, dtype=np.float32) - c).reshape([-1 if a == i else 1 for a in range(3)]) * spacing
            for i, (n, c) in enumerate(zip(shape, centre))]


def _add_eyes(labels: np.ndarray, template: Template, rng: np.random.Generator, spacing: float) -> None:
    for centre in template.eyes:
        c = centre + rng.normal(0, 2.0 / spacing, 3)
        radius = float(rng.uniform(10, 13))
        zz, yy, xx = _grid_mm(labels.shape, c, spacing)
        r = np.sqrt(zz**2 + yy**2 + xx**2)
        free = ~template.brain
        labels[free & (r <= radius + 3) & (r > radius)] = SCALP_FAT  # the orbit's fat
        labels[free & (r <= radius)] = EYE


def _add_neck(labels: np.ndarray, template: Template, rng: np.random.Generator) -> None:
    """A soft-tissue column under the brain: its footprint at z = -32 mm, narrowing downwards,
    with sinus air and skull-base bone ellipsoids inside."""
    from scipy import ndimage

    top = int(np.clip(template.neck_top, 1, labels.shape[0] - 1))
    footprint = template.brain[top]
    for k, z in enumerate(range(top, -1, -1)):
        erosion = int(0.35 * k)
        area = ndimage.binary_erosion(footprint, iterations=erosion) if erosion else footprint
        if not area.any():
            break
        labels[z][area & (labels[z] == AIR)] = NECK
    neck = np.argwhere(labels == NECK)
    if len(neck) == 0:
        return
    for _ in range(int(rng.integers(2, 7))):
        centre = neck[int(rng.integers(len(neck)))].astype(float)
        radii = rng.uniform(3, 9, 3) / 2.0  # mm → voxels on the 2 mm grid
        zz, yy, xx = _grid_mm(labels.shape, centre, 1.0)
        inside = (zz / radii[0]) ** 2 + (yy / radii[1]) ** 2 + (xx / radii[2]) ** 2 <= 1
        labels[inside & (labels == NECK)] = SINUS if rng.random() < 0.5 else SKULL_BASE


def _deform(template: Template, labels: np.ndarray, config: SynthConfig, rng: np.random.Generator):
    """Soft maps (and T1) bilinearly, labels by nearest neighbour, through one random map."""
    aug = AugmentConfig(
        p_flip=config.p_flip, flip_axes=(2,), p_rotate=1.0, rotate_deg=config.rotate_deg, p_scale=1.0,
        scale_range=config.scale_range, scale_isotropic=False, p_elastic=config.p_elastic,
        elastic_sigma_range=(max(config.elastic_sigma_range[0], 1e-3), max(config.elastic_sigma_range[1], 1e-3)),
        elastic_points=5,
    )
    matrix, flips, elastic = _draw_geometry(3, aug, rng)
    matrix = (np.eye(3) if matrix is None else matrix) @ np.diag([-1.0 if f else 1.0 for f in flips])
    shape = labels.shape
    jitter = rng.uniform(-config.jitter_voxels, config.jitter_voxels, 3)
    displacement = _elastic_field(shape, 5, elastic, rng) if elastic is not None else None
    channels = template.soft if template.t1 is None else np.concatenate([template.soft, template.t1[None]])
    centre = (np.asarray(shape, float) - 1) / 2 + jitter
    image, moved, _ = _resample(channels, labels, None, shape, centre, matrix, displacement)
    return image.numpy(), moved


def _class_means(rng: np.random.Generator, config: SynthConfig) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation per intensity class (spec §4 step 3)."""
    draws = rng.random(3)
    contrast = rng.choice(len(PRIORS), p=np.asarray(config.contrast_weights) / sum(config.contrast_weights))
    uniform_mu, uniform_sd = rng.uniform(0, 1, N_CLASSES), rng.uniform(0, config.random_sigma_max, N_CLASSES)
    bounds = np.asarray(PRIORS[list(PRIORS)[int(contrast)]], float)
    mr_mu = rng.uniform(bounds[:, 0], bounds[:, 1])
    mr_sd = rng.uniform(0, config.mr_sigma_max, N_CLASSES)
    mu, sd = (uniform_mu, uniform_sd) if draws[0] < config.p_random_gmm else (mr_mu, mr_sd)
    if draws[1] < config.p_background_zero:
        mu[AIR], sd[AIR] = 0.0, 0.0
    elif draws[1] < config.p_background_zero + config.p_background_low:
        mu[AIR], sd[AIR] = rng.uniform(0, 0.05), rng.uniform(0, 0.02)
    return mu, sd


def _intensities(soft: np.ndarray, labels: np.ndarray, mu: np.ndarray, sd: np.ndarray, t1: np.ndarray | None,
                 rng: np.random.Generator, config: SynthConfig) -> np.ndarray:
    """Partial-volume image: the brain's soft maps mix their classes' Gaussians; what they leave
    takes the extra-cerebral label's (spec §4: I = Σ p_c μ_c + (1 - Σ p) μ_label)."""
    csf, gm, wm = np.clip(soft[0], 0, 1), np.clip(soft[1], 0, 1), np.clip(soft[2], 0, 1)
    deep = labels == BRAIN_DEEP
    in_brain = deep | (labels == BRAIN_SURFACE)
    rest = np.clip(1 - csf - gm - wm, 0, 1)
    outside_label = np.where(in_brain, EC_CSF if (labels >= EC_CSF).any() else AIR, labels)
    modulation = 1 + config.wm_modulation * np.clip(_smooth_field(labels.shape, 5, rng), -1, 1)
    mean = (csf * np.where(deep, mu[4], mu[5]) + gm * np.where(deep, mu[2], mu[1]) + wm * mu[3] * modulation
            + rest * mu[outside_label])
    spread = csf * np.where(deep, sd[4], sd[5]) + gm * np.where(deep, sd[2], sd[1]) + wm * sd[3] + rest * sd[outside_label]
    if t1 is not None:
        brainy = np.clip(csf + gm + wm, 0, 1)
        mean = brainy * t1 + rest * mu[outside_label]
        spread = rest * sd[outside_label]
    return (mean + spread * rng.standard_normal(labels.shape).astype(np.float32)).astype(np.float32)


def _acquire(image: np.ndarray, rng: np.random.Generator, config: SynthConfig) -> np.ndarray:
    """Bias, min–max and gamma, resolution, noise everywhere, Gibbs ringing (spec §4 steps 4–8)."""
    from scipy import ndimage

    d = rng.random(8)
    bias_sigma = float(rng.uniform(0, config.bias_sigma_max))
    if d[0] < config.p_bias:
        image = image * np.exp(_smooth_field(image.shape, 4, rng, bias_sigma))
    image = np.clip(image, 0, None)
    image = (image - image.min()) / max(float(image.max() - image.min()), 1e-6)
    image = image ** math.exp(rng.normal(0, config.gamma_sigma))
    if d[1] < config.p_resolution:
        spacing = np.full(3, config.spacing_mm)
        if d[2] < config.p_isotropic:
            spacing[:] = rng.uniform(*config.isotropic_mm)
        else:
            axis = 0 if d[3] < config.p_axial else int(rng.integers(1, 3))
            spacing[axis] = rng.uniform(*config.thick_mm)
        thickness = rng.uniform(config.spacing_mm, np.maximum(spacing, config.spacing_mm + 1e-3))
        sigma = np.where(spacing > config.spacing_mm, 0.75 * thickness / config.spacing_mm, 0.0)
        image = _down_up(ndimage.gaussian_filter(image, sigma), spacing / config.spacing_mm)
    if d[4] < config.p_noise:
        s = float(rng.uniform(0, config.noise_max)) * float(np.percentile(image, 99))
        if d[5] < config.p_rician:
            image = np.hypot(image + rng.normal(0, s, image.shape), rng.normal(0, s, image.shape))
        else:
            image = image + rng.normal(0, s, image.shape)
    if d[6] < config.p_gibbs:
        image = _gibbs(image, int(rng.integers(3)), float(rng.uniform(*config.gibbs_keep)))
    return image.astype(np.float32)


def _down_up(image: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Sample on a grid ``factors`` times coarser, then back to the original grid linearly."""
    import torch
    import torch.nn.functional as F

    small = tuple(max(2, int(round(n / f))) for n, f in zip(image.shape, factors))
    t = torch.from_numpy(np.ascontiguousarray(image, np.float32))[None, None]
    down = F.interpolate(t, size=small, mode="trilinear", align_corners=True)
    return F.interpolate(down, size=image.shape, mode="trilinear", align_corners=True)[0, 0].numpy()


def _gibbs(image: np.ndarray, axis: int, keep: float) -> np.ndarray:
    """Truncated k-space along ``axis`` (keeping the central ``keep`` fraction): ringing at edges."""
    spectrum = np.fft.fftshift(np.fft.fft(image, axis=axis), axes=axis)
    n = image.shape[axis]
    half = max(1, int(n * keep / 2))
    mask = np.zeros(n, bool)
    mask[n // 2 - half: n // 2 + half] = True
    spectrum *= mask.reshape([-1 if a == axis else 1 for a in range(image.ndim)])
    return np.abs(np.fft.ifft(np.fft.ifftshift(spectrum, axes=axis), axis=axis))


def _crop(image: np.ndarray, target: np.ndarray, rng: np.random.Generator, config: SynthConfig):
    """A field of view of ``crop_fraction`` per axis around a random brain voxel (spec §4 step 9)."""
    fractions = rng.uniform(*config.crop_fraction, 3)
    tissue = np.argwhere(target > 0)
    if not len(tissue):
        return image, target
    centre = tissue[int(rng.integers(len(tissue)))]
    box = []
    for n, c, f in zip(target.shape, centre, fractions):
        size = max(24, int(n * f))
        start = int(np.clip(c - size // 2, 0, max(0, n - size)))
        box.append(slice(start, start + size))
    return image[tuple(box)], target[tuple(box)]


def synthesize(template: Template, config: SynthConfig, rng: np.random.Generator, normalisation: dict[str, Any]) -> Sample:
    """One synthetic head: image (1, z, y, x) float32 normalised by ``normalisation`` (the model
    card's, on the whole final volume as inference does), target (z, y, x) int64 (0 background,
    1 GM, 2 WM: the argmax of the deformed soft maps inside the brain), weight ones."""
    from medloop.app.engine.resample import normalise

    labels = head_labels(template, rng, config)
    use_template = template.t1 is not None and rng.random() < config.template_fraction
    moved, moved_labels = _deform(template, labels, config, rng)
    soft = moved[:3]
    t1 = moved[3] if use_template else None
    in_brain = (moved_labels == BRAIN_SURFACE) | (moved_labels == BRAIN_DEEP)
    background = np.clip(1 - soft[1] - soft[2], 0, None)
    target = np.where(in_brain, np.argmax(np.stack([background, soft[1], soft[2]]), axis=0), 0).astype(np.int64)
    mu, sd = _class_means(rng, config)
    if use_template:  # the template's own T1 contrast around it, too
        bounds = np.asarray(PRIORS["T1"], float)
        mu, sd = rng.uniform(bounds[:, 0], bounds[:, 1]), rng.uniform(0, config.mr_sigma_max, N_CLASSES)
    image = _acquire(_intensities(soft, moved_labels, mu, sd, t1, rng, config), rng, config)
    if rng.random() < config.p_crop:
        image, target = _crop(image, target, rng, config)
    x = normalise(image, normalisation)[None].astype(np.float32)
    return Sample(x, target, np.ones(target.shape, np.float32))


class RefreshingSliceBank:
    """The training loop's data for a 2-D model on synthetic 3-D volumes: a bank of ``volumes``
    draws, cut into slices along ``axis`` (empty slices kept: a model must learn to find nothing
    there), from which each call takes one batch of random patches; every ``every`` calls the
    ``count`` oldest volumes are replaced by new draws, so the model keeps seeing new heads at a
    fraction of the cost of drawing a volume per batch.

    ``draw(rng) -> Sample`` makes one volume. Deterministic for a seed; a resumed run redraws
    its bank from the checkpointed generator, so it continues with other heads than an
    uninterrupted run would.
    """

    def __init__(self, draw: Callable[[np.random.Generator], Sample], volumes: int, refresh: tuple[int, int],
                 axis: int, patch: tuple[int, ...], batch_size: int, seed: int, foreground_fraction: float = 0.5):
        self.draw, self.axis, self.patch, self.batch_size = draw, axis, patch, batch_size
        self.count, self.every = int(refresh[0]), int(refresh[1])
        self.foreground_fraction = foreground_fraction
        self.rng = np.random.default_rng(seed)
        self.calls = 0
        self.bank: list[list[tuple[np.ndarray, np.ndarray]]] = [self._slices(draw(self.rng)) for _ in range(volumes)]

    def _slices(self, sample: Sample) -> list[tuple[np.ndarray, np.ndarray]]:
        xs, ys = np.moveaxis(sample.image, 1 + self.axis, 1), np.moveaxis(sample.label, self.axis, 0)
        return [(np.ascontiguousarray(xs[:, k]), np.ascontiguousarray(ys[k])) for k in range(ys.shape[0])]

    def pairs(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Every slice in the bank now."""
        return [p for volume in self.bank for p in volume]

    def __call__(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from medloop.app.engine.augment import random_patch

        self.calls += 1
        if self.every and self.calls % self.every == 0:
            self.bank = self.bank[self.count:] + [self._slices(self.draw(self.rng)) for _ in range(self.count)]
        images, labels, weights = [], [], []
        for _ in range(self.batch_size):
            volume = self.bank[int(self.rng.integers(len(self.bank)))]
            image, label = volume[int(self.rng.integers(len(volume)))]
            s = random_patch(image, label, self.patch, self.rng, self.foreground_fraction)
            images.append(s.image)
            labels.append(s.label)
            weights.append(s.weight)
        return np.stack(images), np.stack(labels).astype(np.int64, copy=False), np.stack(weights)

    def state_dict(self) -> dict[str, Any]:
        return {"numpy_rng": self.rng.bit_generator.state, "calls": self.calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["numpy_rng"]
        self.calls = int(state["calls"])
