"""Spec §6 check 2 (colour deconvolution round trip without clamping) and the §4 test data."""

from __future__ import annotations

import numpy as np
import pytest

from medloop.plugins.staining.checks import StainInputError
from medloop.plugins.staining.deconvolution import (
    REGION_A,
    REGION_B,
    REGION_TEST,
    StainPerturbation,
    deconvolve,
    despeckle_data,
    fcm_sim,
    rcm_sim,
    recolour,
    recolour_inverse,
    reconvolve,
    transfer_data,
)


def test_round_trip_is_exact_without_clamping(ihc):
    back = reconvolve(deconvolve(ihc))
    # Only the 9 exactly-zero pixels differ: they come back as eps = 1e-6 (plus float rounding).
    assert np.abs(back - ihc).max() <= 1e-6 + 1e-15
    assert np.abs(back - ihc)[ihc > 0].max() < 1e-12


def test_skimage_rgb2hed_clamps_so_it_is_no_oracle(ihc):
    """Why we deconvolve ourselves: skimage clamps concentrations at 0, so its round trip is lossy."""
    from skimage.color import hed2rgb, rgb2hed

    assert np.abs(hed2rgb(rgb2hed(ihc)) - ihc).mean() > 100 * np.abs(reconvolve(deconvolve(ihc)) - ihc).mean()


def test_recolouring_has_an_exact_inverse(ihc):
    p = StainPerturbation(h_scale=1.3, dab_scale=0.8, dab_hue_deg=40.0)
    y = recolour(ihc, p)
    stained = ihc > 1e-3
    assert np.abs(y - ihc).mean() > 0.02  # a visible change
    assert np.abs(recolour_inverse(y, p) - ihc)[stained].max() < 1e-9


def test_simulated_modes(ihc):
    f, r = fcm_sim(ihc), rcm_sim(ihc)
    for mode in (f, r):
        assert mode.shape == ihc.shape[:2] and mode.min() == 0.0 and mode.max() == 1.0
    hematoxylin = deconvolve(ihc)[..., 0]
    assert np.corrcoef(f.ravel(), hematoxylin.ravel())[0, 1] > 0.9  # nuclei bright
    assert np.corrcoef(r.ravel(), ihc.mean(axis=-1).ravel())[0, 1] < -0.9  # tissue bright on dark


def test_regions_are_disjoint_and_the_test_pair_is_paired(ihc):
    used = np.zeros(ihc.shape[:2], int)
    for region in (REGION_A, REGION_B, REGION_TEST):
        used[region] += 1
    assert used.max() == 1 and used.min() == 1
    data = transfer_data("gareau")
    assert data.train_a.shape == (256, 512, 3) and data.train_b.shape == data.test_a.shape == data.test_x.shape == (256, 256, 3)
    assert np.array_equal(data.test_x, ihc[REGION_TEST].astype(np.float32))
    stain = transfer_data("recolour")
    assert stain.test_a.min() >= 0 and stain.test_a.max() <= 1
    with pytest.raises(StainInputError, match="unknown"):
        transfer_data("he")


def test_despeckle_data_is_held_out():
    train, test, noisy = despeckle_data()
    assert train.shape == test.shape == noisy.shape == (256, 512)
    assert noisy.min() >= 0 and noisy.max() <= 1 and not np.array_equal(noisy, test)
