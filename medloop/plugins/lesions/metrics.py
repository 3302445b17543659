"""The numbers of the lesion papers: ROC AUC with the paired bootstrap of Gupta et al., AUPRC and
pooled Dice of Baur et al., and the operating point minimising (1 - TPR)^2 + FPR^2.

Plain numpy (no scikit-learn dependency for four formulas); ``roc_auc`` equals scikit-learn's
``roc_auc_score`` (ties count one half) and ``average_precision`` its ``average_precision_score``
(step-wise, no interpolation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medloop.plugins.lesions.checks import LesionInputError


def _labels_scores(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).ravel().astype(bool)
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise LesionInputError(f"labels ({y.size}) and scores ({s.size}) differ in length; give one score per label")
    return y, s


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties); NaN if one class is absent."""
    y, s = _labels_scores(labels, scores)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), np.float64)
    sorted_s = s[order]
    # Mid-ranks: every run of equal scores gets the mean of its ranks.
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], len(s)]
    mid = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(mid, ends - starts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve as sum over thresholds of (R_k - R_{k-1}) P_k."""
    y, s = _labels_scores(labels, scores)
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    y_sorted, s_sorted = y[order], s[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), len(s_sorted) - 1]  # last index of each distinct score
    tp = np.cumsum(y_sorted)[last]
    precision = tp / (last + 1)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Pooled Dice of two boolean masks (1.0 when both are empty)."""
    p, t = np.asarray(prediction, bool), np.asarray(truth, bool)
    total = int(p.sum()) + int(t.sum())
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(p & t)) / total


@dataclass(frozen=True)
class PairedAuc:
    """ΔAUC = AUC(b) − AUC(a) on the same test set with its paired-bootstrap 95 % CI."""

    auc_a: float
    auc_b: float
    delta: float
    low: float
    high: float
    resamples: int

    @property
    def significant(self) -> bool:
        """The CI of the paired difference excludes 0 (Gupta et al.'s criterion)."""
        return self.low > 0 or self.high < 0


def paired_bootstrap_auc(
    labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, resamples: int = 2000, seed: int = 0,
) -> PairedAuc:
    """Both models scored on the same bootstrap resamples of the test set (stratified, so every
    resample holds both classes); the 2.5th and 97.5th percentiles of AUC(b) − AUC(a)."""
    y, a = _labels_scores(labels, scores_a)
    _, b = _labels_scores(labels, scores_b)
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    if len(pos) == 0 or len(neg) == 0:
        raise LesionInputError("the test set needs both lesion and normal images for an AUC")
    deltas = np.empty(resamples)
    for i in range(resamples):
        idx = np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]
        deltas[i] = roc_auc(y[idx], b[idx]) - roc_auc(y[idx], a[idx])
    auc_a, auc_b = roc_auc(y, a), roc_auc(y, b)
    low, high = np.percentile(deltas, [2.5, 97.5])
    return PairedAuc(auc_a, auc_b, auc_b - auc_a, float(low), float(high), resamples)


def operating_point(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float, float]:
    """The threshold minimising (1 − TPR)² + FPR² (Gupta et al.) and its (sensitivity, specificity)."""
    y, s = _labels_scores(labels, scores)
    best = (np.inf, 0.5, 0.0, 0.0)
    for t in np.unique(s):
        pred = s >= t
        tpr = float((pred & y).sum()) / max(int(y.sum()), 1)
        fpr = float((pred & ~y).sum()) / max(int((~y).sum()), 1)
        cost = (1 - tpr) ** 2 + fpr**2
        if cost < best[0]:
            best = (cost, float(t), tpr, 1 - fpr)
    return best[1], best[2], best[3]
