"""Mask correction tools on label arrays (2-D and 3-D), Qt-free.

Every function takes an integer label array and the ``label`` value to edit, returns a **new**
array of the same shape and dtype, and never modifies its input. Common rules:

* **Other labels are never overwritten.** Operations that grow ``label`` (hole filling,
  dilation, the closing half of smoothing, slice interpolation) paint only over voxels that are
  0 (unlabeled) or ``background``. Operations that shrink it (erosion, the opening half of
  smoothing) give the removed voxels ``background``. ``background`` defaults to 0; pass
  ``background=1`` for the binary paint convention (1 = background, 2 = foreground).
* **Radii and spacing.** ``radius`` is in voxels unless ``spacing`` is given, then in the
  physical units of ``spacing``. ``spacing`` is in MedImage order ``(x, y[, z])`` — the reverse of
  the array axes — so pass ``image.spacing``. The structuring element is the ellipsoid
  ``{d : |d * spacing| <= radius}`` (for unit spacing: radius 1 is the 4-/6-neighbour cross,
  radius 1.5 the 3x3(x3) square). Morphology is computed exactly with Euclidean distance
  transforms, so large radii stay cheap.
* **Image border.** Voxels outside the array count as neither inside nor outside: an object
  touching the border is not eroded from the border side, and holes open to the border are not
  holes.
* **Connectivity** of components is 1 (faces: 4-/6-neighbours) unless ``connectivity`` says
  otherwise (up to ``ndim``: 8-/26-neighbours).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from medloop.app.errors import ImageMismatchError, MedloopError

_EPS = 1e-9


class EditError(MedloopError, ValueError):
    """A correction tool cannot be applied to these labels with these settings."""


# --------------------------------------------------------------------------------------------
# public tools


def fill_holes(
    labels: np.ndarray, label: int, *, background: int = 0, axis: int | None = None
) -> np.ndarray:
    """Fill the holes of ``label``: regions not of ``label`` that it encloses completely (not
    connected to the array border through 4-/6-neighbours). Hole voxels that are 0 or
    ``background`` become ``label``; other labels inside a hole are kept. ``axis=None`` fills
    holes in the full 2-D/3-D sense; ``axis=k`` fills each slice along axis ``k`` separately (a
    tube open at both ends then counts as holey on every slice)."""
    lab = _check_labels(labels)
    m = lab == label
    if axis is None:
        filled = ndimage.binary_fill_holes(m)
    else:
        ax = _check_axis(axis, lab.ndim)
        filled = np.moveaxis(m, ax, 0).copy()
        for k in range(filled.shape[0]):
            filled[k] = ndimage.binary_fill_holes(filled[k])
        filled = np.moveaxis(filled, 0, ax)
    return _paint(lab, label, filled & ~m, background)


def remove_small_islands(
    labels: np.ndarray,
    label: int,
    min_size: float,
    *,
    spacing: Sequence[float] | None = None,
    connectivity: int = 1,
    fill: int | None = None,
) -> np.ndarray:
    """Remove connected components of ``label`` smaller than ``min_size`` voxels (strictly
    smaller: an island of exactly ``min_size`` stays). With ``spacing``, ``min_size`` is a
    physical area/volume (voxel size = product of the spacing).

    A removed island takes its **surrounding label**: the most common value among the voxels
    touching it (same connectivity; ties go to the smaller value; 0 if nothing touches it, i.e.
    it fills the array). Pass ``fill`` to give removed islands a fixed value instead.
    """
    lab = _check_labels(labels)
    comp, n = _components(lab == label, connectivity)
    if n == 0:
        return lab.copy()
    sizes = np.bincount(comp.ravel(), minlength=n + 1)[1:].astype(float)
    if spacing is not None:
        sizes = sizes * float(np.prod(_sampling(spacing, lab.ndim)))
    small = np.flatnonzero(sizes < float(min_size)) + 1
    return _reassign(lab, comp, small, connectivity, fill)


def keep_largest_component(
    labels: np.ndarray,
    label: int,
    *,
    connectivity: int = 1,
    fill: int | None = None,
) -> np.ndarray:
    """Keep only the largest connected component of ``label`` (ties: the one met first in
    C order). The other components take their surrounding label, as in
    :func:`remove_small_islands`, or ``fill`` when given."""
    lab = _check_labels(labels)
    comp, n = _components(lab == label, connectivity)
    if n <= 1:
        return lab.copy()
    sizes = np.bincount(comp.ravel(), minlength=n + 1)[1:]
    others = np.array([k for k in range(1, n + 1) if k != int(np.argmax(sizes)) + 1])
    return _reassign(lab, comp, others, connectivity, fill)


def dilate(
    labels: np.ndarray,
    label: int,
    radius: float,
    *,
    spacing: Sequence[float] | None = None,
    background: int = 0,
) -> np.ndarray:
    """Grow ``label`` by ``radius`` (ball/disk structuring element, see the module notes). Only
    0 and ``background`` voxels are painted; other labels are never overwritten."""
    lab = _check_labels(labels)
    sampling = _sampling(spacing, lab.ndim)
    m = lab == label
    return _paint(lab, label, _dilate(m, _radius(radius), sampling) & ~m, background)


def erode(
    labels: np.ndarray,
    label: int,
    radius: float,
    *,
    spacing: Sequence[float] | None = None,
    background: int = 0,
) -> np.ndarray:
    """Shrink ``label`` by ``radius`` (ball/disk); removed voxels become ``background``.
    The array border does not erode (see the module notes)."""
    lab = _check_labels(labels)
    sampling = _sampling(spacing, lab.ndim)
    m = lab == label
    out = lab.copy()
    out[m & ~_erode(m, _radius(radius), sampling)] = background
    return out


def smooth(
    labels: np.ndarray,
    label: int,
    radius: float,
    *,
    spacing: Sequence[float] | None = None,
    background: int = 0,
) -> np.ndarray:
    """Morphological opening then closing of ``label`` with a ball/disk of ``radius``: removes
    specks and spurs thinner than the ball, then fills notches and holes narrower than it.
    Voxels removed become ``background``; voxels added are painted only over 0 and
    ``background`` (and over voxels that were ``label`` before the opening)."""
    lab = _check_labels(labels)
    sampling = _sampling(spacing, lab.ndim)
    r = _radius(radius)
    m = lab == label
    opened = _dilate(_erode(m, r, sampling), r, sampling)
    result = _erode(_dilate(opened, r, sampling), r, sampling)
    out = lab.copy()
    out[m & ~result] = background
    paintable = m | (lab == 0) | (lab == background)
    out[result & ~m & paintable] = label
    return out


def interpolate_slices(
    labels: np.ndarray,
    label: int,
    axis: int = 0,
    *,
    spacing: Sequence[float] | None = None,
    background: int = 0,
) -> np.ndarray:
    """Fill the slices between annotated slices of a 3-D label array (the tool ITK-SNAP calls
    "interpolate labels" and 3D Slicer "fill between slices") by shape-based interpolation of
    signed distance maps (Raya & Udupa 1990).

    A slice along ``axis`` is annotated when it contains ``label``. For every slice strictly
    between two consecutive annotated slices ``a < k < b`` the in-plane signed distance maps of
    slices ``a`` and ``b`` (Euclidean, negative inside, zero half-way between the voxels inside
    and out, physical when ``spacing`` is given) are mixed linearly with weight
    ``(k - a) / (b - a)``; the voxels where the mix is <= 0 become ``label`` where they are 0 or
    ``background``. Slices before the first and after the last annotated slice are left alone.

    Limitation: a shape that does not overlap its counterpart on the other slice can thin out or
    vanish midway (ITK-SNAP and Slicer use ITK's morphological contour interpolation, which
    aligns such shapes first); annotate an extra slice there. Raises :class:`EditError` when
    fewer than two slices hold ``label``."""
    lab = _check_labels(labels)
    if lab.ndim != 3:
        raise EditError(f"Slice interpolation needs a 3-D label array, got shape {lab.shape}.")
    ax = _check_axis(axis, 3)
    sampling = _sampling(spacing, 3)
    in_plane = tuple(s for i, s in enumerate(sampling) if i != ax)
    m = np.moveaxis(lab == label, ax, 0)
    annotated = np.flatnonzero(m.reshape(m.shape[0], -1).any(axis=1))
    if annotated.size < 2:
        raise EditError(
            f"Slice interpolation needs label {label} on at least two slices along axis {ax}; "
            f"found {annotated.size}."
        )
    new = np.zeros_like(m)
    for a, b in itertools.pairwise(annotated):
        if b - a < 2:
            continue
        da, db = _signed_distance(m[a], in_plane), _signed_distance(m[b], in_plane)
        for k in range(a + 1, b):
            t = (k - a) / (b - a)
            new[k] = (1.0 - t) * da + t * db <= 0.0
    return _paint(lab, label, np.moveaxis(new, 0, ax), background)


def copy_prediction(
    prediction: np.ndarray, annotation: np.ndarray, overwrite: bool = False
) -> np.ndarray:
    """Copy a prediction into an annotation. Without ``overwrite`` the annotation wins wherever
    it is already painted (non-zero) and the prediction fills only its 0 voxels; with
    ``overwrite`` every non-zero prediction voxel replaces the annotation (prediction 0 voxels
    keep the annotation). Returns an array of the annotation's dtype."""
    ann = _check_labels(annotation, "annotation")
    pred = _check_labels(prediction, "prediction")
    if pred.shape != ann.shape:
        raise ImageMismatchError(
            f"The prediction's shape {pred.shape} differs from the annotation's {ann.shape}; "
            "segment the annotated image again before copying."
        )
    if pred.size:
        info = np.iinfo(ann.dtype)
        if pred.min() < info.min or pred.max() > info.max:
            raise EditError(
                f"Prediction values {pred.min()}..{pred.max()} do not fit the annotation's "
                f"{ann.dtype} labels."
            )
    out = ann.copy()
    where = pred != 0 if overwrite else (ann == 0) & (pred != 0)
    out[where] = pred[where].astype(ann.dtype)
    return out


