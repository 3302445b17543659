"""Seeded 64 x 64 synthetic images with exact truth for the weak-supervision plugins (spec section 0).

* :func:`texture_mosaic` (a) - K tissue classes in warped Voronoi regions; a class is a colour
  offset plus a texture scale (Bokhorst et al.'s sparse strokes).
* :func:`nuclei` (b) - dark, chromatin-textured nuclei ellipses (semi-axes 2.5-5 px) on pale
  stroma, some touching (Qu et al.'s points).
* :func:`glomeruli` (c) - 1-3 granular "glomeruli" (r 6-10) with a pale rim among thin ring
  distractors (Gupta et al.'s boxes).
* :func:`tiny_blobs` (d) - 1-3 small bright blobs (r 1.5-3.5, ~0.7 % foreground, 20 % of images
  empty) among thin bright streaks (Kervadec et al.'s boundary loss).

Every generator takes ``rng`` (a seed or a Generator; ``None`` = seed 0) and returns a
:class:`Synth` with ``image`` (C, H, W) float32 in [0, 1]. :func:`dataset` makes n independent
samples from one seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medloop.plugins.correction.weaklabels import as_rng

__all__ = ["Synth", "dataset", "glomeruli", "nuclei", "texture_mosaic", "tiny_blobs"]


@dataclass(frozen=True)
class Synth:
    """One synthetic image and its truth."""

    image: np.ndarray  # (C, H, W) float32 in [0, 1]
    semantic: np.ndarray  # (H, W) int64 class map; (b)-(d): 0 = background, 1 = object
    instances: np.ndarray  # (H, W) int32: 0 = background, 1..N = objects ((a): regions)


def _smooth_noise(gen: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to unit standard deviation."""
    noise = gen.normal(size=shape)
    if sigma > 0:
        noise = ndimage.gaussian_filter(noise, sigma, mode="wrap")
    return noise / max(float(noise.std()), 1e-8)


def _finish(rgb: np.ndarray, channels: int) -> np.ndarray:
    """(3, H, W) colour -> (channels, H, W) float32 clipped to [0, 1]; one channel = mean."""
    if channels == 1:
        rgb = rgb.mean(axis=0, keepdims=True)
    elif channels != 3:
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    return np.clip(rgb, 0, 1).astype(np.float32)


