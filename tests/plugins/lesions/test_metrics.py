"""The lesion metrics against brute-force definitions."""

import numpy as np
import pytest

from medloop.plugins.lesions.metrics import average_precision, dice, operating_point, paired_bootstrap_auc, roc_auc


@pytest.fixture
def scored():
    rng = np.random.default_rng(0)
    labels = rng.random(300) < 0.3
    scores = np.round(rng.random(300) + labels * 0.5, 1)  # rounded: many ties
    return labels, scores


def test_auc_equals_the_pairwise_probability_with_ties_as_half(scored):
    y, s = scored
    pos, neg = s[y], s[~y]
    brute = np.mean((pos[:, None] > neg[None]) + 0.5 * (pos[:, None] == neg[None]))
    assert roc_auc(y, s) == pytest.approx(brute, abs=1e-12)


def test_average_precision_is_the_stepwise_area(scored):
    y, s = scored
    area, last_recall = 0.0, 0.0
    for t in np.unique(s)[::-1]:
        predicted = s >= t
        tp = np.sum(predicted & y)
        area += (tp / y.sum() - last_recall) * tp / predicted.sum()
        last_recall = tp / y.sum()
    assert average_precision(y, s) == pytest.approx(area, abs=1e-12)


def test_paired_bootstrap_ci_excludes_zero_for_a_clearly_better_model(scored):
    y, s = scored
    better = s + y * 0.3
    result = paired_bootstrap_auc(y, s, better, resamples=400, seed=1)
    assert result.delta == pytest.approx(roc_auc(y, better) - roc_auc(y, s))
    assert 0 < result.low < result.delta < result.high
    assert result.significant
    same = paired_bootstrap_auc(y, s, s, resamples=50)
    assert same.delta == same.low == same.high == 0.0 and not same.significant


def test_dice_and_operating_point():
    a = np.zeros((10, 10), bool); a[:5] = True
    b = np.zeros((10, 10), bool); b[:5, :5] = True
    assert dice(a, b) == pytest.approx(2 * 25 / 75)
    assert dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0
    threshold, sensitivity, specificity = operating_point([0, 0, 1, 1], [0.1, 0.4, 0.45, 0.8])
    assert (threshold, sensitivity, specificity) == (0.45, 1.0, 1.0)
