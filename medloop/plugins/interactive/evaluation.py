"""The standard evaluation of click -> object (spec §5): held-out objects, a deterministic click
simulator (RITM / nnInteractive style) with a human-like variant, Dice@k, NoC@85/90, stability,
latency and the intensity oracle ceiling. The benchmark, the tests and the learned engine's
gate all use it, through the same :class:`~medloop.plugins.interactive.session.PromptSession`
as the panel and the CLI.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from medloop.app.io.image import MedImage
from medloop.plugins.interactive.clicksim import edt_inside, error_regions
from medloop.plugins.interactive.prompts import Point, index_to_physical

NOC_CAP = 20


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two masks (1.0 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


# -- held-out objects on the packaged brain ------------------------------------------------
def ventricles(tissue: np.ndarray) -> np.ndarray:
    """The largest CSF space enclosed by the brain (background inside the filled brain mask):
    the lateral ventricles, 2,256 voxels on the 2 mm sample."""
    inside = ndi.binary_fill_holes(tissue > 0) & (tissue == 0)
    return largest_component(inside)


def white_matter(tissue: np.ndarray, label: int = 2) -> np.ndarray:
    """The largest connected white-matter component."""
    return largest_component(tissue == label)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest face-connected component of ``mask`` (the project's mask tool)."""
    from medloop.app.engine.label_edit import keep_largest_component

    return keep_largest_component(mask.astype(np.uint8), 1, fill=0) == 1


def resample_to_shape(image: MedImage, shape: tuple[int, ...], order: int) -> MedImage:
    """``image`` on a grid of ``shape`` covering the same field of view (linear: ``order`` 1,
    nearest: 0), geometry adjusted so every voxel keeps its physical place."""
    import SimpleITK as sitk

    from medloop.app.io.sitk_convert import to_sitk

    src = to_sitk(image)
    old = np.asarray(image.shape[: image.ndim][::-1], float)
    new = np.asarray(shape[::-1], float)
    spacing = np.asarray(image.spacing) * old / new
    origin = np.asarray(image.origin) + image.direction @ ((spacing - np.asarray(image.spacing)) / 2)
    out = sitk.Resample(src, [int(v) for v in new], sitk.Transform(), sitk.sitkLinear if order else sitk.sitkNearestNeighbor,
                        tuple(origin), tuple(spacing), tuple(image.direction.ravel()), 0.0, src.GetPixelID())
    return MedImage(sitk.GetArrayFromImage(out), tuple(spacing), tuple(origin), image.direction, modality=image.modality)


# -- the click simulator --------------------------------------------------------------------
@dataclass(frozen=True)
class Clicker:
    """Where the next click goes. ``human``: jitter N(0, ``jitter_mm``) kept inside the error,
    and ``wrong_share`` of clicks sent to the other error region (arXiv 2603.10541)."""

    human: bool = False
    jitter_mm: float = 2.0
    wrong_share: float = 0.1
    seed: int = 0


def _centre(region: np.ndarray, spacing: tuple[float, ...]) -> tuple[tuple[int, ...], float]:
    """The voxel farthest (mm) from ``region``'s boundary, and that distance."""
    edt = edt_inside(region, spacing)
    flat = int(np.argmax(edt))
    return tuple(int(i) for i in np.unravel_index(flat, region.shape)), float(edt.flat[flat])


def next_click(reference: np.ndarray, prediction: np.ndarray, spacing: tuple[float, ...], clicker: Clicker,
               rng: np.random.Generator) -> tuple[tuple[int, ...], bool] | None:
    """The next click (array index, positive?) at the centre of the larger error (max EDT in
    mm): positive in the false negatives, negative in the false positives; None when there is
    none. (Training draws its clicks with :mod:`~medloop.plugins.interactive.clicksim`.)"""
    fn, fp = error_regions(prediction, reference)
    options = []
    for region, positive in ((fn, True), (fp, False)):
        if region.any():
            idx, depth = _centre(region, spacing)
            options.append((depth, idx, positive, region))
    if not options:
        return None
    options.sort(key=lambda o: -o[0])
    pick = options[0]
    if clicker.human and len(options) > 1 and rng.random() < clicker.wrong_share:
        pick = options[1]
    _, idx, positive, region = pick
    if clicker.human:
        idx = _jitter(idx, region, spacing, clicker.jitter_mm, rng)
    return idx, positive


