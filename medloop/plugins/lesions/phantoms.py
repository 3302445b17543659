"""Seeded phantoms with exact lesions and healthy twins (spec §6): brain slice (FLAIR-like),
long-bone radiograph and chest X-ray, numpy/scipy only.

Each generator returns a :class:`Phantom`: the image, its lesion mask, the *healthy twin* (the same
image, same noise, without the lesions: the papers could not measure true errors, we can), the
anatomy mask (brain, bone or lungs) and one box per lesion. Lesions are set by
:class:`LesionSpec`: count, radius, contrast sign and amplitude, edge softness (and a bright rim
for lytic bone lesions). Images are float32 in [0, 1]. The same seed gives the same phantom.

Boxes are half-open pixel bounds ``(y0, x0, y1, x1)``: rows y0..y1-1, columns x0..x1-1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from scipy.special import expit

from medloop.plugins.lesions.checks import LesionInputError, check_count

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class LesionSpec:
    """How lesions look: ``count`` drawn in [lo, hi], radius (px) and amplitude drawn uniformly,
    ``sign`` +1 (hyper-intense) or -1 (hypo-intense, e.g. lytic), ``softness`` the edge width (px,
    0 = hard edge), ``rim`` the amplitude of a bright rim (bone: sclerotic margin; 0 = none)."""

    count: tuple[int, int] = (1, 3)
    radius: tuple[float, float] = (1.5, 5.0)
    amplitude: tuple[float, float] = (0.25, 0.4)
    sign: int = 1
    softness: float = 0.7
    rim: float = 0.0

    def __post_init__(self) -> None:
        if self.sign not in (1, -1):
            raise LesionInputError(f"lesion sign {self.sign!r}; choose +1 (brighter) or -1 (darker)")
        lo, hi = self.count
        if lo < 0 or hi < lo:
            raise LesionInputError(f"lesion count range {self.count}; give (low, high) with 0 <= low <= high")
        if self.radius[0] <= 0 or self.radius[1] < self.radius[0]:
            raise LesionInputError(f"lesion radius range {self.radius}; give (low, high) px with 0 < low <= high")
        if self.softness < 0:
            raise LesionInputError(f"lesion edge softness {self.softness}; give a width >= 0 px")


@dataclass
class Phantom:
    """One phantom: ``image`` and ``healthy`` float32 (Y, X) in [0, 1]; ``lesion`` and ``anatomy``
    bool (Y, X); ``boxes`` one half-open box per lesion; ``kind`` and ``seed`` say how to remake it."""

    image: np.ndarray
    lesion: np.ndarray
    healthy: np.ndarray
    anatomy: np.ndarray
    boxes: list[Box] = field(default_factory=list)
    kind: str = ""
    seed: int = 0

    @property
    def has_lesion(self) -> bool:
        return bool(self.lesion.any())


#: Default lesion look per phantom kind (spec §1 bone, §3 brain, §2 chest consolidation).
DEFAULT_LESIONS: dict[str, LesionSpec] = {
    "brain": LesionSpec(count=(1, 3), radius=(1.5, 5.0), amplitude=(0.25, 0.4), sign=1, softness=0.7),
    "bone": LesionSpec(count=(1, 1), radius=(3.0, 8.0), amplitude=(0.25, 0.4), sign=-1, softness=1.0, rim=0.15),
    "chest": LesionSpec(count=(1, 2), radius=(3.0, 7.0), amplitude=(0.25, 0.4), sign=1, softness=1.5),
}
DEFAULT_SHAPES: dict[str, tuple[int, int]] = {"brain": (64, 64), "bone": (64, 128), "chest": (64, 64)}


def _grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return yy.astype(np.float64), xx.astype(np.float64)


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float, angle: float = 0.0) -> np.ndarray:
    """Normalised elliptic radius (1 on the ellipse's edge) of every pixel."""
    c, s = np.cos(angle), np.sin(angle)
    dy, dx = yy - cy, xx - cx
    u, v = c * dx + s * dy, -s * dx + c * dy
    return np.sqrt((u / rx) ** 2 + (v / ry) ** 2)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float, amplitude: float) -> np.ndarray:
    """A smooth random field with values in about [-amplitude, amplitude]."""
    field_ = ndi.gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    peak = float(np.abs(field_).max()) or 1.0
    return field_ / peak * amplitude


