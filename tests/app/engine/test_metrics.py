"""Segmentation metrics against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from medloop.app.engine.metrics import (
    confusion_counts,
    confusion_matrix,
    dice_per_class,
    hausdorff95,
    mean_dice,
    precision_recall_f1,
)

PRED = np.array([[0, 1, 1], [2, 2, 0]])
TRUTH = np.array([[0, 1, 0], [2, 2, 2]])


def test_confusion_matrix_by_hand():
    # rows truth, columns prediction: truth 0 -> predicted 0, 1; truth 1 -> 1; truth 2 -> 2, 2, 0
    assert confusion_matrix(PRED, TRUTH, 3).tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(PRED, TRUTH, 2)


def test_dice_per_class_by_hand():
    # class 1: |P∩T| = 1, |P| = 2, |T| = 1 -> 2/3; class 2: 2, 2, 3 -> 4/5; class 0: 1, 2, 2 -> 1/2
    assert dice_per_class(PRED, TRUTH, 3) == pytest.approx({1: 2 / 3, 2: 4 / 5}, abs=1e-12)
    assert dice_per_class(PRED, TRUTH, 3, ignore_background=False) == pytest.approx(
        {0: 0.5, 1: 2 / 3, 2: 4 / 5}, abs=1e-12
    )
    assert mean_dice(PRED, TRUTH, 3) == pytest.approx((2 / 3 + 4 / 5) / 2, abs=1e-12)


def test_dice_empty_classes():
    zeros = np.zeros((4, 4), int)
    one = zeros.copy()
    one[1, 1] = 1
    # class 1 absent from both, class 2 absent from both: 1.0 each
    assert dice_per_class(zeros, zeros, 3) == {1: 1.0, 2: 1.0}
    assert dice_per_class(zeros, one, 2) == {1: 0.0}
    assert dice_per_class(one, zeros, 2) == {1: 0.0}


def test_dice_mask_excludes_voxels():
    mask = np.array([[True, True, False], [True, True, True]])  # drop the false positive at (0, 2)
    assert dice_per_class(PRED, TRUTH, 3, mask=mask)[1] == 1.0


def test_confusion_counts_and_rates():
    p = np.array([1, 1, 0, 0, 1], bool)
    t = np.array([1, 0, 1, 0, 1], bool)
    counts = confusion_counts(p, t)
    assert counts == {"tp": 2, "fp": 1, "fn": 1, "tn": 1}
    rates = precision_recall_f1(counts)
    assert rates == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "accuracy": 3 / 5})
    assert precision_recall_f1(confusion_counts(np.zeros(3, bool), np.zeros(3, bool)))["f1"] == 1.0


def test_hausdorff95_physical_units_and_axis_order():
    a = np.zeros((5, 7), bool)
    b = np.zeros((5, 7), bool)
    a[2, 1] = True
    b[2, 4] = True  # 3 voxels apart along x (array axis 1)
    # spacing is MedImage order (x, y): x spacing 2 mm -> 6 mm
    assert hausdorff95(a, b, (2.0, 1.0)) == pytest.approx(6.0)
    c = np.zeros((5, 7), bool)
    c[4, 1] = True  # 2 voxels apart along y from a
    assert hausdorff95(a, c, (2.0, 0.5)) == pytest.approx(1.0)
    # 3-D, z spacing 3 mm, 2 slices apart
    v1 = np.zeros((4, 3, 3), bool)
    v2 = np.zeros((4, 3, 3), bool)
    v1[0, 1, 1] = v2[2, 1, 1] = True
    assert hausdorff95(v1, v2, (1.0, 1.0, 3.0)) == pytest.approx(6.0)


def test_hausdorff95_percentile_by_hand():
    pred = np.zeros((1, 5), bool)
    truth = np.zeros((1, 5), bool)
    pred[0, 0] = True
    truth[0, 0] = truth[0, 4] = True
    # pred->truth: [0]; truth->pred: [0, 4 voxels]; 95th percentile (linear) of [0, 4] = 3.8
    assert hausdorff95(pred, truth, (0.5, 1.0)) == pytest.approx(3.8 * 0.5)


def test_hausdorff95_empty_masks():
    z = np.zeros((4, 4), bool)
    o = z.copy()
    o[1, 1] = True
    assert hausdorff95(z, z, (1, 1)) == 0.0
    assert hausdorff95(z, o, (1, 1)) == float("inf")


def test_hausdorff95_matches_brute_force():
    rng = np.random.default_rng(3)
    from scipy import ndimage

    p = ndimage.binary_dilation(rng.random((20, 24)) > 0.97, iterations=2)
    t = ndimage.binary_dilation(rng.random((20, 24)) > 0.97, iterations=2)
    spacing = (0.7, 1.3)  # (x, y)

    def surface_points(m):
        padded = np.pad(m, 1)
        inner = padded[1:-1, 1:-1]
        all_in = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        yx = np.argwhere(inner & ~all_in)
        return yx * np.array([spacing[1], spacing[0]])

    sp, st = surface_points(p), surface_points(t)
    d = np.sqrt(((sp[:, None, :] - st[None, :, :]) ** 2).sum(-1))
    expected = max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95))
    assert hausdorff95(p, t, spacing) == pytest.approx(expected, rel=1e-9)
