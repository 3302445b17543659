"""Anomaly pseudo-labels as the Correction panel's starting annotation (Qt-free).

The annotator corrects the pseudo-labels, then fine-tunes a model on them. The annotation follows
Correction's stroke convention (0 unannotated, class k stored as k + 1): the pseudo-lesion is
class 1 (stored 2) and a ring of background around it, inside the brain, is class 0 (stored 1),
so a two-class (background / lesion) model learns both sides of every edge and nothing about the
pixels nobody has looked at. It is saved through the shared annotation store under the name
Correction uses (:func:`~medloop.app.io.autosave.annotation_layer_name`); no plugin imports the other.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from medloop.plugins.lesions.checks import LesionInputError

#: Stored values of the annotation (Correction's class k is stored as k + 1).
UNANNOTATED, BACKGROUND, LESION = 0, 1, 2


def pseudo_label_annotation(labels: np.ndarray, ring_px: int = 3, within: np.ndarray | None = None) -> np.ndarray:
    """uint8 annotation: 2 on the pseudo-lesions, 1 on a ``ring_px``-wide background ring around
    them (inside ``within`` if given; per slice for a stack), 0 elsewhere."""
    lesion = np.asarray(labels) != 0
    if not lesion.any():
        raise LesionInputError("the pseudo-labels are empty at this t; lower t or compute the map on an image with lesions")
    structure = ndi.generate_binary_structure(lesion.ndim, 1)
    if lesion.ndim == 3:
        structure[0] = structure[2] = False  # rings within each slice, not across slices
    ring = ndi.binary_dilation(lesion, structure, iterations=ring_px) & ~lesion
    if within is not None:
        ring &= np.asarray(within) != 0
    out = np.zeros(lesion.shape, np.uint8)
    out[ring] = BACKGROUND
    out[lesion] = LESION
    return out


def save_correction_annotation(image, image_name: str, annotation: np.ndarray) -> Path:
    """Autosave ``annotation`` as ``image_name``'s Correction stroke annotation (beside the image,
    or in the user's data folder); Correction's "New / restore annotation layer" restores it."""
    from medloop.app.io.autosave import AnnotationStore, annotation_layer_name

    return AnnotationStore.for_image(image).save(image, annotation_layer_name(image_name), annotation)
