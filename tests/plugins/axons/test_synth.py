"""Spec §E check 1: the synthetic axon generator."""

from __future__ import annotations

import numpy as np
import pytest

from medloop.app.errors import MedloopError
from medloop.plugins.axons.geometry import arc_length, distance_map
from medloop.plugins.axons.synth import PRESETS, AxonParams, make_axon, make_batch, with_params


def test_same_seed_same_axon_and_batches_extend():
    a = make_axon(64, "SI", np.random.default_rng(5))
    b = make_axon(64, "SI", np.random.default_rng(5))
    for x, y in zip(a, b):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    c = make_axon(64, "SI", np.random.default_rng(6))
    assert not np.array_equal(a.image, c.image)
    long, short = make_batch(5, 64, "SI", 3), make_batch(2, 64, "SI", 3)
    assert all(np.array_equal(x.image, y.image) for x, y in zip(long, short))


def test_types_and_shapes():
    a = make_axon((48, 80), "SI", np.random.default_rng(0))
    assert a.image.dtype == np.float32 and a.image.shape == (48, 80)
    assert a.mask.dtype == bool and a.mask.shape == (48, 80)
    assert a.centreline.ndim == 2 and a.centreline.shape[1] == 2
    assert np.array_equal(a.start, a.centreline[0]) and np.array_equal(a.end, a.centreline[-1])
    assert np.linalg.norm(a.direction) == pytest.approx(1.0)
    assert np.dot(a.direction, a.centreline[4] - a.centreline[0]) > 0  # v0 points along the axon


def test_keypoints_gaps_inside_length_and_walk_turns(validation_axons):
    p = PRESETS["SI"]
    for a in validation_axons:
        c = a.centreline
        gaps = np.linalg.norm(np.diff(c, axis=0), axis=1)
        assert gaps.max() <= 0.5 + 1e-9
        assert c.min() >= 0 and c[:, 0].max() <= 63 and c[:, 1].max() <= 63
        assert arc_length(c)[-1] >= 0.8 * 64
        seg = np.diff(a.walk, axis=0)
        heading = np.arctan2(seg[:, 1], seg[:, 0])
        turns = np.abs((np.diff(heading) + np.pi) % (2 * np.pi) - np.pi)
        assert np.rad2deg(turns).max() <= p.max_turn_deg + 1e-6
        assert np.all(np.linalg.norm(seg, axis=1) <= p.step_px + 1e-9)


def test_background_mean_and_sd(validation_axons):
    for a in validation_axons[:10]:
        far = distance_map(a.image.shape, a.centreline) > 5
        assert a.image[far].mean() == pytest.approx(0.1, abs=0.01)
        assert a.image[far].std() == pytest.approx(0.1, abs=0.01)


def _contrast(preset: str) -> float:
    """Mean on-centreline intensity minus mean background over 10 images."""
    values = []
    for a in make_batch(10, 64, preset, 7):
        d = distance_map(a.image.shape, a.centreline)
        values.append(a.image[d < 0.3].mean() - a.image[d > 5].mean())
    return float(np.mean(values))


def test_reduced_contrast_is_lower():
    si, rc = _contrast("SI"), _contrast("SI-RC")
    assert 0.6 < si < 1.0 and 0.2 < rc < 0.5  # a ~ U(0.6, 1.0) and U(0.25, 0.45)
    assert rc < 0.6 * si


def _fwhm(preset: str) -> float:
    """Full width at half maximum of the measured cross-section (noisy images, 20 axons pooled):
    (pixel - background) / amplitude binned by distance to the centreline."""
    bins = np.arange(0.0, 6.0, 0.1)
    sums, counts = np.zeros(len(bins)), np.zeros(len(bins))
    for a in make_batch(20, 64, preset, 11):
        d = distance_map(a.image.shape, a.centreline)
        k = np.digitize(d, bins) - 1
        ok = (k >= 0) & (k < len(bins))
        np.add.at(sums, k[ok], (a.image[ok] - 0.1) / a.amplitude)
        np.add.at(counts, k[ok], 1)
    profile = sums / np.maximum(counts, 1)
    centres = bins + 0.05
    half = profile[0] / 2
    i = int(np.flatnonzero(profile < half)[0])  # first bin under half maximum
    r = centres[i - 1] + (half - profile[i - 1]) * (centres[i] - centres[i - 1]) / (profile[i] - profile[i - 1])
    return 2 * r


def test_wide_preset_doubles_the_fwhm():
    si, wide = _fwhm("SI"), _fwhm("SI-W")
    assert si == pytest.approx(2.355, rel=0.15)  # Gaussian w = 1
    assert wide / si == pytest.approx(2.0, rel=0.2)


def test_extra_noise_doubles_the_background_sd():
    a = make_batch(3, 64, "SI-EN", 2)
    sds = [x.image[distance_map(x.image.shape, x.centreline) > 5].std() for x in a]
    assert np.mean(sds) == pytest.approx(0.2, abs=0.02)


def test_structured_noise_variance_rises_with_the_mean():
    p = with_params("SI-SN", amplitude=(0.9, 0.9))
    low, high = [], []
    for a in make_batch(20, 64, p, 4):
        d = distance_map(a.image.shape, a.centreline)
        low.append(a.image[d > 5])
        high.append(a.image[d < 0.2])
    low, high = np.concatenate(low), np.concatenate(high)
    assert high.var() > 5 * low.var()
    # Poisson: variance / mean = 1 / poisson_scale at every level
    assert low.var() / low.mean() == pytest.approx(1 / 20, rel=0.1)
    assert high.var() / high.mean() == pytest.approx(1 / 20, rel=0.2)


def test_realism_mode_background_is_the_fitted_gamma():
    from scipy import stats

    pixels = []
    for a in make_batch(2, 256, "SI-REAL", 9):
        pixels.append(a.image[distance_map(a.image.shape, a.centreline, max_distance=8) > 7])
    raw = np.concatenate(pixels) * 255.0
    assert raw.size >= 100_000
    shape, loc, scale = stats.gamma.fit(raw, floc=0)
    assert shape == pytest.approx(1.934, rel=0.05)
    assert scale == pytest.approx(7.699, rel=0.05)


def test_mask_is_the_band_around_the_centreline():
    a = make_axon(64, "SI-W", np.random.default_rng(1))
    d = distance_map(a.image.shape, a.centreline)
    assert np.array_equal(a.mask, d <= 1.5 * 2.0)


def test_bad_preset_and_size_are_medloop_errors():
    with pytest.raises(MedloopError, match="unknown synthetic preset 'SI-X'; choose one of SI, SI-RC"):
        make_axon(64, "SI-X", np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"image size \(16, 16\) is below 21 px"):
        make_axon(16, AxonParams(), np.random.default_rng(0))
