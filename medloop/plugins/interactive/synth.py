"""Seeded SynthSeg-style 2-D training objects for the click network (spec §4.4).

Images are drawn from label maps with random contrast, so the net never sees a real T1:

* label maps: ``fields`` (argmax of 4-8 smoothed noise fields), ``shapes`` (fields plus warped
  ellipses and rings), ``mni`` (a slice of the packaged MNI152 tissue labels split by the
  midline and Voronoi cells, every connected component its own object). In ``mni`` maps the
  ventricles and all CSF inside the brain are background (label 0) and never a target;
* the map is zoomed and elastically deformed onto the canonical 64 x 64 grid so the target
  spans 4-64 pixels (some are cropped by the grid);
* intensities: per-label mean U(0, 1) and sd U(0, 0.1), partial-volume blur, a thick-slice blur
  along one axis, a bias field, gamma and noise.

The target is one connected component of one label. Tubes are the held-out family: training
never draws them; :func:`heldout_tubes` draws them from :data:`HELDOUT_SEED`, which training
never uses. :func:`mni_ventricle_slices` gives the real-T1 held-out objects (native 2 mm slices).
Everything is numpy/scipy, seeded by the caller's generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIZE = 64  # the canonical grid of the 2-D click net
CANVAS = 96  # label maps are drawn here, then zoomed onto the grid
TRAIN_FAMILIES = ("fields", "shapes", "mni")
FAMILY_WEIGHTS = (0.3, 0.4, 0.3)
HELDOUT_FAMILY = "tubes"
HELDOUT_SEED = 20_251_206  # the held-out tubes' seed; training seeds stay below 1e6
MIN_TARGET_PX = 8


@dataclass(frozen=True)
class SynthObject:
    """One training (or held-out) object on the grid: ``image`` float32, ``labels`` int32,
    ``target`` bool (one connected component of label ``label``), ``never`` bool (pixels that are
    never a target: MNI background, which holds the ventricles and inner CSF)."""

    image: np.ndarray
    labels: np.ndarray
    target: np.ndarray
    label: int
    family: str
    never: np.ndarray


def _kernel(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) rows of normalised Gaussian weights: smooth interpolation of a coarse grid."""
    pos = np.linspace(0, n_in - 1, n_out)[:, None] - np.arange(n_in)[None, :]
    k = np.exp(-0.5 * (pos / 0.7) ** 2)
    return k / k.sum(axis=1, keepdims=True)


