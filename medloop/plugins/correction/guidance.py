"""Where to paint next (issue #18 §1): an uncertainty map of the current model and a ranked list
of regions, shared by the Correction panel ("Go to next") and ``medloop train --weak strokes
--suggest N``. Qt-free.

Per pixel, the uncertainty ``u`` in [0, 1] is the largest of
* the squared margin uncertainty ``(1 - (p1 - p2))**2`` of the softmax (p1, p2 its two largest
  probabilities): squared because a model trained on few strokes is soft everywhere, and a soft
  but unambiguous pixel is not worth a stroke (plain entropy ranked featureless background
  first: 0 errors in its top 10 regions on the brain sample, against 975 for this ``u``);
* the disagreement of the predictions on the input flipped along each in-plane axis (the share
  of the flipped passes that disagree with the plain one);
* optionally, the disagreement with a pixel classifier fitted on the strokes where that
  classifier is confident (what the network cannot know from the strokes: the never-painted far
  background a scratch model calls tissue is confidently background to the classifier); where
  that classifier is sure of the model's own class, the margin term is dropped.

Square regions slide over the image at half-region steps, slice by slice for a volume (the
chosen ones do not overlap); a region's score is its mean
``u`` (halved for a region centred on a stroke, rising back to full weight ``far_px`` away)
plus ``distance_weight`` x its distance from the nearest painted pixel (as a share of
``far_px``, capped at 1): uncertain regions come first, and among sure ones those nobody has
looked at; a region just painted gives way to the next one. Featureless regions the model
surely calls background are never suggested (nothing to paint), nor slices without signal (background by construction, ``medloop.app.engine.signal``); a slice
gives at most two of the suggestions.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "RankParams",
    "Suggestion",
    "flip_disagreement",
    "margin_uncertainty",
    "normalised_entropy",
    "predict_probabilities",
    "rank_regions",
    "suggest",
    "suggest_with_teacher",
    "uncertainty_map",
    "write_suggestions",
]

DEFAULT_REGION = 24  # px: about what one short stroke covers
DISTANCE_WEIGHT = 0.25
FAR_PX = 48.0
PER_SLICE = 2
PAINTED_DISCOUNT = 0.5


@dataclass(frozen=True)
class Suggestion:
    """One region to look at: ``slice`` (axis-0 index of a volume, None for a 2-D image), the
    half-open pixel box ``(y0, x0, y1, x1)`` in that plane, its ``score``, mean ``uncertainty``,
    distance of its centre from the nearest painted pixel (px, inf without strokes), and the
    class the model predicts most there (0-based)."""

    rank: int
    slice: int | None
    box: tuple[int, int, int, int]
    score: float
    uncertainty: float
    distance_px: float
    predicted_class: int

    @property
    def centre(self) -> tuple[float, float]:
        y0, x0, y1, x1 = self.box
        return ((y0 + y1 - 1) / 2, (x0 + x1 - 1) / 2)


def _planes(x: np.ndarray) -> list[np.ndarray]:
    """``(C, h, w)`` planes of a ``(C, h, w)`` image or a ``(C, z, h, w)`` volume."""
    return [x] if x.ndim == 3 else [x[:, z] for z in range(x.shape[1])]


def _softmax_planes(network: torch.nn.Module, planes: list[np.ndarray], flip: tuple[int, ...] = ()) -> np.ndarray:
    divisor = int(getattr(network, "divisible_by", 1) or 1)
    out = []
    for plane in planes:
        h, w = plane.shape[1:]
        p = np.flip(plane, axis=tuple(1 + a for a in flip)) if flip else plane
        padded = np.pad(p, [(0, 0), (0, (-h) % divisor), (0, (-w) % divisor)], mode="edge")
        logits = network(torch.from_numpy(np.ascontiguousarray(padded, np.float32))[None])[0, :, :h, :w]
        if logits.shape[0] == 1:
            logits = torch.cat([torch.zeros_like(logits), logits])
        prob = torch.softmax(logits.float(), 0).numpy()
        out.append(np.flip(prob, axis=tuple(1 + a for a in flip)) if flip else prob)
    return np.stack(out, axis=1)  # (K, planes, h, w)


def predict_probabilities(network: torch.nn.Module, x: np.ndarray, flips: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """``(probabilities (K, *spatial), flipped class maps (F, *spatial) or None)`` of a
    ``(C, h, w)`` image or a ``(C, z, h, w)`` volume (a 2-D network, slice by slice)."""
    was_training = network.training
    network.eval()
    try:
        with torch.inference_mode():
            planes = _planes(np.asarray(x, np.float32))
            probs = _softmax_planes(network, planes)
            flipped = [_softmax_planes(network, planes, (a,)).argmax(0) for a in (0, 1)] if flips else None
    finally:
        network.train(was_training)
    squeeze = (lambda a: a[:, 0]) if x.ndim == 3 else (lambda a: a)
    return squeeze(probs), (None if flipped is None else squeeze(np.stack(flipped)))


def normalised_entropy(probabilities: np.ndarray) -> np.ndarray:
    """Entropy of ``(K, *spatial)`` probabilities divided by log K: 0 sure, 1 uniform."""
    p = np.clip(np.asarray(probabilities, np.float64), 1e-12, 1.0)
    k = p.shape[0]
    return (-(p * np.log(p)).sum(0) / np.log(max(k, 2))).astype(np.float32)


def flip_disagreement(labels: np.ndarray, flipped: np.ndarray) -> np.ndarray:
    """Share of the flipped passes ``(F, *spatial)`` whose class differs from ``labels``."""
    return (np.asarray(flipped) != np.asarray(labels)[None]).mean(0).astype(np.float32)


def margin_uncertainty(probabilities: np.ndarray) -> np.ndarray:
    """``1 - (p1 - p2)`` of ``(K, *spatial)`` probabilities: 0 sure, 1 a tie."""
    p = np.sort(np.asarray(probabilities, np.float32), axis=0)
    if p.shape[0] < 2:
        return np.zeros(p.shape[1:], np.float32)
    return (1.0 - (p[-1] - p[-2])).astype(np.float32)


def uncertainty_map(
    probabilities: np.ndarray, flipped: np.ndarray | None = None, teacher: np.ndarray | None = None,
    teacher_confidence: float = 0.9,
) -> np.ndarray:
    """Per-pixel ``u`` in [0, 1] (module docstring); ``flipped``: the class maps of the flipped
    passes; ``teacher``: the pixel classifier's ``(K, *spatial)`` probabilities."""
    u = margin_uncertainty(probabilities) ** 2
    labels = np.asarray(probabilities).argmax(0)
    if teacher is not None:
        t = np.asarray(teacher)
        sure = t.max(0) >= teacher_confidence
        # Soft but right: where the classifier is sure of the model's own class, a close call
        # is no reason to paint (top-10 regions on the brain sample: 1,581 -> 2,244 wrong pixels).
        u = np.where(sure & (t.argmax(0) == labels), 0.0, u)
        u = np.maximum(u, (sure & (t.argmax(0) != labels)).astype(np.float32))
    if flipped is not None:
        u = np.maximum(u, flip_disagreement(labels, flipped))
    return u.astype(np.float32)


