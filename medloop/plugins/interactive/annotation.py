"""From committed objects to training data (spec §4.6): the object's class plus a ring around it.

A committed object goes into a Correction annotation (paint convention: 0 unlabelled, class k
painted k + 1) as its class, with a ``ring_mm`` ring around it that says "not this object", so
the strokes fine-tune learns the boundary from both sides. What "not this object" is depends on
the model: for a binary target it is background, but around a white-matter object of a tissue
model it is grey matter. The ring therefore takes the model's own prediction there when one is
given (ring voxels the model calls the object's class stay unlabelled: the ring only says what
the object is not), and background otherwise. Only unlabelled voxels inside the session's ROI
are ever written.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def ring_values(object_mask: np.ndarray, annotation: np.ndarray, class_index: int, spacing: tuple[float, ...],
                ring_mm: float = 2.0, prediction: np.ndarray | None = None, background_index: int = 0,
                offset: int = 1) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """The ring's voxel indices and stored values (``class + offset``) around ``object_mask``.

    ``prediction`` (class indices on the same grid, e.g. the model's current labels) gives the
    ring's classes; without it the ring is ``background_index``. Only voxels of ``annotation``
    equal to 0 (unlabelled) are part of the ring."""
    if ring_mm <= 0 or not object_mask.any():
        empty = tuple(np.zeros(0, np.intp) for _ in range(object_mask.ndim))
        return empty, np.zeros(0, annotation.dtype)
    distance = ndi.distance_transform_edt(~object_mask, sampling=spacing)  # on the session's ROI: O(ROI)
    ring = (distance > 0) & (distance <= ring_mm) & (annotation == 0)
    if prediction is not None:
        ring &= prediction != class_index
        values = prediction[ring].astype(np.int64) + offset
    else:
        values = np.full(int(ring.sum()), background_index + offset, np.int64)
    return np.nonzero(ring), values.astype(annotation.dtype)