# --------------------------------------------------------------------------------------------
# helpers


def _check_labels(labels: Any, what: str = "labels") -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim not in (2, 3):
        raise EditError(f"The {what} must be a 2-D or 3-D array, got shape {lab.shape}.")
    if not np.issubdtype(lab.dtype, np.integer):
        raise EditError(f"The {what} must hold integer labels, got {lab.dtype}.")
    return lab


def _check_axis(axis: int, ndim: int) -> int:
    if not -ndim <= int(axis) < ndim:
        raise EditError(f"Axis {axis} does not exist in a {ndim}-D label array.")
    return int(axis) % ndim


def _sampling(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    """Array-axis-order voxel size from MedImage-order spacing (unit when None)."""
    if spacing is None:
        return (1.0,) * ndim
    s = tuple(float(v) for v in spacing)
    if len(s) != ndim or not all(np.isfinite(v) and v > 0 for v in s):
        raise EditError(f"Spacing {tuple(spacing)} needs {ndim} positive values (x, y[, z]).")
    return s[::-1]


def _radius(radius: float) -> float:
    r = float(radius)
    if not np.isfinite(r) or r < 0:
        raise EditError(f"The radius must be zero or positive, got {radius}.")
    return r


def _dilate(m: np.ndarray, r: float, sampling: tuple[float, ...]) -> np.ndarray:
    """Voxels within distance ``r`` of ``m`` = dilation by the ball {d : |d*s| <= r}."""
    if r == 0 or not m.any():
        return m.copy()
    if m.all():
        return m.copy()
    return ndimage.distance_transform_edt(~m, sampling=sampling) <= r + _EPS


def _erode(m: np.ndarray, r: float, sampling: tuple[float, ...]) -> np.ndarray:
    """Voxels of ``m`` farther than ``r`` from every non-``m`` voxel of the array = erosion by
    the same ball, with the outside of the array counting as ``m``."""
    if r == 0 or not m.any() or m.all():
        return m.copy()
    return ndimage.distance_transform_edt(m, sampling=sampling) > r + _EPS


def _signed_distance(m: np.ndarray, sampling: tuple[float, ...]) -> np.ndarray:
    """Signed distance to the mask's boundary, put half a voxel between the last voxel inside
    and the first outside: ``edt - h`` outside, ``-(edt - h)`` inside, ``h`` = half the smallest
    voxel size (|value| >= h; negative inside)."""
    if m.all():
        return np.full(m.shape, -float(sum(m.shape)) * max(sampling))
    if not m.any():
        return np.full(m.shape, float(sum(m.shape)) * max(sampling))
    half = 0.5 * min(sampling)
    outside = ndimage.distance_transform_edt(~m, sampling=sampling) - half
    inside = ndimage.distance_transform_edt(m, sampling=sampling) - half
    return np.where(m, -inside, outside)


def _paint(lab: np.ndarray, label: int, add: np.ndarray, background: int) -> np.ndarray:
    out = lab.copy()
    out[add & ((lab == 0) | (lab == background))] = label
    return out


def _components(m: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    if not 1 <= int(connectivity) <= m.ndim:
        raise EditError(
            f"Connectivity must be 1..{m.ndim} for a {m.ndim}-D array, got {connectivity}."
        )
    structure = ndimage.generate_binary_structure(m.ndim, int(connectivity))
    comp, n = ndimage.label(m, structure=structure)
    return comp, int(n)


def _reassign(
    lab: np.ndarray, comp: np.ndarray, which: np.ndarray, connectivity: int, fill: int | None
) -> np.ndarray:
    out = lab.copy()
    if len(which) == 0:
        return out
    if fill is not None:
        out[np.isin(comp, which)] = fill
        return out
    structure = ndimage.generate_binary_structure(lab.ndim, int(connectivity))
    slices = ndimage.find_objects(comp)
    for k in which:
        sl = slices[int(k) - 1]
        # grow the bounding box by one voxel to see the neighbours
        big = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(sl, lab.shape))
        island = comp[big] == k
        ring = ndimage.binary_dilation(island, structure=structure) & ~island
        values = lab[big][ring]
        if values.size == 0:
            value = 0
        else:
            uniq, counts = np.unique(values, return_counts=True)
            value = uniq[np.argmax(counts)]  # np.unique sorts, argmax takes the first max
        out[big][island] = value
    return out
