"""Segmentation metrics on integer label maps and binary masks (numpy, any dimensionality).

Conventions: Dice of an empty prediction against an empty truth is 1.0 (nothing to find, nothing
found); the Hausdorff distance of two empty masks is 0.0 and of one empty mask inf.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def confusion_matrix(
    pred: np.ndarray, truth: np.ndarray, num_classes: int, mask: np.ndarray | None = None
) -> np.ndarray:
    """(K, K) int64 voxel counts, rows = truth class, columns = predicted class.

    Voxels where ``mask`` is False (e.g. unlabeled) are not counted; values outside
    0..K-1 raise ValueError rather than being silently dropped.
    """
    p = np.asarray(pred).ravel()
    t = np.asarray(truth).ravel()
    if p.shape != t.shape:
        raise ValueError(f"prediction {np.shape(pred)} and truth {np.shape(truth)} differ in shape")
    if mask is not None:
        keep = np.asarray(mask, bool).ravel()
        p, t = p[keep], t[keep]
    for name, a in (("prediction", p), ("truth", t)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"{name} has labels outside 0..{num_classes - 1}")
    flat = t.astype(np.int64) * num_classes + p.astype(np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def confusion_counts(pred_mask: np.ndarray, truth_mask: np.ndarray) -> dict[str, int]:
    """True/false positives/negatives of two binary masks: keys tp, fp, fn, tn."""
    p = np.asarray(pred_mask, bool)
    t = np.asarray(truth_mask, bool)
    if p.shape != t.shape:
        raise ValueError(f"prediction {p.shape} and truth {t.shape} differ in shape")
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p & ~t))
    fn = int(np.count_nonzero(~p & t))
    return {"tp": tp, "fp": fp, "fn": fn, "tn": int(p.size - tp - fp - fn)}


def precision_recall_f1(counts: dict[str, int]) -> dict[str, float]:
    """Precision, recall, F1 and accuracy from :func:`confusion_counts` (0/0 counts as 1.0)."""
    tp, fp, fn, tn = counts["tp"], counts["fp"], counts["fn"], counts["tn"]

    def ratio(a: int, b: int) -> float:
        return 1.0 if b == 0 else a / b

    return {
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "accuracy": ratio(tp + tn, tp + fp + fn + tn),
    }


def dice_per_class(
    pred: np.ndarray,
    truth: np.ndarray,
    num_classes: int,
    ignore_background: bool = True,
    mask: np.ndarray | None = None,
) -> dict[int, float]:
    """Dice 2|P∩T| / (|P| + |T|) for each class (from 1 when ``ignore_background``).

    A class absent from both prediction and truth scores 1.0. ``mask`` restricts the voxels
    compared (e.g. to the annotated ones).
    """
    cm = confusion_matrix(pred, truth, num_classes, mask)
    inter = np.diag(cm)
    sizes = cm.sum(axis=0) + cm.sum(axis=1)  # |P| + |T|
    first = 1 if ignore_background else 0
    return {
        k: (1.0 if sizes[k] == 0 else float(2 * inter[k] / sizes[k])) for k in range(first, num_classes)
    }


def mean_dice(
    pred: np.ndarray,
    truth: np.ndarray,
    num_classes: int,
    ignore_background: bool = True,
    mask: np.ndarray | None = None,
) -> float:
    """Unweighted mean of :func:`dice_per_class` (nan when there is no class to average)."""
    scores = dice_per_class(pred, truth, num_classes, ignore_background, mask)
    return float(np.mean(list(scores.values()))) if scores else float("nan")


def surface(mask: np.ndarray) -> np.ndarray:
    """Boolean mask of the voxels of ``mask`` that touch a face-neighbour outside it (the
    array's border counts as outside)."""
    from scipy import ndimage

    m = np.asarray(mask, bool)
    structure = ndimage.generate_binary_structure(m.ndim, 1)
    return m & ~ndimage.binary_erosion(m, structure=structure, border_value=0)


def surface_distances(
    pred_mask: np.ndarray, truth_mask: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Distances from each prediction-surface voxel to the truth surface, and back, in the units
    of ``spacing``, which is in MedImage order (x, y[, z]) — the reverse of the array axes."""
    from scipy import ndimage

    p = np.asarray(pred_mask, bool)
    t = np.asarray(truth_mask, bool)
    if p.shape != t.shape:
        raise ValueError(f"prediction {p.shape} and truth {t.shape} differ in shape")
    if len(spacing) != p.ndim:
        raise ValueError(f"spacing {tuple(spacing)} needs {p.ndim} values for masks of shape {p.shape}")
    sampling = tuple(float(s) for s in spacing)[::-1]  # array-axis order for scipy
    ps, ts = surface(p), surface(t)
    to_truth = ndimage.distance_transform_edt(~ts, sampling=sampling)
    to_pred = ndimage.distance_transform_edt(~ps, sampling=sampling)
    return to_truth[ps], to_pred[ts]


def hausdorff95(pred_mask: np.ndarray, truth_mask: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile symmetric Hausdorff distance between the masks' surfaces, in physical
    units: the larger of the two directed 95th percentiles (as DeepMind's surface-distance
    ``compute_robust_hausdorff``, unweighted by surfel area).

    ``spacing`` is in MedImage order (x, y[, z]), i.e. pass ``image.spacing``. Both masks empty:
    0.0; exactly one empty: inf.
    """
    p = np.asarray(pred_mask, bool)
    t = np.asarray(truth_mask, bool)
    if p.shape != t.shape or len(spacing) != p.ndim:
        raise ValueError(f"masks {p.shape} and {t.shape} with spacing {tuple(spacing)} do not fit together")
    if not p.any() and not t.any():
        return 0.0
    if not p.any() or not t.any():
        return float("inf")
    d_pt, d_tp = surface_distances(p, t, spacing)
    return float(max(np.percentile(d_pt, 95), np.percentile(d_tp, 95)))


def seam_ratio(image: np.ndarray, columns: Sequence[int]) -> float:
    """Mean |horizontal gradient| across the given columns over the mean elsewhere.

    ``image`` is ``(..., H, W)``; column ``c`` stands for the step from ``c - 1`` to ``c`` (as
    :meth:`~medloop.app.engine.tiling.TileGrid.seams` reports tile borders). About 1 means the
    tile borders are invisible; visible seams make it larger.
    """
    a = np.asarray(image, dtype=np.float64)
    steps = np.abs(np.diff(a, axis=-1))
    on = np.zeros(steps.shape[-1], dtype=bool)
    cols = [int(c) for c in columns if 0 < int(c) < a.shape[-1]]
    if not cols:
        raise ValueError(f"no seam columns inside an image {a.shape[-1]} wide: {tuple(columns)}")
    on[np.array(cols) - 1] = True
    if on.all():
        raise ValueError("every column is a seam column; nothing to compare with")
    return float(steps[..., on].mean() / steps[..., ~on].mean())