def _blob(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, radius: float, softness: float) -> tuple[np.ndarray, np.ndarray]:
    """A round blob: its soft profile in [0, 1] (1 inside, falling over ``softness`` px at the edge)
    and its exact mask (profile >= 0.5, i.e. the disc of ``radius``)."""
    d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    if softness > 0:
        profile = expit(-(d - radius) / (softness / 4.0))
    else:
        profile = (d <= radius).astype(np.float64)
    return profile, d <= radius


def _box_of(mask: np.ndarray) -> Box:
    ys, xs = np.nonzero(mask)
    return int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1


def _add_lesions(
    rng: np.random.Generator, base: np.ndarray, allowed: np.ndarray, spec: LesionSpec, count: int | None = None,
) -> tuple[np.ndarray, np.ndarray, list[Box]]:
    """``base`` with lesions whose centres lie where ``allowed`` is True far enough inside it;
    returns the intensity change, the union mask and one box per lesion (blobs never overlap)."""
    yy, xx = _grid(base.shape)
    n = int(rng.integers(spec.count[0], spec.count[1] + 1)) if count is None else count
    change = np.zeros(base.shape, np.float64)
    union = np.zeros(base.shape, bool)
    boxes: list[Box] = []
    depth = ndi.distance_transform_edt(allowed)
    for _ in range(n):
        # A lesion larger than the room left shrinks to fit (never below the spec's smallest radius).
        taken = ndi.binary_dilation(union, iterations=int(np.ceil(spec.radius[1])) + 2) if union.any() else union
        room = float(depth[~taken].max(initial=0.0)) - 1.0
        radius = min(float(rng.uniform(*spec.radius)), room)
        if radius < spec.radius[0]:
            break
        free = (depth >= radius + 1.0) & ~taken
        candidates = np.argwhere(free)
        if len(candidates) == 0:
            break
        cy, cx = candidates[int(rng.integers(len(candidates)))] + rng.uniform(-0.5, 0.5, 2)
        profile, mask = _blob(yy, xx, cy, cx, radius, spec.softness)
        if not mask.any():
            continue
        amplitude = float(rng.uniform(*spec.amplitude))
        change += spec.sign * amplitude * profile
        if spec.rim > 0:
            ring = np.exp(-(((np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) - radius - 0.8) / 0.9) ** 2))
            change += spec.rim * ring
        union |= mask
        boxes.append(_box_of(mask))
    return change, union, boxes


def _finish(
    kind: str, seed: int, healthy_clean: np.ndarray, change: np.ndarray, lesion: np.ndarray, anatomy: np.ndarray,
    boxes: list[Box], noise: np.ndarray,
) -> Phantom:
    healthy = np.clip(healthy_clean + noise, 0.0, 1.0).astype(np.float32)
    image = np.clip(healthy_clean + change + noise, 0.0, 1.0).astype(np.float32)
    return Phantom(image, lesion, healthy, anatomy, boxes, kind, seed)


