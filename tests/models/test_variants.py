"""The robustness variants the brain model is measured on (issue 14 §6): each generator does what
its name says, measured on the packaged sample."""

from __future__ import annotations

import numpy as np
import pytest

from medloop.models.variants import noise_everywhere, t2_like, with_empty_slices


@pytest.fixture(scope="module")
def sample(brain_sample):
    return brain_sample


def wm_level(image) -> float:
    a = np.asarray(image.array, dtype=np.float32)
    return float(np.percentile(a[a > 0], 99))


def test_noise_reaches_the_background(sample):
    t1, _ = sample
    background = np.asarray(t1.array) == 0
    gauss = np.asarray(noise_everywhere(t1, np.random.default_rng(0), 0.02).array)
    assert np.std(gauss[background]) == pytest.approx(0.02 * wm_level(t1), rel=0.02)
    rician = np.asarray(noise_everywhere(t1, np.random.default_rng(0), 0.03, rician=True).array)
    # Background of magnitude noise: Rayleigh, mean sigma * sqrt(pi / 2), never negative.
    assert rician[background].mean() == pytest.approx(0.03 * wm_level(t1) * np.sqrt(np.pi / 2), rel=0.02)
    assert rician.min() >= 0


def test_t2_like_inverts_tissue_contrast_inside_the_brain(sample):
    t1, tissue = sample
    labels = np.asarray(tissue.array)
    t1a, t2 = np.asarray(t1.array, dtype=np.float32), np.asarray(t2_like(t1, tissue).array)
    assert t1a[labels == 2].mean() > t1a[labels == 1].mean()  # T1: WM brighter than GM
    assert t2[labels == 2].mean() < t2[labels == 1].mean()  # T2-like: WM darker than GM
    from scipy import ndimage

    outside = ~ndimage.binary_fill_holes(ndimage.binary_dilation(labels > 0, iterations=3))  # ventricles are inside
    assert np.all(t2[outside] == 0)  # outside the brain stays empty


def test_empty_slices_keep_every_voxel_where_it_was(sample):
    t1, tissue = sample
    image, labels = with_empty_slices(t1, tissue, 12, np.random.default_rng(0))
    assert image.shape == (t1.shape[0] + 24, *t1.shape[1:]) and labels.shape == image.shape
    np.testing.assert_array_equal(np.asarray(image.array)[12:-12], np.asarray(t1.array, dtype=np.float32))
    assert np.all(np.asarray(image.array)[-12:] == 0) and 0 < np.asarray(image.array)[:12].max() < 0.05 * wm_level(t1)
    assert not np.asarray(labels.array)[:12].any() and not np.asarray(labels.array)[-12:].any()
    ijk = np.array([10.0, 20.0, 30.0])  # (x, y, z) index of the original volume
    np.testing.assert_allclose(image.index_to_physical(ijk + [0, 0, 12]), t1.index_to_physical(ijk), atol=1e-9)
