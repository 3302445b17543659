"""Edit metrics on masks whose answers are known exactly."""

from __future__ import annotations

import numpy as np
import pytest

from medloop.app.errors import ImageMismatchError
from medloop.app.io.image import MedImage
from medloop.plugins.review.edit_metrics import edit_metrics, voxel_volume_ml


def _pair():
    pred = np.zeros((20, 20, 20), np.uint8)
    pred[0:10, 0:10, 0:10] = 1  # 1000 voxels
    saved = pred.copy()
    saved[0, 0:10, 0:10] = 0  # remove 100
    saved[15, 0:5, 0:10] = 1  # add 50
    return pred, saved


def test_dice_changed_voxels_and_millilitres_from_spacing():
    pred, saved = _pair()
    image = MedImage.from_array(np.zeros(pred.shape), spacing=(1.0, 1.0, 2.0))  # 2 mm³ voxels
    m = edit_metrics(pred, saved, image)
    assert m.dice == 2 * 900 / (1000 + 950)
    assert m.dice_per_class == {1: m.dice}
    assert (m.voxels_changed, m.voxels_added, m.voxels_removed) == (150, 50, 100)
    assert m.volume_before_ml == pytest.approx(2.0)  # 1000 voxels at 1x1x2 mm = 2 mL
    assert m.volume_after_ml == pytest.approx(1.9)
    assert m.volume_change_ml == pytest.approx(-0.1)
    rec = m.to_record()
    assert rec["dice_per_class"] == {"1": m.dice} and rec["voxels_changed"] == 150


def test_micrometres_convert_and_pixels_or_2d_have_no_volume():
    pred, saved = _pair()
    um = MedImage.from_array(np.zeros(pred.shape), spacing=(1000.0, 1000.0, 2000.0), unit="um")
    assert voxel_volume_ml(um) == pytest.approx(2e-3)
    assert edit_metrics(pred, saved, um).volume_before_ml == pytest.approx(2.0)
    px = MedImage.from_array(np.zeros(pred.shape), unit="px")
    assert edit_metrics(pred, saved, px).volume_change_ml is None
    flat = MedImage.from_array(np.zeros((20, 20)), spacing=(0.5, 0.5))
    m2 = edit_metrics(pred[5], saved[5], flat)
    assert m2.volume_before_ml is None and m2.voxels_changed == 0 and m2.dice == 1.0
    assert edit_metrics(pred, saved).volume_change_ml is None  # no image: no geometry


def test_class_changes_count_as_changed_and_per_class_dice():
    pred = np.zeros((4, 4, 4), np.uint8)
    pred[:2] = 1
    pred[2:] = 2
    saved = pred.copy()
    saved[3] = 1  # 16 voxels from class 2 to class 1; foreground unchanged
    m = edit_metrics(pred, saved)
    assert m.dice == 1.0 and m.voxels_changed == 16 and m.voxels_added == m.voxels_removed == 0
    assert m.dice_per_class[1] == pytest.approx(2 * 32 / (32 + 48))
    assert m.dice_per_class[2] == pytest.approx(2 * 16 / (32 + 16))


def test_empty_masks_agree_and_shapes_must_match():
    empty = np.zeros((3, 3, 3), np.uint8)
    m = edit_metrics(empty, empty)
    assert m.dice == 1.0 and m.dice_per_class == {} and m.voxels_changed == 0
    with pytest.raises(ImageMismatchError, match="does not match"):
        edit_metrics(empty, np.zeros((3, 3, 4), np.uint8))
