"""Macenko and Reinhard through torchstain: fitted on a reference region, applied to an image."""

from __future__ import annotations

import numpy as np
import pytest

from medloop.plugins.staining.checks import StainInputError
from medloop.plugins.staining.deconvolution import REGION_B, REGION_TEST, StainPerturbation, recolour
from medloop.plugins.staining.metrics import psnr
from medloop.plugins.staining.normalise import fit_normaliser, normalise


def test_macenko_undoes_a_stain_matrix_change(ihc):
    """A recolouring by changed stain vectors/concentrations is what Macenko models: normalising
    the recoloured held-out quarter to region 2 brings it much closer to the true quarter."""
    x = ihc[REGION_TEST]
    y = np.clip(recolour(x, StainPerturbation()), 0, 1)
    out = normalise(y, ihc[REGION_B], "macenko")
    assert out.dtype == np.uint8 and out.shape == x.shape
    assert psnr(x, out / 255.0) > psnr(x, y) + 4.0  # [ours] 24.2 -> 31.1 dB


def test_reinhard_matches_the_references_lab_statistics(ihc):
    from skimage.color import rgb2lab

    reference, image = ihc[REGION_B], np.clip(ihc[REGION_TEST] * [1.0, 0.8, 0.9], 0, 1)
    out = fit_normaliser(reference, "reinhard").apply(image) / 255.0
    ref_lab, out_lab, in_lab = (rgb2lab(a).reshape(-1, 3) for a in (reference, out, image))
    assert np.abs(out_lab.mean(0) - ref_lab.mean(0)).max() < 0.5 * np.abs(in_lab.mean(0) - ref_lab.mean(0)).max()


def test_integer_and_float_inputs_agree(ihc):
    fitted = fit_normaliser(ihc[REGION_B], "reinhard")
    as_uint8 = np.rint(ihc[REGION_TEST] * 255).astype(np.uint8)
    assert np.array_equal(fitted.apply(as_uint8), fitted.apply(as_uint8 / 255.0))


def test_errors_are_one_line(ihc):
    white = np.ones((32, 32, 3))
    with pytest.raises(StainInputError, match="unknown; choose 'macenko' or 'reinhard'"):
        fit_normaliser(ihc, "vahadane")
    with pytest.raises(StainInputError, match="reference has a constant colour channel"):
        fit_normaliser(white, "reinhard")
    faint = np.clip(0.97 + np.random.default_rng(0).normal(0, 0.01, (32, 32, 3)), 0, 1)
    with pytest.raises(StainInputError, match="0 stained pixels .* choose a region over stained tissue"):
        fit_normaliser(faint, "macenko")
    with pytest.raises(StainInputError, match="only 16 pixels"):
        fit_normaliser(ihc[:4, :4], "reinhard")
    with pytest.raises(StainInputError, match=r"expected 3 channels \(RGB\) last, got 2"):
        normalise(ihc[..., :2], ihc)