def brain_slice(
    seed: int = 0, shape: tuple[int, int] = (64, 64), lesions: LesionSpec | None = None,
    count: int | None = None, noise: float = 0.02,
) -> Phantom:
    """A FLAIR-like axial brain slice: elliptic brain (grey ~0.45), brighter white-matter core
    (~0.55), dark ventricles, a smooth bias field, Gaussian noise inside the brain (background 0,
    as after skull stripping); lesions are hyper-intense white-matter blobs (spec §3)."""
    spec = lesions or DEFAULT_LESIONS["brain"]
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = _grid(shape)
    cy, cx = h / 2 + rng.uniform(-0.04, 0.04) * h, w / 2 + rng.uniform(-0.04, 0.04) * w
    ry, rx = rng.uniform(0.40, 0.46) * h, rng.uniform(0.33, 0.40) * w
    angle = rng.uniform(-0.15, 0.15)
    brain = _ellipse(yy, xx, cy, cx, ry, rx, angle) <= 1.0
    wm_r = _ellipse(yy, xx, cy, cx, ry * rng.uniform(0.70, 0.78), rx * rng.uniform(0.70, 0.78), angle)
    wm_soft = expit(-(wm_r - 1.0) / 0.06)
    gap, vr = rng.uniform(0.045, 0.06) * w, (rng.uniform(0.10, 0.14) * h, rng.uniform(0.03, 0.045) * w)
    ventricles = (_ellipse(yy, xx, cy, cx - gap, *vr, angle) <= 1.0) | (_ellipse(yy, xx, cy, cx + gap, *vr, angle) <= 1.0)
    tissue = 0.45 + rng.uniform(-0.03, 0.03) + (0.10 + rng.uniform(-0.02, 0.02)) * wm_soft
    tissue = np.where(ventricles, 0.10, tissue)
    bias = 1.0 + _smooth_field(rng, shape, h / 4, 0.08)
    clean = np.where(brain, tissue * bias, 0.0)
    white_matter = brain & (wm_r <= 0.95) & ~ndi.binary_dilation(ventricles, iterations=1)
    change, lesion, boxes = _add_lesions(rng, clean, white_matter, spec, count)
    change = np.where(brain, change, 0.0)
    noise_map = np.where(brain, rng.normal(0.0, noise, shape), 0.0)
    return _finish("brain", seed, clean, change, lesion, brain, boxes, noise_map)


def bone_radiograph(
    seed: int = 0, shape: tuple[int, int] = (64, 128), lesions: LesionSpec | None = None,
    count: int | None = None, noise: float = 0.02,
) -> Phantom:
    """A long-bone radiograph (spec §1): dark soft tissue (~0.1), one bone along the long axis at a
    random angle and width with two bright cortex lines (~0.85) and a mid-grey medulla (~0.5);
    lesions are darker (lytic) ellipses inside the medulla with an optional bright rim."""
    spec = lesions or DEFAULT_LESIONS["bone"]
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = _grid(shape)
    angle = rng.uniform(-0.25, 0.25)
    half = rng.uniform(0.16, 0.24) * h
    cortex = rng.uniform(0.035, 0.055) * h
    cy = h / 2 + rng.uniform(-0.08, 0.08) * h
    # Signed distance across the bone's axis (the axis runs along x, tilted by `angle`).
    across = np.abs(-np.sin(angle) * (xx - w / 2) + np.cos(angle) * (yy - cy))
    edge = expit(-(across - half) / 0.5)
    inner = expit(-(across - (half - cortex)) / 0.5)
    soft = 0.10 + _smooth_field(rng, shape, h / 5, 0.03)
    medulla_level = rng.uniform(0.45, 0.55) + 0.05 * np.cos(np.pi * across / max(half, 1.0))
    cortex_level = rng.uniform(0.80, 0.88)
    clean = soft * (1 - edge) + edge * (cortex_level * (1 - inner) + medulla_level * inner)
    bone = across <= half
    medulla = across <= half - cortex - 1.0
    change, lesion, boxes = _add_lesions(rng, clean, medulla, spec, count)
    noise_map = rng.normal(0.0, noise, shape)
    return _finish("bone", seed, np.clip(clean, 0, 1), change, lesion, bone, boxes, noise_map)