def smooth_noise(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth noise with features about ``sigma`` px wide (a coarse normal grid interpolated by
    Gaussian weights), scaled to unit sd."""
    cells = [max(2, int(round(n / sigma)) + 1) for n in shape]
    field = _kernel(shape[0], cells[0]) @ rng.standard_normal(cells) @ _kernel(shape[1], cells[1]).T
    return field / (field.std() + 1e-8)


def _coarse_field(shape: tuple[int, int], cells: int, amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth (2, H, W) displacement in px: a cells x cells normal grid x ``amplitude``, interpolated."""
    ky, kx = _kernel(shape[0], cells), _kernel(shape[1], cells)
    return np.stack([ky @ rng.standard_normal((cells, cells)) @ kx.T for _ in range(2)]) * amplitude


def field_labels(rng: np.random.Generator, size: int = CANVAS) -> np.ndarray:
    """Argmax of 4-8 Gaussian-smoothed noise fields (int32 labels 1..n)."""
    n = int(rng.integers(4, 9))
    sigma = float(rng.uniform(3.0, 12.0))
    fields = np.stack([smooth_noise((size, size), sigma, rng) for _ in range(n)])
    return (np.argmax(fields, axis=0) + 1).astype(np.int32)


def warped_shape(rng: np.random.Generator, size: int = CANVAS, ring: bool = False) -> np.ndarray:
    """A bool ellipse (or ring) with random axes, angle and a smooth warp."""
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    warp = _coarse_field((size, size), 4, rng.uniform(0.5, 4.0), rng)
    y, x = yy + warp[0], xx + warp[1]
    cy, cx = rng.uniform(0.2, 0.8, 2) * size
    a, b = rng.uniform(3.0, size / 3, 2)
    t = rng.uniform(0, np.pi)
    u = ((x - cx) * np.cos(t) + (y - cy) * np.sin(t)) / a
    v = (-(x - cx) * np.sin(t) + (y - cy) * np.cos(t)) / b
    q = np.sqrt(u**2 + v**2)
    if ring:
        return (q < 1) & (q > rng.uniform(0.45, 0.8))
    return q < 1


def tube(rng: np.random.Generator, size: int = CANVAS) -> np.ndarray:
    """A bool tube: a smooth random curve 20-80 px long, thickened to radius 1.5-4 px."""
    from scipy import ndimage

    n = int(rng.integers(40, 160))
    turns = np.cumsum(np.cumsum(rng.normal(0, 0.02, n)))  # smooth curvature
    angle = rng.uniform(0, 2 * np.pi) + turns
    start = rng.uniform(0.3, 0.7, 2) * size
    path = start + np.cumsum(np.stack([np.sin(angle), np.cos(angle)], axis=1) * 0.5, axis=0)
    idx = np.clip(np.rint(path).astype(int), 0, size - 1)
    centre = np.zeros((size, size), bool)
    centre[idx[:, 0], idx[:, 1]] = True
    return ndimage.distance_transform_edt(~centre) < rng.uniform(1.5, 4.0)


def shape_labels(rng: np.random.Generator, tubes: bool = False) -> tuple[np.ndarray, list[int]]:
    """Noise-field labels with 2-5 warped ellipses/rings (or one tube) painted on; returns the
    map and the values of the painted objects."""
    labels = field_labels(rng)
    painted = []
    count = 1 if tubes else int(rng.integers(2, 6))
    for _ in range(count):
        value = int(labels.max()) + 1
        mask = tube(rng) if tubes else warped_shape(rng, ring=bool(rng.random() < 0.35))
        if mask.sum() >= MIN_TARGET_PX:
            labels[mask] = value
            painted.append(value)
    return labels, painted


def mni_tissue() -> np.ndarray:
    """The packaged MNI152 2 mm tissue labels (0 background, 1 grey, 2 white matter), int32."""
    from medloop.app.samples import load_brain_sample

    return np.asarray(load_brain_sample()[1].array, dtype=np.int32)


def split_mni_slice(tissue2d: np.ndarray, rng: np.random.Generator, midline: int | None) -> np.ndarray:
    """GM/WM of one slice split by the midline (column ``midline``) and 0-6 Voronoi cells, as new
    consecutive labels; background (outside air, ventricles, inner CSF) stays 0."""
    brain = tissue2d > 0
    out = tissue2d.astype(np.int32) * 16
    if midline is not None:
        out += 8 * (np.arange(tissue2d.shape[1])[None, :] >= midline)
    cells = int(rng.integers(0, 7))
    if cells > 1:
        pts = np.argwhere(brain)
        seeds = pts[rng.choice(len(pts), size=cells, replace=False)]
        yy, xx = np.mgrid[: tissue2d.shape[0], : tissue2d.shape[1]]
        dist = np.stack([(yy - sy) ** 2 + (xx - sx) ** 2 for sy, sx in seeds])
        out += np.argmin(dist, axis=0).astype(np.int32)
    out[~brain] = 0
    values = np.unique(out)
    return np.searchsorted(values, out).astype(np.int32)  # 0 stays 0


def mni_labels(rng: np.random.Generator, tissue: np.ndarray) -> np.ndarray:
    """A split slice (random axis) of the MNI tissue labels, padded onto a square canvas."""
    axis = int(rng.integers(0, 3))
    area = (np.moveaxis(tissue, axis, 0) > 0).sum(axis=(1, 2))
    ok = np.flatnonzero(area > 0.3 * area.max())
    sl = np.moveaxis(tissue, axis, 0)[int(rng.choice(ok))]
    xs = np.flatnonzero((tissue > 0).any(axis=(0, 1)))
    midline = None if axis == 2 else int(round((xs[0] + xs[-1]) / 2))
    return split_mni_slice(sl, rng, midline)


def _component(mask: np.ndarray, rng: np.random.Generator | None = None, largest: bool = False) -> np.ndarray:
    """One connected component of ``mask`` (random among those >= MIN_TARGET_PX, or the largest)."""
    from scipy import ndimage

    comp, n = ndimage.label(mask)
    if n == 0:
        return mask.copy()
    sizes = np.bincount(comp.ravel())[1:]
    if largest or rng is None:
        return comp == int(np.argmax(sizes)) + 1
    ok = np.flatnonzero(sizes >= MIN_TARGET_PX)
    pick = int(rng.choice(ok)) if len(ok) else int(np.argmax(sizes))
    return comp == pick + 1


def _pick_target(labels: np.ndarray, candidates: list[int], rng: np.random.Generator) -> tuple[int, np.ndarray] | None:
    ok = [v for v in candidates if (labels == v).sum() >= MIN_TARGET_PX]
    if not ok:
        return None
    value = int(rng.choice(ok))
    return value, _component(labels == value, rng)


@dataclass(frozen=True)
class _Placement:
    centre: np.ndarray
    zoom: float
    warp: np.ndarray


def _place(target: np.ndarray, rng: np.random.Generator, elastic: float) -> _Placement:
    """Zoom so the target spans 4-60 px on the grid, shift it off-centre, warp elastically."""
    pts = np.argwhere(target)
    extent = float((pts.max(axis=0) - pts.min(axis=0) + 1).max())
    span = float(np.exp(rng.uniform(np.log(4.0), np.log(60.0))))
    zoom = float(np.clip(span / extent, 0.25, 8.0))
    room = max(0.0, SIZE / 2 - 2 - span / 2)
    shift = rng.uniform(-1, 1, 2) * room
    centre = pts.mean(axis=0) - shift / zoom
    warp = _coarse_field((SIZE, SIZE), int(rng.integers(3, 7)), elastic * rng.uniform(0, 1), rng)
    return _Placement(centre, zoom, warp)


def _resample(labels: np.ndarray, place: _Placement, mode: str) -> np.ndarray:
    from scipy import ndimage

    grid = np.mgrid[:SIZE, :SIZE].astype(np.float64) - (SIZE - 1) / 2
    coords = place.centre[:, None, None] + (grid + place.warp) / place.zoom
    return ndimage.map_coordinates(labels, coords, order=0, mode=mode, cval=0)


def render(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random-contrast image of ``labels``: means U(0,1), sd U(0,0.1), partial-volume and
    thick-slice blur, bias field, gamma and noise (float32 in about [0, 1])."""
    from scipy import ndimage

    n = int(labels.max()) + 1
    mu, sd = rng.uniform(0, 1, n), rng.uniform(0, 0.1, n)
    image = mu[labels] + sd[labels] * rng.standard_normal(labels.shape)
    image = ndimage.gaussian_filter(image, rng.uniform(0.0, 1.2))
    if rng.random() < 0.3:  # a thick slice along one in-plane axis
        image = ndimage.gaussian_filter1d(image, rng.uniform(0.5, 2.0), axis=int(rng.integers(0, 2)))
    bias = np.exp(rng.uniform(0, 0.4) * smooth_noise(labels.shape, rng.uniform(12, 32), rng))
    image = image * bias
    lo, hi = image.min(), image.max()
    image = ((image - lo) / (hi - lo + 1e-8)) ** np.exp(rng.normal(0, 0.3))
    image = image + rng.normal(0, rng.uniform(0, 0.06), labels.shape)
    return image.astype(np.float32)


def _draw_map(family: str, rng: np.random.Generator, tissue: np.ndarray | None) -> tuple[np.ndarray, list[int], str]:
    if family == "fields":
        labels = field_labels(rng)
        return labels, list(range(1, int(labels.max()) + 1)), "mirror"
    if family in ("shapes", HELDOUT_FAMILY):
        labels, painted = shape_labels(rng, tubes=family == HELDOUT_FAMILY)
        return labels, painted, "mirror"
    labels = mni_labels(rng, mni_tissue() if tissue is None else tissue)
    return labels, list(range(1, int(labels.max()) + 1)), "constant"


def synth_object(rng: np.random.Generator, family: str | None = None, tissue: np.ndarray | None = None) -> SynthObject:
    """One object of ``family`` (default: drawn from :data:`TRAIN_FAMILIES`); ``tissue`` is the
    MNI label volume (loaded when None and needed)."""
    for _ in range(50):
        fam = family or str(rng.choice(TRAIN_FAMILIES, p=FAMILY_WEIGHTS))
        labels, candidates, mode = _draw_map(fam, rng, tissue)
        picked = _pick_target(labels, candidates, rng)
        if picked is None:
            continue
        value, target = picked
        place = _place(target, rng, elastic=6.0 if fam == "mni" else 3.0)
        grid_labels = _resample(labels, place, mode)
        grid_target = _resample(target.astype(np.uint8), place, "constant").astype(bool) & (grid_labels == value)
        grid_target = _component(grid_target, largest=True)
        if grid_target.sum() < MIN_TARGET_PX:
            continue
        never = grid_labels == 0 if fam == "mni" else np.zeros_like(grid_target)
        return SynthObject(render(grid_labels, rng), grid_labels, grid_target, value, fam, never)
    raise RuntimeError(f"could not draw a {family or 'training'} object in 50 tries")  # pragma: no cover


def heldout_tubes(count: int, seed: int = HELDOUT_SEED) -> list[SynthObject]:
    """``count`` held-out tube objects (a family training never draws) from ``seed``."""
    rng = np.random.default_rng(seed)
    return [synth_object(rng, HELDOUT_FAMILY) for _ in range(count)]


@dataclass(frozen=True)
class SliceObject:
    """A held-out object on a native slice of the real T1: ``image`` float32, ``target`` bool,
    ``spacing`` mm (array order), ``name`` e.g. ``axial z=40``."""

    image: np.ndarray
    target: np.ndarray
    spacing: tuple[float, float]
    name: str


def ventricle_mask(tissue2d: np.ndarray) -> np.ndarray:
    """The largest background component enclosed by the brain on a slice (the ventricles)."""
    from scipy import ndimage

    brain = tissue2d > 0
    inner = ndimage.binary_fill_holes(brain) & ~brain
    return _component(inner, largest=True) if inner.any() else inner


def _spread(areas: np.ndarray, count: int, gap: int) -> list[int]:
    """The ``count`` indices of largest area at least ``gap`` apart."""
    chosen: list[int] = []
    for i in np.argsort(-areas, kind="stable"):
        if all(abs(int(i) - c) >= gap for c in chosen):
            chosen.append(int(i))
        if len(chosen) == count:
            break
    return sorted(chosen)


def mni_ventricle_slices(axial: int = 4, coronal: int = 3) -> list[SliceObject]:
    """The held-out MNI ventricles on native 2 mm slices of the real T1: the ``axial`` and
    ``coronal`` slices with the largest ventricle areas, 3 slices apart."""
    from medloop.app.samples import load_brain_sample

    t1, tissue_image = load_brain_sample()
    image, tissue = np.asarray(t1.array, np.float32), np.asarray(tissue_image.array, np.int32)
    spacing = tuple(float(s) for s in t1.spacing)[::-1]  # array order (z, y, x)
    objects = []
    for axis, count, name in ((0, axial, "axial"), (1, coronal, "coronal")):
        vents = [ventricle_mask(s) for s in np.moveaxis(tissue, axis, 0)]
        for i in _spread(np.array([v.sum() for v in vents]), count, 3):
            sp = tuple(s for a, s in enumerate(spacing) if a != axis)
            objects.append(SliceObject(np.moveaxis(image, axis, 0)[i].copy(), vents[i], sp, f"{name} {'zy'[axis]}={i}"))
    return objects