def _distance_to_strokes(strokes: np.ndarray) -> np.ndarray:
    """Voxel distance of every pixel from the nearest painted one (inf without strokes); in a
    volume also across slices (voxels, not mm: a slice away is one step)."""
    from scipy import ndimage

    painted = np.asarray(strokes) > 0
    if not painted.any():
        return np.full(painted.shape, np.inf, np.float32)
    return ndimage.distance_transform_edt(~painted).astype(np.float32)


@dataclass(frozen=True)
class RankParams:
    """How :func:`rank_regions` ranks: ``n`` regions of ``region`` px, the distance bonus
    (``distance_weight`` x distance / ``far_px``, capped), at most ``per_slice`` per slice of a
    volume, and the value range under which a region is ``featureless``."""

    n: int = 5
    region: int = DEFAULT_REGION
    distance_weight: float = DISTANCE_WEIGHT
    far_px: float = FAR_PX
    per_slice: int = PER_SLICE
    featureless: float = 1e-6


def rank_regions(
    uncertainty: np.ndarray, strokes: np.ndarray, labels: np.ndarray, image: np.ndarray | None = None,
    params: RankParams | None = None, skip: Sequence[int] = (), **changes: Any,
) -> list[Suggestion]:
    """The best regions (module docstring) of a 2-D ``(h, w)`` or volume ``(z, h, w)``
    ``uncertainty`` map, given the painted ``strokes`` (paint convention), the model's class map
    ``labels`` and, to skip featureless background, the ``(C, *spatial)`` input ``image``.
    ``params`` (:class:`RankParams`; ``changes`` override its fields, e.g. ``n=3``): at most
    ``per_slice`` regions of one slice of a volume, so that the list spans the volume instead
    of piling up where one slice is hard. ``skip``: slices never suggested (signal-free)."""
    from dataclasses import replace

    p = replace(params or RankParams(), **changes)
    n, region, distance_weight, far_px, per_slice, featureless = (
        p.n, p.region, p.distance_weight, p.far_px, p.per_slice, p.featureless
    )
    u = np.asarray(uncertainty, np.float32)
    volume = u.ndim == 3
    u3, s3, l3 = (a if volume else a[None] for a in (u, np.asarray(strokes), np.asarray(labels)))
    x4 = None if image is None else (np.asarray(image) if volume else np.asarray(image)[:, None])
    distance = _distance_to_strokes(s3)
    candidates = []
    for z in range(u3.shape[0]):
        if z in skip:
            continue
        for y0, x0 in _windows(u3.shape[1:], region):
            box = (slice(y0, min(y0 + region, u3.shape[1])), slice(x0, min(x0 + region, u3.shape[2])))
            cls = np.bincount(l3[z][box].ravel()).argmax()
            mean_u = float(u3[z][box].mean())
            if x4 is not None and cls == 0 and mean_u < 0.1 and np.ptp(x4[:, z][(slice(None), *box)]) < featureless:
                continue  # featureless, predicted background, and sure of it: nothing to paint
            cy, cx = (box[0].start + box[0].stop - 1) // 2, (box[1].start + box[1].stop - 1) // 2
            d = float(distance[z, cy, cx])
            far = min(1.0, d / far_px)
            # A region just painted keeps half its uncertainty's weight: the next suggestion
            # moves on instead of sending the annotator back where the model is still unsure.
            score = mean_u * (1.0 - PAINTED_DISCOUNT * (1.0 - far)) + distance_weight * far
            candidates.append((score, z, (box[0].start, box[1].start, box[0].stop, box[1].stop), mean_u, d, int(cls)))
    candidates.sort(key=lambda c: (-c[0], c[1], c[2]))
    chosen: list[tuple] = []
    for c in candidates:  # best first; no two regions overlap; at most per_slice per slice
        same = [o for o in chosen if o[1] == c[1]]
        if (volume and len(same) >= per_slice) or any(_overlaps(c[2], o[2]) for o in same):
            continue
        chosen.append(c)
        if len(chosen) == n:
            break
    return [
        Suggestion(rank + 1, z if volume else None, box, round(score, 4), round(mean_u, 4), d, cls)
        for rank, (score, z, box, mean_u, d, cls) in enumerate(chosen)
    ]


