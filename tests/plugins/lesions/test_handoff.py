"""Anomaly pseudo-labels become Correction's starting annotation: stroke convention, ring, store."""

import numpy as np
import pytest

from medloop.app.io.autosave import AnnotationStore, annotation_layer_name
from medloop.app.io.image import MedImage
from medloop.plugins.lesions.checks import LesionInputError
from medloop.plugins.lesions.handoff import BACKGROUND, LESION, pseudo_label_annotation, save_correction_annotation


def test_lesion_is_class_one_with_a_background_ring_inside_the_brain():
    labels = np.zeros((20, 20), np.uint8)
    labels[8:12, 8:12] = 1
    brain = np.ones((20, 20), bool)
    brain[:, :9] = False
    out = pseudo_label_annotation(labels, ring_px=2, within=brain)
    assert (out == LESION).sum() == 16 and np.array_equal(out == LESION, labels == 1)
    ring = out == BACKGROUND
    assert ring.sum() > 0 and not (ring & ~brain).any()
    # the ring is exactly the 2-px cross-shaped dilation minus the lesion, within the brain
    from scipy import ndimage as ndi

    expected = ndi.binary_dilation(labels == 1, iterations=2) & (labels == 0) & brain
    assert np.array_equal(ring, expected)
    assert out.dtype == np.uint8 and set(np.unique(out)) == {0, 1, 2}


def test_stacks_get_rings_within_each_slice():
    labels = np.zeros((3, 10, 10), np.uint8)
    labels[1, 4:6, 4:6] = 1
    out = pseudo_label_annotation(labels, ring_px=1)
    assert not out[0].any() and not out[2].any() and (out[1] == BACKGROUND).sum() == 8


def test_empty_pseudo_labels_are_refused():
    with pytest.raises(LesionInputError, match="the pseudo-labels are empty at this t; lower t"):
        pseudo_label_annotation(np.zeros((5, 5)))


def test_saved_where_correction_restores_it(tmp_path):
    image = MedImage.from_array(np.zeros((16, 16), np.float32), spacing=(0.5, 0.5), path=str(tmp_path / "flair.nii.gz"))
    annotation = np.zeros((16, 16), np.uint8)
    annotation[4:8, 4:8] = LESION
    path = save_correction_annotation(image, "flair", annotation)
    assert path.parent == tmp_path / ".medloop"
    restored = AnnotationStore.for_image(image).load(image, annotation_layer_name("flair"))
    assert np.array_equal(restored, annotation)
