"""Boxes as weak labels, refined round by round (Gupta et al., MIDL 2019; spec section 2).

Qt-free. Conventions:

* A **box** is one row ``(y0, x0, y1, x1)`` of an ``(N, 4)`` integer array: half-open pixel
  index ranges, so the box covers ``labels[y0:y1, x0:x1]`` (exactly what a
  ``scipy.ndimage.find_objects`` slice pair covers). Functions taking boxes also accept a list of
  such slice pairs (``None`` entries, i.e. absent labels, are skipped), as
  ``weaklabels.boxes`` returns. Boxes are 2-D; 3-D stacks go slice by slice.
* **Paint convention** of every label map returned here (spec section 0, binary task):
  1 = background, 2 = foreground. 0 ("unlabeled") is not produced by the box cues, because boxes
  are exhaustive: everything outside every box is background. Only :func:`apply_cues2` can
  produce 0, when asked to leave dropped objects unlabeled.
* **napari rectangles** (``Shapes`` data, one ``(4, 2)`` array of ``(row, col)`` vertices each)
  are turned into boxes by the pixel-centre rule: napari puts the centre of pixel ``i`` at
  coordinate ``i``, and a box holds every pixel whose centre lies inside the rectangle or on its
  edge. :func:`boxes_to_shapes` draws boxes on pixel edges, so the round trip is exact.
* Predictions and Stage-1 segmentations are **foreground masks**: ``bool`` arrays or arrays of
  0/1. For a label map pass ``foreground=<value>`` (for instance ``foreground=2`` for a paint
  layer).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medloop.app.errors import MedloopError, MedloopWarning

BACKGROUND = 1
FOREGROUND = 2
#: Cues 1 resets an object to its whole box when the prediction covers less than this share.
MIN_BOX_COVERAGE = 0.5
#: Cues 2 percentiles of object area and eccentricity (the paper's 95 % interval).
CUES2_PERCENTILES = (2.5, 97.5)
#: Stop refining once fewer than this share of pseudo-label pixels changed in a round (ours).
AUTO_STOP_FRACTION = 0.01

_TOL = 1e-6


class BoxError(MedloopError, ValueError):
    """Boxes (a napari Shapes layer or a box array) that cannot serve as weak labels."""


# --------------------------------------------------------------------------------------------
# Boxes from masks and from napari shapes


def boxes_from_instances(instances: np.ndarray) -> np.ndarray:
    """The tight axis-aligned box of every instance of a 2-D instance map (0 = background).

    Rows are in increasing label order; labels that do not occur are skipped. Row ``k`` equals
    the ``scipy.ndimage.find_objects`` slices of the ``k``-th present label.
    """
    from scipy import ndimage

    inst = np.asarray(instances)
    if inst.ndim != 2 or not np.issubdtype(inst.dtype, np.integer):
        raise ValueError(f"instances must be a 2-D integer array, got {inst.dtype} {inst.shape}")
    if inst.size == 0 or inst.max() <= 0:
        return np.zeros((0, 4), dtype=np.int64)
    rows = [
        (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop)
        for sl in ndimage.find_objects(np.where(inst > 0, inst, 0))
        if sl is not None
    ]
    return np.asarray(rows, dtype=np.int64).reshape(-1, 4)


def boxes_to_shapes(boxes: Any) -> list[np.ndarray]:
    """napari ``Shapes`` rectangle data for boxes: vertices on the pixel edges, so that
    :func:`boxes_from_shapes` gives the same boxes back."""
    b = _as_box_array(boxes)
    out = []
    for y0, x0, y1, x1 in b.astype(float) - 0.5:
        out.append(np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], dtype=float))
    return out


def boxes_from_shapes(
    shapes_data: Sequence[Any],
    shape_types: str | Sequence[str],
    image_shape: Sequence[int],
    *,
    layer_name: str | None = None,
) -> np.ndarray:
    """Boxes ``(N, 4)`` from a napari Shapes layer's ``data`` and ``shape_type``.

    Indices in messages are the layer's 0-based shape indices. Raises :class:`BoxError` (all
    problems in one message) for an empty layer, shapes that are not rectangles (any other type,
    or vertex arrays that are not finite ``(4, 2)``), zero-area boxes (no pixel centre inside)
    and boxes lying entirely outside the image. Warns (:class:`MedloopWarning`) and carries on for
    rotated rectangles (replaced by their axis-aligned hull) and for boxes partly outside the
    image (clipped to it). Overlapping boxes are allowed.
    """
    shape = tuple(int(s) for s in image_shape)
    if len(shape) != 2:
        raise ValueError(f"boxes are 2-D; image_shape {shape} has {len(shape)} axes")
    prefix = f"Box layer {layer_name!r}" if layer_name else "Box layer"
    data = list(shapes_data)
    if not data:
        raise BoxError(f"{prefix} is empty: draw a rectangle around every object.")
    types = [shape_types] * len(data) if isinstance(shape_types, str) else list(shape_types)
    if len(types) != len(data):
        raise ValueError(f"{len(data)} shapes but {len(types)} shape types")
    rows, found = _scan_shapes(data, types, shape)
    problems = _shape_problems(found, shape)
    if problems:
        raise BoxError(f"{prefix}: " + "; ".join(problems) + ".")
    for message in _shape_adjustments(found, shape):
        warnings.warn(f"{prefix}: {message}", MedloopWarning, stacklevel=2)
    return np.asarray(rows, dtype=np.int64).reshape(-1, 4)


@dataclass
class _ShapeFindings:
    """Layer indices of the shapes :func:`boxes_from_shapes` rejects or adjusts."""

    not_rect: list[tuple[int, str]] = field(default_factory=list)  # (index, what it is instead)
    zero: list[int] = field(default_factory=list)
    outside: list[int] = field(default_factory=list)
    rotated: list[int] = field(default_factory=list)
    clipped: list[int] = field(default_factory=list)


def _scan_shapes(
    data: list[Any], types: list[str], shape: tuple[int, int]
) -> tuple[list[tuple[int, int, int, int]], _ShapeFindings]:
    """The (clipped) boxes of the usable rectangles, and what was wrong with the others."""
    h, w = shape
    found = _ShapeFindings()
    rows: list[tuple[int, int, int, int]] = []
    for i, (verts, kind) in enumerate(zip(data, types)):
        v = np.asarray(verts, dtype=float)
        if kind != "rectangle" or v.shape != (4, 2) or not np.isfinite(v).all():
            found.not_rect.append((i, str(kind) if kind != "rectangle" else "malformed vertices"))
            continue
        edges = np.roll(v, -1, axis=0) - v
        if not np.all(np.min(np.abs(edges), axis=1) <= _TOL * max(1.0, float(np.abs(v).max()))):
            found.rotated.append(i)
        box = _pixel_centre_box(v)
        if box is None:
            found.zero.append(i)
            continue
        y0, x0, y1, x1 = box
        cy0, cx0, cy1, cx1 = max(y0, 0), max(x0, 0), min(y1, h), min(x1, w)
        if cy1 <= cy0 or cx1 <= cx0:
            found.outside.append(i)
            continue
        if (cy0, cx0, cy1, cx1) != box:
            found.clipped.append(i)
        rows.append((cy0, cx0, cy1, cx1))
    return rows, found


def _pixel_centre_box(v: np.ndarray) -> tuple[int, int, int, int] | None:
    """The box of the pixels whose centres lie inside the hull of the ``(4, 2)`` vertices ``v``
    or on its edge; None when there is none (zero area)."""
    (ymin, xmin), (ymax, xmax) = v.min(axis=0), v.max(axis=0)
    y0, x0 = int(np.ceil(ymin - _TOL)), int(np.ceil(xmin - _TOL))
    y1, x1 = int(np.floor(ymax + _TOL)) + 1, int(np.floor(xmax + _TOL)) + 1
    if ymax - ymin <= _TOL or xmax - xmin <= _TOL or y1 <= y0 or x1 <= x0:
        return None
    return y0, x0, y1, x1


def _shape_problems(found: _ShapeFindings, shape: tuple[int, int]) -> list[str]:
    """One phrase per kind of unusable shape (the parts of the :class:`BoxError` message)."""
    h, w = shape
    problems = []
    if found.not_rect:
        idx = _join([i for i, _ in found.not_rect])
        kinds = ", ".join(dict.fromkeys(k for _, k in found.not_rect))
        problems.append(
            f"shape {idx} is not a rectangle ({kinds}), redraw it with the rectangle tool"
            if len(found.not_rect) == 1
            else f"shapes {idx} are not rectangles ({kinds}), redraw them with the rectangle tool"
        )
    if found.zero:
        problems.append(
            f"box {_join(found.zero)} has zero area (no pixel centre inside), drag it around its object"
            if len(found.zero) == 1
            else f"boxes {_join(found.zero)} have zero area (no pixel centre inside), "
            "drag them around their objects"
        )
    if found.outside:
        problems.append(
            f"box {_join(found.outside)} lies entirely outside the {h} x {w} image, move or delete it"
            if len(found.outside) == 1
            else f"boxes {_join(found.outside)} lie entirely outside the {h} x {w} image, "
            "move or delete them"
        )
    return problems


def _shape_adjustments(found: _ShapeFindings, shape: tuple[int, int]) -> list[str]:
    """The warnings for rotated and clipped boxes."""
    h, w = shape
    messages = []
    if found.rotated:
        messages.append(
            f"box {_join(found.rotated)} is rotated; using its axis-aligned hull."
            if len(found.rotated) == 1
            else f"boxes {_join(found.rotated)} are rotated; using their axis-aligned hulls."
        )
    if found.clipped:
        messages.append(
            f"box {_join(found.clipped)} extends past the {h} x {w} image and was clipped to it."
            if len(found.clipped) == 1
            else f"boxes {_join(found.clipped)} extend past the {h} x {w} image and were "
            "clipped to it."
        )
    return messages


# --------------------------------------------------------------------------------------------
# Stage 1: round-0 labels and Cues 1


def round0_labels(boxes: Any, shape: Sequence[int]) -> np.ndarray:
    """Round-0 pseudo-labels: the union of the filled boxes is foreground (2), everything else
    background (1). ``uint8``, of ``shape``."""
    shape = _shape2d(shape)
    b = _as_box_array(boxes, shape)
    out = np.full(shape, BACKGROUND, dtype=np.uint8)
    for y0, x0, y1, x1 in b:
        out[y0:y1, x0:x1] = FOREGROUND
    return out


def apply_cues1(
    prediction: np.ndarray,
    boxes: Any,
    *,
    foreground: int | None = None,
    min_coverage: float = MIN_BOX_COVERAGE,
    return_resets: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Cues 1: turn a segmentation of a *training* image into the next round's labels.

    Per box: no predicted foreground in the box -> the whole box is foreground again; predicted
    foreground covering less than ``min_coverage`` (50 %) of the box's pixels -> whole box;
    otherwise the prediction inside the box is kept. Predicted foreground outside every box
    becomes background (boxes are exhaustive). Overlapping boxes are handled box by box and the
    results united. Returns a ``uint8`` paint map (1 background, 2 foreground) and, with
    ``return_resets``, a bool array saying which boxes were reset to the whole box.
    """
    fg = _foreground_mask(prediction, foreground, "prediction")
    if fg.ndim != 2:
        raise ValueError(f"prediction must be 2-D, got shape {fg.shape}")
    b = _as_box_array(boxes, fg.shape)
    out_fg = np.zeros(fg.shape, dtype=bool)
    resets = np.zeros(len(b), dtype=bool)
    for k, (y0, x0, y1, x1) in enumerate(b):
        inside = fg[y0:y1, x0:x1]
        covered = int(inside.sum())
        if covered == 0 or covered < min_coverage * inside.size:
            out_fg[y0:y1, x0:x1] = True
            resets[k] = True
        else:
            out_fg[y0:y1, x0:x1] |= inside
    out = np.where(out_fg, FOREGROUND, BACKGROUND).astype(np.uint8)
    return (out, resets) if return_resets else out


