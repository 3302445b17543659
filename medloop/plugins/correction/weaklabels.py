"""Weak labels made from full masks (spec weak-supervision.md section 0), for tests and benchmarks.

* :func:`strokes` - sparse 3-px random-walk strokes kept ``margin`` px inside their regions, the
  way an annotator marks only where sure (Bokhorst et al.).
* :func:`boxes` - one tight axis-aligned box per instance (Gupta et al.).
* :func:`points` - one rounded centroid per instance, exactly how Qu et al. made their points.
* :func:`dense_subset` - which images keep dense labels in a sparse + dense mix.

Everything is seeded: the same ``rng`` (a seed or a ``numpy`` Generator; ``None`` = seed 0) gives
the same result. Stroke maps use the paint convention: 0 = unlabeled, k + 1 = class k.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

from medloop.app.errors import MedloopError

__all__ = ["AnnotationError", "boxes", "dense_subset", "points", "strokes"]



class AnnotationError(MedloopError, ValueError):
    """An annotation (strokes, boxes, points) cannot be used; the message says what to fix."""


def as_rng(rng: int | np.random.Generator | None) -> np.random.Generator:
    """A Generator from a seed or Generator; ``None`` means seed 0 so results are reproducible."""
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(0 if rng is None else rng)


# --- strokes ----------------------------------------------------------------------------------


def _class_counts(per_class_counts: Sequence[int] | Mapping[int, int] | None, classes: np.ndarray) -> dict[int, int]:
    if per_class_counts is None:
        return {int(k): 1 for k in classes}
    if isinstance(per_class_counts, Mapping):
        counts = {int(k): int(v) for k, v in per_class_counts.items()}
    else:
        counts = {k: int(v) for k, v in enumerate(per_class_counts)}
    if any(v < 0 for v in counts.values()):
        raise ValueError(f"per_class_counts must be >= 0, got {per_class_counts!r}")
    return counts


def _centre_room(mask: np.ndarray, k: int, margin: int, half: int) -> np.ndarray:
    """Where a stroke of class ``k`` may be centred: its whole ``2 half + 1`` square footprint lies
    more than ``margin`` px (Euclidean) from every pixel of another class."""
    region = mask == k
    if region.all():
        allowed = region
    else:
        # edt = distance from each class-k pixel to the nearest pixel of another class.
        allowed = ndimage.distance_transform_edt(region) > margin
    if half == 0:
        return allowed
    # The image border is not a class boundary, so the footprint may hang over it.
    footprint = np.ones((2 * half + 1,) * 2, bool)
    return ndimage.binary_erosion(allowed, footprint, border_value=1)


def strokes(
    mask: np.ndarray,
    coverage: float = 0.05,
    margin: int = 3,
    per_class_counts: Sequence[int] | Mapping[int, int] | None = None,
    rng: int | np.random.Generator | None = None,
    width: int = 3,
) -> tuple[np.ndarray, float]:
    """Random-walk strokes over a full 2-D class map ``mask`` (values 0..K-1).

    Returns ``(labels, coverage_reached)``: ``labels`` (int32, paint convention, 0 = unlabeled,
    k + 1 = class k) and the fraction of pixels it labels. ``coverage`` is the target fraction;
    it is shared among the classes present in proportion to ``per_class_counts`` (strokes per
    class: one value per class id, or ``{class: count}``; default one stroke per present class),
    and each class's share among its strokes. Every stroke pixel lies more than ``margin`` px from
    any pixel of another class. A class with no room for a ``width``-px stroke gets none; its share
    goes to the others. When the regions cannot hold the target, less is returned (read
    ``coverage_reached``).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"strokes needs a 2-D class map, got shape {mask.shape}; go slice by slice")
    if not np.issubdtype(mask.dtype, np.integer) and mask.dtype != bool:
        raise ValueError(f"strokes needs an integer class map, got dtype {mask.dtype}")
    mask = mask.astype(np.int64)
    if mask.size and mask.min() < 0:
        raise ValueError("class map values must be >= 0")
    if not 0 < coverage <= 1:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    if margin < 0 or width < 1 or width % 2 == 0:
        raise ValueError(f"need margin >= 0 and an odd width >= 1, got margin={margin}, width={width}")
    gen = as_rng(rng)
    half = width // 2
    counts = _class_counts(per_class_counts, np.unique(mask))
    rooms = {k: _centre_room(mask, k, margin, half) for k, c in sorted(counts.items()) if c > 0 and (mask == k).any()}
    rooms = {k: r for k, r in rooms.items() if r.any()}
    labels = np.zeros(mask.shape, np.int32)
    if not rooms:
        return labels, 0.0
    # Pixels a stroke may paint: the footprints of all admissible centres (> margin inside).
    paintable = {k: ndimage.binary_dilation(r, np.ones((width, width), bool)) & (mask == k) for k, r in rooms.items()}
    budget = coverage * mask.size
    total_count = sum(counts[k] for k in rooms)
    for k, room in rooms.items():
        class_budget = budget * counts[k] / total_count
        n_strokes = counts[k]
        for s in range(n_strokes):
            # Integer pixel budgets that add up exactly to the class budget.
            want = round(class_budget * (s + 1) / n_strokes) - round(class_budget * s / n_strokes)
            _walk(labels, room, paintable[k], k + 1, want, half, gen)
    return labels, float(np.count_nonzero(labels)) / mask.size