def _ellipse(shape: tuple[int, int], centre: np.ndarray, a: float, b: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Hard mask (pixel centres inside) and an anti-aliased ~1-px soft edge of an ellipse."""
    yy, xx = np.indices(shape, dtype=float)
    dy, dx = yy - centre[0], xx - centre[1]
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    s = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    return s <= 1, np.clip((1 - s) * min(a, b) + 0.5, 0, 1)


# --- (a) texture mosaic ---------------------------------------------------------------------


def texture_mosaic(
    rng: int | np.random.Generator | None = None,
    num_classes: int = 4,
    regions: tuple[int, int] = (2, 4),
    size: int = 64,
    channels: int = 3,
) -> Synth:
    """(a) 2-4 warped Voronoi regions, each one of ``num_classes`` tissue classes.

    Class k has a fixed colour offset (evenly spaced hues, +-0.06) and texture scale
    (sigma 0.5, 1, 2, 4 px, repeating with 1.3x per further group of four); so neither colour nor
    texture alone is trivial. Regions get distinct classes while there are enough.
    ``semantic`` = class map, ``instances`` = region ids.
    """
    gen = as_rng(rng)
    n = int(gen.integers(regions[0], regions[1] + 1))
    seeds = gen.uniform(0, size, (n, 2))
    # Smooth displacement field: wavy, not polygonal, region borders.
    warp = [_smooth_noise(gen, (size, size), 8.0) * 4.0 for _ in range(2)]
    yy, xx = np.indices((size, size), dtype=float)
    wy, wx = yy + warp[0], xx + warp[1]
    dist = (wy[None] - seeds[:, 0, None, None]) ** 2 + (wx[None] - seeds[:, 1, None, None]) ** 2
    region = dist.argmin(0)
    classes = gen.choice(num_classes, size=n, replace=n > num_classes)
    semantic = classes[region].astype(np.int64)
    angles = 2 * np.pi * np.arange(num_classes) / num_classes
    offsets = 0.06 * np.stack([np.cos(angles), np.sin(angles), -np.cos(angles + np.pi / 3)], axis=1)
    sigmas = np.array([0.5, 1.0, 2.0, 4.0])[np.arange(num_classes) % 4] * 1.3 ** (np.arange(num_classes) // 4)
    rgb = np.full((3, size, size), 0.5 + gen.uniform(-0.04, 0.04))  # per-image brightness shift
    for k in np.unique(semantic):
        inside = semantic == k
        texture = _smooth_noise(gen, (size, size), float(sigmas[k]))
        for c in range(3):
            rgb[c][inside] += offsets[k, c] + 0.08 * texture[inside]
    rgb += gen.normal(0, 0.02, rgb.shape)
    return Synth(_finish(rgb, channels), semantic, (region + 1).astype(np.int32))


# --- (b) nuclei ---------------------------------------------------------------------------------


def nuclei(
    rng: int | np.random.Generator | None = None,
    count: tuple[int, int] = (8, 14),
    size: int = 64,
    channels: int = 3,
    touching: float = 0.2,
) -> Synth:
    """(b) H&E-like nuclei: dark purple ellipses (semi-axes 2.5-5 px) on pale pink stroma.

    About ``touching`` of the nuclei are placed against an earlier one (their masks meet; the
    earlier keeps the shared pixels), the rest keep >= 2 px apart. Nuclei have uneven chromatin
    and an anti-aliased rim, so colour alone misclassifies some pixels. ``instances`` = nucleus
    ids, ``semantic`` = nucleus mask.
    """
    gen = as_rng(rng)
    shape = (size, size)
    target = int(gen.integers(count[0], count[1] + 1))
    placed: list[tuple[np.ndarray, float, float, float]] = []
    for _ in range(target * 40):
        if len(placed) == target:
            break
        a, b = np.sort(gen.uniform(2.5, 5.0, 2))[::-1]
        r = (a + b) / 2
        if placed and gen.random() < touching:
            centre0, a0, b0, _ = placed[gen.integers(len(placed))]
            direction = gen.uniform(0, 2 * np.pi)
            centre = centre0 + (r + (a0 + b0) / 2) * gen.uniform(0.85, 1.0) * np.array([np.sin(direction), np.cos(direction)])
            gap = -0.15  # may overlap a little: touching
        else:
            centre = gen.uniform(a + 1, size - 1 - a - 1, 2)
            gap = 2.0
        if np.any(centre < a + 1) or np.any(centre > size - 2 - a):
            continue
        if all(np.hypot(*(centre - c)) >= (r + (a1 + b1) / 2) * (1 + min(gap, 0)) + max(gap, 0) for c, a1, b1, _ in placed):
            placed.append((centre, float(a), float(b), float(gen.uniform(0, np.pi))))
    instances = np.zeros(shape, np.int32)
    soft = np.zeros(shape)
    for i, (centre, a, b, angle) in enumerate(placed, start=1):
        hard, edge = _ellipse(shape, centre, a, b, angle)
        instances[hard & (instances == 0)] = i
        soft = np.maximum(soft, edge)
    background = np.array([0.92, 0.74, 0.84])[:, None, None] + 0.035 * _smooth_noise(gen, shape, 2.0)[None]
    chromatin = 0.06 * _smooth_noise(gen, shape, 0.8)[None]
    tint = np.zeros((3, *shape))
    for i in range(1, len(placed) + 1):
        tint[:, instances == i] = gen.normal(0, 0.04, (3, 1))  # nucleus-to-nucleus variation
    dark = np.array([0.36, 0.22, 0.52])[:, None, None] + chromatin + tint
    rgb = background * (1 - soft) + dark * soft + gen.normal(0, 0.02, (3, *shape))
    return Synth(_finish(rgb, channels), (instances > 0).astype(np.int64), instances)


# --- (c) glomeruli ------------------------------------------------------------------------------


def glomeruli(
    rng: int | np.random.Generator | None = None,
    count: tuple[int, int] = (1, 3),
    distractors: tuple[int, int] = (3, 6),
    size: int = 64,
    channels: int = 3,
) -> Synth:
    """(c) PAS-like kidney: 1-3 granular glomeruli (r 6-10, mildly elliptic) with a pale rim
    (Bowman's space, the object's outer ~2 px) among ring-shaped tubule distractors (r 3-6,
    smooth, pale lumen), all non-overlapping. ``instances`` = glomerulus ids."""
    gen = as_rng(rng)
    shape = (size, size)
    n_obj = int(gen.integers(count[0], count[1] + 1))
    n_rings = int(gen.integers(distractors[0], distractors[1] + 1))
    objects: list[tuple[np.ndarray, float, float, float, bool]] = []  # centre, a, b, angle, is_glomerulus
    for want_glom, n in ((True, n_obj), (False, n_rings)):
        made = 0
        for _ in range(n * 60):
            if made == n:
                break
            r = gen.uniform(6, 10) if want_glom else gen.uniform(3, 6)
            e = gen.uniform(0.85, 1.0) if want_glom else 1.0
            a, b = r / np.sqrt(e), r * np.sqrt(e)
            centre = gen.uniform(a + 1, size - a - 2, 2)
            if all(np.hypot(*(centre - c)) >= a + a1 + 2 for c, a1, _, _, _ in objects):
                objects.append((centre, a, b, gen.uniform(0, np.pi), want_glom))
                made += 1
    rgb = np.array([0.90, 0.70, 0.82])[:, None, None] + 0.04 * _smooth_noise(gen, shape, 3.0)[None]
    instances = np.zeros(shape, np.int32)
    granules = _smooth_noise(gen, shape, 0.6)
    n_glom = 0
    for centre, a, b, angle, is_glom in objects:
        hard, soft = _ellipse(shape, centre, a, b, angle)
        _, inner = _ellipse(shape, centre, max(a - 2, 1), max(b - 2, 1), angle)
        if is_glom:
            n_glom += 1
            instances[hard] = n_glom
            rim = soft * (1 - inner)
            tuft = np.array([0.62, 0.38, 0.62])[:, None, None] + 0.09 * granules[None]  # dark, granular
            rgb = rgb * (1 - soft) + (rim * np.array([0.97, 0.92, 0.95])[:, None, None]) + inner * tuft
        else:
            wall = soft * (1 - inner)
            rgb = rgb * (1 - soft) + wall * np.array([0.74, 0.50, 0.70])[:, None, None] + inner * np.array([0.96, 0.90, 0.94])[:, None, None]
    rgb += gen.normal(0, 0.02, (3, *shape))
    return Synth(_finish(rgb, channels), (instances > 0).astype(np.int64), instances)


# --- (d) tiny blobs ---------------------------------------------------------------------------


def tiny_blobs(
    rng: int | np.random.Generator | None = None,
    count: tuple[int, int] = (1, 3),
    empty: float = 0.2,
    streaks: tuple[int, int] = (1, 3),
    size: int = 64,
    channels: int = 1,
) -> Synth:
    """(d) 1-3 small bright blobs (r 1.5-3.5) on a dim smooth background, about 0.7 % foreground
    on average; a fraction ``empty`` of the images has none. Thin bright streaks (1 px wide,
    10-25 px long, as bright as the blobs) are the distractors. ``instances`` = blob ids."""
    gen = as_rng(rng)
    shape = (size, size)
    n = 0 if gen.random() < empty else int(gen.integers(count[0], count[1] + 1))
    yy, xx = np.indices(shape, dtype=float)
    image = 0.3 + 0.05 * _smooth_noise(gen, shape, 4.0)
    instances = np.zeros(shape, np.int32)
    centres: list[np.ndarray] = []
    for _ in range(n * 50):
        if len(centres) == n:
            break
        r = gen.uniform(1.5, 3.5)
        centre = gen.uniform(r + 2, size - r - 3, 2)
        if all(np.hypot(*(centre - c)) > 10 for c in centres):
            centres.append(centre)
            hard, soft = _ellipse(shape, centre, r, r, 0.0)
            instances[hard] = len(centres)
            image += 0.35 * soft
    for _ in range(int(gen.integers(streaks[0], streaks[1] + 1))):
        start, angle, length = gen.uniform(0, size, 2), gen.uniform(0, np.pi), gen.uniform(10, 25)
        t = np.clip(((yy - start[0]) * np.sin(angle) + (xx - start[1]) * np.cos(angle)) / length, 0, 1)
        d = np.hypot(yy - start[0] - t * length * np.sin(angle), xx - start[1] - t * length * np.cos(angle))
        image += 0.3 * np.clip(1 - d, 0, 1) * (instances == 0)
    image += gen.normal(0, 0.03, shape)
    rgb = np.repeat(image[None], 3, axis=0)
    return Synth(_finish(rgb, channels), (instances > 0).astype(np.int64), instances)


GENERATORS: dict[str, Callable[..., Synth]] = {
    "mosaic": texture_mosaic,
    "nuclei": nuclei,
    "glomeruli": glomeruli,
    "tiny_blobs": tiny_blobs,
}


def dataset(kind: str, n: int, seed: int = 0, **options) -> list[Synth]:
    """``n`` independent samples of generator ``kind`` ("mosaic", "nuclei", "glomeruli",
    "tiny_blobs"); sample i is seeded by the i-th child of ``SeedSequence(seed)``, so a larger
    ``n`` only appends samples."""
    if kind not in GENERATORS:
        raise ValueError(f"unknown generator {kind!r}; use one of {sorted(GENERATORS)}")
    children = np.random.SeedSequence(seed).spawn(n)
    return [GENERATORS[kind](np.random.default_rng(child), **options) for child in children]