# --------------------------------------------------------------------------------------------
# Stage 2: Cues 2


@dataclass(frozen=True)
class Cues2Bounds:
    """Accepted ranges (inclusive) of object area (pixels) and eccentricity, from Stage 1."""

    area: tuple[float, float]
    eccentricity: tuple[float, float]
    n_objects: int
    percentiles: tuple[float, float] = CUES2_PERCENTILES

    def contains(self, area: float, eccentricity: float) -> bool:
        return bool(
            self.area[0] <= area <= self.area[1]
            and self.eccentricity[0] <= eccentricity <= self.eccentricity[1]
        )


def object_features(
    mask: np.ndarray, *, foreground: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Objects of a 2-D foreground mask (8-connected components): ``(object_map, areas,
    eccentricities)``; object ``k`` (1-based in the map) has ``areas[k-1]`` pixels."""
    from skimage.measure import label, regionprops

    fg = _foreground_mask(mask, foreground, "mask")
    if fg.ndim != 2:
        raise ValueError(f"masks must be 2-D, got shape {fg.shape}")
    objects = label(fg, connectivity=2)
    props = regionprops(objects)
    areas = np.array([p.area for p in props], dtype=float)
    ecc = np.array([p.eccentricity for p in props], dtype=float)
    return objects, areas, ecc


def cues2_bounds(
    stage1_masks: Any,
    *,
    percentiles: tuple[float, float] = CUES2_PERCENTILES,
    foreground: int | None = None,
) -> Cues2Bounds:
    """Cues 2 bounds from the final Stage-1 model's segmentations of the **Stage-1 (boxed)
    training images**: the given percentiles (2.5th, 97.5th; linear interpolation) of the area
    and eccentricity of all their objects. Takes Stage-1 masks only, never the unlabeled
    Stage-2 images. ``stage1_masks``: one 2-D mask, a 3-D stack or a sequence of 2-D masks."""
    areas, eccs = [], []
    for m in _mask_list(stage1_masks):
        _, a, e = object_features(m, foreground=foreground)
        areas.append(a)
        eccs.append(e)
    area = np.concatenate(areas) if areas else np.zeros(0)
    ecc = np.concatenate(eccs) if eccs else np.zeros(0)
    if area.size == 0:
        raise BoxError(
            "The Stage-1 segmentations contain no objects, so Cues 2 has no size or shape "
            "statistics: run more Stage-1 rounds or check the Stage-1 model."
        )
    lo, hi = float(percentiles[0]), float(percentiles[1])
    return Cues2Bounds(
        area=(float(np.percentile(area, lo)), float(np.percentile(area, hi))),
        eccentricity=(float(np.percentile(ecc, lo)), float(np.percentile(ecc, hi))),
        n_objects=int(area.size),
        percentiles=(lo, hi),
    )


def apply_cues2(
    masks: Any,
    bounds: Cues2Bounds,
    *,
    foreground: int | None = None,
    dropped: int = BACKGROUND,
) -> Any:
    """Cues 2: keep only the objects (8-connected) whose area *and* eccentricity lie within
    ``bounds`` (inclusive). Kept objects are foreground (2), the rest background (1); pixels of
    dropped objects get ``dropped`` (1 = background as in the paper; 0 = leave them unlabeled).
    ``masks``: one 2-D mask (returns a 2-D ``uint8`` map), a 3-D stack (returns a stack) or a
    sequence of 2-D masks (returns a list)."""
    def one(m: np.ndarray) -> np.ndarray:
        objects, areas, ecc = object_features(m, foreground=foreground)
        keep = np.array(
            [False] + [bounds.contains(a, e) for a, e in zip(areas, ecc)], dtype=bool
        )
        out = np.full(objects.shape, BACKGROUND, dtype=np.uint8)
        out[(objects > 0) & ~keep[objects]] = dropped
        out[keep[objects]] = FOREGROUND
        return out

    if isinstance(masks, np.ndarray) and masks.ndim == 2:
        return one(masks)
    results = [one(m) for m in _mask_list(masks)]
    if isinstance(masks, np.ndarray):
        return np.stack(results) if results else np.zeros(masks.shape, dtype=np.uint8)
    return results


def changed_fraction(old: Any, new: Any, foreground: int = FOREGROUND) -> float:
    """Share of the pseudo-label foreground that changed between two rounds: pixels whose label
    differs, over the pixels that are ``foreground`` in either round (arrays, or sequences of
    arrays counted together). Relative to the foreground, not to the image, because objects
    are a few per cent of the pixels: per image, 1 % would stop after the first round while
    the object outlines still move. 0.0 when neither round has foreground. Refinement stops
    once this falls below :data:`AUTO_STOP_FRACTION` (1 %)."""
    olds = [np.asarray(old)] if isinstance(old, np.ndarray) else [np.asarray(o) for o in old]
    news = [np.asarray(new)] if isinstance(new, np.ndarray) else [np.asarray(n) for n in new]
    if len(olds) != len(news):
        raise ValueError(f"{len(olds)} old label maps but {len(news)} new ones")
    changed = total = 0
    for o, n in zip(olds, news):
        if o.shape != n.shape:
            raise ValueError(f"label maps differ in shape: {o.shape} vs {n.shape}")
        changed += int(np.count_nonzero(o != n))
        total += int(np.count_nonzero((o == foreground) | (n == foreground)))
    return changed / total if total else 0.0


# --------------------------------------------------------------------------------------------
# helpers


def _join(indices: Sequence[int]) -> str:
    return ", ".join(str(i) for i in indices)


def _shape2d(shape: Sequence[int]) -> tuple[int, int]:
    s = tuple(int(v) for v in shape)
    if len(s) != 2:
        raise ValueError(f"boxes are 2-D; shape {s} has {len(s)} axes")
    return s  # type: ignore[return-value]


def _as_box_array(boxes: Any, shape: Sequence[int] | None = None) -> np.ndarray:
    """Validate an (N, 4) box array; with ``shape``, boxes must lie inside it. A sequence of
    ``find_objects``-style slice pairs (``None`` entries skipped) is accepted too."""
    if isinstance(boxes, (list, tuple)) and any(
        b is None or (isinstance(b, tuple) and b and isinstance(b[0], slice)) for b in boxes
    ):
        boxes = [(sy.start, sx.start, sy.stop, sx.stop) for sy, sx in (b for b in boxes if b)]
    b = np.asarray(boxes)
    if b.size == 0:
        return np.zeros((0, 4), dtype=np.int64)
    if b.ndim != 2 or b.shape[1] != 4:
        raise BoxError(f"Boxes must be an (N, 4) array of (y0, x0, y1, x1), got shape {b.shape}.")
    if not np.issubdtype(b.dtype, np.integer) and (
        not np.all(np.isfinite(b)) or not np.array_equal(b, np.round(b))
    ):
        raise BoxError("Boxes must hold whole pixel indices (y0, x0, y1, x1).")
    b = b.astype(np.int64)
    bad = np.flatnonzero((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1]))
    if bad.size:
        raise BoxError(f"Box rows {_join(bad.tolist())} are empty (need y0 < y1 and x0 < x1).")
    if shape is not None:
        h, w = _shape2d(shape)
        bad = np.flatnonzero((b[:, 0] < 0) | (b[:, 1] < 0) | (b[:, 2] > h) | (b[:, 3] > w))
        if bad.size:
            raise BoxError(f"Box rows {_join(bad.tolist())} do not lie inside the {h} x {w} image.")
    return b


def _foreground_mask(a: Any, foreground: int | None, what: str) -> np.ndarray:
    arr = np.asarray(a)
    if foreground is not None:
        return arr == foreground
    if arr.dtype == bool:
        return arr
    if arr.size and not np.isin(arr, (0, 1)).all():
        raise ValueError(
            f"{what} must be a foreground mask (bool or 0/1); for a label map pass "
            "foreground=<value>, e.g. foreground=2 for a paint layer"
        )
    return arr.astype(bool)


def _mask_list(masks: Any) -> list[np.ndarray]:
    if isinstance(masks, np.ndarray):
        if masks.ndim == 2:
            return [masks]
        if masks.ndim == 3:
            return list(masks)
        raise ValueError(f"masks must be 2-D or a stack of 2-D masks, got shape {masks.shape}")
    return [np.asarray(m) for m in masks]