def _walk(
    labels: np.ndarray, room: np.ndarray, paintable: np.ndarray, value: int, want: int, half: int, gen: np.random.Generator
) -> None:
    """Paint ``want`` new pixels with ``value`` along smooth random walks inside ``room``.

    A walk keeps a heading that drifts a little each step (so it looks like a pen stroke, not a
    blob); when it runs into the edge of ``room`` it turns, and when it cannot turn or only
    retraces painted pixels it starts again elsewhere in the same class.
    """
    h, w = labels.shape
    painted = 0
    restarts = 0
    while painted < want and restarts < 50:
        free = room & (labels == 0)
        starts = np.flatnonzero(free)
        if starts.size == 0:
            return
        restarts += 1
        y, x = np.unravel_index(starts[gen.integers(starts.size)], labels.shape)
        pos = np.array([y, x], float)
        heading = gen.uniform(0, 2 * np.pi)
        idle = 0
        while painted < want and idle < 4 * (2 * half + 1):
            cy, cx = round(pos[0]), round(pos[1])
            ys, xs = slice(max(cy - half, 0), min(cy + half + 1, h)), slice(max(cx - half, 0), min(cx + half + 1, w))
            new = np.argwhere((labels[ys, xs] == 0) & paintable[ys, xs])
            if len(new):
                new = new[: want - painted]  # the last step paints only what is still wanted
                labels[new[:, 0] + ys.start, new[:, 1] + xs.start] = value
                painted += len(new)
                idle = 0
            else:
                idle += 1
            for _ in range(8):
                heading += gen.normal(0, 0.35)
                step = pos + (np.sin(heading), np.cos(heading))
                ny, nx = round(step[0]), round(step[1])
                if 0 <= ny < h and 0 <= nx < w and room[ny, nx]:
                    pos = step
                    break
                heading = gen.uniform(0, 2 * np.pi)
            else:
                break  # boxed in: start a new stroke segment


# --- boxes, points, dense subset ----------------------------------------------------------------


def _instances(instances: np.ndarray) -> np.ndarray:
    """Integer instance ids; a boolean mask is split into its connected components."""
    a = np.asarray(instances)
    if a.dtype == bool:
        return ndimage.label(a)[0]
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"instance map must be integer or boolean, got dtype {a.dtype}")
    if a.size and a.min() < 0:
        raise ValueError("instance ids must be >= 0")
    return a


def boxes(instances: np.ndarray) -> list[tuple[slice, ...] | None]:
    """Tight axis-aligned box per instance: exactly ``scipy.ndimage.find_objects(instances)``.

    Entry ``i`` is the box of id ``i + 1`` (``None`` for an id not present), so ids stay mapped.
    A boolean mask is first split into connected components (4-connected in 2-D).
    """
    return ndimage.find_objects(_instances(instances))


def points(instances: np.ndarray) -> np.ndarray:
    """Rounded centroid of every instance, ``(N, ndim)`` int64 in ascending id order.

    Halves round up (``floor(c + 0.5)``). The centroid of a non-convex object may fall outside
    it, as it did for Qu et al. A boolean mask is first split into connected components.
    """
    inst = _instances(instances)
    ids = np.unique(inst)
    ids = ids[ids > 0]
    if ids.size == 0:
        return np.zeros((0, inst.ndim), np.int64)
    flat = inst.ravel()
    size = np.bincount(flat)[ids].astype(float)
    grids = np.indices(inst.shape).reshape(inst.ndim, -1)
    centres = np.stack([np.bincount(flat, weights=g)[ids] / size for g in grids], axis=1)
    return np.floor(centres + 0.5).astype(np.int64)


def dense_subset(labels_list: Sequence[np.ndarray], fraction: float, rng: int | np.random.Generator | None = None) -> list[int]:
    """Sorted indices of the images that keep dense labels in a sparse + dense mix.

    ``round(fraction * n)`` of the ``n`` images, at least one when ``fraction > 0`` (the paper's
    "combined 4:1" is ``fraction = 0.2``); the others get strokes.
    """
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    n = len(labels_list)
    count = round(fraction * n)
    if fraction > 0 and n:
        count = max(count, 1)
    return sorted(int(i) for i in as_rng(rng).choice(n, size=count, replace=False))
