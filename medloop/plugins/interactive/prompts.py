"""Prompts in physical millimetres (LPS), so a session replays on a resampled or reoriented copy.

A prompt never stores voxel indices: :func:`to_index` maps it onto whatever grid the session
runs on. Points and scribbles are positive (part of the object) or negative (not part of it);
a box is a rectangle drawn on one slice of a volume (``plane`` = the index axis, in array
order, that is constant over it), or a 2-D rectangle on a 2-D image (``plane`` None).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medloop.app.errors import MedloopError
from medloop.app.io.image import MedImage


class PromptError(MedloopError):
    """A prompt that cannot be used on this image (outside it, zero-size box, wrong grid...)."""


@dataclass(frozen=True)
class Point:
    """A click at ``xyz_mm`` (physical x, y[, z]); positive = inside the object."""

    xyz_mm: tuple[float, ...]
    positive: bool = True

    @property
    def kind(self) -> str:
        return "point"


@dataclass(frozen=True)
class Box:
    """A rectangle with opposite corners ``corners_mm`` (physical); on a volume it lies on one
    slice and ``plane`` is the array axis normal to it (0 = axial for a (z, y, x) volume)."""

    corners_mm: tuple[tuple[float, ...], tuple[float, ...]]
    plane: int | None = None
    positive: bool = True

    @property
    def kind(self) -> str:
        return "box"


@dataclass(frozen=True)
class Scribble:
    """A freehand stroke: the physical centres of the voxels it covers; positive or negative."""

    points_mm: tuple[tuple[float, ...], ...]
    positive: bool = True

    @property
    def kind(self) -> str:
        return "scribble"


Prompt = Point | Box | Scribble


def physical_to_index(image: MedImage, xyz_mm: np.ndarray) -> np.ndarray:
    """Continuous array indices (array order: z, y, x) of physical points ``(N, ndim)`` (x, y, z)."""
    xyz = np.atleast_2d(np.asarray(xyz_mm, dtype=float))
    inverse = np.linalg.inv(image.direction * np.asarray(image.spacing)[None, :])
    ijk = (inverse @ (xyz - np.asarray(image.origin)).T).T
    return ijk[:, ::-1]


def index_to_physical(image: MedImage, index: np.ndarray) -> np.ndarray:
    """Physical points (x, y[, z]) of array indices ``(N, ndim)`` in array order."""
    idx = np.atleast_2d(np.asarray(index, dtype=float))
    return image.index_to_physical(idx[:, ::-1])


def point_index(image: MedImage, point: Point) -> tuple[int, ...]:
    """The voxel a click falls in (array order); :class:`PromptError` when outside the image."""
    if len(point.xyz_mm) != image.ndim:
        raise PromptError(
            f"a point needs {image.ndim} coordinates (x,y{',z' if image.ndim == 3 else ''} in mm) for this "
            f"{image.ndim}-D image, got {len(point.xyz_mm)}"
        )
    idx = np.rint(physical_to_index(image, np.asarray(point.xyz_mm))[0]).astype(int)
    shape = image.shape[: image.ndim]
    if np.any(idx < 0) or np.any(idx >= np.asarray(shape)):
        mm = ", ".join(f"{v:g}" for v in point.xyz_mm)
        raise PromptError(f"the point ({mm}) mm lies outside the image (array index {tuple(int(i) for i in idx)}, shape {shape}); click inside it")
    return tuple(int(i) for i in idx)


def box_index(image: MedImage, box: Box) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive-exclusive array-index bounds ``(lo, hi)`` of a box, clipped to the image.

    On a volume the ``plane`` axis spans the one slice the box lies on. Raises
    :class:`PromptError` for a box of zero size or one wholly outside the image."""
    shape = np.asarray(image.shape[: image.ndim])
    corners = physical_to_index(image, np.asarray(box.corners_mm, dtype=float))
    lo = np.floor(corners.min(axis=0) + 0.5).astype(int)
    hi = np.floor(corners.max(axis=0) + 0.5).astype(int) + 1
    if image.ndim == 3:
        if box.plane is None:
            raise PromptError("a box on a volume needs the slice it lies on (plane = the axis normal to it)")
        centre = int(np.rint(corners[:, box.plane].mean()))
        lo[box.plane], hi[box.plane] = centre, centre + 1
    in_plane = [a for a in range(image.ndim) if a != box.plane]
    if any(hi[a] - lo[a] < 2 for a in in_plane):
        raise PromptError("the box has zero size (it needs at least 2 voxels on each side); drag a rectangle around the object")
    lo, hi = np.maximum(lo, 0), np.minimum(hi, shape)
    if np.any(hi <= lo):
        raise PromptError("the box lies outside the image; draw it over the object")
    return lo, hi


def scribble_index(image: MedImage, scribble: Scribble) -> np.ndarray:
    """The voxels (array order, ``(N, ndim)`` int) a scribble covers inside the image."""
    if not scribble.points_mm:
        return np.zeros((0, image.ndim), dtype=int)
    idx = np.rint(physical_to_index(image, np.asarray(scribble.points_mm, dtype=float))).astype(int)
    inside = np.all((idx >= 0) & (idx < np.asarray(image.shape[: image.ndim])), axis=1)
    return np.unique(idx[inside], axis=0)
