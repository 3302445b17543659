"""Spec §6 check 1 (the Gareau renderer and its inverse) and the §5 bad inputs of the confocal path."""

from __future__ import annotations

import numpy as np
import pytest

from medloop.app.errors import MedloopError
from medloop.plugins.staining.checks import StainInputError
from medloop.plugins.staining.confocal import (
    E_COLOUR,
    H_COLOUR,
    ConfocalParams,
    confocal_to_rgb,
    gareau,
    gareau_inverse,
    gareau_unclipped,
    robust_normalise,
    to_uint8,
)
from medloop.plugins.staining.deconvolution import fcm_sim, rcm_sim


def test_corners_are_white_h_and_e_exactly():
    f, r = np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, 1.0])
    rgb = gareau(f, r)
    assert np.array_equal(rgb[0], [1.0, 1.0, 1.0])
    assert np.array_equal(rgb[1], H_COLOUR) and np.array_equal(rgb[2], E_COLOUR)
    h, e = (0.1, 0.7, 0.4), (0.9, 0.2, 0.6)  # any colours, not just the defaults
    assert np.array_equal(gareau(f, r, h, e)[1:], [h, e])


def test_output_in_unit_range_and_monotone():
    rng = np.random.default_rng(0)
    f, r = rng.random((64, 64)), rng.random((64, 64))
    rgb = gareau(f, r)
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0
    for df, dr in ((0.1, 0.0), (0.0, 0.1), (0.05, 0.05)):
        brighter = gareau(np.clip(f + df, 0, 1), np.clip(r + dr, 0, 1))
        assert np.all(brighter <= rgb + 1e-15)  # raising F or R never raises any channel


def test_inverse_recovers_f_and_r_on_unclipped_ihc_pixels(ihc):
    f, r = fcm_sim(ihc), rcm_sim(ihc)
    unclipped = gareau_unclipped(f, r)
    assert unclipped.mean() > 0.9  # [ours] 97 %
    f2, r2 = gareau_inverse(gareau(f, r))
    assert max(np.abs(f2 - f)[unclipped].max(), np.abs(r2 - r)[unclipped].max()) < 1e-9


def test_confocal_to_rgb_takes_channels_first_or_last_and_keeps_geometry():
    rng = np.random.default_rng(1)
    image = rng.random((2, 40, 30)).astype(np.float32)
    first = confocal_to_rgb(image)
    last = confocal_to_rgb(np.moveaxis(image, 0, -1))
    assert first.shape == (40, 30, 3) and first.dtype == np.float32
    assert np.array_equal(first, last)
    swapped = confocal_to_rgb(image, ConfocalParams(fcm_index=1))
    assert not np.array_equal(first, swapped)
    assert to_uint8(first).dtype == np.uint8


def test_despeckle_hook_sees_the_normalised_rcm():
    image = np.random.default_rng(2).random((2, 32, 32))
    seen = []
    confocal_to_rgb(image, despeckle=lambda r: seen.append(r) or r)
    assert len(seen) == 1 and seen[0].shape == (32, 32) and seen[0].min() == 0.0 and seen[0].max() == 1.0


def test_per_plane_stacks():
    stack = np.random.default_rng(3).random((2, 3, 16, 16))
    with pytest.raises(StainInputError, match="3 spatial axes .* tick 'per plane'"):
        confocal_to_rgb(stack)
    out = confocal_to_rgb(stack, ConfocalParams(per_plane=True))
    assert out.shape == (3, 16, 16, 3)
    assert np.array_equal(out[1], confocal_to_rgb(stack[:, 1]))


@pytest.mark.parametrize(
    "image, params, message",
    [
        (np.zeros((3, 8, 8)), ConfocalParams(), r"expected 2 channels \(FCM, RCM\), got 3"),
        (np.zeros((8, 8, 3)), ConfocalParams(), r"expected 2 channels \(FCM, RCM\), got 3"),
        (np.zeros((8, 8)), ConfocalParams(), r"expected 2 channels \(FCM, RCM\), got 1"),
        (np.zeros((2, 8, 8), bool), ConfocalParams(), "dtype bool"),
        (np.zeros((2, 8, 8), complex), ConfocalParams(), "dtype complex128"),
        (np.full((2, 8, 8), -1, np.int16), ConfocalParams(), "negative values"),
        (np.full((2, 8, 8), np.nan), ConfocalParams(), "NaN or infinite"),
        (np.linspace(0, 5, 128).reshape(2, 8, 8), ConfocalParams(), r"outside \[0, 1\]; give its value range"),
        (np.stack([np.ones((8, 8)), np.random.default_rng(0).random((8, 8))]), ConfocalParams(), "FCM channel is constant"),
        (np.zeros((2, 0, 8)), ConfocalParams(), "is empty"),
    ],
)
def test_bad_inputs_raise_one_line_before_compute(image, params, message):
    with pytest.raises(StainInputError, match=message) as info:
        confocal_to_rgb(image, params, name="layer")
    assert isinstance(info.value, MedloopError) and isinstance(info.value, ValueError)
    assert "\n" not in str(info.value) and str(info.value).startswith("layer")


def test_value_range_and_integer_data():
    data = np.random.default_rng(4).random((2, 16, 16)) * 1000
    out = confocal_to_rgb(data, ConfocalParams(value_range=(0, 1000)))
    ints = confocal_to_rgb((data * 60).astype(np.uint16))
    assert out.shape == ints.shape == (16, 16, 3)


def test_colours_and_percentiles_are_checked():
    with pytest.raises(StainInputError, match="colour h"):
        gareau(np.zeros((2, 2)), np.zeros((2, 2)), h=(1.2, 0, 0))
    with pytest.raises(StainInputError, match="percentiles"):
        robust_normalise(np.arange(10.0), 50, 10)
    with pytest.raises(StainInputError, match="percentiles equal"):
        robust_normalise(np.r_[np.zeros(1000), 1.0])