def _jitter(idx: tuple[int, ...], region: np.ndarray, spacing: tuple[float, ...], sd_mm: float, rng: np.random.Generator) -> tuple[int, ...]:
    for _ in range(10):
        moved = np.rint(np.asarray(idx) + rng.normal(0.0, sd_mm, len(idx)) / np.asarray(spacing)).astype(int)
        if np.all(moved >= 0) and np.all(moved < region.shape) and region[tuple(moved)]:
            return tuple(int(v) for v in moved)
    return idx


def first_click(reference: np.ndarray, spacing: tuple[float, ...]) -> tuple[int, ...]:
    """The interior point farthest from the boundary."""
    return _centre(reference, spacing)[0]


@dataclass
class Trial:
    """One object's run: Dice and latency after each click."""

    dice: list[float] = field(default_factory=list)
    ms: list[float] = field(default_factory=list)

    def noc(self, threshold: float, cap: int = NOC_CAP) -> int:
        """Clicks until Dice >= ``threshold`` (``cap`` when never)."""
        for k, d in enumerate(self.dice[:cap], start=1):
            if d >= threshold:
                return k
        return cap

    def dice_at(self, k: int) -> float:
        return self.dice[min(k, len(self.dice)) - 1]

    def drops(self, by: float = 0.02) -> int:
        return int(sum(1 for a, b in zip(self.dice, self.dice[1:]) if b < a - by))


def run_trial(image: MedImage, reference: np.ndarray, make_session: Callable[[MedImage], object], clicks: int = 10,
              clicker: Clicker | None = None) -> Trial:
    """Click on ``reference`` in a fresh session until ``clicks`` clicks (or no error is left;
    later Dice values then repeat the last)."""
    clicker = clicker or Clicker()
    rng = np.random.default_rng(clicker.seed)
    spacing = tuple(image.spacing[::-1])
    session = make_session(image)
    trial = Trial()
    idx, positive = first_click(reference, spacing), True
    if clicker.human:  # a person's first click is not at the exact centre either
        idx = _jitter(idx, reference, spacing, clicker.jitter_mm, rng)
    for _ in range(clicks):
        xyz = tuple(float(v) for v in index_to_physical(image, np.asarray(idx))[0])
        start = time.perf_counter()
        session.add(Point(xyz, positive))
        trial.ms.append((time.perf_counter() - start) * 1000.0)
        prediction = session.object_mask()
        trial.dice.append(dice(prediction, reference))
        nxt = next_click(reference, prediction, spacing, clicker, rng)
        if nxt is None:
            break
        idx, positive = nxt
    while len(trial.dice) < clicks:
        trial.dice.append(trial.dice[-1])
    return trial


def oracle_ceiling(image: np.ndarray, reference: np.ndarray, seed: tuple[int, ...], levels: int = 16) -> float:
    """The best Dice any global intensity interval + connectivity from ``seed`` (holes filled,
    as the engine fills them) reaches: what intensity alone can do for this object. A grid of
    ``levels`` quantiles of the object and its surroundings, then a finer grid around the best."""
    near = ndi.binary_dilation(reference, iterations=3)  # the object, its boundary and its neighbours
    qs = np.unique(np.percentile(image[near], np.linspace(0, 100, levels)))
    v = float(image[seed])
    lows = np.concatenate([[-np.inf], qs[qs <= v]])
    highs = np.concatenate([qs[qs >= v], [np.inf]])
    best, lo, hi = _best_interval(image, reference, seed, lows, highs)
    fine_lows = _around(lows, lo, v, below=True)
    fine_highs = _around(highs, hi, v, below=False)
    return max(best, _best_interval(image, reference, seed, fine_lows, fine_highs)[0])


def _around(grid: np.ndarray, value: float, v: float, below: bool) -> np.ndarray:
    """Nine values between ``value``'s neighbours on ``grid`` (infinite ends stay as they are)."""
    if np.isinf(value):
        return np.array([value])
    i = int(np.searchsorted(grid, value))
    a = grid[max(i - 1, 0)] if not np.isinf(grid[max(i - 1, 0)]) else value
    b = grid[min(i + 1, len(grid) - 1)] if not np.isinf(grid[min(i + 1, len(grid) - 1)]) else value
    values = np.linspace(a, b, 9)
    return values[values <= v] if below else values[values >= v]


