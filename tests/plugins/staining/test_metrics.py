"""Spec §6 check 8: the metrics (SSIM as scikit-image's, Wasserstein colour distance, Dice)."""

from __future__ import annotations

import numpy as np
import pytest

from medloop.plugins.staining.checks import StainInputError
from medloop.plugins.staining.metrics import dice_per_class, psnr, ssim, wasserstein_colour, weighted_dice


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    a = rng.random((48, 40, 3))
    return a, np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)


def test_ssim_equals_skimage_with_win7_k1_k2(pair):
    from skimage.color import rgb2gray
    from skimage.metrics import structural_similarity

    a, b = pair
    grey = structural_similarity(rgb2gray(a), rgb2gray(b), win_size=7, K1=0.01, K2=0.03, data_range=1.0)
    colour = structural_similarity(a, b, win_size=7, K1=0.01, K2=0.03, data_range=1.0, channel_axis=-1)
    assert ssim(a, b) == pytest.approx(grey, abs=1e-12)  # greyscale is the default
    assert ssim(a, b, grey=False) == pytest.approx(colour, abs=1e-12)
    assert ssim(a, a) == pytest.approx(1.0)


def test_wasserstein_is_zero_on_itself_symmetric_and_in_levels(pair):
    a, b = pair
    assert wasserstein_colour(a, a) == 0.0
    assert wasserstein_colour(a, b) == pytest.approx(wasserstein_colour(b, a), abs=1e-12)
    shifted = np.clip(a, 0, 0.8) + 0.1
    assert wasserstein_colour(np.clip(a, 0, 0.8), shifted) == pytest.approx(0.1 * 255, rel=1e-9)
    # sets of different sizes (a region against a whole domain)
    assert wasserstein_colour(a[:10], b) > 0
    with pytest.raises(StainInputError, match="RGB"):
        wasserstein_colour(a[..., 0], b[..., 0])


def test_psnr(pair):
    a, _ = pair
    noisy = a + 0.1
    assert psnr(a, noisy) == pytest.approx(20.0, abs=1e-9)


def test_dice_on_hand_made_masks_weighted_by_class_frequency():
    truth = np.zeros((10, 10), int)
    truth[:, :6] = 1  # 60 px of class 1, 40 of class 0
    pred = truth.copy()
    pred[:, 5] = 0  # 10 px of class 1 called 0
    d = dice_per_class(truth, pred)
    assert d[1] == pytest.approx(2 * 50 / (60 + 50))
    assert d[0] == pytest.approx(2 * 40 / (40 + 50))
    assert weighted_dice(truth, pred) == pytest.approx(0.6 * d[1] + 0.4 * d[0])
    assert weighted_dice(truth, truth) == 1.0
    # a class only in the prediction weighs nothing; one absent from both scores 1
    pred2 = truth.copy()
    pred2[0, 0] = 7
    assert weighted_dice(truth, pred2) == pytest.approx(0.6 * (2 * 59 / 119) + 0.4 * 1.0)
    assert dice_per_class(truth, truth, classes=[3])[3] == 1.0
    with pytest.raises(StainInputError, match="none of the classes"):
        weighted_dice(truth, truth, classes=[3])