def chest_xray(
    seed: int = 0, shape: tuple[int, int] = (64, 64), lesions: LesionSpec | None = None,
    count: int | None = None, noise: float = 0.02,
) -> Phantom:
    """A chest X-ray (spec §2): bright thorax (~0.7), two dark lung fields (~0.25) of random shape,
    rib stripes, a heart blob; lesions are brighter consolidation blobs inside the lungs. The
    anatomy mask is the lungs (unchanged by lesions, as in XLSor's ground truth)."""
    spec = lesions or DEFAULT_LESIONS["chest"]
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = _grid(shape)
    thorax = _ellipse(yy, xx, h * 0.55, w / 2, h * 0.48, w * 0.46) <= 1.0
    lungs = np.zeros(shape, bool)
    for side in (-1, 1):
        cx = w / 2 + side * rng.uniform(0.18, 0.22) * w
        ry, rx = rng.uniform(0.28, 0.34) * h, rng.uniform(0.12, 0.16) * w
        lung_r = _ellipse(yy, xx, h * 0.5 + rng.uniform(-0.03, 0.03) * h, cx, ry, rx, side * rng.uniform(0.0, 0.2))
        lungs |= (lung_r + _smooth_field(rng, shape, h / 10, 0.08)) <= 1.0
    heart = _ellipse(yy, xx, h * 0.65, w * 0.56, h * 0.15, w * 0.13) <= 1.0
    lungs &= ~heart & thorax
    ribs = 0.05 * (np.sin(2 * np.pi * (yy + 0.15 * np.abs(xx - w / 2)) / (h / 7)) > 0.6)
    clean = np.where(thorax, 0.70, 0.05) + _smooth_field(rng, shape, h / 6, 0.04)
    clean = np.where(lungs, 0.25 + ribs, clean)
    clean = np.where(heart & thorax, 0.62, clean)
    clean = ndi.gaussian_filter(clean, 0.7)
    change, lesion, boxes = _add_lesions(rng, clean, lungs, spec, count)
    noise_map = rng.normal(0.0, noise, shape)
    return _finish("chest", seed, np.clip(clean, 0, 1), change, lesion, lungs, boxes, noise_map)


PHANTOMS: dict[str, Callable[..., Phantom]] = {"brain": brain_slice, "bone": bone_radiograph, "chest": chest_xray}


def make_phantom(kind: str, seed: int = 0, with_lesion: bool = True, **kwargs: Any) -> Phantom:
    """One phantom of ``kind`` ("brain", "bone", "chest"); ``with_lesion=False`` gives a healthy one
    (same anatomy as with lesions for the same seed: only the lesion draw is skipped)."""
    if kind not in PHANTOMS:
        raise LesionInputError(f"phantom kind {kind!r} is unknown; choose one of {', '.join(PHANTOMS)}")
    if not with_lesion:
        kwargs["count"] = 0
    return PHANTOMS[kind](seed=seed, **kwargs)


def phantom_set(
    kind: str, count: int, seed: int = 0, lesion_fraction: float = 0.5, **kwargs: Any,
) -> list[Phantom]:
    """``count`` phantoms of ``kind``; the first ``round(lesion_fraction * count)`` carry lesions.
    Every phantom has its own seed drawn from ``seed`` (so sets with different seeds never share
    an image), recorded in ``Phantom.seed``."""
    check_count(count, "phantom count")
    if not 0.0 <= lesion_fraction <= 1.0:
        raise LesionInputError(f"lesion fraction {lesion_fraction}; choose a value in [0, 1]")
    seeds = np.random.SeedSequence(seed).generate_state(count, dtype=np.uint32)
    with_lesion = int(round(lesion_fraction * count))
    return [make_phantom(kind, int(s), i < with_lesion, **kwargs) for i, s in enumerate(seeds)]


def with_spec(kind: str, **changes: Any) -> LesionSpec:
    """The default lesion look of ``kind`` with some fields changed (e.g. ``sign=-1``)."""
    return replace(DEFAULT_LESIONS[kind], **changes)