def _best_interval(image: np.ndarray, reference: np.ndarray, seed: tuple[int, ...], lows: np.ndarray,
                   highs: np.ndarray) -> tuple[float, float, float]:
    from medloop.plugins.interactive.classical import connected_in_range, fill_holes

    blocked = np.zeros(image.shape, bool)
    work = image.astype(np.float32)
    best = (0.0, -np.inf, np.inf)
    for lo in lows:
        for hi in highs:
            region = fill_holes(connected_in_range(work, [seed], float(lo), float(hi), blocked))
            d = dice(region, reference)
            if d > best[0]:
                best = (d, float(lo), float(hi))
    return best


def summarise(trials: list[Trial]) -> dict[str, float]:
    """Means over objects: Dice@1/3/5/10, NoC85/90, failures at 0.90, stability, latency."""
    ms = np.concatenate([t.ms for t in trials]) if trials else np.zeros(1)
    clicks = sum(max(1, len(t.ms) - 1) for t in trials)
    return {
        **{f"dice@{k}": float(np.mean([t.dice_at(k) for t in trials])) for k in (1, 3, 5, 10)},
        "noc85": float(np.mean([t.noc(0.85) for t in trials])),
        "noc90": float(np.mean([t.noc(0.90) for t in trials])),
        "fail90": int(sum(t.noc(0.90) >= NOC_CAP and max(t.dice) < 0.90 for t in trials)),
        "drops": float(sum(t.drops() for t in trials) / max(clicks, 1)),
        "ms_p50": float(np.percentile(ms, 50)), "ms_p95": float(np.percentile(ms, 95)), "ms_max": float(ms.max()),
        "objects": len(trials),
    }


# -- synthetic held-out 3-D objects -----------------------------------------------------------
@dataclass(frozen=True)
class VolumeObject:
    """A held-out 3-D object: ``image`` (a MedImage, 1 mm), ``target`` bool, ``name``."""

    image: MedImage
    target: np.ndarray
    name: str


def _tube_path(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random curve through the volume (points in voxel units, array order)."""
    start = rng.uniform(0.3, 0.7, 3) * size
    heading = rng.normal(size=3)
    heading /= np.linalg.norm(heading)
    points = [start]
    for _ in range(int(size * 0.9)):
        heading = heading + rng.normal(0.0, 0.15, 3)
        heading /= np.linalg.norm(heading)
        nxt = points[-1] + heading
        if np.any(nxt < 3) or np.any(nxt > size - 4):
            break
        points.append(nxt)
    return np.asarray(points)


def _tube_mask(path: np.ndarray, radius: float, size: int) -> np.ndarray:
    grid = np.zeros((size,) * 3, bool)
    idx = np.clip(np.rint(path).astype(int), 0, size - 1)
    grid[tuple(idx.T)] = True
    return ndi.distance_transform_edt(~grid) <= radius


def synthetic_tubes_3d(count: int, seed: int = 20_251_207, size: int = 48) -> list[VolumeObject]:
    """``count`` seeded 3-D tubes (radius 2-5 mm) in 1 mm volumes, each touching a second tube
    of another intensity, with blur, a bias field and noise: a shape family and seed no
    training ever uses (spec §5)."""
    rng = np.random.default_rng(seed)
    objects = []
    while len(objects) < count:
        path = _tube_path(rng, size)
        if len(path) < size // 3:
            continue
        target = _tube_mask(path, rng.uniform(2.0, 5.0), size)
        other = _tube_mask(_tube_path(rng, size), rng.uniform(2.0, 5.0), size) & ~target
        means = rng.uniform(0.0, 1.0, 3)
        while min(abs(means[0] - means[1]), abs(means[0] - means[2])) < 0.25:
            means = rng.uniform(0.0, 1.0, 3)
        image = np.where(target, means[0], np.where(other, means[1], means[2]))
        image = ndi.gaussian_filter(image, 0.7)
        zz, yy, xx = np.meshgrid(*(np.linspace(-1, 1, size),) * 3, indexing="ij")
        image = image * (1.0 + 0.1 * (rng.normal() * zz + rng.normal() * yy + rng.normal() * xx))
        image = image + rng.normal(0.0, rng.uniform(0.02, 0.08), image.shape)
        mri = MedImage.from_array(image.astype(np.float32), spacing=(1.0, 1.0, 1.0))
        objects.append(VolumeObject(mri, target, f"tube3d-{len(objects)}"))
    return objects