def _windows(shape: tuple[int, int], region: int) -> list[tuple[int, int]]:
    """Top-left corners of ``region``-square windows at half-region steps, the last ones
    flush with the far edges, so that an object is whole in at least one window."""
    step = max(1, region // 2)

    def starts(n: int) -> list[int]:
        last = max(0, n - region)
        return sorted(set(range(0, last + 1, step)) | {last})

    return [(y, x) for y in starts(shape[0]) for x in starts(shape[1])]


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _without_signal_free(probs: np.ndarray, flipped: np.ndarray | None, x: np.ndarray) -> list[int]:
    """Signal-free planes (``engine.signal``: near-constant or noise-only, background by
    construction) become sure background in ``probs``/``flipped`` (in place); their indices."""
    from medloop.app.engine.signal import signal_floor, signal_free

    floor = signal_floor(x)
    planes = _planes(np.asarray(x, np.float32))
    free = signal_free(torch.from_numpy(np.stack(planes)), floor).numpy()
    idx = [int(i) for i in np.flatnonzero(free)]
    for i in idx:
        view = probs if x.ndim == 4 else probs[:, None]
        view[:, i] = 0.0
        view[0, i] = 1.0
        if flipped is not None:
            (flipped if x.ndim == 4 else flipped[:, None])[:, i] = 0
    return idx


def suggest(
    network: torch.nn.Module, x: np.ndarray, strokes: np.ndarray, n: int = 5, teacher: Any = None,
    region: int = DEFAULT_REGION, should_stop: Callable[[], bool] | None = None,
) -> tuple[list[Suggestion], np.ndarray, np.ndarray]:
    """``(suggestions, uncertainty map, class map)`` for ``network`` on the prepared input
    ``x`` ((C, h, w) or (C, z, h, w)) painted with ``strokes``. ``teacher``: a fitted
    :class:`~medloop.plugins.correction.pixel_teacher.PixelTeacher` (None: entropy and flips only)."""
    probs, flipped = predict_probabilities(network, x)
    free = _without_signal_free(probs, flipped, x)
    if should_stop is not None and should_stop():
        from medloop.app.engine.jobs import JobCancelled

        raise JobCancelled()
    teacher_probs = None if teacher is None else teacher.probabilities(x)
    labels = probs.argmax(0)
    u = uncertainty_map(probs, flipped, teacher_probs)
    for i in free:
        (u if x.ndim == 4 else u[None])[i] = 0.0
    return rank_regions(u, strokes, labels, x, n=n, region=region, skip=free), u, labels


def suggest_with_teacher(
    network: torch.nn.Module, x: np.ndarray, strokes: np.ndarray, num_classes: int, n: int = 5,
    should_stop: Callable[[], bool] | None = None, seed: int = 0,
) -> tuple[list[Suggestion], np.ndarray, np.ndarray]:
    """:func:`suggest` with a pixel teacher fitted on the strokes: on the image, or for a volume
    on each painted slice ``(x[:, z], strokes[z])``. Without two painted classes there is no
    teacher (a one-class forest is sure of that class everywhere)."""
    from medloop.plugins.correction.pixel_teacher import fit_pixel_teacher

    s = np.asarray(strokes)
    teacher = None
    if len(np.unique(s[s > 0])) >= 2:
        pairs = [(x, s)] if x.ndim == 3 else [(x[:, z], s[z]) for z in range(s.shape[0]) if s[z].any()]
        teacher = fit_pixel_teacher(pairs, num_classes, seed=seed)
    return suggest(network, x, s, n=n, teacher=teacher, should_stop=should_stop)


def write_suggestions(suggestions: Sequence[Suggestion], path: Path) -> Path:
    """Write ``suggestions`` as ``.csv`` (one row each) or ``.json`` (a list), atomically."""
    from medloop.app.io.atomic import atomic_write_text

    path = Path(path)
    rows = [{**asdict(s), "box": list(s.box)} for s in suggestions]
    if path.suffix.lower() == ".json":
        atomic_write_text(path, json.dumps(rows, indent=1))
        return path
    import io

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["rank", "slice", "y0", "x0", "y1", "x1", "score", "uncertainty", "distance_px", "predicted_class"])
    for s in suggestions:
        writer.writerow([s.rank, "" if s.slice is None else s.slice, *s.box, s.score, s.uncertainty, s.distance_px, s.predicted_class])
    atomic_write_text(path, buf.getvalue())
    return path


# -- how a suggestion is shown (the panel's list and rectangles) --------------------------------
def row_text(s: Suggestion, classes: dict[int, str]) -> str:
    """``"1. slice 34 · rows 24–48, cols 48–72 · unsure 0.62 · predicted grey matter"`` (no slice
    for a 2-D image)."""
    y0, x0, y1, x1 = s.box
    where = f"rows {y0}–{y1}, cols {x0}–{x1}"
    if s.slice is not None:
        where = f"slice {s.slice} · {where}"
    name = classes.get(s.predicted_class, f"class {s.predicted_class}")
    return f"{s.rank}. {where} · unsure {s.uncertainty:.2f} · predicted {name}"


def suggestion_corners(s: Suggestion) -> list[tuple[float, ...]]:
    """The four data-coordinate corners of a suggestion's box (pixel edges: centres are integers)."""
    y0, x0, y1, x1 = s.box
    plane = [(y0 - 0.5, x0 - 0.5), (y0 - 0.5, x1 - 0.5), (y1 - 0.5, x1 - 0.5), (y1 - 0.5, x0 - 0.5)]
    return [c if s.slice is None else (float(s.slice), *c) for c in plane]


def suggestion_rectangle(s: Suggestion) -> np.ndarray:
    return np.array(suggestion_corners(s), float)
